"""Delivery to unmodified code and subprocesses: token files plus the SDKs' own variables.

Token files are written atomically (temp file + rename, mode 0600) in a 0700 directory, one
file per audience, and kept fresh by a background thread driven by the refresher's schedule.
Environment variables carry only paths, ARNs, ids and session names: never a secret.

The SDKs' own variables cannot carry a per-worker narrowing (an AWS session policy or policy
ARNs, a GCP credential access boundary): a child that used them would get the whole role. So
:func:`sdk_environment` refuses such a target (``keyless exec``/``env``, the hosts'
``worker_env``) or, for a Ray node's shared variables, leaves its variables out; such
credentials reach a child only through the loopback credential endpoint (AWS) or in-process.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import ConfigError, KeylessError
from ..identity import Keyless
from ..targets.registry import STATIC_AWS_VARIABLES, TARGETS, configured_kinds
from .files import private_directory, write_private_file

__all__ = ["TokenDirectory", "TokenFileKeeper", "sdk_environment", "worker_environment",
           "narrowing_fields",
           "STATIC_AWS_VARIABLES", "ENDPOINT_SHADOWED_VARIABLES", "endpoint_environment",
           "SHADOWING_VARIABLES", "shadowing_variables", "delivery_audiences"]

if TYPE_CHECKING:
    from ..config import AwsTarget

logger = logging.getLogger("keyless.delivery")

#: Per target, the variables that would win over keyless's federated identity in the
#: vendor SDK's default chain (static keys, secrets, tokens): removed from a child's environment.
SHADOWING_VARIABLES: dict[str, tuple[str, ...]] = {
    kind.name: kind.shadowed for kind in TARGETS if kind.shadowed}


def shadowing_variables(identity: Keyless) -> tuple[str, ...]:
    """The variables to drop from a child's environment for the configured targets."""
    return tuple(name for kind, _ in configured_kinds(identity) for name in kind.shadowed)


class TokenDirectory:
    """A private (0700) directory holding one token file per audience.

    ``path=None`` makes a fresh temporary directory, removed by :meth:`cleanup`. A given path
    is created 0700 if missing and refused if it is readable or writable by others, or cannot
    be made (a :class:`ConfigError` naming ``delivery.token_dir``); there
    :meth:`cleanup` removes what keyless wrote (every entry new or replaced since this object
    was made: token files, the GCP external_account file, the endpoint's token) and keeps the
    rest and the directory.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is None:
            self.path = Path(tempfile.mkdtemp(prefix="keyless-"))
            self._owned = True
        else:
            self.path = private_directory(Path(path))  # a ConfigError naming the field
            self._owned = False
        os.chmod(self.path, 0o700)
        self._before = self._entries()

    def _entries(self) -> dict[str, int]:
        """Name -> inode of each entry now (a file replaced by rename gets a new inode)."""
        try:
            return {entry.name: entry.inode() for entry in os.scandir(self.path)}
        except OSError:
            return {}

    def file_for(self, audience: str) -> Path:
        """The file name for an audience: readable slug plus a hash (distinct audiences never
        share a file)."""
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", audience).strip("_")[:48] or "token"
        digest = hashlib.sha256(audience.encode()).hexdigest()[:8]
        return self.path / f"{slug}-{digest}.jwt"

    def write(self, audience: str, token: str) -> Path:
        """Atomically replace the audience's token file (0600)."""
        return write_private_file(self.file_for(audience), token)

    def cleanup(self) -> None:
        """Remove the directory if keyless made it, else what keyless wrote in it."""
        if self._owned:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for name, inode in self._entries().items():
            if self._before.get(name) != inode:
                with contextlib.suppress(OSError):
                    (self.path / name).unlink()


def narrowing_fields(identity: Keyless) -> dict[str, str]:
    """Target name -> the config field narrowing its credentials per worker in a way the
    SDKs' own variables cannot carry (``aws``: session_policy / policy_arns, ``gcp``:
    access_boundary)."""
    return {kind.name: field for kind, spec in configured_kinds(identity)
            if (field := kind.narrowing(spec)) is not None}


