"""The AWS test kit now lives in :mod:`keyless.testing`; this module re-exports it for the
project's tests (``from tests.support.aws import AwsStack`` keeps working) and registers the
package's fixtures (``aws_stack``, ``dev_issuer``) through tests/conftest.py's
``pytest_plugins``: one copy of each fixture, the one users get."""

from __future__ import annotations

from keyless.testing.aws import ACCOUNT_ID, DEFAULT_BUCKET, AwsStack, MotoServer
from keyless.testing.pytest_plugin import aws_stack, dev_issuer

__all__ = ["ACCOUNT_ID", "DEFAULT_BUCKET", "AwsStack", "MotoServer", "aws_stack", "dev_issuer"]
