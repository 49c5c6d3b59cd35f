"""``KeylessGcpCredentials``: keyless where prefect-gcp expects ``GcpCredentials``.

prefect-gcp's ``GcsBucket`` (and so task result storage on GCS), BigQuery and Secret Manager
helpers accept only a ``GcpCredentials`` block, which holds a service-account key (file or
JSON) or falls back to Application Default Credentials. This block subclasses it: every
client prefect-gcp builds asks ``get_credentials_from_service_account()``, which here returns
the calling flow run/task run's own keyless ``google.auth`` credentials (workload identity
federation, ``keyless.target.gcp``; refreshed ahead of expiry), built lazily in the process
that uses them by the nested :class:`~prefect_keyless.KeylessCredentials` block (the one owner
of that cache). Before::

    GcsBucket(bucket="data", gcp_credentials=GcpCredentials(service_account_file="key.json"))

After::

    GcsBucket(bucket="data",
              gcp_credentials=KeylessGcpCredentials(keyless=KeylessCredentials.load("training")))

``project`` defaults to ``keyless.target.gcp.project_id``. Building the block calls nothing
(``GcpCredentials`` resolves credentials at construction); the key fields are refused and
hidden from the form.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from prefect_gcp import GcpCredentials  # type: ignore[import-untyped]
from pydantic import Field, HttpUrl, model_validator
from pydantic.json_schema import GenerateJsonSchema

from ._adapted import block_type_field, form_schema, refuse_static_fields
from .credentials import KeylessCredentials

__all__ = ["KeylessGcpCredentials"]

#: ``GcpCredentials`` fields that hold a service-account key: refused, hidden from the form.
STATIC_FIELDS = ("service_account_file", "service_account_info")


class KeylessGcpCredentials(GcpCredentials):  # type: ignore[misc]  # prefect-gcp is untyped
    """``GcpCredentials`` on keyless: per-task, short-lived Google credentials from workload
    identity federation. Fits ``GcsBucket(gcp_credentials=...)`` and anything else typed
    ``GcpCredentials``."""

    _block_type_name: ClassVar[str | None] = "Keyless GCP Credentials"
    _block_type_slug: ClassVar[str | None] = "keyless-gcp-credentials"
    _description: ClassVar[str | None] = (
        "GcpCredentials for prefect-gcp blocks (GcsBucket, result storage, BigQuery) backed by "
        "keyless: each task run gets its own short-lived, refreshed Google credentials through "
        "workload identity federation. Stores no service-account key.")
    _documentation_url: ClassVar[HttpUrl | None] = HttpUrl(
        "https://pypi.org/project/prefect-keyless/")

    keyless: KeylessCredentials = Field(
        title="Keyless Credentials",
        description="The keyless block (its target.gcp) whose identity the clients use.")
    #: saved with the data, so a block referencing this one builds this class
    block_type_slug: Literal["keyless-gcp-credentials"] = block_type_field(
        "keyless-gcp-credentials")

    @model_validator(mode="before")
    @classmethod
    def _refuse_static_credentials(cls, data: Any) -> Any:
        return refuse_static_fields(
            data, slug=cls.get_block_type_slug(), fields=STATIC_FIELDS,
            fix="the identity comes from keyless.target.gcp (workload identity federation)")

    @classmethod
    def model_json_schema(
        cls,
        by_alias: bool = True,
        ref_template: str = "#/definitions/{model}",
        schema_generator: type[GenerateJsonSchema] = GenerateJsonSchema,
        mode: Literal["validation", "serialization"] = "validation",
    ) -> dict[str, Any]:
        """The block's schema (form and stored fields) without the key fields."""
        schema: dict[str, Any] = super().model_json_schema(
            by_alias, ref_template, schema_generator, mode)
        return form_schema(schema, STATIC_FIELDS)

    @model_validator(mode="after")
    def _defaults_from_keyless(self) -> KeylessGcpCredentials:
        """Fill ``project`` (unless set) and the impersonated service account's email from
        ``keyless.target.gcp``, on construction and on load alike (no network call)."""
        target = self.keyless.keyless_config().target.gcp
        if target is not None:
            if getattr(self, "project", None) is None:  # untyped parent field
                self.project = target.project_id
            self._service_account_email = target.service_account
        return self

    def block_initialization(self) -> None:
        """Nothing: ``GcpCredentials`` resolves credentials here (ADC, a network call when no
        key is given); this block resolves them on first use, per run."""

    # ------------------------------------------------------------------ what prefect-gcp calls
    def get_credentials_from_service_account(self) -> Any:
        """The calling flow run/task run's ``google.auth`` credentials (``target.gcp``); every
        prefect-gcp client (Cloud Storage, BigQuery, Secret Manager, Vertex AI) is built on
        them."""
        return self.keyless.get_google_credentials()

    def get_access_token(self) -> str:
        """A live access token of the calling run's credentials (refreshed if it is not)."""
        from google.auth.transport.requests import Request

        credentials = self.get_credentials_from_service_account()
        if not credentials.valid:
            credentials.refresh(Request())
        return str(credentials.token)

    def get_job_service_async_client(self, client_options: Any = None) -> Any:
        """A Vertex AI Job Service async client on the calling run's credentials (not kept in
        prefect-gcp's process-wide cache, which would hand one run's identity to the next)."""
        from google.cloud.aiplatform.gapic import (  # type: ignore[import-not-found,unused-ignore]
            JobServiceAsyncClient,
        )

        return JobServiceAsyncClient(credentials=self.get_credentials_from_service_account(),
                                     client_options=client_options)
