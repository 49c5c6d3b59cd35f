"""The loopback federation the benchmarks run against: the dev OIDC issuer and moto behind
the verifying STS front (``keyless.testing``), with one role trusting the ``trainer`` client.

Started once per benchmark run (moto takes a few seconds) and shared by the sections that
need real HTTP: the keyless AWS hot path, single flight through botocore, cold start and the
training run's background refresher.
"""

from __future__ import annotations

import secrets
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from keyless.dev.issuer import DevClient, DevIssuer
from keyless.testing.aws import AwsStack

__all__ = ["AUDIENCE", "Federation"]

AUDIENCE = "sts.amazonaws.com"


@dataclass
class Federation:
    """``with Federation() as fed:`` starts the issuer and the AWS stack; ``fed.config()`` is
    a keyless config for the ``trainer`` client and the trusting role."""

    token_seconds: float = 3600.0

    def __post_init__(self) -> None:
        self.secret = secrets.token_urlsafe(24)
        self._exit = ExitStack()

    def __enter__(self) -> Federation:
        self.issuer = self._exit.enter_context(
            DevIssuer([DevClient("trainer", self.secret)], lifetime_seconds=self.token_seconds))
        self.aws = self._exit.enter_context(AwsStack())
        self.aws.register_oidc_provider(self.issuer.issuer, [AUDIENCE])
        self.role_arn = self.aws.create_role("bench-trainer", issuer_url=self.issuer.issuer,
                                             aud=AUDIENCE, sub="trainer")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._exit.close()

    def config(self, **refresh: float) -> dict[str, Any]:
        """A keyless config: client credentials at the dev issuer, AWS through the front."""
        config: dict[str, Any] = {
            "source": {"type": "client_credentials", "token_url": self.issuer.token_endpoint,
                       "client_id": "trainer", "client_secret": self.secret,
                       "audience": AUDIENCE},
            "target": {"aws": {"role_arn": self.role_arn, "region": self.aws.region,
                               "sts_endpoint_url": self.aws.sts_url,
                               "session_name": "bench-{rank}"}},
            "allow_insecure_http": True,
        }
        if refresh:
            config["refresh"] = dict(refresh)
        return config
