"""pytest fixtures for code that uses keyless: a dev OIDC issuer and AWS on this machine.

Enable in a ``conftest.py``::

    pytest_plugins = ["keyless.testing.pytest_plugin"]

- ``dev_issuer`` (session scope): a started :class:`~keyless.devissuer.DevIssuer` on
  127.0.0.1 with one client, ``dev_issuer.clients == ["trainer"]``; its secret is
  :data:`DEV_CLIENT_SECRET` (a per-session random value). ``dev_issuer.mint(sub, aud)`` signs
  tokens directly.
- ``aws_stack`` (session scope): a started :class:`~keyless.testing.aws.AwsStack` (moto with
  IAM enforced, the verifying STS front, S3 through the front). Tests that change
  ``front.max_session_seconds`` or hooks restore them (``front.reset_hooks()``); resource
  names should be unique per test.

Typical use::

    def test_read(dev_issuer, aws_stack):
        aws_stack.register_oidc_provider(dev_issuer.issuer, ["sts.amazonaws.com"])
        role = aws_stack.create_role("reader", issuer_url=dev_issuer.issuer,
                                     aud="sts.amazonaws.com", sub="trainer")
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from ..dev.issuer import DevClient, DevIssuer
from .aws import AwsStack

__all__ = ["DEV_CLIENT_ID", "DEV_CLIENT_SECRET", "aws_stack", "dev_issuer"]

DEV_CLIENT_ID = "trainer"
#: The ``trainer`` client's secret for this test session (random per session).
DEV_CLIENT_SECRET = secrets.token_urlsafe(24)


@pytest.fixture(scope="session")
def dev_issuer() -> Iterator[DevIssuer]:
    """A dev OIDC issuer on loopback for the whole session (client ``trainer``)."""
    with DevIssuer([DevClient(DEV_CLIENT_ID, DEV_CLIENT_SECRET)]) as issuer:
        yield issuer


@pytest.fixture(scope="session")
def aws_stack() -> Iterator[AwsStack]:
    """One moto + STS front per test session (IAM enforced, S3 through the front)."""
    with AwsStack() as stack:
        yield stack
