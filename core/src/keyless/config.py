"""The one configuration schema every host uses (Airflow extra, Prefect block, Ray runtime_env,
``keyless --config FILE``).

Field names are a contract shared with checks outside this repository: add fields, rename none.
:func:`load_config` turns a mapping, a JSON/YAML string or a file into :class:`KeylessConfig`,
or raises :class:`~keyless.errors.ConfigError` naming the field path at fault and what is allowed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args
from urllib.parse import urlsplit

import pydantic
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .context import TEMPLATE_FIELDS, check_json_template, check_template
from .errors import ConfigError
from .loopback import is_loopback

__all__ = [
    "AmbientSource",
    "AuditSpec",
    "AwsTarget",
    "AzureTarget",
    "ClientCredentialsSource",
    "CommandSource",
    "DatabricksTarget",
    "DeliverySpec",
    "EnvSource",
    "FileSource",
    "GcpMetadataSource",
    "GcpTarget",
    "GithubActionsSource",
    "GitlabSource",
    "HuggingFaceTarget",
    "KeylessConfig",
    "OAuth2Target",
    "RefreshSpec",
    "SourceSpec",
    "SpiffeSource",
    "AwsWebIdentityTokenSource",
    "TargetsSpec",
    "TokenExchangeSource",
    "config_json_schema",
    "load_config",
]


def url_origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (the Hub URL a Hugging Face subject token names)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class _FieldProblem(ValueError):
    """Raised inside validators: ``path`` is relative to the model being validated, so a
    model-level check can still name the exact field (pydantic would only name the model).
    A ValueError, so pydantic wraps it and :func:`load_config` turns it into a ConfigError."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def _check_template_at(template: str | dict[str, Any], path: str, *,
                       json_document: bool = False) -> None:
    try:
        if json_document:
            check_json_template(template, path)
        else:
            check_template(str(template), path)
    except ConfigError as exc:
        where = exc.field or path
        raise _FieldProblem(where, exc.message.removeprefix(f"config: {where}: ")) from None
    except RecursionError:
        raise _FieldProblem(path, "nested too deeply; fix: flatten the document") from None


# ----------------------------------------------------------------------------- sources

class FileSource(_Spec):
    """A JWT in a file (Kubernetes projected service-account token, AKS, EKS). Re-read on
    every fetch: kubelet rotates it in place."""

    type: Literal["file"] = "file"
    path: str = Field(min_length=1, description="Path of the token file.")
    audience: str | None = Field(default=None, description="Informational: the file's aud.")


