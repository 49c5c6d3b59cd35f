"""Azure Blob Storage on loopback for whole-system tests: Azurite (blob, in memory) behind an
HTTPS front that verifies every bearer token against what :class:`EntraLike` issued.

Azurite accepts its well-known account key or a SAS, not Entra tokens from our fake Entra.
The front is what makes it a fair stand-in for Blob Storage with Entra ID auth: each request
must carry ``Authorization: Bearer`` with a token :class:`~tests.support.token_servers.
EntraLike` issued for ``https://storage.azure.com/.default`` and not expired, else 401 with
Azure Storage's error XML (``NoAuthenticationInformation`` / ``InvalidAuthenticationInfo``).
Accepted requests go on to Azurite without the bearer, authorised by an account SAS (made with
the well-known ``devstoreaccount1`` key) appended to the query.

HTTPS (a self-signed certificate made per run): azure-storage-blob refuses to send a bearer
over http. Clients trust it through :attr:`AzuriteStorage.ca_file` (``connection_verify`` or
``REQUESTS_CA_BUNDLE``). :attr:`AzuriteStorage.requests` records per request the method, path,
the grant's subject, the token's sha256 fingerprint (never the token) and the status;
``expired_uses`` counts bearers that had been issued but had expired.
"""

from __future__ import annotations

import datetime as dt
import http.client
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from keyless.secret import fingerprint
from keyless.testing.ports import free_ports
from tests.support.storage_front import FrontHandler
from tests.support.token_servers import EntraLike, _self_signed

__all__ = ["ACCOUNT", "ACCOUNT_KEY", "SCOPE", "AzuriteStorage"]

ROOT = Path(__file__).resolve().parent
AZURITE = ROOT / "azurite" / "node_modules" / ".bin" / "azurite-blob"
#: Azurite's well-known development account (public, documented by Microsoft).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")
SCOPE = "https://storage.azure.com/.default"
_HOP = {"authorization", "connection", "keep-alive", "transfer-encoding", "te", "upgrade",
        "proxy-authorization", "host", "content-length"}
_ERROR = ('<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{message}'
          '\nRequestId:00000000-0000-0000-0000-000000000000\nTime:{now}</Message>'
          '<AuthenticationErrorDetail>{detail}</AuthenticationErrorDetail></Error>')


def _account_sas() -> str:
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    return generate_account_sas(
        ACCOUNT, ACCOUNT_KEY, ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True,
                              create=True, update=True, tag=True),
        expiry=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))


class AzuriteStorage:
    """Azurite behind the verifying HTTPS front (module doc). ``with AzuriteStorage(entra) as
    blob:`` starts both and stops them."""

    def __init__(self, entra: EntraLike) -> None:
        self.entra = entra
        self.requests: list[dict[str, Any]] = []
        self.expired_uses = 0
        self._lock = threading.Lock()
        self._tmp = Path(tempfile.mkdtemp(prefix="keyless-azurite-"))
        self._sas = _account_sas()
        self._azurite_port = free_ports(1)[0]
        self._azurite: subprocess.Popen[bytes] | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), FrontHandler)
        self._server.daemon_threads = True
        self._server.storage = self  # type: ignore[attr-defined]
        cert, key = _self_signed(self._tmp)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.ca_file = str(cert)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="azurite front")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        self._azurite = subprocess.Popen(
            [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self._azurite_port),
             "--inMemoryPersistence", "--silent", "--skipApiVersionCheck",
             "--disableTelemetry"],
            cwd=self._tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                http.client.HTTPConnection("127.0.0.1", self._azurite_port, timeout=1).connect()
                break
            except OSError:
                if self._azurite.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("azurite-blob did not start") from None
                time.sleep(0.1)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        if self._azurite is not None:
            self._azurite.terminate()
            try:
                self._azurite.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._azurite.kill()
            self._azurite = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The front's base URL (``https://127.0.0.1:PORT``)."""
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def account_url(self) -> str:
        """The account URL a client is given (path-style: ``{url}/devstoreaccount1``)."""
        return f"{self.url}/{ACCOUNT}"

    def direct_client(self) -> Any:
        """A ``BlobServiceClient`` straight on Azurite with the account key (test setup and
        inspection, no bearer)."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(f"http://127.0.0.1:{self._azurite_port}/{ACCOUNT}",
                                 credential={"account_name": ACCOUNT,
                                             "account_key": ACCOUNT_KEY})

    # ------------------------------------------------------------------ the front
    def handle(self, method: str, target: str, headers: Mapping[str, str],
               body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """Verify the bearer, then forward to Azurite; (status, headers, body)."""
        record: dict[str, Any] = {"method": method, "path": target.split("?", 1)[0],
                                  "subject": None, "token_sha256": None}
        scheme, _, token = headers.get("authorization", "").partition(" ")
        grant = self.entra.grant_for(dict(headers), SCOPE)
        if grant is None:
            if scheme.lower() != "bearer":
                refused = self._refuse("NoAuthenticationInformation", "Server failed to "
                                       "authenticate the request. Please refer to the "
                                       "information in the www-authenticate header.",
                                       "No bearer token in the Authorization header.")
            else:
                issued = self.entra.grants.get(token)
                expired = issued is not None and issued.scope == SCOPE
                detail = ("Lifetime validation failed. The token is expired." if expired else
                          "Signature validation failed or the audience is not storage.")
                if expired:
                    with self._lock:
                        self.expired_uses += 1
                refused = self._refuse("InvalidAuthenticationInfo", "Server failed to "
                                       "authenticate the request.", detail)
            record["status"] = 401
            self._record(record)
            return refused
        record.update(subject=grant.subject, token_sha256=fingerprint(token))
        status, answer_headers, payload = self._forward(method, target, headers, body)
        record["status"] = status
        self._record(record)
        return status, answer_headers, payload

    @staticmethod
    def _refuse(code: str, message: str, detail: str) -> tuple[int, list[tuple[str, str]],
                                                                 bytes]:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
        text = _ERROR.format(code=code, message=message, detail=detail, now=now)
        return 401, [("Content-Type", "application/xml"), ("x-ms-error-code", code)], \
            text.encode()

    def _record(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(record)

    def _forward(self, method: str, target: str, headers: Mapping[str, str],
                 body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        path = target + ("&" if "?" in target else "?") + self._sas
        connection = http.client.HTTPConnection("127.0.0.1", self._azurite_port, timeout=30)
        try:
            forwarded = {k: v for k, v in headers.items() if k not in _HOP}
            connection.request(method, path, body=body if method not in ("GET", "HEAD")
                               else None, headers=forwarded)
            answer = connection.getresponse()
            payload = answer.read()
            kept = [(k, v) for k, v in answer.getheaders() if k.lower() not in _HOP]
            return answer.status, kept, payload
        finally:
            connection.close()
