"""Several hosts on one machine for whole-system tests: Linux network namespaces joined by a
veth pair, with this machine's loopback services reachable at the same loopback ports inside
each namespace.

``hosts(2)`` makes namespaces ``kl<id>-0`` and ``kl<id>-1`` (root needed), each with its own
loopback and one end of a veth pair (``10.213.<n>.1`` and ``.2``: addresses inside the
namespaces the test made, nowhere else), so the two are different hosts to each other: their
own ``127.0.0.1``, their own ``/proc/net/tcp``, one link between them. ``Hosts.bridge(port)``
makes ``127.0.0.1:port`` inside every namespace lead to ``127.0.0.1:port`` here (the IdP, the
STS front, S3): a listening socket is opened inside each namespace (``setns`` in a short-lived
thread: a socket stays in the namespace it was made in) and every connection it accepts is
pumped to the port here. Everything is removed on exit. Where namespaces cannot be made
(not root, no ``ip``), :func:`hosts` yields None and the caller falls back to loopback.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Host", "Hosts", "hosts"]

CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Host:
    """One namespace: its name, its veth interface and address on the link."""

    namespace: str
    interface: str
    address: str

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this host (``ip netns exec``)."""
        return ["ip", "netns", "exec", self.namespace, *argv]


@dataclass
class Hosts:
    members: list[Host]
    _listeners: list[socket.socket] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def bridge(self, *ports: int) -> None:
        """Make ``127.0.0.1:PORT`` inside every host lead to ``127.0.0.1:PORT`` here."""
        for host in self.members:
            for port in ports:
                listener = _listen_in(host.namespace, port)
                self._listeners.append(listener)
                threading.Thread(target=self._accept, args=(listener, port), daemon=True,
                                 name=f"netns-bridge-{host.namespace}-{port}").start()

    def _accept(self, listener: socket.socket, port: int) -> None:
        while not self._stop.is_set():
            try:
                inside, _ = listener.accept()
            except OSError:
                return
            try:
                outside = socket.create_connection(("127.0.0.1", port), timeout=10)
            except OSError:
                inside.close()
                continue
            outside.settimeout(None)
            for source, sink in ((inside, outside), (outside, inside)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


def _listen_in(namespace: str, port: int) -> socket.socket:
    """A socket listening on 127.0.0.1:port inside ``namespace``."""
    made: list[socket.socket | BaseException] = []

    def inside() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/var/run/netns/{namespace}") as handle:
                if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(64)
            made.append(listener)
        except BaseException as exc:
            made.append(exc)

    thread = threading.Thread(target=inside)  # the thread's namespace ends with it
    thread.start()
    thread.join()
    result = made[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def hosts(count: int = 2) -> Iterator[Hosts | None]:
    """``count`` (1 or 2) network namespaces joined by a veth pair, or None where they cannot
    be made here; removed afterwards."""
    if os.geteuid() != 0 or count not in (1, 2):
        yield None
        return
    tag = secrets.token_hex(3)
    subnet = 16 + int(tag, 16) % 200
    members = [Host(f"kl{tag}-{i}", f"kl{tag}v{i}", f"10.213.{subnet}.{i + 1}")
               for i in range(count)]
    made: list[str] = []
    try:
        for host in members:
            _ip("netns", "add", host.namespace)
            made.append(host.namespace)
            _ip("-n", host.namespace, "link", "set", "lo", "up")
        if count == 2:
            _ip("link", "add", members[0].interface, "netns", members[0].namespace, "type",
                "veth", "peer", "name", members[1].interface, "netns", members[1].namespace)
            for host in members:
                _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev",
                    host.interface)
                _ip("-n", host.namespace, "link", "set", host.interface, "up")
    except (OSError, subprocess.SubprocessError):
        for namespace in made:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
        yield None
        return
    group = Hosts(members)
    try:
        yield group
    finally:
        group.close()
        for namespace in made:  # deleting a namespace removes its end of the veth pair too
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
