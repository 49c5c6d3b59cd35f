"""A loopback AWS container-credentials endpoint for consumers that never refresh.

Some consumers take static keys once and never refresh them (pyarrow ``S3FileSystem`` under
Ray Data/Train checkpoints dies after hours). Every AWS SDK, pyarrow's C++ SDK included, can
instead fetch credentials from ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` sending the contents of
``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`` as the ``Authorization`` header, and fetches again
when the ``Expiration`` it was given comes near. :class:`CredentialServer` answers there, on
loopback only, with this worker's keyless credentials (botocore's refreshable web-identity
credentials from :meth:`keyless.Keyless.aws`, which refresh themselves).

Contract of ``GET /v1/credentials`` (:data:`CREDENTIALS_PATH`):

* answered only for a loopback peer whose ``Authorization`` header equals the random token in
  the 0600 token file (constant-time compare): a missing header gets 401, a wrong one 403;
* 200 body ``{"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}``, ``Expiration`` in
  ISO 8601 UTC with a ``Z`` and whole seconds (rounded down);
* 500 ``{"code", "message"}`` when keyless cannot produce credentials: the message is a
  keyless error message (secret-free by contract) or just an exception type name.

With a :class:`~keyless.launch.Launch` (``keyless exec``, the hosts' ``worker_env()``,
``serve-credentials``), each connection's process is identified (on Linux, the TCP peer's pid
through ``/proc``): a process of another OS user, or outside the launch, gets 403 and nothing
else; the others get credentials rendered for their own worker context (``RANK``,
``LOCAL_RANK``, ``GROUP_RANK`` from their own environment), built lazily per distinct STS
request, so each rank ``torchrun`` starts has its own session name and session policy. A
config template needing a rank the caller does not have gets 403 naming the field.

``Expiration`` is reported a safety margin **before** the real one: the AWS C++ SDK (pyarrow)
fetches again only when less than 5 s remain before the ``Expiration`` it was given (or every
5 minutes), and botocore's container provider refreshes 15/10 minutes before it. The margin is
``min(5 minutes, 25 % of the remaining life)`` (:func:`served_expiration`), so a request
signed just before the reported Expiration still has a quarter of the remaining life (or 5
minutes) to reach AWS, and a clock that drifts a little between server and client is covered.
The credentials behind it are refreshed by botocore at the refresher's fraction of their life,
so by the time a client comes back less than 25 % is left and it gets a new set.

No request header is ever logged; one ``issue`` audit event is emitted per credential set
served (identified by the sha256 fingerprint of the access key id), not per request. The
server is a :class:`~keyless.delivery.loopback.LoopbackHttpServer`: a connection that does not
send its whole request within the request timeout (10 s) is closed, at most 32 connections
are served at once (one more gets 503), and a request body is never read.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from ..audit import AuditEvent
from ..context import WorkerContext
from ..errors import ConfigError, KeylessError
from ..identity import Keyless
from ..secret import Secret, fingerprint
from .files import write_private_file
from .launch import CallerRefused, Launch
from .loopback import LoopbackHttpServer, QuietHandler, socket_address
from .tokenfiles import TokenDirectory

__all__ = ["CREDENTIALS_PATH", "MAX_MARGIN_SECONDS", "MARGIN_FRACTION", "CredentialServer",
           "CredentialSnapshot", "credential_endpoint_environment", "served_expiration"]

logger = logging.getLogger("keyless.delivery.credential_server")

#: The one path the endpoint answers on.
CREDENTIALS_PATH = "/v1/credentials"
#: The served Expiration is the real one minus min(MAX_MARGIN_SECONDS, MARGIN_FRACTION * life left).
MAX_MARGIN_SECONDS = 300.0
MARGIN_FRACTION = 0.25
TOKEN_FILE_NAME = "aws-container-authorization-token"


def served_expiration(expires_at: float, now: float) -> float:
    """The ``Expiration`` to report for credentials really expiring at ``expires_at``: a margin
    of ``min(MAX_MARGIN_SECONDS, MARGIN_FRACTION * (expires_at - now))`` before it, never
    earlier than ``now``."""
    remaining = max(expires_at - now, 0.0)
    return max(expires_at - min(MAX_MARGIN_SECONDS, MARGIN_FRACTION * remaining), now)


def _iso8601(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))


@dataclass(frozen=True)
class CredentialSnapshot:
    """One consistent credential set and its real expiry (epoch seconds)."""

    access_key: str
    secret_key: Secret
    token: Secret
    expires_at: float

    def __repr__(self) -> str:
        return (f"CredentialSnapshot(access_key=sha256:{fingerprint(self.access_key)}, "
                f"expires_at={self.expires_at:.0f})")


def snapshot(credentials: Any) -> CredentialSnapshot:
    """Read a consistent (keys, expiry) pair from botocore ``RefreshableCredentials``.

    keyless's own credentials give the pair directly (``frozen_with_expiry``). For any other
    botocore credentials, which expose no public expiry, ``_expiry_time`` is read before and after
    ``get_frozen_credentials()`` (which may refresh) until both reads agree: the frozen set and
    the expiry then belong to the same refresh.
    """
    if hasattr(credentials, "frozen_with_expiry"):  # keyless's own AWS credentials
        frozen, expires_at = credentials.frozen_with_expiry()
        return CredentialSnapshot(access_key=str(frozen.access_key),
                                  secret_key=Secret(str(frozen.secret_key)),
                                  token=Secret(str(frozen.token or "")), expires_at=expires_at)
    for _ in range(5):
        before = getattr(credentials, "_expiry_time", None)
        frozen = credentials.get_frozen_credentials()
        after = getattr(credentials, "_expiry_time", None)
        if before == after and after is not None:
            break
    if after is None or frozen.access_key is None:
        raise KeylessError("credential-server: the AWS credentials carry no expiry; fix: use "
                           "keyless's own target.aws credentials")
    return CredentialSnapshot(access_key=str(frozen.access_key),
                              secret_key=Secret(str(frozen.secret_key)),
                              token=Secret(str(frozen.token or "")),
                              expires_at=float(after.timestamp()))


class CredentialServer:
    """The loopback endpoint serving ``identity``'s AWS credentials (see module docstring).

    ``host`` must be a loopback address (``127.0.0.1``, ``::1`` or ``localhost``), else
    :class:`ConfigError`. ``port=0`` picks a free port. The authorization token is written
    0600 into ``token_dir`` on :meth:`start` and removed on :meth:`stop`. ``credentials``
    (tests) replaces ``identity.aws().credentials()``: any botocore ``RefreshableCredentials``.
    ``launch`` makes it serve each calling process of that launch its own identity (module
    docstring); ``context_of`` (an endpoint inside the process it serves: a Ray worker)
    gives the context to serve at each request, so a context that changes after the start (Ray
    connected, a Ray Train rank assigned) is served its own session. Without either, every
    authorized caller gets ``identity``'s own.
    """

    def __init__(self, identity: Keyless, *, host: str = "127.0.0.1", port: int = 0,
                 token_dir: TokenDirectory, credentials: Any = None,
                 launch: Launch | None = None,
                 context_of: Callable[[], WorkerContext] | None = None) -> None:
        self.identity = identity
        self.launch = launch
        self.context_of = context_of
        self.host = host
        self.port = port
        self.token_dir = token_dir
        self._credentials = credentials
        self._token = Secret(secrets.token_urlsafe(32))
        self._http = LoopbackHttpServer(_handler_for(self), component="credential-server",
                                        host=host, port=port)
        self.host = self._http.host
        self._lock = threading.Lock()
        self._last_served: dict[str, str] = {}  # session name -> last served key fingerprint
        self.token_file: Path = token_dir.path / TOKEN_FILE_NAME
        self.served_sets = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> CredentialServer:
        """Write the token file, bind, and serve in a daemon thread (once; idempotent)."""
        if self._http.running:
            return self
        self._write_token_file()
        self.port = self._http.start().port
        return self

    def stop(self) -> None:
        """Stop serving and remove the token file; idempotent."""
        self._http.stop()
        with contextlib.suppress(OSError):
            self.token_file.unlink()

    def __enter__(self) -> CredentialServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write_token_file(self) -> None:
        write_private_file(self.token_file, self._token.reveal())

    # ------------------------------------------------------------------ what clients see
    @property
    def url(self) -> str:
        return self._http.url + CREDENTIALS_PATH

    def env(self) -> dict[str, str]:
        """The two SDK variables (a URL and a path: never the token itself)."""
        return {"AWS_CONTAINER_CREDENTIALS_FULL_URI": self.url,
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(self.token_file)}

    def authorized(self, header: str | None) -> bool:
        """Constant-time check of an ``Authorization`` header value."""
        if header is None:
            return False
        return hmac.compare_digest(header.strip().encode(), self._token.reveal().encode())

    def caller_context(self, client: tuple[str, int],
                       server: tuple[str, int]) -> WorkerContext | None:
        """The worker context to serve the connection ``client`` -> ``server`` (None: this
        identity's own); raises :class:`CallerRefused` for a process not of the launch."""
        if self.context_of is not None:
            return self.context_of()
        if self.launch is None:
            return None
        return self.launch.caller(client, server, self.identity.context)

    def credentials_document(self, context: WorkerContext | None = None) -> dict[str, str]:
        """The container-credentials JSON for the current credential set of ``context``'s
        exchange (default: this identity's own); may refresh."""
        credentials = self._credentials
        exchange = None
        if credentials is None:
            exchange = self.identity.aws(context)
            credentials = exchange.credentials()
        snap = snapshot(credentials)
        now = self.identity.clock.time()
        self._note_served(snap, exchange.session_name if exchange is not None else None,
                          context or self.identity.context)
        return {"AccessKeyId": snap.access_key, "SecretAccessKey": snap.secret_key.reveal(),
                "Token": snap.token.reveal(),
                "Expiration": _iso8601(served_expiration(snap.expires_at, now))}

    def _note_served(self, snap: CredentialSnapshot, session_name: str | None,
                     context: WorkerContext) -> None:
        key_fingerprint = fingerprint(snap.access_key)
        with self._lock:
            if self._last_served.get(session_name or "") == key_fingerprint:
                return
            self._last_served[session_name or ""] = key_fingerprint
            self.served_sets += 1
        aws = self.identity.config.target.aws
        self.identity.audit.emit(AuditEvent(
            kind="issue", source=self.identity.config.source.type, target="aws-endpoint",
            outcome="ok", exp=snap.expires_at, token_sha256=key_fingerprint,
            principal=aws.role_arn if aws is not None else None, session_name=session_name,
            context=context.as_dict()))


def _handler_for(server: CredentialServer) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        server_version = "keyless-credentials"
        sys_version = ""

        def _refuse(self, status: HTTPStatus, code: str, message: str) -> None:
            self.send_json(status, {"code": code, "message": f"credential-server: {message}"})

        def do_GET(self) -> None:
            if not self.peer_is_loopback():
                self._refuse(HTTPStatus.FORBIDDEN, "Forbidden", "loopback clients only")
                return
            if self.path.split("?")[0] != CREDENTIALS_PATH:
                self._refuse(HTTPStatus.NOT_FOUND, "NotFound", f"only {CREDENTIALS_PATH}")
                return
            header = self.headers.get("Authorization")
            if header is None:
                self._refuse(HTTPStatus.UNAUTHORIZED, "Unauthorized",
                             "missing Authorization; fix: set "
                             "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE to the server's token file")
                return
            if not server.authorized(header):
                self._refuse(HTTPStatus.FORBIDDEN, "Forbidden", "wrong authorization token")
                return
            try:
                context = server.caller_context(socket_address(self.client_address),
                                                socket_address(self.server.server_address))
            except CallerRefused as refused:
                logger.warning("keyless: credential endpoint refused a caller: %s",
                               refused.message)
                self._refuse(refused.status, refused.status.phrase, refused.message)
                return
            try:
                document = server.credentials_document(context)
            except ConfigError as exc:  # a per-rank template this caller has no rank for
                logger.warning("keyless: credential endpoint refused a caller: %s", exc.message)
                self._refuse(HTTPStatus.FORBIDDEN, "Forbidden", exc.message)
                return
            except KeylessError as exc:
                logger.warning("keyless: credential endpoint cannot serve: %s", exc.message)
                self._refuse(HTTPStatus.INTERNAL_SERVER_ERROR, type(exc).__name__, exc.message)
                return
            except Exception as exc:  # botocore errors may carry anything: type name only
                logger.warning("keyless: credential endpoint cannot serve: %s",
                               type(exc).__name__)
                self._refuse(HTTPStatus.INTERNAL_SERVER_ERROR, "InternalError",
                             f"cannot produce credentials ({type(exc).__name__})")
                return
            self.send_json(HTTPStatus.OK, document)

    return Handler


@contextlib.contextmanager
def credential_endpoint_environment(identity: Keyless, token_dir: str | None = None,
                                    ) -> Iterator[dict[str, str]]:
    """A running endpoint for the ``with`` body; yields the variables for a child process
    (endpoint URL, token file path, region). Drop
    :data:`keyless.delivery.ENDPOINT_SHADOWED_VARIABLES` from the child's environment too."""
    from .tokenfiles import endpoint_environment

    directory = TokenDirectory(token_dir or identity.config.delivery.token_dir)
    server = CredentialServer(identity, token_dir=directory)
    try:
        server.start()
        server.credentials_document()  # a broken source or role fails before a child starts
        yield endpoint_environment(identity, server.env())
    finally:
        server.stop()
        directory.cleanup()
