"""The ``target:`` specs: one class per target, each declaring the subject-token audience it
needs (``token_audience``); :class:`TargetsSpec` holds one or more."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from ..context import TEMPLATE_FIELDS
from .base import _check_template_at, _FieldProblem, _Spec, url_origin

__all__ = ["AwsTarget", "AzureTarget", "DatabricksTarget", "GcpTarget", "HuggingFaceTarget",
           "OAuth2Target", "TargetsSpec"]


# ----------------------------------------------------------------------------- targets

_ROLE_ARN = re.compile(r"arn:aws[a-zA-Z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_POLICY_ARN = re.compile(r"arn:aws[a-zA-Z-]*:iam::(\d{12}|aws):policy/[\w+=,.@/-]{1,512}")
#: AWS's limit on an inline session policy (plain text, whitespace removed; AWS also packs it
#: with the policy ARNs and tags, and refuses past 100 % of its packed size).
SESSION_POLICY_MAX = 2048


def _default(spec: type[_Spec], field: str) -> Any:
    """A spec field's default value."""
    return spec.model_fields[field].default


def _check_session_policy(policy: str | dict[str, Any]) -> None:
    """A session policy is a JSON object within AWS's size limit (before templates are
    filled: a rank or a job id adds a few characters, which STS then judges)."""
    if isinstance(policy, str):
        try:
            document = json.loads(policy)
        except ValueError:
            raise _FieldProblem("session_policy", "not JSON; fix: give the policy document "
                                "as a JSON object (or as a mapping in YAML)") from None
        if not isinstance(document, dict):
            raise _FieldProblem("session_policy", "not a JSON object; fix: give a policy "
                                "document ({\"Version\": ..., \"Statement\": [...]})")
    else:
        document = policy
    size = len(json.dumps(document, separators=(",", ":")))
    if size > SESSION_POLICY_MAX:
        raise _FieldProblem("session_policy", f"{size} characters, over AWS's limit of "
                            f"{SESSION_POLICY_MAX} for an inline session policy; fix: move "
                            "statements into a managed policy (policy_arns) or narrow it")


class AwsTarget(_Spec):
    """AWS STS AssumeRoleWithWebIdentity."""

    role_arn: str = Field(description="arn:aws:iam::<account>:role/<name>")
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")
    duration_seconds: int = Field(default=3600, ge=900, le=43200)
    session_name: str = Field(
        default="keyless-{job_id}-{task_id}-{rank}-{host}-{pid}",
        description="Template over " + " ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
                    + "; sanitised to STS's 2-64 chars of [\\w+=,.@-] (a longer name keeps "
                      "the rank, node and pid whole and ends in a hash of the full name). "
                      "{rank}/{local_rank} written here need a worker with a rank.")
    session_policy: str | dict[str, Any] | None = Field(
        default=None, description="Inline session policy (JSON); a template over the context.")
    policy_arns: list[str] = Field(default_factory=list)
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="Tags for the record (templates), written on each exchange's audit event. "
                    "AssumeRoleWithWebIdentity takes no Tags parameter: AWS reads session tags "
                    "(for ABAC) only from the token's https://aws.amazon.com/tags claim, which "
                    "your IdP must issue.")
    sts_endpoint_url: str | None = Field(
        default=None, description="Default: $AWS_ENDPOINT_URL_STS, else the regional endpoint.")
    audience: str = Field(default="sts.amazonaws.com",
                          description="aud requested for the subject token.")

    def token_audience(self) -> tuple[str, bool]:
        """The subject token's aud for this target, and whether this target's own config sets
        one other than the default (else ``source.audience``, when given, is requested
        instead). By value, not by "was the field given": hosts store whole models (a Prefect
        block saves every default), and the default written out is still the default."""
        return self.audience, self.audience != _default(type(self), "audience")

    @field_validator("role_arn")
    @classmethod
    def _check_role_arn(cls, value: str) -> str:
        if not _ROLE_ARN.fullmatch(value):  # fullmatch: "$" would let a trailing newline in
            raise ValueError("must look like arn:aws:iam::123456789012:role/NAME")
        return value

    @field_validator("policy_arns")
    @classmethod
    def _check_policy_arns(cls, value: list[str]) -> list[str]:
        for index, arn in enumerate(value):
            if not _POLICY_ARN.fullmatch(arn):
                raise _FieldProblem(str(index), "must look like arn:aws:iam::aws:policy/NAME")
        return value

    @model_validator(mode="after")
    def _check_templates(self) -> AwsTarget:
        _check_template_at(self.session_name, "session_name")
        if self.session_policy is not None:  # templates in JSON string values (context.py)
            _check_session_policy(self.session_policy)
            _check_template_at(self.session_policy, "session_policy", json_document=True)
        for key, value in self.tags.items():
            _check_template_at(value, f"tags.{key}")
        return self


