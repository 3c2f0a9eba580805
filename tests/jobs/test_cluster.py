"""A two-node Ray cluster on this machine: the second node dies part-way through jobs.build_corpus.

A head (`ray start --head`) and a second node (`ray start --address`), each with its own temp dir,
loopback address (127.0.0.2 and 127.0.0.3: Ray replaces 127.0.0.1 itself by the machine's
network address), free ports and a custom resource naming it, both from this environment. The job is
driven as users drive it on a cluster: `python -m jobs.build_corpus` with RAY_ADDRESS pointing at
the head. Every row is a slow download, so the fetch actors on both nodes are busy when the second
node's whole process group (raylet, object store, its workers and actors) is SIGKILLed, as when a
machine goes away. The job must finish on the head with every input row exactly once.

Slow (two Ray nodes start): one test, a few tens of seconds.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import schema
from pipeline.reader import make_key
from pipeline.writer import CORPUS_DIR, REJECTS_DIR, SHARDS_DIR, STATS_FILE
from tests.ray_ports import free_port, node_ports

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
FILES, ROWS_PER_FILE = 8, 160  # one read task per file: blocks for every fetch actor
# Each /slow/ response takes ~0.4 s; 4 actors x 8 in flight keep the job busy for ~20 s.
JOB_FLAGS = ["--allow-networks", "127.0.0.1/32", "--timeout", "20", "--retries", "2",
             "--download-workers", "4", "--requests-per-worker", "8", "--shard-size", "80"]  # fmt: skip
FETCH_ACTOR = "ray::MapWorker("  # the process title of a Ray Data map actor (jobs.build_corpus: the fetch stage)
ENV = {
    **os.environ,
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ADDRESS": "",
    "RAY_AUTH_MODE": "disabled",  # loopback only, inside the test
    "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    # Notice a dead node within ~5-10 s (default: ~30 s), yet let a live one starved of CPU on a
    # loaded machine miss a few checks.
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "2000",
    "RAY_health_check_failure_threshold": "5",
}


class Node:
    """One `ray start --block` in a session of its own: every process of the node (raylet, agents,
    workers, which Ray puts in process groups of their own) is in it, and killing them all is
    losing the node."""

    def __init__(self, name: str, ip: str, temp_root: str, args: list[str]):
        self.name = name
        self.temp_dir = os.path.join(temp_root, name)  # short: Ray's unix sockets live under it
        log = open(os.path.join(temp_root, f"{name}.log"), "wb")
        cmd = [RAY, "start", "--block", f"--node-ip-address={ip}", f"--temp-dir={self.temp_dir}",
               "--disable-usage-stats", f'--resources={{"{name}": 1}}', *node_ports(), *args]  # fmt: skip
        self.process = subprocess.Popen(cmd, env=ENV, cwd=REPO, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def pids(self) -> list[int]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.getsid(int(pid)) == self.process.pid:
                    found.append(int(pid))
            except OSError:
                pass
        return found

    def processes(self) -> list[str]:
        """Command lines (Ray sets a worker's to ray::ACTOR_CLASS) of this node's live processes."""
        found = []
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    found.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
        return found

    def kill(self) -> None:
        for _ in range(3):  # a worker forking at that moment could escape one pass
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.process.wait()


def wait_for_nodes(address: str, count: int, deadline: float) -> None:
    """Until `count` nodes are alive in the cluster's GCS (asked by a short-lived client)."""
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    while True:
        done = subprocess.run([sys.executable, "-c", probe, address], env=ENV, capture_output=True, text=True, timeout=120)
        if done.returncode == 0 and done.stdout.split() and int(done.stdout.split()[-1]) >= count:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{count} Ray nodes not up in time: {done.stdout[-500:]} {done.stderr[-2000:]}")
        time.sleep(1)


@pytest.fixture
def cluster():
    temp_root = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # AF_UNIX paths must stay under 108 bytes
    port = free_port()
    nodes = []
    try:
        nodes.append(Node("head", "127.0.0.2", temp_root, [
            "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false", "--dashboard-host=127.0.0.2",
            f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}"]))  # fmt: skip
        address = f"127.0.0.2:{port}"
        deadline = time.monotonic() + 120
        wait_for_nodes(address, 1, deadline)
        nodes.append(Node("second", "127.0.0.3", temp_root, [f"--address={address}", "--num-cpus=2"]))
        wait_for_nodes(address, 2, deadline)
        yield address, nodes[0], nodes[1]
    finally:
        for node in reversed(nodes):  # `ray stop` would stop every Ray on the machine: only ours
            node.kill()
        shutil.rmtree(temp_root, ignore_errors=True)


def read_keys(out) -> list[str]:
    keys = []
    for sub in (CORPUS_DIR, REJECTS_DIR):
        for path in glob.glob(os.path.join(out, SHARDS_DIR, sub, "*.parquet")):
            keys += pq.read_table(path, columns=[schema.KEY]).column(schema.KEY).to_pylist()
    return keys


def test_job_finishes_on_the_survivor_when_a_node_dies(tmp_path, cluster, http_server):
    address, head, second = cluster
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in range(FILES):
        urls = [http_server.url(f"/slow/image.jpg?file={f}&row={i}") for i in range(ROWS_PER_FILE)]
        pq.write_table(pa.table({"url": urls}), inputs / f"{f}.parquet")
    total = FILES * ROWS_PER_FILE
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.build_corpus", "--input", str(inputs), "--output", str(out), *JOB_FLAGS]
    log_path = tmp_path / "job.log"
    with open(log_path, "wb") as log:
        job = subprocess.Popen(cmd, cwd=REPO, env={**ENV, "RAY_ADDRESS": address}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        served = lambda: sum(h.path_qs.startswith("/slow/image.jpg?file=") for h in http_server.hits())  # noqa: E731
        before = served()
        # Part-way: the second node runs a fetch actor and a sixth of the rows have been fetched.
        deadline = time.monotonic() + 180
        while not (served() - before >= total // 6 and any(p.startswith(FETCH_ACTOR) for p in second.processes())):
            assert job.poll() is None, log_path.read_text()[-3000:] + "\n".join(p[:100] for p in second.processes())
            assert time.monotonic() < deadline, "no fetch actor ran on the second node: " + "\n".join(second.processes())
            time.sleep(0.2)
        second.kill()
        fetched_at_kill = served() - before
        assert fetched_at_kill < total * 0.8, "the job was nearly done before the node died"
        code = job.wait(timeout=300)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    output = log_path.read_text()
    assert code == 0, output[-5000:]
    keys = read_keys(out)
    assert len(keys) == len(set(keys)) == total, f"{len(keys)} rows written, {len(set(keys))} distinct, of {total}"
    assert set(keys) == {make_key(f, i) for f in range(FILES) for i in range(ROWS_PER_FILE)}
    stats = json.load(open(out / STATS_FILE))
    assert (stats["input_rows"], stats["kept"]) == (total, total), stats
    assert head.process.poll() is None, "the head must survive"
