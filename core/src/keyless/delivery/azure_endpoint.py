"""A loopback Azure managed-identity endpoint, for unmodified azure-identity in a child process.

azure-identity's ``WorkloadIdentityCredential`` (tried by ``DefaultAzureCredential`` before
managed identity) reads ``AZURE_FEDERATED_TOKEN_FILE`` at most every 600 s
(Azure/azure-sdk-for-python#44488): with subject tokens living less than that, it keeps
presenting an expired assertion and Entra answers ``AADSTS700024``, however fresh keyless
keeps the file. Every azure-identity (and MSAL) client also speaks the App Service
managed-identity protocol; :class:`AzureEndpoint` answers it, on loopback only, doing the
federated exchange itself through keyless's Azure target (:meth:`keyless.Keyless.
azure_credential`: azure-identity's ``ClientAssertionCredential`` given a fresh subject token at
every exchange, one cache and refresher per scope), so a child gets fresh access tokens per
resource at any subject-token lifetime.

Contract of ``GET /msi/token`` (:data:`TOKEN_PATH`), as azure-identity 1.x / MSAL send it
(``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``):

* answered only for a loopback peer whose ``X-IDENTITY-HEADER`` equals the endpoint's random
  header value (constant-time compare): missing gets 401, wrong 403; with a
  :class:`~keyless.delivery.launch.Launch`, a process of another OS user or outside the launch
  gets 403 as well;
* query ``resource`` (required; the scope asked for Entra is ``resource + "/.default"``),
  ``api-version`` (any), and at most one identity: ``client_id`` equal to
  ``target.azure.client_id`` (azure-identity sends ``AZURE_CLIENT_ID`` there), else 400;
  ``mi_res_id``/``object_id``/``principal_id`` are refused (400: keyless cannot check them);
* 200 body ``{"access_token", "expires_on", "resource", "token_type", "client_id"}``,
  ``expires_on`` in whole epoch seconds as a string (what App Service sends; MSAL parses it
  with ``int()``), the access token's real expiry;
* errors ``{"statusCode", "message"}`` (App Service's shape, which MSAL quotes): the message
  is a keyless error message (secret-free by contract) or just an exception type name.

**The header value is a capability in the environment.** azure-identity reads it only from
``IDENTITY_HEADER``, so unlike the AWS endpoint (a 0600 token file) the child's environment
carries it. It is random per endpoint, lives as long as the endpoint, is readable (through
``/proc/PID/environ``) only by processes of the same OS user, is never logged, audited or put
into a message, and grants only what the endpoint grants: this config's Azure access tokens, to
loopback callers (and with a launch, to that launch's processes only).

MSAL treats a managed-identity token with less than 5 minutes left as expired and asks again:
the endpoint answers from keyless's refresher (refreshed at ``refresh.at_fraction`` of the
access token's lifetime), so repeated asks cost no exchange. One ``issue`` audit event is
emitted per access token served (its sha256 fingerprint), not per request. The server is a
:class:`~keyless.delivery.loopback.LoopbackHttpServer` (request deadline, connection bound).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from ..audit import AuditEvent
from ..context import WorkerContext
from ..errors import ConfigError, KeylessError
from ..identity import Keyless
from ..secret import Secret, fingerprint
from .launch import CallerRefused, Launch
from .loopback import LoopbackHttpServer, LoopbackService, QuietHandler

__all__ = ["AZURE_ENDPOINT_SHADOWED_VARIABLES", "HEADER_NAME", "TOKEN_PATH", "AzureEndpoint",
           "AzureRequestRefused", "TokenSource", "uses_azure_endpoint"]

logger = logging.getLogger("keyless.delivery.azure_endpoint")

#: The one path the endpoint answers on (App Service's own).
TOKEN_PATH = "/msi/token"
#: The request header carrying the capability (the value of ``IDENTITY_HEADER``).
HEADER_NAME = "X-IDENTITY-HEADER"
#: Variables dropped from a child's environment served by the endpoint: the federated-token
#: file (``DefaultAzureCredential`` tries workload identity before managed identity, and it is
#: what fails), and those that would turn the managed-identity protocol into another one
#: (Service Fabric, Azure ML, Arc).
AZURE_ENDPOINT_SHADOWED_VARIABLES = ("AZURE_FEDERATED_TOKEN_FILE", "IDENTITY_SERVER_THUMBPRINT",
                                     "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT")
_OTHER_IDENTITIES = ("mi_res_id", "object_id", "principal_id", "msi_res_id")


class TokenInfo(Protocol):
    """What the endpoint needs of azure-core's ``AccessTokenInfo``."""

    token: str
    expires_on: int