_NARROWING_FIXES = {
    "aws": ("AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE", "use the loopback credential "
            "endpoint, which serves the narrowed credentials (keyless exec --credential-endpoint, "
            "keyless_ray.credential_endpoint()), or keyless's own sessions in the process"),
    "gcp": ("GOOGLE_APPLICATION_CREDENTIALS", "use Keyless(...).google_credentials() in the "
            "process (it applies the boundary), or give the subprocess a config without "
            "access_boundary"),
}


def _narrowed(narrowing: Mapping[str, str], target: str,
              narrowed: Literal["refuse", "omit"]) -> bool:
    """Whether ``target``'s variables must be left out (``narrowing``: :func:`narrowing_fields`);
    raises when ``narrowed="refuse"``."""
    field = narrowing.get(target)
    if field is None:
        return False
    variables, fix = _NARROWING_FIXES[target]
    message = (f"delivery: {field} narrows each worker's credentials, and the SDK variables "
               f"({variables}) cannot carry it: a child using them would get the whole "
               f"{'role' if target == 'aws' else 'principal'}")
    if narrowed == "refuse":
        raise ConfigError(f"{message}; fix: {fix}", field=field)
    logger.warning("keyless: %s; they are not exported (fix: %s)", message, fix)
    return True


def sdk_environment(identity: Keyless, files: dict[str, Path], *,
                    narrowed: Literal["refuse", "omit"] = "refuse",
                    exclude: Collection[str] = ()) -> dict[str, str]:
    """The SDK-native variables pointing at the token files (paths and ids only).

    A target narrowed per worker (:func:`narrowing_fields`) raises :class:`ConfigError`
    naming the field (``narrowed="refuse"``), or its variables are left out with a warning
    (``"omit"``: variables shared by every worker of a Ray node). Targets in ``exclude`` are
    delivered another way (AWS through the credential endpoint) and left out."""
    env: dict[str, str] = {}
    narrowing = narrowing_fields(identity)
    for kind, spec in configured_kinds(identity):
        if kind.environment is None or kind.name in exclude \
                or _narrowed(narrowing, kind.name, narrowed):
            continue
        if kind.name == "aws" and narrowed == "omit" and not _ranks_resolved(identity, spec):
            continue
        env.update(kind.environment(identity, spec,
                                    files[identity.target_audience(kind.name)]))
    from ..targets.oauth2 import HF_FILE_KEY

    if identity.config.target.huggingface is not None and HF_FILE_KEY in files:
        env["HF_TOKEN_PATH"] = str(files[HF_FILE_KEY])  # never HF_TOKEN: no secret in env
    return env


def _ranks_resolved(identity: Keyless, spec: AwsTarget) -> bool:
    """Whether the AWS templates can be rendered for this (a node's shared) context; logs why
    the AWS variables are left out when not."""
    from ..targets.aws import check_ranks_resolved

    try:
        check_ranks_resolved(spec, identity.context)
    except ConfigError as exc:
        logger.warning("keyless: %s; the AWS variables are not exported", exc.message)
        return False
    return True


#: Variables dropped from a child's environment when it gets the loopback credential endpoint:
#: in every AWS SDK's default chain, env web identity comes before container credentials, and
#: a relative container URI or an inline authorization token wins over the full URI / file.
ENDPOINT_SHADOWED_VARIABLES = ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                               "AWS_ROLE_SESSION_NAME", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                               "AWS_CONTAINER_AUTHORIZATION_TOKEN")


