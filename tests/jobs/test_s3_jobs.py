"""Both jobs with input and output in a bucket of a real S3 API server on loopback (moto).

The jobs only get `s3://` URIs; endpoint and keys come from AWS_ENDPOINT_URL and the AWS_* keys
in the environment, as a user of an S3-compatible store sets them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from braceexpand import braceexpand

from jobs import build_corpus, label, report
from model.tiny import write_tiny_checkpoint
from pipeline import schema, storage
from pipeline.reader import make_key
from tests.http_server import TABLE_OPTIONS
from tests.s3_server import s3_server  # noqa: F401 - fixture

NET = ["--timeout", "3", "--retries", "0", "--allow-networks", ",".join(TABLE_OPTIONS.allow_networks)]


@pytest.fixture(scope="module", autouse=True)
def ray_after_s3(s3_server, local_ray):  # Ray starts after the S3 variables are set: its workers inherit them
    yield


def put_parquet(uri: str, table: pa.Table) -> None:
    fs, path = storage.resolve(uri)
    storage.write_parquet(fs, path, table)


def read_rows(uri: str, sub: str) -> list[dict]:
    files = storage.committed_shard_files(uri, sub)
    tables = [pq.read_table(storage.open_input_file(f)) for f in files]
    return pa.concat_tables(tables, promote_options="permissive").to_pylist() if tables else []


def test_build_corpus_bucket_to_bucket_killed_and_resumed(s3_server, http_server):
    bucket = s3_server.bucket("corpus-kill")
    fast = [http_server.url("/img/jpeg.jpg")] * 40
    slow = [http_server.url("/hang/silent")] * 20  # each holds its row for the whole timeout
    put_parquet(f"{bucket}/lists/a.parquet", pa.table({"url": fast, "uid": [f"a{i}" for i in range(40)]}))
    put_parquet(f"{bucket}/lists/b.parquet", pa.table({"url": slow, "uid": [f"b{i}" for i in range(20)]}))
    out = f"{bucket}/out"
    flags = ["--input", f"{bucket}/lists/", "--output", out, *NET, "--shard-size", "10"]
    proc = subprocess.Popen([sys.executable, "-m", "jobs.build_corpus", *flags, "--num-cpus", "2"],
                            env={**os.environ, "RAY_ADDRESS": ""}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not s3_server.keys("corpus-kill", "out/shards/stats/"):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = s3_server.keys("corpus-kill", "out/shards/stats/")
    assert done_before, "the first run wrote no shard before it was killed"
    assert len(done_before) < 6, "the first run finished before it was killed: nothing to resume"

    assert build_corpus.main(flags) == 0
    kept, rejected = read_rows(out, "corpus"), read_rows(out, "rejects")
    keys = [r[schema.KEY] for r in kept + rejected]
    assert sorted(keys) == sorted([make_key(0, i) for i in range(40)] + [make_key(1, i) for i in range(20)])
    assert {r[schema.REASON] for r in rejected} == {schema.Reason.TIMEOUT} and len(kept) == 40
    names = [f"{i:05d}" for i in range(6)]
    assert s3_server.keys("corpus-kill", "out/shards/stats/") == [f"out/shards/stats/{n}.json" for n in names]
    assert s3_server.keys("corpus-kill", "out/shards/corpus/") == sorted(f"out/shards/corpus/{n}{e}" for n in names for e in (".parquet", ".tar"))
    assert not s3_server.keys("corpus-kill", "out/_tmp/")  # no temporary object left
    stats = json.loads(storage.read_bytes(*storage.resolve(f"{out}/stats.json")))
    assert stats["input_rows"] == 60 and stats["kept"] == 40

    # What a training loader does: expand the brace pattern, stream each shard's tar.
    samples = 0
    for uri in braceexpand(f"{out}/shards/corpus/{{00000..00005}}.tar"):
        with tarfile.open(fileobj=storage.open_input_file(uri), mode="r|") as tar:
            samples += sum(1 for m in tar if m.name.endswith(".jpg"))
    assert samples == 40


def test_label_bucket_corpus_into_bucket(s3_server, http_server, tmp_path):
    bucket = s3_server.bucket("labels")
    good = ["/img/jpeg.jpg", "/img/png.png", "/img/webp.webp"]
    put_parquet(f"{bucket}/in.parquet", pa.table({"url": [http_server.url(p) for p in good] + [http_server.url("/status/404")], "uid": list("abcd")}))
    assert build_corpus.main(["--input", f"{bucket}/in.parquet", "--output", f"{bucket}/corpus", *NET, "--shard-size", "2"]) == 0
    model = str(write_tiny_checkpoint(tmp_path / "tiny", variant="cogvlm"))
    argv = ["--input", f"{bucket}/corpus", "--output", f"{bucket}/labelled", "--model", model, "--max-new-tokens", "4", *NET]
    assert label.main(argv) == 0
    rows = read_rows(f"{bucket}/labelled", "labels")
    assert sorted(r["uid"] for r in rows) == list("abc")  # the corpus's kept rows, each once
    assert all(r[schema.STATUS] == schema.Status.SUCCESS and r[schema.TASK] == "caption" for r in rows)
    # A corpus shard NNNNN is labelled into shard NNNNN.
    assert s3_server.keys("labels", "labelled/shards/labels/") == ["labelled/shards/labels/00000.parquet", "labelled/shards/labels/00001.parquet"]
    assert storage.committed_shard_files(f"{bucket}/labelled", "previews") == [
        f"{bucket}/labelled/shards/previews/00000.parquet", f"{bucket}/labelled/shards/previews/00001.parquet"
    ]
    assert label.main(argv) == 0  # a finished output: nothing to do, nothing lost
    assert sorted(r["uid"] for r in read_rows(f"{bucket}/labelled", "labels")) == list("abc")
    # jobs.report reads the labels straight from the bucket.
    assert report.main(["--labels", f"{bucket}/labelled", "--out", str(tmp_path / "report"), "--sample", "10"]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("<h3>#") == 3 and (tmp_path / "report" / "contact_sheet.png").is_file()
