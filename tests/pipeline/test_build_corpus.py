"""End to end: jobs.build_corpus against the hostile loopback server, on a local 2-CPU Ray."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import webdataset as wds

from jobs import build_corpus
from pipeline import schema
from pipeline.reader import make_key
from pipeline.writer import CORPUS_DIR, REJECTS_DIR, SHARDS_DIR, STATS_FILE
from tests.http_server import EXPECTED, IMAGES, TABLE_OPTIONS

R = schema.Reason
# What the whole pipeline (download, then decode and filters) makes of each route's bytes.
AFTER_FILTERS = {
    "/img/tiny-8x8.png": R.TOO_SMALL,
    "/img/wide-7x1.png": R.ASPECT_RATIO,
    "/img/tall-1x7.png": R.ASPECT_RATIO,
    "/img/truncated.jpg": R.DECODE_ERROR,
    "/img/bomb.png": R.TOO_MANY_PIXELS,
    "/html": R.NOT_AN_IMAGE,
}
BAD_INPUT = [
    (None, R.MISSING_URL),
    ("", R.MISSING_URL),
    ("not a url", R.INVALID_URL),
    ("ftp://127.0.0.1/a.jpg", R.UNSUPPORTED_SCHEME),
    ("file:///etc/hosts", R.LOCAL_FILE_REFUSED),
]
JOB_FLAGS = [
    "--timeout", str(TABLE_OPTIONS.timeout),
    "--retries", str(TABLE_OPTIONS.retries),
    "--max-bytes", str(TABLE_OPTIONS.max_bytes),
    "--allow-networks", ",".join(TABLE_OPTIONS.allow_networks),
    "--user-agent-token", TABLE_OPTIONS.user_agent_token,
    "--min-image-size", "16",
    "--max-image-area", "50000000",
    "--max-caption-length", "100",
]


pytestmark = pytest.mark.usefixtures("local_ray")  # one embedded Ray for the module (tests/conftest.py)


def read_outputs(out) -> tuple[pa.Table, pa.Table]:
    def read(sub):
        files = sorted(glob.glob(os.path.join(out, SHARDS_DIR, sub, "*.parquet")))
        return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive") if files else None

    return read(CORPUS_DIR), read(REJECTS_DIR)


def expected_rows(http_server):
    """(url, caption, expected reason) for every route and every bad input."""
    rows = []
    for route in EXPECTED:
        reason = route.reason or AFTER_FILTERS.get(route.path)
        rows.append((http_server.url(route.path, route.host), f"route {route.path}", reason))
    rows += [(url, "bad input", reason) for url, reason in BAD_INPUT]
    rows.append((http_server.url("/img/jpeg.jpg"), "x" * 101, R.CAPTION_TOO_LONG))
    return rows


def test_every_route_gets_its_reason_and_no_row_is_lost(tmp_path, http_server):
    rows = expected_rows(http_server)
    table = pa.table(
        {
            "url": [r[0] for r in rows],
            "caption": [r[1] for r in rows],
            "uid": [f"u{i:04d}" for i in range(len(rows))],
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    out = str(tmp_path / "out")
    assert build_corpus.main(["--input", str(tmp_path / "in.parquet"), "--output", out, *JOB_FLAGS, "--shard-size", "16"]) == 0

    kept, rejected = read_outputs(out)
    every = kept.to_pylist() + rejected.to_pylist()
    assert sorted(r[schema.KEY] for r in every) == [make_key(0, i) for i in range(len(rows))]
    by_uid = {r["uid"]: r for r in every}
    for i, (url, caption, reason) in enumerate(rows):
        got = by_uid[f"u{i:04d}"]
        assert (got[schema.URL], got[schema.CAPTION]) == (url, caption)
        assert got[schema.REASON] == reason, (url, got[schema.ERROR_MESSAGE])
        if reason is None:
            assert got[schema.STATUS] == schema.Status.SUCCESS
        else:
            assert got[schema.STATUS] == schema.REASON_STATUS[reason] and got[schema.ERROR_MESSAGE]

    kept_rows = {r[schema.KEY]: r for r in kept.to_pylist()}
    assert all(r[schema.HTTP_STATUS] == 200 and r[schema.SHA256] for r in kept_rows.values())
    rotated = next(r for r in kept_rows.values() if r[schema.URL].endswith("/img/exif-rotated.jpg"))
    assert (rotated[schema.WIDTH], rotated[schema.HEIGHT]) == (40, 80)  # displayed size

    samples = list(wds.WebDataset(sorted(glob.glob(os.path.join(out, SHARDS_DIR, CORPUS_DIR, "*.tar"))), shardshuffle=False))
    assert len(samples) == len(kept_rows)
    for sample in samples:
        row = kept_rows[sample["__key__"]]
        image = next(v for k, v in sample.items() if k in ("jpg", "png", "webp", "gif"))
        path = row[schema.URL].split(":", 2)[2].split("/", 1)[1]
        if "/" + path in IMAGES:
            assert image == IMAGES["/" + path][0]  # original bytes, not re-encoded
        assert sample["txt"].decode() == row[schema.CAPTION]
        assert json.loads(sample["json"])["uid"] == row["uid"]

    stats = json.load(open(os.path.join(out, STATS_FILE)))
    assert stats["input_rows"] == len(rows) == stats["kept"] + stats["rejected"]
    assert stats["kept"] == len(kept_rows)
    assert sum(stats["rejected_by_reason"].values()) == stats["rejected"]

    # Shards are named in input order, every one with its tar, Parquet and stats: brace-addressable.
    n_shards = -(-len(rows) // 16)
    names = [f"{i:05d}" for i in range(n_shards)]
    for sub, ext in ((CORPUS_DIR, ".tar"), (CORPUS_DIR, ".parquet"), (REJECTS_DIR, ".parquet"), ("stats", ".json")):
        assert sorted(n for n in os.listdir(os.path.join(out, SHARDS_DIR, sub)) if n.endswith(ext)) == [n + ext for n in names]
    pattern = os.path.join(out, SHARDS_DIR, CORPUS_DIR, "{00000..%05d}.tar" % (n_shards - 1))
    assert len(list(wds.WebDataset(pattern, shardshuffle=False))) == len(kept_rows)
    first = pq.read_table(os.path.join(out, SHARDS_DIR, REJECTS_DIR, "00000.parquet")).column(schema.KEY).to_pylist()
    assert all(k < make_key(0, 16) for k in first)  # shard 00000 holds input rows 0..15

    # A second run into the finished output writes nothing and loses nothing.
    assert build_corpus.main(["--input", str(tmp_path / "in.parquet"), "--output", out, *JOB_FLAGS, "--shard-size", "16"]) == 0
    again = json.load(open(os.path.join(out, STATS_FILE)))
    assert again["input_rows"] == len(rows) and again["this_run"]["input_rows"] == 0
    # Another --shard-size would cut other shards: refused before Ray is asked for anything.
    assert build_corpus.main(["--input", str(tmp_path / "in.parquet"), "--output", out, *JOB_FLAGS]) == 2


def test_dedup_keeps_one_copy_of_identical_bytes(tmp_path, http_server):
    urls = [http_server.url("/img/png.png")] * 3 + [http_server.url("/redirect/chain/3"), http_server.url("/img/webp.webp")]
    pq.write_table(pa.table({"url": urls}), tmp_path / "in.parquet")
    out = str(tmp_path / "out")
    assert build_corpus.main(["--input", str(tmp_path / "in.parquet"), "--output", out, *JOB_FLAGS, "--dedup"]) == 0
    kept, rejected = read_outputs(out)
    assert kept.num_rows == 3  # one png, the chain's jpeg, the webp
    assert rejected.column(schema.REASON).to_pylist() == [R.DUPLICATE, R.DUPLICATE]
    owners = set(kept.column(schema.KEY).to_pylist())
    assert all(any(k in m for k in owners) for m in rejected.column(schema.ERROR_MESSAGE).to_pylist())


def test_resize_uses_img2dataset_modes(tmp_path, http_server, capsys):
    # Decoded by Pillow first (rotated, alpha), resized from the downloaded bytes (plain), truncated.
    paths = ["/img/exif-rotated.jpg", "/img/rgba.png", "/img/jpeg.jpg", "/img/png.png", "/img/truncated.jpg"]
    pq.write_table(pa.table({"url": [http_server.url(p) for p in paths]}), tmp_path / "in.parquet")
    out = str(tmp_path / "out")
    flags = ["--input", str(tmp_path / "in.parquet"), "--output", out, *JOB_FLAGS, "--resize", "center_crop", "--image-size", "32"]
    assert build_corpus.main(flags) == 0
    kept, rejected = read_outputs(out)
    rows = sorted(kept.to_pylist(), key=lambda r: r[schema.KEY])
    assert [(r[schema.WIDTH], r[schema.HEIGHT], r[schema.IMAGE_FORMAT]) for r in rows] == [(32, 32, "JPEG")] * 4
    assert (rows[0][schema.ORIGINAL_WIDTH], rows[0][schema.ORIGINAL_HEIGHT]) == (40, 80)
    assert rejected.column(schema.REASON).to_pylist() == [R.DECODE_ERROR]
    assert json.load(open(os.path.join(out, "settings.json")))["decode_check"] == "full"
    # --decode-check shapes the rows: another value into the same output is refused.
    capsys.readouterr()
    assert build_corpus.main([*flags, "--decode-check", "none"]) == 2
    assert 'decode_check: "full" -> "none"' in capsys.readouterr().err


def test_missing_url_column_fails_fast(tmp_path, capsys):
    pq.write_table(pa.table({"link": ["http://127.0.0.1/a.jpg"]}), tmp_path / "in.parquet")
    assert build_corpus.main(["--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out")]) == 2
    assert "--url-col" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_killed_run_resumes_without_duplicates(tmp_path, http_server):
    """Kill a real job process mid-run, run again: every row exactly once, finished shards kept."""
    fast = [http_server.url("/img/jpeg.jpg")] * 60
    slow = [http_server.url("/hang/silent")] * 30  # each holds its row for the whole timeout
    pq.write_table(pa.table({"url": fast}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"url": slow}), tmp_path / "b.parquet")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.build_corpus", "--input", str(tmp_path), "--output", str(out),
           *JOB_FLAGS, "--timeout", "6", "--retries", "0", "--shard-size", "10", "--num-cpus", "2"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stats_dir = out / SHARDS_DIR / "stats"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not (stats_dir.exists() and any(stats_dir.iterdir())):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = sorted(p.name for p in stats_dir.iterdir())
    assert done_before, "the first run wrote no shard before it was killed"
    rows_before = sum(json.load(open(stats_dir / n))["input_rows"] for n in done_before)
    assert rows_before < 90, "the first run finished before it was killed: nothing to resume"

    assert build_corpus.main(["--input", str(tmp_path / "*.parquet"), "--output", str(out), *JOB_FLAGS,
                              "--timeout", "6", "--retries", "0", "--shard-size", "10"]) == 0
    kept, rejected = read_outputs(out)
    keys = kept.column(schema.KEY).to_pylist() + rejected.column(schema.KEY).to_pylist()
    assert sorted(keys) == sorted([make_key(0, i) for i in range(60)] + [make_key(1, i) for i in range(30)])
    assert set(done_before) <= {p.name for p in stats_dir.iterdir()}
    stats = json.load(open(out / STATS_FILE))
    # Workers of the killed run may still commit a shard in their last seconds: never more.
    assert stats["input_rows"] == 90 and stats["this_run"]["input_rows"] <= 90 - rows_before


def test_bundled_example_list(tmp_path, monkeypatch):
    """`make corpus-demo`: the example list's local paths are relative to the repository."""
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    out = str(tmp_path / "out")
    assert build_corpus.main(["--input", "examples/urls.csv", "--output", out, "--allow-local-files"]) == 0
    stats = json.load(open(os.path.join(out, STATS_FILE)))
    assert stats["kept"] == 6
    assert stats["rejected_by_reason"] == {R.FILE_NOT_FOUND: 1, R.INVALID_URL: 1, R.UNSUPPORTED_SCHEME: 1}


