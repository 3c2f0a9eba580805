"""Shared fixtures. The loopback HTTP server lives in tests/http_server.py."""

from __future__ import annotations

import pytest

from tests.http_server import HttpServer


@pytest.fixture(scope="session")
def http_server():
    """One real HTTP server on 127.0.0.1 (ephemeral port) for the whole test session."""
    server = HttpServer().start()
    yield server
    server.stop()
