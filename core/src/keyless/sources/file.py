"""A JWT in a file: Kubernetes projected service-account tokens, EKS/AKS token files.

The file is re-read on every :meth:`FileTokenSource.fetch` (kubelet rotates it in place).
Audience: a file's ``aud`` is fixed by whoever wrote it, so the requested audience is ignored
(``spec.audience`` is informational).

- missing file -> :class:`SourceMisconfigured` naming the path, or ``None`` when built with
  ``missing_ok=True`` (ambient detection);
- not a regular file (a FIFO, a directory, a device) -> :class:`SourceMisconfigured`, without
  blocking: the file is opened non-blocking and its open descriptor checked (no race);
- empty, unreadable or larger than :data:`~keyless.tokens.MAX_TOKEN_BYTES` ->
  :class:`SourceMisconfigured`.
"""

from __future__ import annotations

import os
import stat

from ..config import FileSource
from ..errors import SourceMisconfigured
from ..tokens import MAX_TOKEN_BYTES, SubjectToken

__all__ = ["FileTokenSource"]

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _read_regular(path: str) -> bytes:
    """Up to ``MAX_TOKEN_BYTES + 1`` bytes of the regular file at ``path`` (not a log or a
    device). Opened with O_NONBLOCK (a FIFO without a writer does not block the open) and
    checked on the open descriptor (what is read is what was checked); anything but a regular
    file raises :class:`SourceMisconfigured` naming ``source.path``."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "a special file")
            raise SourceMisconfigured(
                f"source file: cannot read {path!r}: it is {kind}, not a regular file; fix: "
                "point `source.path` at the token file (for Kubernetes, a projected "
                "serviceAccountToken volume)")
        data = b""
        while len(data) <= MAX_TOKEN_BYTES:
            chunk = os.read(fd, MAX_TOKEN_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
        return data
    finally:
        os.close(fd)


class FileTokenSource:
    """Reads the JWT at ``spec.path`` on every fetch."""

    name = "file"

    def __init__(self, spec: FileSource, *, missing_ok: bool = False) -> None:
        self.spec = spec
        self.missing_ok = missing_ok

    @property
    def path(self) -> str:
        return self.spec.path

    def fetch(self, audience: str | None) -> SubjectToken | None:
        """Read the file now; the requested ``audience`` is ignored (the file's is fixed)."""
        try:
            data = _read_regular(self.spec.path)
        except FileNotFoundError:
            if self.missing_ok:
                return None
            raise SourceMisconfigured(
                f"source file: {self.spec.path!r} does not exist; fix: point `path` at the "
                "token file (for Kubernetes, a projected serviceAccountToken volume)"
            ) from None
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
            raise SourceMisconfigured(
                f"source file: cannot read {self.spec.path!r} ({type(exc).__name__}: "
                f"{getattr(exc, 'strerror', None) or 'error'}); fix: make it a file readable by "
                "this process"
            ) from None
        if len(data) > MAX_TOKEN_BYTES:
            raise SourceMisconfigured(
                f"source file: {self.spec.path!r} is larger than {MAX_TOKEN_BYTES} bytes: not a "
                "token file; fix: point `path` at the token file")
        try:
            raw = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise SourceMisconfigured(
                f"source file: {self.spec.path!r} is not UTF-8 text; fix: point `path` at a "
                "file holding one JWT") from None
        if not raw:
            raise SourceMisconfigured(
                f"source file: {self.spec.path!r} is empty; fix: check whatever writes the "
                "token file (kubelet, the platform's agent)")
        return SubjectToken.from_jwt(raw, origin=f"file:{self.spec.path}")

    def __repr__(self) -> str:
        return f"FileTokenSource(path={self.spec.path!r}, missing_ok={self.missing_ok})"
