"""Builders shared by the benchmarks: a minted subject-token file, keyless identities on it,
keyless's GCP credentials and google-auth's own ``identity_pool`` credentials on fake STSs."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from keyless import Keyless
from keyless.config import GcpTarget
from keyless.dev.issuer import DevIssuer
from keyless.targets.gcp import GcpExchange

__all__ = ["GCP_AUDIENCE", "google_identity_pool", "keyless_gcp", "token_file_identity"]

GCP_AUDIENCE = ("//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/"
                "bench/providers/bench")


def token_file_identity(issuer: DevIssuer, lifetime: float = 3600.0) -> tuple[Keyless, Path]:
    """A keyless identity whose source is a token file holding a JWT minted by ``issuer``."""
    directory = Path(tempfile.mkdtemp(prefix="keyless-bench-"))
    path = directory / "token"
    path.write_text(issuer.mint("trainer", ["sts.amazonaws.com", "https:" + GCP_AUDIENCE],
                                   lifetime=lifetime))
    path.chmod(0o600)
    identity = Keyless({"source": {"type": "file", "path": str(path)},
                        "target": {"gcp": {"audience": GCP_AUDIENCE}}})
    return identity, path


def keyless_gcp(identity: Keyless, request: Any) -> tuple[GcpExchange, Any]:
    """keyless's GCP exchange on ``identity`` with the google-auth transport ``request``;
    returns the exchange and its google-auth credentials."""
    target = identity.config.target.gcp
    assert isinstance(target, GcpTarget)
    exchange = GcpExchange(target, tokens=identity.subject_token, source_name="file",
                           context=identity.context, policy=identity.policy,
                           audit=identity.audit, environ={}, request=request)
    return exchange, exchange.credentials()


def google_identity_pool(supplier: Any) -> Any:
    """google-auth's ``identity_pool.Credentials`` on a programmatic supplier (no keyless)."""
    from google.auth import identity_pool

    class Supplier(identity_pool.SubjectTokenSupplier):
        def get_subject_token(self, context: Any, request: Any) -> str:
            return str(supplier.get_subject_token(context, request))

    return identity_pool.Credentials(  # type: ignore[no-untyped-call]
        audience=GCP_AUDIENCE, subject_token_type="urn:ietf:params:oauth:token-type:jwt",
        token_url="https://sts.googleapis.com/v1/token", subject_token_supplier=Supplier(),
        scopes=["https://www.googleapis.com/auth/cloud-platform"])
