"""Delivery to unmodified code and subprocesses: token files plus the SDKs' own variables.

Token files are written atomically (temp file + rename, mode 0600) in a 0700 directory, one
file per audience, and kept fresh by a background thread driven by the refresher's schedule.
Environment variables carry only paths, ARNs, ids and session names: never a secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError, KeylessError
from .identity import Keyless

__all__ = ["TokenDirectory", "TokenFileKeeper", "sdk_environment", "worker_environment",
           "STATIC_AWS_VARIABLES"]

logger = logging.getLogger("keyless.delivery")

#: Static-key variables removed from a child's environment: they would win over web identity
#: in every AWS SDK's default chain.
STATIC_AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                        "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")


class TokenDirectory:
    """A private (0700) directory holding one token file per audience.

    ``path=None`` makes a fresh temporary directory, removed by :meth:`cleanup`. A given path
    is created 0700 if missing and refused if it is readable or writable by others.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is None:
            self.path = Path(tempfile.mkdtemp(prefix="keyless-"))
            self._owned = True
        else:
            self.path = Path(path)
            self._owned = False
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            mode = stat.S_IMODE(self.path.stat().st_mode)
            if mode & 0o077:
                raise ConfigError(
                    f"delivery: token_dir {str(self.path)!r} has mode {mode:o}; fix: chmod 700 "
                    "it or choose a private directory", field="delivery.token_dir")
        os.chmod(self.path, 0o700)

    def file_for(self, audience: str) -> Path:
        """The file name for an audience: readable slug plus a hash (distinct audiences never
        share a file)."""
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", audience).strip("_")[:48] or "token"
        digest = hashlib.sha256(audience.encode()).hexdigest()[:8]
        return self.path / f"{slug}-{digest}.jwt"

    def write(self, audience: str, token: str) -> Path:
        """Atomically replace the audience's token file (0600)."""
        final = self.file_for(audience)
        fd, temp = tempfile.mkstemp(dir=self.path, prefix=".tmp-", suffix=".jwt")
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                os.fchmod(handle.fileno(), 0o600)
                handle.write(token)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return final

    def cleanup(self) -> None:
        """Remove the directory if keyless made it."""
        if self._owned:
            shutil.rmtree(self.path, ignore_errors=True)


def sdk_environment(identity: Keyless, files: dict[str, Path]) -> dict[str, str]:
    """The SDK-native variables pointing at the token files (paths and ids only)."""
    env: dict[str, str] = {}
    aws = identity.config.target.aws
    if aws is not None:
        exchange = identity.aws()
        env["AWS_WEB_IDENTITY_TOKEN_FILE"] = str(files[identity.resolve_audience(aws.audience)])
        env["AWS_ROLE_ARN"] = aws.role_arn
        env["AWS_ROLE_SESSION_NAME"] = exchange.session_name
        env["AWS_REGION"] = exchange.region
        env["AWS_DEFAULT_REGION"] = exchange.region
        if exchange.sts_endpoint_url:
            env["AWS_ENDPOINT_URL_STS"] = exchange.sts_endpoint_url
    return env


def delivery_audiences(identity: Keyless) -> list[str]:
    """The audiences that need a token file for the configured targets."""
    audiences: list[str] = []
    aws = identity.config.target.aws
    if aws is not None:
        audiences.append(identity.resolve_audience(aws.audience))
    if not audiences:
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

    def write_all(self) -> None:
        """Fetch (through the refreshers) and write every audience's file if it changed."""
        for audience in self.audiences:
            token = self.identity.subject_token(audience)
            if self._written.get(audience) != token.fingerprint:
                self.files[audience] = self.directory.write(audience, token.token.reveal())
                if audience in self._written:
                    self.rotations += 1
                self._written[audience] = token.fingerprint

    def _next_wake(self) -> float:
        now = self.identity.clock.time()
        due = [r.next_refresh_at() for r in (self.identity.token_refresher(a)
                                             for a in self.audiences)]
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
