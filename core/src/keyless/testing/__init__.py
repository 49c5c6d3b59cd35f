"""Test kit: AWS on this machine (moto + a verifying STS front) and pytest fixtures.

``pip install 'keyless[testing]'``. Never for production. Importing this package needs nothing
beyond keyless itself; each name is imported on first use:

- :class:`AwsStack` / :class:`MotoServer` (:mod:`keyless.testing.aws`): moto in server mode
  behind :class:`StsFront` (:mod:`keyless.testing.sts_front`), which verifies web-identity
  tokens, trust policies and session policies like AWS before moto sees them;
- :mod:`keyless.testing.local_federation`: ``python -m keyless.testing.local_federation start
  --dir DIR`` runs the dev issuer and :class:`AwsStack` in the background for quickstarts
  (docs/quickstart-ray.md, "Run it locally");
- :func:`free_ports` (:mod:`keyless.testing.ports`): distinct free loopback ports for the
  servers a test starts;
- :mod:`keyless.testing.pytest_plugin` (needs pytest): the ``aws_stack`` and ``dev_issuer``
  fixtures, with ``pytest_plugins = ["keyless.testing.pytest_plugin"]``.

The dev OIDC issuer is :class:`keyless.devissuer.DevIssuer`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .aws import ACCOUNT_ID, DEFAULT_BUCKET, AwsStack, MotoServer
    from .ports import free_ports
    from .sts_front import IssuedCredentials, StsFront
    from .sts_policy import StsError, TokenVerifier

__all__ = ["ACCOUNT_ID", "AwsStack", "DEFAULT_BUCKET", "IssuedCredentials", "MotoServer",
           "StsError", "StsFront", "TokenVerifier", "free_ports"]

_LAZY = {
    "ACCOUNT_ID": "aws", "DEFAULT_BUCKET": "aws", "AwsStack": "aws", "MotoServer": "aws",
    "IssuedCredentials": "sts_front", "StsFront": "sts_front",
    "StsError": "sts_policy", "TokenVerifier": "sts_policy", "free_ports": "ports",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