def test_real_odd_images_end_to_end_and_a_rerun_with_other_settings(tmp_path, capsys):
    """Pillow's odd test images (tests/data/odd_images): the job exits 0, every row once, kept
    images only as jpg/png/webp/gif members; changing --other-formats needs --overwrite."""
    from tests.pipeline.test_odd_images import KEPT, ODD, REJECTED

    names = sorted(set(KEPT) | set(REJECTED))
    table = pa.table({"url": [str(ODD / n) for n in names], "caption": names})
    pq.write_table(table, tmp_path / "in.parquet")
    out = str(tmp_path / "out")
    flags = ["--input", str(tmp_path / "in.parquet"), "--output", out, "--allow-local-files", "--max-aspect-ratio", "10"]
    assert build_corpus.main(flags) == 0
    kept, rejected = read_outputs(out)
    every = {r[schema.CAPTION]: r for r in kept.to_pylist() + rejected.to_pylist()}
    assert sorted(every) == names and kept.num_rows + rejected.num_rows == len(names)
    for name, (reason, _) in REJECTED.items():
        assert every[name][schema.REASON] == reason, (name, every[name][schema.ERROR_MESSAGE])
    for name, (fmt, size, _) in KEPT.items():
        assert (every[name][schema.IMAGE_FORMAT], every[name][schema.WIDTH], every[name][schema.HEIGHT]) == (fmt, *size)
    samples = list(wds.WebDataset(sorted(glob.glob(os.path.join(out, SHARDS_DIR, CORPUS_DIR, "*.tar"))), shardshuffle=False))
    extensions = {k for s in samples for k in s if not k.startswith("__")} - {"txt", "json"}
    assert len(samples) == len(KEPT) and extensions <= {"jpg", "png", "webp", "gif"}
    by_key = {s["__key__"]: s for s in samples}
    tiff = by_key[every["g4_orientation_6.tif"][schema.KEY]]
    assert "png" in tiff  # re-encoded, stored under the extension of what it now is

    capsys.readouterr()
    assert build_corpus.main(flags + ["--other-formats", "reject"]) == 2
    err = capsys.readouterr().err
    assert 'other_formats: "png" -> "reject"' in err and "--overwrite" in err and err.count("\n") == 1
    assert build_corpus.main(flags + ["--other-formats", "reject", "--overwrite"]) == 0
    kept, rejected = read_outputs(out)
    every = {r[schema.CAPTION]: r for r in kept.to_pylist() + rejected.to_pylist()}
    assert len(every) == len(names) == kept.num_rows + rejected.num_rows  # afresh: nothing of the first run left
    for name, (fmt, _, _) in KEPT.items():
        other = fmt == "PNG" and not name.endswith(".png")
        assert every[name][schema.REASON] == (R.UNSUPPORTED_FORMAT if other else None), name


