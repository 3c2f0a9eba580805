"""`ray job submit --working-dir . -- python -m jobs.build_corpus ...` against a real head on loopback.

Slow (a whole Ray cluster starts): it proves the job runs unchanged on a cluster, as users submit it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.writer import STATS_FILE
from tests.ray_ports import free_port, node_ports

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
# Head and client agree on no token: the cluster listens on loopback only, inside the test.
# The job's `python` must be this environment's, as on a cluster whose nodes have the project.
CLUSTER_ENV = {
    **os.environ,
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ADDRESS": "",
    "RAY_AUTH_MODE": "disabled",
    "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
}


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    # 127.0.0.2, still loopback: `ray start` swaps 127.0.0.1 for the machine's own address, and
    # the job agent then registers under an address the job server does not look for
    port, dashboard = free_port(), free_port()
    temp = tmp_path_factory.mktemp("ray")
    env = CLUSTER_ENV
    cmd = [RAY, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.2",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=2",
           f"--temp-dir={temp}", "--disable-usage-stats", *node_ports()]
    head = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:
            break  # it answers (Ray's token auth may refuse an anonymous request): it is up
        except OSError:
            if time.monotonic() > deadline or head.poll() is not None:
                os.killpg(head.pid, signal.SIGKILL)
                pytest.fail("the Ray head did not start")
            time.sleep(1)
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


def test_build_corpus_runs_under_ray_job_submit(tmp_path, ray_head, http_server):
    urls = [http_server.url(p) for p in ("/img/jpeg.jpg", "/img/png.png", "/status/404", "/html")]
    pq.write_table(pa.table({"url": urls, "uid": ["a", "b", "c", "d"]}), tmp_path / "in.parquet")
    out = tmp_path / "out"
    cmd = [RAY, "job", "submit", "--address", ray_head, "--working-dir", REPO, "--",
           "python", "-m", "jobs.build_corpus", "--input", str(tmp_path / "in.parquet"), "--output", str(out),
           "--allow-networks", "127.0.0.1/32", "--timeout", "5"]
    deadline = time.monotonic() + 240
    while True:  # the dashboard answers before its job agent is ready: Ray says to try again
        done = subprocess.run(cmd, cwd=REPO, env=CLUSTER_ENV, capture_output=True, text=True, timeout=400)
        if "No available agent" not in done.stdout + done.stderr or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    stats = json.load(open(out / STATS_FILE))
    assert (stats["input_rows"], stats["kept"]) == (4, 2)
    assert stats["rejected_by_reason"] == {"http_error": 1, "not_an_image": 1}
