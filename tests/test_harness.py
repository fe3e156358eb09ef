"""The harness's own guarantees that other tests rely on."""

from __future__ import annotations

import socket

from tests.harness import free_ports


def test_free_ports_are_distinct_free_and_avoid_the_taken_ones() -> None:
    taken = free_ports(1)
    ports = free_ports(64, taken=taken)
    assert len(set(ports)) == 64 and taken[0] not in ports
    for port in ports:  # each one can be listened on now
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
