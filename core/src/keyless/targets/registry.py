"""The one registry of targets: what keyless knows about each, in one place.

Each :class:`TargetKind` says, once, for one ``target.<name>`` section: the variables that
would win over keyless in the vendor SDK's default chain (dropped from a child's environment),
the config field that narrows each worker's credentials in a way the SDK's own variables
cannot carry, and the SDK variables that point a child at the target's token file. The
subject token's audience is the spec's own (``token_audience()`` on each config class,
resolved against ``source.audience`` by :meth:`keyless.Keyless.target_audience`). Delivery,
doctor, the hosts and the Ray agent ask here; adding a target is one module and one line in
:data:`TARGETS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import KeylessError

if TYPE_CHECKING:
    from ..identity import Keyless

__all__ = ["STATIC_AWS_VARIABLES", "TARGETS", "TargetKind", "configured_kinds"]


def _aws_environment(identity: Keyless, _spec: Any, token_file: Path) -> dict[str, str]:
    exchange = identity.aws()
    env = {"AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
           "AWS_ROLE_ARN": exchange.target.role_arn,
           "AWS_ROLE_SESSION_NAME": exchange.session_name,
           "AWS_REGION": exchange.region, "AWS_DEFAULT_REGION": exchange.region}
    if exchange.sts_endpoint_url:
        env["AWS_ENDPOINT_URL_STS"] = exchange.sts_endpoint_url
    return env


def _gcp_environment(identity: Keyless, spec: Any, token_file: Path) -> dict[str, str]:
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(
        identity.gcp().write_external_account(token_file))}
    if spec.project_id:
        env["GOOGLE_CLOUD_PROJECT"] = spec.project_id
    return env


def _azure_environment(_identity: Keyless, spec: Any, token_file: Path) -> dict[str, str]:
    from .azure import azure_environment

    return azure_environment(spec, str(token_file))


def _databricks_environment(_identity: Keyless, spec: Any, token_file: Path,
                            ) -> dict[str, str]:
    from .databricks import databricks_environment

    return databricks_environment(spec, str(token_file))


def _aws_dry_run(identity: Keyless) -> str:
    from .aws import check_ranks_resolved

    context, sample = identity.context, ""
    try:
        check_ranks_resolved(identity.config.target.aws, context)  # type: ignore[arg-type]
    except KeylessError:  # a per-rank config checked from the launcher: try it as rank 0
        context = context.with_values(rank=context.rank or "0",
                                      local_rank=context.local_rank or "0")
        sample = "; rendered for rank 0, local rank 0: this process has no rank"
    exchange = identity.aws(context)
    exchange.credentials().get_frozen_credentials()
    return (f"AssumeRoleWithWebIdentity as {exchange.target.role_arn} gave credentials "
            f"(session name {exchange.session_name!r}{sample})")


def _gcp_dry_run(identity: Keyless) -> str:
    exchange = identity.gcp()
    exchange.access_token()
    return f"GCP STS gave an access token for {exchange.principal}"


def _azure_dry_run(identity: Keyless) -> str:
    identity.azure_credential().get_token("https://management.azure.com/.default")
    return "Entra ID gave an access token for the management scope"


def _databricks_dry_run(identity: Keyless) -> str:
    from .databricks import AUTH_TYPE

    config = identity.databricks_config()
    config.authenticate()
    return f"the workspace gave a token ({AUTH_TYPE} for {config.host})"


def _exchanged_dry_run(name: str) -> Callable[[Keyless], str]:
    def dry_run(identity: Keyless) -> str:
        exchange = identity.huggingface() if name == "huggingface" else identity.oauth2()
        exchange.token()
        return f"the token exchange at {exchange.token_url} gave a token"

    return dry_run


def _aws_narrowing(spec: Any) -> str | None:
    if spec.session_policy is not None:
        return "target.aws.session_policy"
    return "target.aws.policy_arns" if spec.policy_arns else None


def _gcp_narrowing(spec: Any) -> str | None:
    return "target.gcp.access_boundary" if spec.access_boundary is not None else None


def _never(_spec: Any) -> str | None:
    return None


@dataclass(frozen=True)
class TargetKind:
    """One target section's facts (see the module docstring).

    ``environment(identity, spec, token_file)`` gives the SDK variables for a child reading the
    subject token from ``token_file``; None where the child gets the target another way (the
    RFC 8693 targets' exchanged tokens are written by :mod:`keyless.targets.oauth2`).
    ``dry_run(identity)`` makes one real exchange (through the target's audited exchange) and
    says what it gave, for ``keyless doctor``; it raises the exchange's typed error.
    """

    name: str
    title: str
    shadowed: tuple[str, ...] = ()
    narrowing: Callable[[Any], str | None] = _never
    environment: Callable[[Keyless, Any, Path], dict[str, str]] | None = None
    dry_run: Callable[[Keyless], str] | None = None


#: Static-key variables: they would win over web identity in every AWS SDK's default chain.
STATIC_AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                        "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")

TARGETS: tuple[TargetKind, ...] = (
    TargetKind("aws", "AWS STS AssumeRoleWithWebIdentity", STATIC_AWS_VARIABLES,
               _aws_narrowing, _aws_environment, _aws_dry_run),
    TargetKind("gcp", "GCP workload identity federation", (), _gcp_narrowing,
               _gcp_environment, _gcp_dry_run),
    TargetKind("azure", "Azure / Entra ID workload identity federation",
               ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
                "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_USERNAME", "AZURE_PASSWORD"),
               _never, _azure_environment, _azure_dry_run),
    TargetKind("databricks", "Databricks workload identity federation",
               ("DATABRICKS_TOKEN", "DATABRICKS_CLIENT_SECRET", "DATABRICKS_PASSWORD",
                "DATABRICKS_CONFIG_PROFILE"), _never, _databricks_environment,
               _databricks_dry_run),
    TargetKind("huggingface", "Hugging Face token exchange",
               ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"),
               dry_run=_exchanged_dry_run("huggingface")),
    TargetKind("oauth2", "RFC 8693 token exchange", dry_run=_exchanged_dry_run("oauth2")),
)

def configured_kinds(identity: Keyless) -> Iterator[tuple[TargetKind, Any]]:
    """``(kind, spec)`` for each target the config has, in the registry's order."""
    for target in TARGETS:
        spec = getattr(identity.config.target, target.name)
        if spec is not None:
            yield target, spec
