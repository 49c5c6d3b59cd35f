"""A JWT-SVID from the SPIFFE Workload API (a SPIRE agent's socket).

Uses the optional ``spiffe`` package (py-spiffe), imported lazily:
``WorkloadApiClient(socket_path=...).fetch_jwt_svid(audience={aud})``; the socket is
``spec.socket_path``, else ``$SPIFFE_ENDPOINT_SOCKET`` (the package's own default). The SVID's
``sub`` is the workload's SPIFFE ID. ``client`` injects a Workload API client (tests).

Errors: package missing or no audience -> :class:`SourceMisconfigured`; the agent unreachable
or refusing -> :class:`SourceUnavailable` (the refresher retries with backoff).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import SpiffeSource
from ..errors import SourceMisconfigured, SourceUnavailable
from ..http import LazyClient
from ..tokens import SubjectToken

__all__ = ["SpiffeTokenSource"]


class SpiffeTokenSource:
    """``fetch(audience)`` asks the Workload API for a JWT-SVID with that audience."""

    name = "spiffe"

    def __init__(self, spec: SpiffeSource, *, client: Callable[[], Any] | None = None) -> None:
        self.spec = spec
        self._client = LazyClient(client or self._default_client)

    def _workload_api(self) -> Any:
        return self._client.get()

    def _default_client(self) -> Any:
        try:
            from spiffe import WorkloadApiClient  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise SourceMisconfigured("source spiffe: the `spiffe` package is not installed; "
                                      "fix: pip install 'keyless[spiffe]'") from None
        try:
            return WorkloadApiClient(socket_path=self.spec.socket_path)
        except Exception as exc:  # the package validates the socket address here
            raise SourceMisconfigured(
                f"source spiffe: bad Workload API socket {self.spec.socket_path!r} "
                f"({type(exc).__name__}); fix: set `socket_path` (unix:///path/agent.sock) or "
                "$SPIFFE_ENDPOINT_SOCKET") from None

    def fetch(self, audience: str | None) -> SubjectToken:
        """A JWT-SVID for the requested ``audience``, else ``spec.audience``."""
        wanted = audience or self.spec.audience
        if not wanted:
            raise SourceMisconfigured("source spiffe: no audience; fix: set `source.audience`")
        client = self._workload_api()
        try:
            svid = client.fetch_jwt_svid(audience={wanted})
        except Exception as exc:  # the package's errors may carry anything: type name only
            raise SourceUnavailable(
                f"source spiffe: the Workload API did not issue a JWT-SVID for {wanted!r} "
                f"({type(exc).__name__}); fix: check the SPIRE agent is running and this "
                "workload has a registration entry") from None
        token = getattr(svid, "token", None)
        if not isinstance(token, str) or not token:
            raise SourceUnavailable("source spiffe: the Workload API answered without a token")
        return SubjectToken.from_jwt(token, origin="spiffe")

    def __repr__(self) -> str:
        return f"SpiffeTokenSource(socket_path={self.spec.socket_path!r})"
