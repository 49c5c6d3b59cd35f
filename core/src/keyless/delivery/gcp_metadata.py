"""A loopback server answering as the GCE metadata server does for the default service account,
for consumers that know only the metadata server (google-auth's compute-engine credentials, the
C++/Go/Java clients in data tools, ``gcloud`` on a VM): opt in with ``keyless exec
--gcp-metadata`` or :class:`GcpMetadataServer` directly.

What it emulates (``http://HOST:PORT``, exported as ``GCE_METADATA_HOST`` and
``GCE_METADATA_IP``, which google-auth and google-cloud-cpp read):

* ``GET /`` (google-auth's ping) and ``/computeMetadata/v1/`` listings, always answered with
  ``Metadata-Flavor: Google``;
* ``instance/service-accounts/`` and ``instance/service-accounts/{default|EMAIL}/`` (with
  ``?recursive=true``: ``{"aliases", "email", "scopes"}``), ``.../email``, ``.../scopes``;
* ``instance/service-accounts/{default|EMAIL}/token``: the GCP target's access token (after
  impersonation and any access boundary: the token keyless's own GCP exchange holds, refreshed
  ahead of expiry), ``{"access_token", "expires_in", "token_type": "Bearer"}``. A ``scopes``
  parameter is accepted and ignored: the token has the target's ``scopes``;
* ``project/project-id`` (``target.gcp.project_id``, else the service account's project) and
  ``project/numeric-project-id`` (from the workload identity pool's audience);
* ``universe/universe-domain``: ``googleapis.com``.

What it does not: identity tokens (``.../identity``), instance attributes, zone, hostname,
guest attributes, wait-for-change, mTLS: those answer ``404`` with a JSON reason. As the real
server does, it refuses a request without ``Metadata-Flavor: Google`` or with an
``X-Forwarded-For`` header (``403``). Unlike the real server it serves only this OS user's
processes, and with ``launch`` only the processes of that launch (:mod:`.launch`), each with
its own context: a ``{rank}`` in ``target.gcp.access_boundary`` is rendered for the calling
rank (``RANK`` in its environment), and a caller without a rank is refused (403), as the AWS
endpoint does. Under ``keyless exec --gcp-metadata`` the endpoint is the child's one GCP path:
no external_account file is written and ``GOOGLE_APPLICATION_CREDENTIALS`` is dropped.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..audit import AuditEvent
from ..config import GcpTarget
from ..context import WorkerContext
from ..errors import ConfigError, KeylessError
from ..identity import Keyless
from ..secret import fingerprint
from .launch import CallerRefused, Launch
from .loopback import LoopbackHttpServer, LoopbackService, QuietHandler, socket_address

__all__ = ["GCP_METADATA_SHADOWED_VARIABLES", "UNIVERSE_DOMAIN", "GcpMetadataServer"]

logger = logging.getLogger("keyless.delivery.gcp_metadata")

UNIVERSE_DOMAIN = "googleapis.com"
#: Dropped from a child served by the endpoint: google-auth tries an ADC file before the
#: metadata server, and the endpoint is the one GCP path there (it applies a per-rank boundary).
GCP_METADATA_SHADOWED_VARIABLES = ("GOOGLE_APPLICATION_CREDENTIALS",)
_ROOT = "/computeMetadata/v1/"
_ACCOUNT = re.compile(r"^instance/service-accounts/([^/]+)/?(email|scopes|token|identity)?$")
_PROJECT_NUMBER = re.compile(r"^//iam\.googleapis\.com/projects/(\d+)/")
_SA_PROJECT = re.compile(r"^[^@]+@([^.]+)\.iam\.gserviceaccount\.com$")


class GcpMetadataServer(LoopbackService):
    """The loopback metadata endpoint for ``identity``'s GCP target (see module docstring).

    ``host`` must be loopback (else :class:`ConfigError`); ``port=0`` picks a free port.
    ``launch``: only that launch's processes are served (else any process of this OS user).
    """

    def __init__(self, identity: Keyless, *, host: str = "127.0.0.1", port: int = 0,
                 launch: Launch | None = None) -> None:
        target = identity.config.target.gcp
        if target is None:
            raise ConfigError("gcp-metadata: the config has no target.gcp; fix: add one (the "
                              "metadata endpoint serves its access token)", field="target.gcp")
        self.identity = identity
        self.target: GcpTarget = target
        self.launch = launch if launch is not None else Launch(launch_id=None)
        self._lock = threading.Lock()
        self._served: OrderedDict[str, None] = OrderedDict()  # fingerprints, most recent last
        self._server = LoopbackHttpServer(_handler_for(self), component="gcp-metadata",
                                        host=host, port=port)

    @property
    def address(self) -> str:
        """``host:port`` as the metadata variables spell it."""
        return self._server.url.split("://", 1)[1]

    def env(self) -> dict[str, str]:
        """The variables pointing metadata clients here (an address, nothing secret)."""
        return {"GCE_METADATA_HOST": self.address, "GCE_METADATA_IP": self.address,
                "GCE_METADATA_ROOT": self.address}  # the older name, still read by some

    # ----------------------------------------------------------------- what is served
    @property
    def email(self) -> str:
        """The service account's email, or ``default`` for a federated principal without
        impersonation (it has no email)."""
        return self.target.service_account or "default"

    def project_id(self) -> str | None:
        """``target.gcp.project_id``, else the service account's project, else None."""
        if self.target.project_id:
            return self.target.project_id
        found = _SA_PROJECT.match(self.target.service_account or "")
        return found.group(1) if found else None

    def project_number(self) -> str | None:
        """The project number in the workload identity pool's audience, else None."""
        found = _PROJECT_NUMBER.match(self.target.audience)
        return found.group(1) if found else None

    def token_document(self, context: WorkerContext | None = None) -> dict[str, Any]:
        """``{"access_token", "expires_in", "token_type"}`` for the current access token of
        ``context``'s exchange (default: the identity's own; a ``{rank}`` access boundary is
        rendered for the calling rank)."""
        token, expires_at = self.identity.gcp(context).access_token()
        shown = fingerprint(token)
        with self._lock:  # one audit event per token served, whichever rank asks when
            new = shown not in self._served
            self._served[shown] = None
            self._served.move_to_end(shown)
            while len(self._served) > 256:
                self._served.popitem(last=False)
        if new:
            self.identity.audit.emit(AuditEvent(
                kind="issue", source=self.identity.config.source.type, target="gcp-metadata",
                outcome="ok", exp=expires_at, token_sha256=shown,
                principal=self.target.service_account,
                context=(context or self.identity.context).as_dict()))
        expires_in = max(int(expires_at - self.identity.clock.time()), 0)
        return {"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}

    def answer(self, path: str, query: dict[str, list[str]],
               context: WorkerContext | None = None) -> tuple[HTTPStatus, Any]:
        """The status and body (a str, or a JSON value) for a metadata ``path`` asked by a
        process whose context is ``context``."""
        if path in ("", "/"):
            return HTTPStatus.OK, "computeMetadata/\n"
        if not path.startswith(_ROOT):
            return _not_emulated(path)
        rest = path[len(_ROOT):]
        listings = {"": "instance/\nproject/\nuniverse/\n", "instance/": "service-accounts/\n",
                    "instance/service-accounts/": f"default/\n{self.email}/\n",
                    "project/": "numeric-project-id\nproject-id\n",
                    "universe/": "universe-domain\n",
                    "universe/universe-domain": UNIVERSE_DOMAIN}
        if rest in listings:
            return HTTPStatus.OK, listings[rest]
        if rest in ("project/project-id", "project/numeric-project-id"):
            value = self.project_id() if rest.endswith("/project-id") else self.project_number()
            return (HTTPStatus.OK, value) if value else _not_emulated(path)
        account = _ACCOUNT.match(rest)
        if account is None or account.group(1) not in ("default", self.email):
            return _not_emulated(path)
        leaf = account.group(2)
        if leaf is None:
            if query.get("recursive", [""])[0].lower() == "true":
                return HTTPStatus.OK, {"aliases": ["default"], "email": self.email,
                                       "scopes": list(self.target.scopes)}
            return HTTPStatus.OK, "aliases\nemail\nidentity\nscopes\ntoken\n"
        if leaf == "email":
            return HTTPStatus.OK, self.email
        if leaf == "scopes":
            return HTTPStatus.OK, "".join(f"{scope}\n" for scope in self.target.scopes)
        if leaf == "token":
            return HTTPStatus.OK, self.token_document(context)
        return _not_emulated(path)


def _not_emulated(path: str) -> tuple[HTTPStatus, Any]:
    return HTTPStatus.NOT_FOUND, {"error": "not_found", "error_description": (
        f"gcp-metadata: {path} is not emulated by keyless (it serves the default service "
        "account's access token, email, scopes and the project ids)")}


def _handler_for(server: GcpMetadataServer) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        server_version = "Metadata Server for VM"
        sys_version = ""

        def _send(self, status: HTTPStatus, body: Any) -> None:
            headers = {"Metadata-Flavor": "Google"}
            if isinstance(body, str):
                self.send_bytes(status, body.encode(), "application/text", headers)
            else:
                self.send_json(status, body, headers)

        def do_GET(self) -> None:
            if self.headers.get("Metadata-Flavor") != "Google" \
                    or self.headers.get("X-Forwarded-For") is not None:
                self._send(HTTPStatus.FORBIDDEN, {"error": "forbidden", "error_description": (
                    "gcp-metadata: requests need 'Metadata-Flavor: Google' and no "
                    "X-Forwarded-For, as on the real metadata server")})
                return
            parts = urlsplit(self.path)
            try:
                context = server.launch.caller(socket_address(self.client_address),
                                               socket_address(self.server.server_address),
                                               server.identity.context)
                status, body = server.answer(parts.path, parse_qs(parts.query), context)
            except CallerRefused as refused:
                logger.warning("keyless: gcp metadata endpoint refused a caller: %s",
                               refused.message)
                status, body = refused.status, {"error": "forbidden",
                                                "error_description": refused.message}
            except ConfigError as exc:  # a {rank} boundary for a caller with no rank
                logger.warning("keyless: gcp metadata endpoint refused a caller: %s",
                               exc.message)
                status, body = HTTPStatus.FORBIDDEN, {"error": "forbidden",
                                                      "error_description": exc.message}
            except KeylessError as exc:
                logger.warning("keyless: gcp metadata endpoint cannot serve: %s", exc.message)
                status, body = HTTPStatus.SERVICE_UNAVAILABLE, {
                    "error": type(exc).__name__, "error_description": exc.message}
            self._send(status, body)

    return Handler
