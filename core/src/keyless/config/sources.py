"""The ``source:`` specs: one class per way of getting a subject token, told apart by
``type``; :data:`SOURCE_TYPES` is the one list of types."""

from __future__ import annotations

from typing import Annotated, Literal, Union, get_args

from pydantic import Field, SecretStr, model_validator

from .base import _FieldProblem, _Spec

__all__ = ["SOURCE_SPECS", "SOURCE_TYPES", "AmbientSource", "AwsWebIdentityTokenSource",
           "ClientCredentialsSource", "CommandSource", "EnvSource", "FileSource",
           "GcpMetadataSource", "GithubActionsSource", "GitlabSource", "SourceSpec",
           "SpiffeSource", "TokenExchangeSource"]


# ----------------------------------------------------------------------------- sources

_REQUESTED_AUD = ("The aud to ask for, for every target that does not set its own (a target's "
                  "audience / subject_audience wins for that target); default: each target's.")


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
    audience: str | None = Field(default=None, description=_REQUESTED_AUD)


class GitlabSource(_Spec):
    """A GitLab CI `id_tokens:` variable."""

    type: Literal["gitlab"] = "gitlab"
    variable: str = Field(default="KEYLESS_ID_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                          description="The `id_tokens:` entry's variable name.")
    audience: str | None = None


class GcpMetadataSource(_Spec):
    """The GCE/GKE metadata server's identity endpoint."""

    type: Literal["gcp_metadata"] = "gcp_metadata"
    audience: str | None = Field(default=None, description=_REQUESTED_AUD)
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
    audience: str | None = Field(default=None, description=_REQUESTED_AUD)
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


#: Every source spec class, in the union's order: the one registry of sources. The schema,
#: every "allowed types" message and the Prefect block's unions are derived from it; the
#: factory has a builder for each (tests/core/test_registry.py checks it).
SOURCE_SPECS: tuple[type[_Spec], ...] = get_args(get_args(SourceSpec)[0])
#: Every source ``type``, in the same order.
SOURCE_TYPES: tuple[str, ...] = tuple(
    get_args(spec.model_fields["type"].annotation)[0] for spec in SOURCE_SPECS)
