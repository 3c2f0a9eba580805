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


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave without the interpreter's teardown once every result is reported.

    After ray.shutdown() Ray's gRPC and io threads and Arrow's S3 event loop are still alive in
    this process, and C++ static destructors racing them crash now and then at exit ("pure
    virtual method called", then SIGSEGV: apache/arrow#38352 is one such report): a green run
    then exits 139. The suite's exit status is what pytest would have returned.
    """
    import os
    import sys

    session = getattr(config, "_cogscale_session", None)
    if session is None:  # no session ran (--help, a usage error): pytest's own exit is fine
        return
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass
    if "pyarrow._s3fs" in sys.modules:
        import pyarrow.fs

        pyarrow.fs.finalize_s3()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(session.exitstatus))


def pytest_sessionstart(session):
    session.config._cogscale_session = session
