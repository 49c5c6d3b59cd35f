"""Private files written atomically: the one way keyless puts a token, key or credential
file on disk."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["write_private_file"]


def write_private_file(path: Path, text: str) -> Path:
    """Replace ``path`` with ``text`` atomically: a 0600 temp file in the same directory,
    flushed and fsynced, then renamed over ``path``. A reader sees the old file or the new
    one, never a partial write; nothing is left behind on failure."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return path
