"""Re-exports :mod:`keyless.testing.sts_front` (the verifying STS front moved there)."""

from __future__ import annotations

from keyless.testing.sts_front import (
    BOOTSTRAP_SID,
    IssuedCredentials,
    StsError,
    StsFront,
    TokenVerifier,
    error_reply,
    session_role_policy,
    trust_allows,
)

__all__ = ["BOOTSTRAP_SID", "IssuedCredentials", "StsError", "StsFront", "TokenVerifier",
           "error_reply", "session_role_policy", "trust_allows"]
