"""``KeylessAwsCredentials``: keyless where prefect-aws expects ``AwsCredentials``.

prefect-aws's ``S3Bucket`` (and so task result storage on S3 and ``S3Bucket`` deployment
storage) accepts only an ``AwsCredentials`` block, which holds static keys or a profile. This
block subclasses it and answers every method prefect-aws calls on its credentials
(``get_boto3_session``, ``get_client``, ``get_s3_client``, ``get_secrets_manager_client``,
``aws_client_parameters``, ``region_name``) from a nested
:class:`~prefect_keyless.KeylessCredentials` block: the calling flow run/task run's own
refreshed identity, built lazily in the process that uses it (the nested block owns that cache;
this block keeps none). Before::

    S3Bucket(bucket_name="data", credentials=AwsCredentials(aws_access_key_id=..., ...))

After::

    S3Bucket(bucket_name="data",
             credentials=KeylessAwsCredentials(keyless=KeylessCredentials.load("training")))

The static fields of ``AwsCredentials`` (keys, session token, profile, assume-role) are
refused and hidden from the form; ``region_name`` and ``aws_client_parameters`` (endpoint URL,
TLS verification, botocore config) apply to every client as in ``AwsCredentials``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from prefect_aws import AwsCredentials
from prefect_aws.credentials import ClientType
from pydantic import Field, model_validator
from pydantic.json_schema import GenerateJsonSchema

from ._adapted import block_type_field, form_schema, refuse_static_fields
from .credentials import KeylessCredentials

if TYPE_CHECKING:
    import boto3

__all__ = ["KeylessAwsCredentials"]

#: ``AwsCredentials`` fields that hold static credentials: refused, and hidden from the form.
STATIC_FIELDS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token",
                 "profile_name", "assume_role_arn", "assume_role_kwargs")


class KeylessAwsCredentials(AwsCredentials):
    """``AwsCredentials`` on keyless: per-task, short-lived AWS credentials from OIDC
    workload identity federation (``keyless.target.aws``), refreshed for as long as a client
    lives. Fits ``S3Bucket(credentials=...)`` and anything else typed ``AwsCredentials``."""

    _block_type_name = "Keyless AWS Credentials"
    _block_type_slug: ClassVar[str | None] = "keyless-aws-credentials"
    _description: ClassVar[str | None] = (
        "AwsCredentials for prefect-aws blocks (S3Bucket, result storage) backed by keyless: "
        "each task run gets its own short-lived, refreshed AWS session through OIDC workload "
        "identity federation. Stores no AWS key.")
    _documentation_url = "https://pypi.org/project/prefect-keyless/"

    keyless: KeylessCredentials = Field(
        title="Keyless Credentials",
        description="The keyless block (its target.aws) whose identity the clients use.")
    #: saved with the data, so a block referencing this one builds this class
    block_type_slug: Literal["keyless-aws-credentials"] = block_type_field(
        "keyless-aws-credentials")

    @model_validator(mode="before")
    @classmethod
    def _refuse_static_credentials(cls, data: Any) -> Any:
        return refuse_static_fields(
            data, slug=cls.get_block_type_slug(), fields=STATIC_FIELDS,
            fix="the role comes from keyless.target.aws (role_arn, session_name, policies)")

    @classmethod
    def model_json_schema(  # type: ignore[override]  # Block's own (narrower) signature
        cls,
        by_alias: bool = True,
        ref_template: str = "#/definitions/{model}",
        schema_generator: type[GenerateJsonSchema] = GenerateJsonSchema,
        mode: Literal["validation", "serialization"] = "validation",
    ) -> dict[str, Any]:
        """The block's schema (form and stored fields) without the static-credential fields."""
        schema = super().model_json_schema(by_alias, ref_template, schema_generator, mode)
        return form_schema(schema, STATIC_FIELDS)

    # ------------------------------------------------------------------ what prefect-aws calls
    def get_boto3_session(self) -> boto3.Session:
        """The calling flow run/task run's ``boto3.Session``; its credentials refresh
        themselves (``keyless.target.aws``)."""
        return self.keyless.get_boto3_session()

    def get_client(self, client_type: str | ClientType = "s3", **client_kwargs: Any) -> Any:
        """A boto3 client for ``client_type`` on the calling run's identity, with
        ``aws_client_parameters`` and ``region_name`` applied (``client_kwargs`` win).

        Unlike ``AwsCredentials.get_client``, nothing is cached across runs (prefect-aws keeps
        one client per block in a process-wide LRU, which would hand one task's identity to
        the next): a client is cheap on the run's cached session."""
        service = client_type.value if isinstance(client_type, ClientType) else client_type
        parameters: dict[str, Any] = self.aws_client_parameters.get_params_override()
        if self.region_name is not None:
            parameters["region_name"] = self.region_name
        parameters.update(client_kwargs)
        session: Any = self.get_boto3_session()  # any service name, not the stubs' literals
        return session.client(service, **parameters)

    def get_s3_client(self, **client_kwargs: Any) -> Any:
        """An S3 client on the calling run's identity (``get_client("s3")``)."""
        return self.get_client(ClientType.S3, **client_kwargs)

    def get_secrets_manager_client(self, **client_kwargs: Any) -> Any:
        """A Secrets Manager client on the calling run's identity."""
        return self.get_client(ClientType.SECRETS_MANAGER, **client_kwargs)
