"""Whole-system tests: reference IdP (oidc-provider) → keyless → verifying STS front → moto.

Every e2e test runs under :func:`leak_guard`: keyless logs at DEBUG, everything the test
printed, logged or registered (reprs, exception texts, a child's environment) is scanned at
the end for the client secrets the IdP issued and for anything shaped like a JWT.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from keyless.audit import redact
from tests.support.aws import AwsStack
from tests.support.idp import ReferenceIdP

pytestmark = pytest.mark.e2e


@dataclass
class LeakGuard:
    """Texts to scan, and values that must never appear in them. Its repr gives counts only:
    pytest prints a failing test's arguments, and this one holds the secrets."""

    secrets: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"LeakGuard({len(self.secrets)} secrets, {len(self.texts)} texts)"

    def add(self, *values: Any) -> None:
        """Register text a user could see: output, a repr, an exception, an environment."""
        self.texts.extend(v if isinstance(v, str) else repr(v) for v in values)

    def forbid(self, *values: str) -> None:
        self.secrets.extend(v for v in values if v)

    def check(self) -> None:
        everything = "\n".join(self.texts)
        for secret in self.secrets:
            assert secret not in everything, "a secret or token leaked into output"
        assert redact(everything) == everything, "something shaped like a JWT leaked"


@pytest.fixture
def leak_guard(reference_idp: ReferenceIdP, caplog: pytest.LogCaptureFixture,
               capfd: pytest.CaptureFixture[str]) -> Iterator[LeakGuard]:
    guard = LeakGuard()
    guard.forbid(*reference_idp.client_secrets.values())
    caplog.set_level(logging.DEBUG, logger="keyless")
    caplog.set_level(logging.INFO)
    yield guard
    out = capfd.readouterr()
    guard.add(out.out, out.err, caplog.text)
    guard.add(*(r.getMessage() for r in caplog.records))
    guard.check()


@pytest.fixture
def federation(reference_idp: ReferenceIdP, aws_stack: AwsStack) -> Iterator[Federation]:
    """The IdP registered as an IAM OIDC provider, a role trusting the `trainer` client, and
    a unique S3 prefix for this test."""
    aws_stack.register_oidc_provider(reference_idp.issuer, ["sts.amazonaws.com"])
    name = f"trainer-{uuid.uuid4().hex[:8]}"
    role_arn = aws_stack.create_role(name, issuer_url=reference_idp.issuer,
                                     aud="sts.amazonaws.com", sub="trainer")
    aws_stack.front.reset_hooks()
    aws_stack.front.max_session_seconds = None
    yield Federation(reference_idp, aws_stack, role_arn, prefix=f"{name}/")
    aws_stack.front.reset_hooks()
    aws_stack.front.max_session_seconds = None


@dataclass
class Federation:
    idp: ReferenceIdP
    aws: AwsStack
    role_arn: str
    prefix: str

    def trust(self, sub: str) -> str:
        """A role like the default one, trusting tokens whose sub is ``sub``; its ARN."""
        return self.aws.create_role(f"{self.prefix.rstrip('/')}-{sub}"[:64],
                                    issuer_url=self.idp.issuer, aud="sts.amazonaws.com", sub=sub)

    def config(self, client_id: str = "trainer", *, token_url: str | None = None,
               audience: str | None = None, **aws: Any) -> dict[str, Any]:
        source: dict[str, Any] = {
            "type": "client_credentials", "token_url": token_url or self.idp.token_url,
            "client_id": client_id, "client_secret": self.idp.client_secrets[client_id],
            "audience": audience or "https://sts.amazonaws.com"}
        target = {"role_arn": self.role_arn if client_id in ("trainer", "intruder")
                  else self.trust(client_id), "region": self.aws.region,
                  "sts_endpoint_url": self.aws.sts_url, **aws}
        return {"source": source, "target": {"aws": target}, "allow_insecure_http": True}

    def s3(self, session: Any) -> Any:
        from botocore.config import Config

        return session.client("s3", endpoint_url=self.aws.s3_url,
                              config=Config(s3={"addressing_style": "path"},
                                            retries={"total_max_attempts": 1}))
