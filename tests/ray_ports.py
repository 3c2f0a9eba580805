"""Free ports for `ray start` in tests: a node started with Ray's fixed default ports collides
with any other Ray on the machine (another test's, a user's)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_ports() -> list[str]:
    """Every port a node listens on, free ones, so that other Ray instances on the machine (other
    tests, other users) never collide with this cluster; workers bind random ports (0, 0)."""
    return [
        f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
        "--min-worker-port=0", "--max-worker-port=0",
    ]  # fmt: skip
