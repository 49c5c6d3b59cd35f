"""The GCE/GKE metadata server's identity endpoint.

GET ``http://{host}/computeMetadata/v1/instance/service-accounts/default/identity
?audience=...&format=full`` with ``Metadata-Flavor: Google``; the answer's body is the JWT.
Host: ``spec.metadata_host``, else ``$GCE_METADATA_HOST``, else ``metadata.google.internal``.

Audience precedence: the caller's audience wins (keyless asks for each target's own,
which is ``source.audience`` where the target names none: ``Keyless.target_audience``),
else ``spec.audience``; one of them
is required (:class:`SourceMisconfigured` otherwise).

With ``detect=True`` (ambient detection) a quick probe (``probe_timeout`` seconds) runs first:
no answer, or an answer without ``Metadata-Flavor: Google``, means "not on GCP" -> ``None``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlencode

import httpx

from ..config import GcpMetadataSource
from ..errors import SourceMisconfigured
from ..http import raise_for_status, send
from ..tokens import SubjectToken
from .base import HttpClientFactory, default_http_client

__all__ = ["DEFAULT_METADATA_HOST", "GcpMetadataTokenSource"]

DEFAULT_METADATA_HOST = "metadata.google.internal"
_COMPONENT = "source gcp_metadata"
_HEADERS = {"Metadata-Flavor": "Google"}
_IDENTITY_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"


class GcpMetadataTokenSource:
    """Asks the metadata server for an ID token for the audience on every fetch."""

    name = "gcp_metadata"

    def __init__(self, spec: GcpMetadataSource | None = None, *,
                 http: HttpClientFactory = default_http_client,
                 environ: Mapping[str, str] | None = None, detect: bool = False,
                 probe_timeout: float = 1.0) -> None:
        self.spec = spec if spec is not None else GcpMetadataSource()
        self._http = http
        self._environ = environ
        self.detect = detect
        self.probe_timeout = probe_timeout

    def host(self) -> str:
        """The metadata host this source talks to now."""
        environ = self._environ if self._environ is not None else os.environ
        return (self.spec.metadata_host or environ.get("GCE_METADATA_HOST")
                or DEFAULT_METADATA_HOST)

    def probe(self) -> bool:
        """Whether a metadata server answers here (short timeout; never raises)."""
        client = self._http()
        try:
            response = client.get(f"http://{self.host()}/computeMetadata/v1/",
                                  headers=_HEADERS, timeout=self.probe_timeout)
        except (httpx.HTTPError, httpx.InvalidURL):
            return False
        flavor: str | None = response.headers.get("Metadata-Flavor")
        return flavor == "Google"

    def fetch(self, audience: str | None) -> SubjectToken | None:
        if self.detect and not self.probe():
            return None
        wanted = audience or self.spec.audience
        host = self.host()
        if not wanted:
            raise SourceMisconfigured(
                f"{_COMPONENT}: no audience to request; fix: set `audience` on the source "
                "(the metadata server mints ID tokens only for a named audience)")
        query = urlencode({"audience": wanted, "format": "full"})
        response = send(_COMPONENT, self._http(), "GET",
                        f"http://{host}{_IDENTITY_PATH}?{query}", headers=_HEADERS)
        raise_for_status(
            _COMPONENT, response,
            "check that the VM or GKE workload has a service account attached (GKE: Workload "
            "Identity enabled on the node pool and the Kubernetes service account bound)")
        return SubjectToken.from_jwt(response.text, origin=f"gcp_metadata:{host}")

    def __repr__(self) -> str:
        return (f"GcpMetadataTokenSource(audience={self.spec.audience!r}, "
                f"metadata_host={self.spec.metadata_host!r}, detect={self.detect})")