def test_a_killed_fetch_worker_is_retried_by_ray_not_rejected(tmp_path, http_server):
    """A worker that dies mid-batch is not the rows' fault: Ray restarts it and reruns the batch,
    and every row comes out as it would have (no internal_error, each row once)."""
    import threading

    # Every batch holds one URL that hangs for the whole --timeout, so the kill lands mid-batch.
    urls = ([http_server.url("/slow/image.jpg")] * 5 + [http_server.url("/hang/silent")]) * 4
    pq.write_table(pa.table({"url": urls}), tmp_path / "in.parquet")
    out = str(tmp_path / "out")
    argv = ["--input", str(tmp_path / "in.parquet"), "--output", out, *JOB_FLAGS, "--timeout", "4", "--retries", "0", "--download-workers", "1"]
    codes = []
    job = threading.Thread(target=lambda: codes.append(build_corpus.main(argv)))
    job.start()

    def fetch_workers():
        # The GCS actor table (ray.util.state needs the dashboard, which this test Ray lacks).
        actors = ray._private.state.actors().values()
        return [a for a in actors if "Fetch" in a["ActorClassName"] and a["State"] == "ALIVE"]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not fetch_workers():
        time.sleep(0.2)
    time.sleep(2.0)  # its batch is in flight: the hanging URLs hold it for the whole --timeout
    (victim,) = fetch_workers()
    os.kill(victim["Pid"], signal.SIGKILL)
    job.join(timeout=300)
    assert codes == [0]
    restarted = [a for a in ray._private.state.actors().values() if "Fetch" in a["ActorClassName"]]
    assert any(a["NumRestarts"] >= 1 or a["Pid"] != victim["Pid"] for a in restarted)
    kept, rejected = read_outputs(out)
    rows = kept.to_pylist() + (rejected.to_pylist() if rejected is not None else [])
    assert sorted(r[schema.KEY] for r in rows) == [make_key(0, i) for i in range(len(urls))]
    assert [r[schema.REASON] for r in sorted(rows, key=lambda r: r[schema.KEY])] == ([None] * 5 + [R.TIMEOUT]) * 4