class EnvSource(_Spec):
    """A JWT in an environment variable set by the platform (never by keyless)."""

    type: Literal["env"] = "env"
    variable: str = Field(default="KEYLESS_OIDC_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                          description="Name of the variable holding the JWT.")
    audience: str | None = None


class GithubActionsSource(_Spec):
    """GitHub Actions' OIDC token (needs `permissions: id-token: write`)."""

    type: Literal["github_actions"] = "github_actions"
    audience: str | None = Field(default=None, description="Requested aud.")


class GitlabSource(_Spec):
    """A GitLab CI `id_tokens:` variable."""

    type: Literal["gitlab"] = "gitlab"
    variable: str = Field(default="KEYLESS_ID_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                          description="The `id_tokens:` entry's variable name.")
    audience: str | None = None


class GcpMetadataSource(_Spec):
    """The GCE/GKE metadata server's identity endpoint."""

    type: Literal["gcp_metadata"] = "gcp_metadata"
    audience: str | None = Field(default=None, description="Requested aud.")
    metadata_host: str | None = Field(
        default=None, description="Defaults to $GCE_METADATA_HOST or metadata.google.internal.")


class ClientCredentialsSource(_Spec):
    """An OAuth 2.0 client-credentials grant at the IdP; the access or ID token must be a JWT."""

    type: Literal["client_credentials"] = "client_credentials"
    token_url: str | None = Field(default=None, description="Token endpoint; or give issuer.")
    issuer: str | None = Field(default=None, description="Issuer: token endpoint by discovery.")
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = Field(default=None, json_schema_extra={"secret": True})
    private_key: SecretStr | None = Field(
        default=None, description="PEM private key for private_key_jwt (RFC 7523).",
        json_schema_extra={"secret": True})
    key_id: str | None = Field(default=None, description="kid header of the client assertion.")
    signing_algorithm: Literal["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"] = "RS256"
    auth_method: Literal["client_secret_basic", "client_secret_post", "private_key_jwt"] | None = (
        Field(default=None, description="Default: private_key_jwt with a private_key, "
                                        "client_secret_basic otherwise."))
    scope: str | None = None
    resource: str | None = Field(default=None, description="RFC 8707 resource; default audience.")
    audience: str | None = Field(default=None, description="Requested aud.")
    audience_parameter: Literal["resource", "audience"] = Field(
        default="resource", description="How the IdP takes the requested aud.")

    @model_validator(mode="after")
    def _check_credentials(self) -> ClientCredentialsSource:
        if not self.token_url and not self.issuer:
            raise _FieldProblem("token_url", "give token_url or issuer")
        method = self.auth_method
        if method == "private_key_jwt" and self.private_key is None:
            raise _FieldProblem("private_key", "auth_method private_key_jwt needs private_key")
        if method in ("client_secret_basic", "client_secret_post") and self.client_secret is None:
            raise _FieldProblem("client_secret", f"auth_method {method} needs client_secret")
        if method is None and self.client_secret is None and self.private_key is None:
            raise _FieldProblem("client_secret", "give client_secret or private_key "
                                "(private_key_jwt); fix: add one of them")
        return self


class CommandSource(_Spec):
    """A command that prints a JWT (or JSON with `id_token`/`access_token`/`token`)."""

    type: Literal["command"] = "command"
    command: list[str] = Field(min_length=1, description="argv; no shell.")
    timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    audience: str | None = Field(
        default=None, description="Passed to the command as $KEYLESS_AUDIENCE.")


class AmbientSource(_Spec):
    """The first source that applies here: explicit env, Kubernetes/AKS token files,
    GitHub Actions, GitLab, GCP metadata."""

    type: Literal["ambient"] = "ambient"
    audience: str | None = None


class TokenExchangeSource(_Spec):
    """RFC 8693: exchange the token of a nested `subject` source (and optional `actor`)."""

    type: Literal["token_exchange"] = "token_exchange"
    subject: SourceSpec
    actor: SourceSpec | None = None
    token_url: str = Field(min_length=1)
    audience: str | None = None
    resource: str | None = None
    scope: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = Field(default=None, json_schema_extra={"secret": True})
    subject_token_type: str = "urn:ietf:params:oauth:token-type:jwt"
    actor_token_type: str = "urn:ietf:params:oauth:token-type:jwt"
    requested_token_type: str = "urn:ietf:params:oauth:token-type:jwt"


class SpiffeSource(_Spec):
    """A JWT-SVID from the SPIFFE Workload API (SPIRE agent), via the optional `spiffe`
    package."""

    type: Literal["spiffe"] = "spiffe"
    socket_path: str | None = Field(
        default=None, description="Workload API socket, e.g. unix:///run/spire/agent.sock "
                                  "(default: $SPIFFE_ENDPOINT_SOCKET).")
    audience: str | None = None


class AwsWebIdentityTokenSource(_Spec):
    """A JWT signed by AWS STS GetWebIdentityToken for this host's ambient AWS identity."""

    type: Literal["aws_web_identity_token"] = "aws_web_identity_token"
    audience: str | None = None
    signing_algorithm: Literal["RS256", "ES384"] = "RS256"
    duration_seconds: int = Field(default=300, ge=60, le=3600)
    region: str | None = None
    sts_endpoint_url: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


SourceSpec = Annotated[
    Union[
        FileSource, EnvSource, GithubActionsSource, GitlabSource, GcpMetadataSource,
        ClientCredentialsSource, TokenExchangeSource, CommandSource, AmbientSource,
        SpiffeSource, AwsWebIdentityTokenSource,
    ],
    Field(discriminator="type"),
]
TokenExchangeSource.model_rebuild()

# ----------------------------------------------------------------------------- targets

_ROLE_ARN = re.compile(r"^arn:aws[a-zA-Z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_POLICY_ARN = re.compile(r"^arn:aws[a-zA-Z-]*:iam::(\d{12}|aws):policy/[\w+=,.@/-]{1,512}$")


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
        it (else ``source.audience``, when given, is requested instead)."""
        return self.audience, "audience" in self.model_fields_set

    @field_validator("role_arn")
    @classmethod
    def _check_role_arn(cls, value: str) -> str:
        if not _ROLE_ARN.match(value):
            raise ValueError("must look like arn:aws:iam::123456789012:role/NAME")
        return value

    @field_validator("policy_arns")
    @classmethod
    def _check_policy_arns(cls, value: list[str]) -> list[str]:
        for index, arn in enumerate(value):
            if not _POLICY_ARN.match(arn):
                raise _FieldProblem(str(index), "must look like arn:aws:iam::aws:policy/NAME")
        return value

    @model_validator(mode="after")
    def _check_templates(self) -> AwsTarget:
        _check_template_at(self.session_name, "session_name")
        if self.session_policy is not None:  # templates in JSON string values (context.py)
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
        """The subject token's aud, and whether this target's config sets it."""
        return self.audience, "audience" in self.model_fields_set


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


# ----------------------------------------------------------------------------- the rest

class RefreshSpec(_Spec):
    """When and how tokens and credentials are refreshed."""

    at_fraction: float = Field(default=0.5, gt=0.0, lt=1.0,
                               description="Refresh after this fraction of the lifetime.")
    jitter_fraction: float = Field(default=0.1, ge=0.0, le=0.5,
                                   description="± this fraction of the lifetime, at random.")
    max_backoff_seconds: float = Field(default=60.0, gt=0.0, le=3600.0)
    initial_backoff_seconds: float = Field(default=1.0, gt=0.0, le=600.0)
    first_refresh_spread: float = Field(
        default=0.25, ge=0.0, le=0.5,
        description="The first refresh (no previous value) is drawn from at_fraction ± this "
                    "fraction of the lifetime, so a fleet that started together spreads out "
                    "(not with jitter_fraction 0: a deterministic schedule).")
    keep_phase: bool = Field(
        default=False,
        description="Refresh every value after the first at exactly at_fraction of its "
                    "lifetime, so each refresher keeps the random phase its first value drew "
                    "(jitter_fraction then only widens that first window); the first value "
                    "after a failed refresh draws a new phase, so a fleet that recovered from "
                    "an outage together spreads out again. The lowest peak load for a large "
                    "fleet with equal lifetimes (see benchmarks/ 3).")


def _default_sinks() -> list[Literal["log", "jsonl", "mlflow", "otel"]]:
    return ["log"]


class AuditSpec(_Spec):
    """Where audit events go."""

    sinks: list[Literal["log", "jsonl", "mlflow", "otel"]] = Field(
        default_factory=lambda: _default_sinks(),
        description="log: JSON lines on the keyless.audit logger; jsonl: a file; mlflow: tags "
                    "and an identity-timeline artifact on an MLflow run (keyless[mlflow]); otel: "
                    "span events and metrics through OpenTelemetry (keyless[otel]).")
    jsonl_path: str | None = None
    jsonl_max_bytes: int | None = Field(
        default=None, ge=1024, description="Rotate the jsonl file past this size (FILE.1 ...).")
    jsonl_backups: int = Field(default=5, ge=1, le=100,
                               description="How many rotated jsonl files to keep.")
    mlflow_run_id: str | None = Field(
        default=None, description="The MLflow run to write to (default: MLFLOW_RUN_ID, else "
                                  "the active run).")
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI (default: MLflow's own resolution, "
                                  "MLFLOW_TRACKING_URI).")

    @model_validator(mode="after")
    def _jsonl_needs_path(self) -> AuditSpec:
        if "jsonl" in self.sinks and not self.jsonl_path:
            raise _FieldProblem("jsonl_path", "the jsonl sink needs jsonl_path; "
                                "fix: set audit.jsonl_path to a file path")
        return self


class DeliverySpec(_Spec):
    """Token files for unmodified code and subprocesses."""

    token_dir: str | None = Field(
        default=None, description="0700 directory for token files (default: a private temp dir).")


class KeylessConfig(_Spec):
    """The whole keyless configuration."""

    source: SourceSpec = Field(default_factory=AmbientSource)
    target: TargetsSpec
    refresh: RefreshSpec = Field(default_factory=RefreshSpec)
    audit: AuditSpec = Field(default_factory=AuditSpec)
    delivery: DeliverySpec = Field(default_factory=DeliverySpec)
    allow_insecure_http: bool = Field(
        default=False, description="Allow http:// URLs, and only to loopback addresses.")

    @model_validator(mode="after")
    def _check_urls(self) -> KeylessConfig:
        for path, url in _urls(self):
            _check_url(path, url, self.allow_insecure_http)
        return self

    @model_validator(mode="after")
    def _check_audiences(self) -> KeylessConfig:
        """``source.audience`` is requested for every target that does not set its own; it
        cannot serve two such targets that need different audiences."""
        if not self.source.audience:
            return self
        defaults = {name: spec.token_audience()[0]
                    for name, spec in self.target.configured().items()
                    if not spec.token_audience()[1]}
        if len(set(defaults.values())) > 1:
            needs = ", ".join(f"target.{name} needs {aud!r}" for name, aud in defaults.items())
            fields = " and ".join(f"target.{name}.{_AUDIENCE_FIELD[name]}" for name in defaults)
            raise _FieldProblem("source.audience", (
                f"{self.source.audience!r} would be requested for every target, but {needs}; "
                f"fix: remove source.audience, or set {fields} (each target then gets a token "
                "for its own audience)"))
        return self


#: The field that sets a target's subject-token audience (see each spec's token_audience).
_AUDIENCE_FIELD = {"aws": "audience", "gcp": "subject_audience", "azure": "audience",
                   "databricks": "audience", "huggingface": "audience",
                   "oauth2": "subject_audience"}


_URL_FIELDS = frozenset({"token_url", "issuer", "sts_endpoint_url", "impersonation_url",
                         "authority_host", "host"})


def _urls(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, str]]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        path = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            yield from _urls(value, path + ".")
        elif name in _URL_FIELDS and isinstance(value, str):
            yield path, value


def _check_url(path: str, url: str, allow_insecure_http: bool) -> None:
    try:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        host = parts.hostname
    except ValueError:  # e.g. an invalid IPv6 literal
        raise _FieldProblem(path, "not a valid URL; fix: give an https:// URL") from None
    shown = f"{parts.scheme}://{host}" if host else "the URL"  # never userinfo: may be a secret
    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and host:
        if is_loopback(host) and allow_insecure_http:
            return
        if is_loopback(host):
            raise _FieldProblem(path, f"{shown}: http:// is allowed only for loopback addresses "
                                "and only with allow_insecure_http: true; fix: use https:// "
                                "or set allow_insecure_http: true for a local test")
        raise _FieldProblem(path, f"{shown}: http:// is allowed only for loopback addresses "
                            "(even with allow_insecure_http); fix: use https://")
    raise _FieldProblem(path, f"{shown} is not an https:// URL; fix: use https://")


# ----------------------------------------------------------------------------- loading

def _locate(error: Mapping[str, Any]) -> tuple[str, str]:
    """The dotted field path and the problem of one pydantic error."""
    parts = [str(part) for part in error.get("loc", ()) if not _is_union_tag(part)]
    msg = str(error.get("msg", "invalid"))
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _FieldProblem):
        parts.append(cause.path)
        msg = cause.problem
    elif error.get("type") == "value_error":
        msg = msg.removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        msg = "unknown field; remove it or check its spelling against `keyless schema`"
    elif error.get("type") == "union_tag_invalid":
        parts.append("type")
        msg = "unknown source type; allowed: " + ", ".join(_SOURCE_TYPES)
    elif error.get("type") == "union_tag_not_found":
        parts.append("type")
        msg = "missing; fix: give `type`, one of " + ", ".join(_SOURCE_TYPES)
    elif error.get("type") == "missing":
        msg = "missing; fix: add it (`keyless schema` describes every field)"
    elif error.get("type") != "value_error" and "fix" not in msg:  # pydantic's own words
        msg += "; fix: set it as `keyless schema` describes"
    return ".".join(parts), msg


def _describe(error: Mapping[str, Any]) -> str:
    loc, msg = _locate(error)
    return f"{loc or '(top level)'}: {msg}"


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and (part in _SOURCE_TYPES or part.startswith("function-"))


#: Every source ``type``, in the union's order: the one list the schema, the factory and every
#: "allowed types" message come from.
SOURCE_TYPES: tuple[str, ...] = tuple(
    get_args(spec.model_fields["type"].annotation)[0]
    for spec in get_args(get_args(SourceSpec)[0]))
_SOURCE_TYPES = SOURCE_TYPES


def _validation_error(exc: pydantic.ValidationError) -> ConfigError:
    errors = exc.errors(include_input=False, include_url=False)
    lines = [_describe(e) for e in errors]
    field = (_locate(errors[0])[0] or None) if errors else None
    return ConfigError("config: " + "; ".join(lines), field=field)


def load_config(value: KeylessConfig | Mapping[str, Any] | str | Path) -> KeylessConfig:
    """Validate a config from a model, a mapping, a JSON/YAML document or a file path.

    A ``str`` that names an existing file is read as a file; any other ``str`` is parsed as
    JSON or YAML. Raises :class:`ConfigError` naming the field path at fault.
    """
    if isinstance(value, KeylessConfig):
        return value
    if isinstance(value, Path) or (isinstance(value, str) and _looks_like_path(value)):
        path = Path(value)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config: cannot read {str(path)!r}: {exc.__class__.__name__}; "
                              "fix: pass a readable YAML or JSON file") from None
        value = text
    if isinstance(value, str):
        value = _parse_document(value)
    if not isinstance(value, Mapping):
        raise ConfigError("config: the document must be a mapping with `source` and `target`")
    try:
        return KeylessConfig.model_validate(dict(value))
    except pydantic.ValidationError as exc:
        raise _validation_error(exc) from None
    except ValueError as exc:  # a validator raising outside pydantic's wrapping
        raise ConfigError(f"config: {exc}") from None
    except RecursionError:
        raise ConfigError("config: the document is nested too deeply; fix: flatten it") from None


def _looks_like_path(text: str) -> bool:
    if "\n" in text or text.lstrip().startswith(("{", "[")) or len(text) > 4096:
        return False
    if text.strip().lower().endswith((".yaml", ".yml", ".json")):
        return True  # a file name, even a missing one: reading it names the file
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def _parse_document(text: str) -> Any:
    import yaml

    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # ValueError: also ints over the digit limit
        pass
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config: not valid YAML or JSON{where}; fix the document's syntax") \
            from None


def config_json_schema() -> dict[str, Any]:
    """The JSON schema every host uses (Airflow conn-fields, Ray, Prefect, `keyless schema`)."""
    return KeylessConfig.model_json_schema()
