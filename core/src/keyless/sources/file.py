"""A JWT in a file: Kubernetes projected service-account tokens, EKS/AKS token files.

The file is re-read on every :meth:`FileTokenSource.fetch` (kubelet rotates it in place).
Audience: a file's ``aud`` is fixed by whoever wrote it, so the requested audience is ignored
(``spec.audience`` is informational).

- missing file -> :class:`SourceMisconfigured` naming the path, or ``None`` when built with
  ``missing_ok=True`` (ambient detection);
- empty or unreadable file -> :class:`SourceMisconfigured`.
"""

from __future__ import annotations

from pathlib import Path

from ..config import FileSource
from ..errors import SourceMisconfigured
from ..tokens import SubjectToken

__all__ = ["FileTokenSource"]

# Far above any real JWT; keeps a misconfigured path (a log, a device) from being slurped.
_MAX_BYTES = 1 << 20


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
        path = Path(self.spec.path)
        try:
            with path.open("rb") as handle:
                data = handle.read(_MAX_BYTES + 1)
        except FileNotFoundError:
            if self.missing_ok:
                return None
            raise SourceMisconfigured(
                f"source file: {self.spec.path!r} does not exist; fix: point `path` at the "
                "token file (for Kubernetes, a projected serviceAccountToken volume)"
            ) from None
        except OSError as exc:
            raise SourceMisconfigured(
                f"source file: cannot read {self.spec.path!r} ({type(exc).__name__}: "
                f"{exc.strerror or 'error'}); fix: make it a file readable by this process"
            ) from None
        if len(data) > _MAX_BYTES:
            raise SourceMisconfigured(
                f"source file: {self.spec.path!r} is larger than {_MAX_BYTES} bytes: not a "
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