class GcpTarget(_Spec):
    """GCP workload identity federation (STS), optional impersonation and access boundary."""

    audience: str = Field(description="//iam.googleapis.com/projects/N/locations/global/"
                                      "workloadIdentityPools/POOL/providers/PROVIDER")
    service_account: str | None = None
    token_lifetime_seconds: int = Field(default=3600, ge=600, le=43200)
    scopes: list[str] = Field(
        default_factory=lambda: ["https://www.googleapis.com/auth/cloud-platform"])
    access_boundary: str | dict[str, Any] | None = None
    token_url: str = "https://sts.googleapis.com/v1/token"
    impersonation_url: str | None = None
    subject_audience: str | None = Field(
        default=None, description="aud requested for the subject token (default: 'https:' + "
                                  "audience, GCP's default allowed audience).")
    project_id: str | None = Field(
        default=None, description="Exported as GOOGLE_CLOUD_PROJECT to subprocesses.")

    @property
    def requested_audience(self) -> str:
        """The subject token's aud: subject_audience, else 'https:' + audience (GCP's default
        allowed audience is the provider's full resource name)."""
        if self.subject_audience:
            return self.subject_audience
        return "https:" + self.audience if self.audience.startswith("//") else self.audience

    def token_audience(self) -> tuple[str, bool]:
        """The subject token's aud (:attr:`requested_audience`), and whether
        ``subject_audience`` sets it."""
        return self.requested_audience, self.subject_audience is not None

    @model_validator(mode="after")
    def _check_access_boundary(self) -> GcpTarget:
        if self.access_boundary is not None:
            _check_template_at(self.access_boundary, "access_boundary", json_document=True)
        return self


class AzureTarget(_Spec):
    """Azure / Entra ID workload identity federation."""

    tenant_id: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    authority_host: str | None = None
    audience: str = "api://AzureADTokenExchange"

    def token_audience(self) -> tuple[str, bool]:
        """The subject token's aud, and whether this target's config sets one other than the
        default (see :meth:`AwsTarget.token_audience`)."""
        return self.audience, self.audience != _default(type(self), "audience")


class DatabricksTarget(_Spec):
    """Databricks workload identity federation."""

    host: str = Field(min_length=1)
    client_id: str | None = None
    audience: str | None = None

    def token_audience(self) -> tuple[str, bool]:
        """The subject token's aud (``audience``, else the workspace token endpoint
        ``{host}/oidc/v1/token``, what the SDK's own OIDC flows request), and whether
        ``audience`` sets it."""
        host = self.host.rstrip("/")
        host = host if "://" in host else f"https://{host}"
        return self.audience or f"{host}/oidc/v1/token", self.audience is not None


class HuggingFaceTarget(_Spec):
    """Hugging Face token exchange (RFC 8693)."""

    resource: str = Field(min_length=1, description="A user, org or repo.")
    token_url: str = "https://huggingface.co/oauth/token"
    audience: str | None = None

    def token_audience(self) -> tuple[str, bool]:
        """The subject token's aud (``audience``, else the origin of ``token_url``: the Hub),
        and whether ``audience`` sets it."""
        return self.audience or url_origin(self.token_url), self.audience is not None


class OAuth2Target(_Spec):
    """Any RFC 8693 token-exchange server."""

    token_url: str = Field(min_length=1)
    audience: str | None = None
    resource: str | None = None
    scope: str | None = None
    subject_audience: str | None = Field(
        default=None, description="aud requested for the subject token "
                                  "(default: audience, else token_url).")
    subject_token_type: str = "urn:ietf:params:oauth:token-type:jwt"
    requested_token_type: str | None = None

    def token_audience(self) -> tuple[str, bool]:
        """The subject token's aud (``subject_audience``, else ``audience``, else
        ``token_url``), and whether one of the first two sets it."""
        explicit = self.subject_audience or self.audience
        return explicit or self.token_url, explicit is not None


class TargetsSpec(_Spec):
    """One or more targets."""

    aws: AwsTarget | None = None
    gcp: GcpTarget | None = None
    azure: AzureTarget | None = None
    databricks: DatabricksTarget | None = None
    huggingface: HuggingFaceTarget | None = None
    oauth2: OAuth2Target | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> TargetsSpec:
        if not any(getattr(self, name) is not None for name in type(self).model_fields):
            raise ValueError("give at least one target: " + ", ".join(type(self).model_fields))
        return self

    def configured(self) -> dict[str, AwsTarget | GcpTarget | AzureTarget | DatabricksTarget
                                 | HuggingFaceTarget | OAuth2Target]:
        """Name -> spec of each configured target, in this class's field order."""
        return {name: spec for name in type(self).model_fields
                if (spec := getattr(self, name)) is not None}



#: The field that sets a target's subject-token audience (see each spec's token_audience).
_AUDIENCE_FIELD = {"aws": "audience", "gcp": "subject_audience", "azure": "audience",
                   "databricks": "audience", "huggingface": "audience",
                   "oauth2": "subject_audience"}
