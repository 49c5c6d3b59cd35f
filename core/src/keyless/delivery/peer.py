"""Which local process is on the other end of a loopback TCP connection (Linux, ``/proc``).

The loopback credential endpoint serves each calling process its own identity (a rank that
``torchrun`` started has its own ``RANK`` in its own environment), so it must know who calls.
On Linux the kernel tells: ``/proc/net/tcp`` (``tcp6``) lists every socket of this network
namespace with its owner's uid and inode, and ``/proc/PID/fd`` links to ``socket:[INODE]`` for
the sockets a process holds. :func:`find_peer` joins the two for one connection.

Only processes this process may inspect are found (same user, or root); a process of another
user is reported by its socket's uid, so a caller can refuse it without reading anything of it.
Everything here is read-only and answers ``None`` (never raises) where ``/proc`` cannot tell:
another OS, a connection that is already gone, a process that exited meanwhile.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PeerProcess", "ancestors", "find_peer", "peer_support", "process_environ"]

PROC = Path("/proc")


@dataclass(frozen=True)
class PeerProcess:
    """The process holding the client end of a connection, and the socket's owner uid."""

    pid: int
    uid: int


def peer_support() -> str | None:
    """None when peers can be identified here, else why not (for messages and tests)."""
    if not (PROC / "net" / "tcp").exists():
        return "no /proc/net/tcp (peer processes are identified on Linux only)"
    return None


def _proc_address(address: str, port: int) -> tuple[str, str]:
    """``(hex address, hex port)`` as ``/proc/net/tcp[6]`` writes them (address in host byte
    order per 32-bit word); a v4-mapped v6 address is given as a v4 one in ``tcp``."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    packed = ip.packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    hex_address = "".join(f"{word:08X}" for word in words)
    return hex_address, f"{port:04X}"


def _socket_entries(local: tuple[str, str], remote: tuple[str, str]) -> Iterator[tuple[int, int]]:
    """``(uid, inode)`` of sockets whose local and remote ends are the given hex pairs."""
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            here, there = fields[1].split(":"), fields[2].split(":")
            if (_same_address(here, local) and _same_address(there, remote)):
                yield int(fields[7]), int(fields[9])


def _same_address(entry: list[str], wanted: tuple[str, str]) -> bool:
    """Whether a ``/proc/net`` ``ADDR:PORT`` pair is ``wanted``; a v6 table's v4-mapped
    address (``0000000000000000FFFF0000`` + v4) matches the v4 one."""
    address, port = entry
    if port != wanted[1]:
        return False
    if address == wanted[0]:
        return True
    return len(address) == 32 and address[:24] == "0000000000000000FFFF0000" \
        and address[24:] == wanted[0]


def _pids(preferred: Iterable[int]) -> Iterator[int]:
    seen: set[int] = set()
    for pid in preferred:
        if pid not in seen:
            seen.add(pid)
            yield pid
    try:
        names = os.listdir(PROC)
    except OSError:
        return
    for name in names:
        if name.isdigit() and int(name) not in seen:
            yield int(name)


def _holds(pid: int, link: str) -> bool:
    try:
        descriptors = os.scandir(PROC / str(pid) / "fd")
    except OSError:
        return False
    with descriptors:
        for entry in descriptors:
            try:
                if os.readlink(entry.path) == link:
                    return True
            except OSError:
                continue
    return False


def find_peer(client: tuple[str, int], server: tuple[str, int], *,
              candidates: Iterable[int] = ()) -> PeerProcess | None:
    """The process holding the client end of the TCP connection ``client`` -> ``server``
    (each ``(address, port)`` as the server's socket reports them), or None.

    ``candidates`` are pids to look at first (earlier callers); every process this one may
    inspect is looked at after them. A socket owned by another user is returned with that
    uid and ``pid=0`` when its process cannot be seen.
    """
    if peer_support() is not None:
        return None
    try:
        local = _proc_address(*client)
        remote = _proc_address(*server)
    except ValueError:
        return None
    for uid, inode in _socket_entries(local, remote):
        if inode == 0:
            continue
        link = f"socket:[{inode}]"
        for pid in _pids(candidates):
            if _holds(pid, link):
                return PeerProcess(pid=pid, uid=uid)
        return PeerProcess(pid=0, uid=uid)
    return None


def process_environ(pid: int) -> dict[str, str] | None:
    """The environment ``pid`` was started with (``/proc/PID/environ``), or None."""
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    environ: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            environ[key.decode(errors="replace")] = value.decode(errors="replace")
    return environ


def _parent(pid: int) -> int | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after the last ')'
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[1]) if len(fields) > 1 else None


def ancestors(pid: int) -> Iterator[int]:
    """``pid``'s parent, grandparent ... up to (and with) pid 1, as ``/proc`` tells now."""
    seen = {pid}
    parent = _parent(pid)
    while parent is not None and parent > 0 and parent not in seen:
        yield parent
        seen.add(parent)
        parent = _parent(parent)