class TokenSource(Protocol):
    """What the endpoint needs of a credential: azure-core's ``SupportsTokenInfo``."""

    def get_token_info(self, *scopes: str, options: Any = None) -> TokenInfo: ...


def uses_azure_endpoint(identity: Keyless) -> bool:
    """Whether a child of ``identity`` gets Azure through the endpoint: a ``target.azure`` and
    ``delivery.azure: endpoint`` (the default)."""
    return identity.config.target.azure is not None and \
        identity.config.delivery.azure == "endpoint"


class AzureRequestRefused(Exception):
    """A request the endpoint does not answer with a token: ``status`` and a message."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AzureEndpoint(LoopbackService):
    """The loopback managed-identity endpoint serving ``identity``'s Azure tokens (see the
    module docstring).

    ``identity`` must have a ``target.azure`` (else :class:`ConfigError` naming it). ``host``
    must be a loopback address (else :class:`ConfigError` naming ``host``); ``port=0`` picks a
    free port. ``credential`` (tests) replaces ``identity.azure_credential()``: anything with
    azure-core's ``get_token_info(scope)``. ``launch`` limits the callers to that launch's
    processes (:meth:`Launch.caller`).
    """

    def __init__(self, identity: Keyless, *, host: str = "127.0.0.1", port: int = 0,
                 credential: TokenSource | None = None, launch: Launch | None = None) -> None:
        target = identity.config.target.azure
        if target is None:
            raise ConfigError("azure-endpoint: the config has no target.azure; fix: add "
                              "target.azure (tenant_id, client_id)", field="target.azure")
        self.identity = identity
        self.client_id = target.client_id
        self.tenant_id = target.tenant_id
        self.launch = launch
        self._credential = credential
        self._header = Secret(secrets.token_urlsafe(32))
        self._lock = threading.Lock()
        self._last_served: dict[str, str] = {}  # resource -> fingerprint of the last token
        self.served_tokens = 0
        self._server = LoopbackHttpServer(_handler_for(self), component="azure-endpoint",
                                          host=host, port=port)

    def __repr__(self) -> str:
        return (f"AzureEndpoint(tenant_id={self.tenant_id!r}, client_id={self.client_id!r}, "
                f"running={self._server.running})")

    # ------------------------------------------------------------------ what clients see
    @property
    def url(self) -> str:
        """The ``IDENTITY_ENDPOINT`` value: ``http://127.0.0.1:PORT/msi/token``."""
        return self._server.url + TOKEN_PATH

    def env(self) -> dict[str, str]:
        """The variables for azure-identity in a child: ``IDENTITY_ENDPOINT``,
        ``IDENTITY_HEADER`` (the capability: see the module docstring), and the app's
        ``AZURE_CLIENT_ID`` / ``AZURE_TENANT_ID`` (ids)."""
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": self._header.reveal(),
                "AZURE_CLIENT_ID": self.client_id, "AZURE_TENANT_ID": self.tenant_id}

    def authorized(self, header: str) -> bool:
        """Constant-time check of an ``X-IDENTITY-HEADER`` value."""
        return hmac.compare_digest(header.strip().encode(), self._header.reveal().encode())

    def caller_context(self, client: tuple[str, int],
                       server: tuple[str, int]) -> WorkerContext:
        """The calling process's context (this identity's own without a launch); raises
        :class:`CallerRefused` for a process not of the launch."""
        if self.launch is None:
            return self.identity.context
        return self.launch.caller(client, server, self.identity.context)

    def token_document(self, query: Mapping[str, list[str]],
                       context: WorkerContext | None = None) -> dict[str, str]:
        """The App Service answer for one request's query (``parse_qs`` form); raises
        :class:`AzureRequestRefused` for a bad query, keyless's errors for a failed exchange."""
        resource = _one(query, "resource")
        if not resource:
            raise AzureRequestRefused(HTTPStatus.BAD_REQUEST,
                                      "the query has no resource; fix: ask for one resource, "
                                      "e.g. resource=https://storage.azure.com")
        client_id = _one(query, "client_id")
        if client_id is not None and client_id != self.client_id:
            raise AzureRequestRefused(HTTPStatus.BAD_REQUEST,
                                      f"client_id {client_id!r} is not this endpoint's "
                                      f"identity ({self.client_id!r}, target.azure.client_id); "
                                      "fix: leave AZURE_CLIENT_ID as keyless set it")
        other = [name for name in _OTHER_IDENTITIES if name in query]
        if other:
            raise AzureRequestRefused(HTTPStatus.BAD_REQUEST,
                                      f"{other[0]} cannot be checked by this endpoint; fix: "
                                      "name the identity by client_id, or by none")
        credential = self._credential or self.identity.azure_credential()
        info = credential.get_token_info(resource + "/.default")
        self._note_served(resource, info, context or self.identity.context)
        return {"access_token": info.token, "expires_on": str(int(info.expires_on)),
                "resource": resource, "token_type": "Bearer", "client_id": self.client_id}

    def _note_served(self, resource: str, info: TokenInfo, context: WorkerContext) -> None:
        token_fingerprint = fingerprint(info.token)
        with self._lock:
            if self._last_served.get(resource) == token_fingerprint:
                return
            self._last_served[resource] = token_fingerprint
            self.served_tokens += 1
        self.identity.audit.emit(AuditEvent(
            kind="issue", source=self.identity.config.source.type, target="azure-endpoint",
            outcome="ok", aud=(resource,), exp=float(info.expires_on),
            token_sha256=token_fingerprint, principal=self.client_id,
            context=context.as_dict()))


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _address(address: Any) -> tuple[str, int]:
    """``(host, port)`` of a socket address (IPv6 ones have four fields)."""
    return str(address[0]), int(address[1])


