"""Free loopback ports for the servers a test starts."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Collection

__all__ = ["free_ports"]


def free_ports(count: int = 1, *, avoid: Collection[int] = ()) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1, none of them in ``avoid``.

    All are held open together while they are picked: ports picked one at a time may repeat
    (the kernel can hand a just-closed port out again), and two servers given the same port
    leave one unable to bind. A port is free when this returns; bind it soon.
    """
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in avoid:
                ports.append(port)
        return ports
