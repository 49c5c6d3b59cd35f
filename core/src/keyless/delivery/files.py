"""Private files written atomically (the one way keyless puts a token, key or credential file
on disk), in a private directory made by :func:`private_directory`."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from ..config import pseudo_filesystem
from ..errors import ConfigError

__all__ = ["private_directory", "write_private_file"]

_FIELD = "delivery.token_dir"
_FIX = ("fix: set delivery.token_dir (or --token-dir) to a directory on a real filesystem that "
        "this process can create, e.g. under /tmp or $XDG_RUNTIME_DIR, or leave it out for a "
        "private temp dir")


def private_directory(path: Path) -> Path:
    """Create ``path`` (and its parents) 0700 if missing and return it; refuse one readable or
    writable by others. Every failure (a NUL byte, a path under a regular file or under
    ``/proc`` or ``/sys``, no permission) is a :class:`ConfigError` naming
    ``delivery.token_dir`` and the fix."""
    shown = repr(str(path))
    problem = ""
    try:
        root = pseudo_filesystem(str(path)) or pseudo_filesystem(str(path.resolve()))
        if root is not None:
            problem = f"is under {root}, a kernel pseudo-filesystem"
        else:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise ConfigError(f"delivery: token_dir {shown} has mode {mode:o}; fix: chmod 700 "
                                  "it or choose a private directory", field=_FIELD)
            os.chmod(path, 0o700)
    except ValueError:  # os functions refuse a NUL byte so
        problem = "contains a NUL byte"
    except FileExistsError:
        problem = "exists and is not a directory"
    except NotADirectoryError:
        problem = "is under a file, not a directory"
    except OSError as exc:
        problem = f"cannot be created ({type(exc).__name__}: {exc.strerror or 'error'})"
    if problem:
        raise ConfigError(f"delivery: token_dir {shown} {problem}; {_FIX}", field=_FIELD)
    return path


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
