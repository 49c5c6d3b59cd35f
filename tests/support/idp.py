"""The reference OIDC provider (``oidc-provider``, npm) as a Python test fixture.

:class:`ReferenceIdP` runs ``tests/support/idp/server.mjs`` on loopback in its own process group:
client-credentials grant, RFC 8707 resource indicators (the requested ``resource`` becomes the
JWT's ``aud``, through ``audience_aliases`` when listed), RS256 JWT access tokens signed with a
key made for this run, ``sub`` = client id, per-client extra claims and lifetimes, and a
test-only ``GET /__stats`` counting token-endpoint requests.

The session fixture :func:`reference_idp` starts one with the default clients:

==============  ===================  ===============================================
client id       auth method          notes
==============  ===================  ===============================================
``trainer``     client_secret_basic  ``extra_claims={"job": "train"}``
``intruder``    client_secret_basic  another identity (``sub="intruder"``)
``shortlived``  client_secret_basic  ``ttl_seconds=8``
``post-client`` client_secret_post
``jwt-client``  private_key_jwt      private PEM in ``idp.client_private_keys``
==============  ===================  ===============================================

Secrets are random per run (``idp.client_secrets``), so tests can scan logs for them. The Node
dependencies must be installed first: ``npm ci --prefix tests/support/idp``.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keyless.dev.process import terminate

__all__ = [
    "DEFAULT_AUDIENCE_ALIASES",
    "IDP_DIR",
    "READY_PREFIX",
    "IdpClient",
    "IdpError",
    "ReferenceIdP",
    "default_clients",
    "make_client_assertion",
    "reference_idp",
]

IDP_DIR = Path(__file__).resolve().parent / "idp"
READY_PREFIX = "KEYLESS-IDP-READY "
DEFAULT_AUDIENCE_ALIASES: Mapping[str, str] = {"https://sts.amazonaws.com": "sts.amazonaws.com"}
_SECRET_METHODS = ("client_secret_basic", "client_secret_post")
_AUTH_METHODS = (*_SECRET_METHODS, "private_key_jwt")


class IdpError(RuntimeError):
    """The reference IdP test fixture could not start, or a call to it failed."""


@dataclass
class IdpClient:
    """One client registered at the reference IdP.

    ``client_secret`` None with a secret auth method: :class:`ReferenceIdP` makes a random one
    (the dataclass is not modified; read ``ReferenceIdP.client_secrets``).
    ``public_jwk`` is required for ``private_key_jwt``. ``extra_claims`` go into every access
    token of the client; ``ttl_seconds`` is its access-token lifetime.
    """

    client_id: str
    client_secret: str | None = None
    auth_method: str = "client_secret_basic"
    extra_claims: dict[str, Any] = field(default_factory=dict)
    ttl_seconds: int = 300
    public_jwk: dict[str, Any] | None = None


def make_client_assertion(client_id: str, private_key_pem: str, audience: str) -> str:
    """An RFC 7523 client assertion (``iss`` = ``sub`` = client id), valid for 60 s, RS256."""
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 60,
    }
    return jwt.encode(claims, private_key_pem, algorithm="RS256")


class ReferenceIdP:
    """Runs ``node server.mjs`` for the given clients; a context manager.

    Attributes once started: ``issuer``, ``token_url``, ``jwks_url``, ``client_secrets``
    (client id -> secret, every secret-based client) and ``client_private_keys`` (client id ->
    private PEM, filled by whoever generated the keys, e.g. :func:`default_clients`).
    """

    def __init__(
        self,
        clients: Sequence[IdpClient],
        *,
        audience_aliases: Mapping[str, str] = DEFAULT_AUDIENCE_ALIASES,
        default_resource: str | None = None,
        client_private_keys: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
        node: str = "node",
        idp_dir: Path = IDP_DIR,
    ) -> None:
        self.clients: dict[str, IdpClient] = {}
        self.client_secrets: dict[str, str] = {}
        self.client_private_keys: dict[str, str] = dict(client_private_keys or {})
        for client in clients:
            if client.auth_method not in _AUTH_METHODS:
                raise IdpError(f"reference idp: unknown auth method {client.auth_method!r}")
            if client.auth_method in _SECRET_METHODS:
                secret = client.client_secret or secrets.token_urlsafe(32)
                self.client_secrets[client.client_id] = secret
            elif client.public_jwk is None:
                raise IdpError(
                    f"reference idp: client {client.client_id!r} uses private_key_jwt "
                    "but has no public_jwk"
                )
            self.clients[client.client_id] = client
        self._aliases = dict(audience_aliases)
        self._default_resource = default_resource
        self._startup_timeout = startup_timeout
        self._node = node
        self._dir = idp_dir
        self._proc: subprocess.Popen[str] | None = None
        self._tmp: Path | None = None
        self._stderr: IO[str] | None = None
        self._issuer: str | None = None
        self._discovery: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ReferenceIdP:
        """Start the server and wait (bounded) for its ready line."""
        if self._proc is not None:
            return self
        if not (self._dir / "node_modules" / "oidc-provider").is_dir():
            raise IdpError(
                f"reference idp: {self._dir / 'node_modules'} is missing; "
                "run `npm ci --prefix tests/support/idp` first"
            )
        if shutil.which(self._node) is None:
            raise IdpError(f"reference idp: {self._node!r} not found on PATH; install Node.js")
        self._tmp = Path(tempfile.mkdtemp(prefix="keyless-idp-"))
        config_path = self._tmp / "config.json"
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self._config(), fh)
        self._stderr = open(self._tmp / "stderr.log", "w+")
        self._proc = subprocess.Popen(
            [self._node, str(self._dir / "server.mjs"), str(config_path)],
            cwd=self._dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,
        )
        try:
            self._issuer = self._wait_ready()
            response = httpx.get(f"{self._issuer}/.well-known/openid-configuration", timeout=10)
            response.raise_for_status()
            self._discovery = response.json()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate the server by PID (kill after 10 s) and remove its temporary files."""
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> ReferenceIdP:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- endpoints ---------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        """``http://127.0.0.1:<port>``: the ``iss`` of every token and the discovery issuer."""
        if self._issuer is None:
            raise IdpError("reference idp: not started; use it as a context manager")
        return self._issuer

    @property
    def token_url(self) -> str:
        """The discovery document's ``token_endpoint``."""
        return self._endpoint("token_endpoint")

    @property
    def jwks_url(self) -> str:
        """The discovery document's ``jwks_uri``."""
        return self._endpoint("jwks_uri")

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def token_requests(self) -> int:
        """How many HTTP requests reached the token endpoint so far (any outcome)."""
        count = self._stats()["token_requests"]
        assert isinstance(count, int)
        return count

    def auth_methods(self, client_id: str) -> dict[str, int]:
        """Successful grants of ``client_id`` per auth method it actually used.

        oidc-provider accepts ``client_secret_basic`` and ``client_secret_post``
        interchangeably, so this is how a test proves which one a client sent.
        """
        methods = self._stats()["auth_methods"].get(client_id, {})
        return {str(k): int(v) for k, v in methods.items()}

    def _stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.issuer}/__stats", timeout=10)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def issue(
        self, client_id: str, audience: str | None = None, *, token_url: str | None = None
    ) -> str:
        """Do a client-credentials grant for ``client_id`` and return the access token.

        ``audience`` is sent as RFC 8707 ``resource`` (an absolute URI); without it the token
        is a JWT only if a ``default_resource`` was configured (else oidc-provider issues an
        opaque token). ``token_url`` overrides the endpoint (e.g. a :class:`FaultProxy`).
        """
        client = self.clients.get(client_id)
        if client is None:
            raise IdpError(f"reference idp: unknown client {client_id!r}")
        data = {"grant_type": "client_credentials"}
        if audience is not None:
            data["resource"] = audience
        auth: tuple[str, str] | None = None
        secret = self.client_secrets.get(client_id)
        if client.auth_method == "client_secret_basic" and secret is not None:
            auth = (client_id, secret)
        elif client.auth_method == "client_secret_post" and secret is not None:
            data.update(client_id=client_id, client_secret=secret)
        else:
            pem = self.client_private_keys.get(client_id)
            if pem is None:
                raise IdpError(f"reference idp: no private key for {client_id!r}")
            data.update(
                client_id=client_id,
                client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                client_assertion=make_client_assertion(client_id, pem, self.issuer),
            )
        response = httpx.post(token_url or self.token_url, data=data, auth=auth, timeout=10)
        if response.status_code != 200:
            raise IdpError(
                f"reference idp: token request for {client_id!r} failed: "
                f"HTTP {response.status_code} {response.text[:200]}"
            )
        token = response.json()["access_token"]
        assert isinstance(token, str)
        return token

    # -- internals ---------------------------------------------------------------------------

    def _endpoint(self, name: str) -> str:
        self.issuer  # noqa: B018 (raises when not started)
        value = self._discovery[name]
        assert isinstance(value, str)
        return value

    def _config(self) -> dict[str, Any]:
        clients: list[dict[str, Any]] = []
        for c in self.clients.values():
            entry: dict[str, Any] = {
                "client_id": c.client_id,
                "token_endpoint_auth_method": c.auth_method,
                "extra_claims": c.extra_claims,
                "ttl_seconds": c.ttl_seconds,
            }
            if c.auth_method == "private_key_jwt":
                entry["jwks"] = {"keys": [c.public_jwk]}
            else:
                entry["client_secret"] = self.client_secrets[c.client_id]
            clients.append(entry)
        config: dict[str, Any] = {"clients": clients, "audience_aliases": self._aliases}
        if self._default_resource is not None:
            config["default_resource"] = self._default_resource
        return config

    def _wait_ready(self) -> str:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        stdout = proc.stdout

        def pump() -> None:  # keeps draining stdout so the child never blocks on a full pipe
            for line in stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, name="reference-idp-stdout", daemon=True).start()
        deadline = time.monotonic() + self._startup_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise IdpError(
                    f"reference idp: no ready line within {self._startup_timeout:.0f} s; "
                    f"stderr: {self._stderr_tail()}"
                )
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                raise IdpError(
                    f"reference idp: node exited with {proc.wait()} before it was ready; "
                    f"stderr: {self._stderr_tail()}"
                )
            if line.startswith(READY_PREFIX):
                return line[len(READY_PREFIX) :].strip()

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()[-2000:]


def default_clients() -> tuple[list[IdpClient], dict[str, str]]:
    """The default clients (see the module docstring) and the private PEMs of the JWT clients."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public_jwk.update(kid="jwt-client-key", alg="RS256", use="sig")
    clients = [
        IdpClient("trainer", extra_claims={"job": "train"}),
        IdpClient("intruder"),
        IdpClient("shortlived", ttl_seconds=8),
        IdpClient("post-client", auth_method="client_secret_post"),
        IdpClient("jwt-client", auth_method="private_key_jwt", public_jwk=public_jwk),
    ]
    return clients, {"jwt-client": pem}


@pytest.fixture(scope="session")
def reference_idp() -> Iterator[ReferenceIdP]:
    """One reference IdP for the test session, with :func:`default_clients`."""
    clients, private_keys = default_clients()
    with ReferenceIdP(clients, client_private_keys=private_keys) as idp:
        yield idp