def _handler_for(endpoint: AzureEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        server_version = "keyless-azure-identity"
        sys_version = ""

        def _refuse(self, status: HTTPStatus, message: str) -> None:
            self.send_json(status, {"statusCode": int(status),
                                    "message": f"azure-endpoint: {message}"})

        def do_GET(self) -> None:
            try:
                document = self._answer()
            except AzureRequestRefused as refused:
                self._refuse(refused.status, refused.message)
                return
            except CallerRefused as refused:
                logger.warning("keyless: azure endpoint refused a caller: %s", refused.message)
                self._refuse(refused.status, refused.message)
                return
            except KeylessError as exc:
                logger.warning("keyless: azure endpoint cannot serve: %s", exc.message)
                self._refuse(HTTPStatus.INTERNAL_SERVER_ERROR, exc.message)
                return
            except Exception as exc:  # azure-identity errors may quote anything: type only
                logger.warning("keyless: azure endpoint cannot serve: %s", type(exc).__name__)
                self._refuse(HTTPStatus.INTERNAL_SERVER_ERROR,
                             f"cannot produce a token ({type(exc).__name__})")
                return
            self.send_json(HTTPStatus.OK, document)

        def _answer(self) -> dict[str, str]:
            if not self.peer_is_loopback():
                raise AzureRequestRefused(HTTPStatus.FORBIDDEN, "loopback clients only")
            url = urlsplit(self.path)
            if url.path != TOKEN_PATH:
                raise AzureRequestRefused(HTTPStatus.NOT_FOUND, f"only {TOKEN_PATH}")
            header = self.headers.get(HEADER_NAME)
            if header is None:
                raise AzureRequestRefused(HTTPStatus.UNAUTHORIZED,
                                          f"missing {HEADER_NAME}; fix: set IDENTITY_HEADER "
                                          "as keyless set it for this process")
            if not endpoint.authorized(header):
                raise AzureRequestRefused(HTTPStatus.FORBIDDEN, f"wrong {HEADER_NAME}")
            context = endpoint.caller_context(_address(self.client_address),
                                              _address(self.server.server_address))
            return endpoint.token_document(parse_qs(url.query), context)

    return Handler

