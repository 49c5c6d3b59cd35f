"""keyless.testing.free_ports: distinct free loopback ports, never one to avoid."""

from __future__ import annotations

import socket

from keyless.testing import free_ports


def test_ports_are_distinct_free_and_never_avoided() -> None:
    first = free_ports(20)
    assert len(set(first)) == 20
    again = free_ports(20, avoid=set(first))
    assert len(set(again)) == 20 and not set(again) & set(first)
    for port in again:  # free: each can be bound
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))