def test_output_that_is_a_file_or_not_writable_fails_fast(tmp_path, capsys):
    pq.write_table(pa.table({"url": ["http://127.0.0.1/a.jpg"]}), tmp_path / "in.parquet")
    (tmp_path / "taken").write_text("x")
    for output, needle in ((tmp_path / "taken", "is a file"), (tmp_path / "taken" / "out", "not writable")):
        assert build_corpus.main(["--input", str(tmp_path / "in.parquet"), "--output", str(output)]) == 2
        (line,) = [e for e in capsys.readouterr().err.splitlines() if e.startswith("error:")]
        assert line.startswith("error: --output") and needle in line, line


def test_the_corpus_stage_gets_each_shard_whole_in_a_block_of_its_own(tmp_path):
    # Ray Data would split one read task's output into ~200 blocks and merge small ones: a
    # packed shard is a row, and no block holds two
    from pipeline import corpus
    from pipeline.options import CorpusOptions
    from pipeline.reader import cut_shards, unpack_shards

    for name, n in (("a.csv", 5000), ("b.csv", 700)):
        (tmp_path / name).write_text("url\n" + "".join(f"http://127.0.0.1:9/{name}/{i}.jpg\n" for i in range(n)))
    options = CorpusOptions()
    inputs = corpus.url_list_files(str(tmp_path), options)
    shards = cut_shards([f.rows for f in inputs], 2000)
    todo = [s for s in shards if s.index != 1]  # a re-run: shard 1 is done

    def describe(block: pa.Table) -> pa.Table:
        tables = list(unpack_shards(block))
        keys = [t.column(schema.KEY).to_pylist() for t in tables]
        return pa.table({"shards": [[sorted(set(t.column(schema.SHARD).to_pylist())) for t in tables]], "keys": [keys]})

    blocks = corpus.read_whole_shards(inputs, options, todo).map_batches(describe, batch_size=None, batch_format="pyarrow").take_all()
    assert sorted(b["shards"] for b in blocks) == [[[s.index]] for s in todo]
    expected = {s.index: [make_key(s.source, r) for r in range(s.first_row, s.first_row + s.num_rows)] for s in todo}
    assert all(b["keys"][0] == expected[b["shards"][0][0]] for b in blocks)
