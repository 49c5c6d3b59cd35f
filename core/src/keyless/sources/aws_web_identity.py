"""A JWT minted by AWS STS ``GetWebIdentityToken`` for this process's ambient AWS identity.

For workloads already running as an AWS principal (EC2/ECS/EKS role, Lambda) that need a JWT
for another cloud: STS signs a token for the requested audience; verifiers read AWS STS's
issuer discovery and JWKS. botocore (boto3) does the call, on the default credential chain of
this host, in ``spec.region`` (else the environment's region), against ``spec.sts_endpoint_url``
when set. The client is built lazily on first fetch (``client`` injects one: tests use
botocore's ``Stubber``); nothing is cached (the refresher owns the cache).

Errors: no ambient credentials, AccessDenied or a validation error ->
:class:`SourceMisconfigured`; throttling, 5xx, connection errors -> :class:`SourceUnavailable`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..config import AwsWebIdentityTokenSource
from ..errors import SourceMisconfigured, SourceUnavailable
from ..http import LazyClient
from ..tokens import SubjectToken

__all__ = ["AwsWebIdentityTokenSourceImpl"]

_RETRYABLE = {"Throttling", "ThrottlingException", "RequestLimitExceeded",
              "ServiceUnavailable", "InternalFailure", "InternalError"}


class AwsWebIdentityTokenSourceImpl:
    """``fetch(audience)`` calls ``sts:GetWebIdentityToken`` with ``Audience=[audience]``."""

    name = "aws_web_identity_token"

    def __init__(self, spec: AwsWebIdentityTokenSource, *,
                 environ: Mapping[str, str] | None = None,
                 client: Callable[[], Any] | None = None) -> None:
        self.spec = spec
        self._environ = environ
        self._client = LazyClient(client or self._default_client)

    def _sts(self) -> Any:
        return self._client.get()

    def _default_client(self) -> Any:
        import os

        try:
            import boto3
        except ImportError:  # pragma: no cover - depends on extras
            raise SourceMisconfigured("source aws_web_identity_token: boto3 is not installed; "
                                      "fix: pip install 'keyless[aws]'") from None
        environ = self._environ if self._environ is not None else os.environ
        region = self.spec.region or environ.get("AWS_REGION") \
            or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        kwargs: dict[str, Any] = {"region_name": region}
        if self.spec.sts_endpoint_url:
            kwargs["endpoint_url"] = self.spec.sts_endpoint_url
        return boto3.session.Session().client("sts", **kwargs)

    def fetch(self, audience: str | None) -> SubjectToken:
        """A new token for the requested ``audience``, else ``spec.audience``."""
        wanted = audience or self.spec.audience
        if not wanted:
            raise SourceMisconfigured(
                "source aws_web_identity_token: no audience; fix: set `source.audience` (the "
                "aud the receiving side expects)")
        args: dict[str, Any] = {"Audience": [wanted],
                                "SigningAlgorithm": self.spec.signing_algorithm,
                                "DurationSeconds": self.spec.duration_seconds}
        if self.spec.tags:
            args["Tags"] = [{"Key": k, "Value": v} for k, v in self.spec.tags.items()]
        try:
            reply = self._sts().get_web_identity_token(**args)
        except Exception as exc:
            raise self._translate(exc) from None
        token = reply.get("WebIdentityToken")
        if not isinstance(token, str) or not token:
            raise SourceUnavailable("source aws_web_identity_token: STS answered without a "
                                    "WebIdentityToken; fix: retry, or check the STS endpoint")
        return SubjectToken.from_jwt(token, origin="aws-sts:GetWebIdentityToken")

    def _translate(self, exc: Exception) -> Exception:
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            NoRegionError,
        )

        prefix = "source aws_web_identity_token:"
        if isinstance(exc, NoCredentialsError):
            return SourceMisconfigured(f"{prefix} no ambient AWS credentials; fix: run as an "
                                       "AWS principal (instance/task/pod role)")
        if isinstance(exc, NoRegionError):
            return SourceMisconfigured(f"{prefix} no region; fix: set `source.region`")
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if code in _RETRYABLE or status >= 500:
                return SourceUnavailable(f"{prefix} STS {code} (HTTP {status}); retried with "
                                         "backoff")
            return SourceMisconfigured(
                f"{prefix} STS refused GetWebIdentityToken ({code}); fix: allow "
                "sts:GetWebIdentityToken for this principal and enable outbound web identity "
                "federation for the account")
        if isinstance(exc, (ConnectionError, HTTPClientError)):
            return SourceUnavailable(f"{prefix} cannot reach STS ({type(exc).__name__}); "
                                     "retried with backoff")
        return SourceUnavailable(f"{prefix} {type(exc).__name__}")

    def __repr__(self) -> str:
        return (f"AwsWebIdentityTokenSourceImpl(audience={self.spec.audience!r}, "
                f"region={self.spec.region!r})")
