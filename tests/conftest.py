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


@pytest.fixture(scope="module")
def local_ray():
    """An embedded Ray for one test module: starting one takes seconds on 2 cores."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()