def endpoint_environment(identity: Keyless, endpoint_env: dict[str, str]) -> dict[str, str]:
    """The variables for a child using the loopback credential endpoint: the endpoint's own
    (URL and token-file path, from ``CredentialServer.env()``), the region and the STS
    endpoint when one is configured (as web identity delivery passes them)."""
    from ..targets.aws import resolve_region, resolve_sts_endpoint

    env = dict(endpoint_env)
    if identity.config.target.aws is not None:
        sts = resolve_sts_endpoint(identity.config.target.aws, identity.environ)
        if sts:  # as web identity delivery passes it: the child's own STS calls go there too
            env["AWS_ENDPOINT_URL_STS"] = sts
        region = resolve_region(identity.config.target.aws, identity.environ)
        env["AWS_REGION"] = region
        env["AWS_DEFAULT_REGION"] = region
    return env


def delivery_audiences(identity: Keyless, exclude: Collection[str] = ()) -> list[str]:
    """The audiences that need a token file for the configured targets (less those in
    ``exclude``, delivered another way; empty when that leaves none). The RFC 8693 targets'
    subject tokens are among them: their exchange happens here."""
    audiences = list(dict.fromkeys(  # one file per distinct audience
        identity.target_audience(kind.name) for kind, _ in configured_kinds(identity)
        if kind.name not in exclude))
    if not audiences and not exclude:
        audiences.append(identity.resolve_audience())
    return audiences


class TokenFileKeeper:
    """Keeps one token file per audience fresh in the background.

    :meth:`start` writes every file once, synchronously (so a broken source fails before a
    child starts), then a daemon thread rewrites each file when its refresher produces a new
    token. A failed refresh leaves the current (still valid) file in place and is retried on
    the refresher's backoff schedule.
    """

    def __init__(self, identity: Keyless, directory: TokenDirectory,
                 audiences: list[str] | None = None) -> None:
        self.identity = identity
        self.directory = directory
        self.audiences = audiences if audiences is not None else delivery_audiences(identity)
        self.files: dict[str, Path] = {}
        self._written: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rotations = 0
        from ..targets.oauth2 import exchanged_token_files

        self.exchanged = exchanged_token_files(identity)  # e.g. the HF token (HF_TOKEN_PATH)

    def write_all(self) -> None:
        """Fetch (through the refreshers) and write every audience's file if it changed."""
        for audience in self.audiences:
            token = self.identity.subject_token(audience)
            if self._written.get(audience) != token.fingerprint:
                self.files[audience] = self.directory.write(audience, token.token.reveal())
                if audience in self._written:
                    self.rotations += 1
                self._written[audience] = token.fingerprint
        for writer in self.exchanged:
            self.files[writer.key] = writer.write(self.directory)

    def _next_wake(self) -> float:
        now = self.identity.clock.time()
        due = [r.next_refresh_at() for r in (self.identity.token_refresher(a)
                                             for a in self.audiences)]
        due += [writer.next_refresh_at() for writer in self.exchanged]
        times = [t for t in due if t is not None]
        if not times:
            return 1.0
        return min(max(min(times) - now, 0.2), 60.0)

    def _run(self) -> None:
        while not self._stop.wait(self._next_wake()):
            try:
                self.write_all()
            except KeylessError as exc:
                logger.warning("keyless: token file refresh failed: %s", exc)
            except OSError as exc:
                logger.warning("keyless: cannot write token file: %s", type(exc).__name__)

    def start(self) -> TokenFileKeeper:
        self.write_all()
        self._thread = threading.Thread(target=self._run, name="keyless-token-files",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


@contextlib.contextmanager
def worker_environment(identity: Keyless, token_dir: str | None = None,
                       ) -> Iterator[dict[str, str]]:
    """Token files kept fresh plus the SDK variables for a subprocess, for the ``with`` body.

    Yields the variables to add to the child's environment (paths and ids only).
    """
    directory = TokenDirectory(token_dir or identity.config.delivery.token_dir)
    keeper = TokenFileKeeper(identity, directory)
    try:
        keeper.start()
        yield sdk_environment(identity, keeper.files)
    finally:
        keeper.stop()
        directory.cleanup()
