"""jobs.build_corpus end to end with untrusted inputs and a disk that fills up (issue 12)."""

from __future__ import annotations

import glob
import gzip
import json
import os
import zlib

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from jobs import build_corpus
from pipeline import schema, storage
from pipeline.reader import make_key
from pipeline.writer import CORPUS_DIR, REJECTS_DIR, SHARDS_DIR, STATS_DIR, STATS_FILE
from tests.full_disk import FullDisk
from tests.http_server import TABLE_OPTIONS

R = schema.Reason
FLAGS = ["--timeout", "3", "--retries", "0", "--allow-networks", ",".join(TABLE_OPTIONS.allow_networks)]


pytestmark = pytest.mark.usefixtures("local_ray")  # one embedded Ray for the module (tests/conftest.py)


def output_keys(out: str) -> list[str]:
    keys = []
    for sub in (CORPUS_DIR, REJECTS_DIR):
        for name in sorted(os.listdir(os.path.join(out, SHARDS_DIR, STATS_DIR))):
            path = os.path.join(out, SHARDS_DIR, sub, name.replace(".json", ".parquet"))
            keys += pq.read_table(path, columns=[schema.KEY]).column(schema.KEY).to_pylist()
    return keys


def committed(out: str) -> list[str]:
    folder = os.path.join(out, SHARDS_DIR, STATS_DIR)
    return sorted(n[:-5] for n in os.listdir(folder) if n.endswith(".json") and not n.startswith(".")) if os.path.isdir(folder) else []


def test_out_of_space_at_every_kind_of_file_then_a_rerun_finishes_exactly_once(tmp_path, http_server, monkeypatch, capsys):
    urls = [http_server.url("/img/jpeg.jpg"), http_server.url("/status/404")] * 8
    pq.write_table(pa.table({"url": urls}), tmp_path / "in.parquet")
    out = str(tmp_path / "out")
    full = {"pattern": None}
    real_resolve = storage.resolve

    def resolve(uri):  # the output goes through a disk that fills up at files matching the pattern
        fs, path = real_resolve(uri)
        if full["pattern"] and uri.startswith(out):
            return pafs.PyFileSystem(FullDisk(full["pattern"])), path
        return fs, path

    monkeypatch.setattr(storage, "resolve", resolve)
    argv = ["--input", str(tmp_path / "in.parquet"), "--output", out, *FLAGS, "--shard-size", "4"]
    # Each run fills the disk while writing one kind of file, of the first shard not yet done.
    kinds = ["plan", "corpus-{}.tar", "corpus-{}.parquet", "rejects-{}.parquet", "stats-{}.json", "totals"]
    for kind in kinds:
        done = committed(out)
        first_open = next((f"{i:05d}" for i in range(4) if f"{i:05d}" not in done), None)
        if kind == "plan":
            full["pattern"] = r"/\.out-_plan\.json\."
        elif kind == "totals":
            full["pattern"] = r"/\.out-stats\.json\."
        else:
            full["pattern"] = r"/\." + kind.format(first_open).replace(".", r"\.") + r"\."
        assert build_corpus.main(argv) == 1, kind
        # One line of ours (Ray's own log lines about the failed task may come around it here,
        # where the test's Ray outlives the job; a job that started Ray shuts it down first).
        (last,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert "No space left on device" in last, last
        name = {"plan": "_plan.json", "totals": STATS_FILE}.get(kind) or kind.format(first_open).split("-", 1)[1]
        assert os.path.join(out, "") in last and name in last, last
        if kind != "totals":
            assert first_open not in committed(out), kind  # the shard being written never commits
        else:
            assert len(committed(out)) == 4  # every shard done; only the totals file is missing
        # Nothing half-written is visible under its real name.
        for path in glob.glob(os.path.join(out, "**", "*"), recursive=True):
            if os.path.isfile(path) and path.endswith(".json") and "/." not in path:
                json.loads(open(path).read())
    full["pattern"] = None
    assert build_corpus.main(argv) == 0
    assert sorted(output_keys(out)) == [make_key(0, i) for i in range(16)]
    assert committed(out) == ["00000", "00001", "00002", "00003"]
    stats = json.load(open(os.path.join(out, STATS_FILE)))
    assert (stats["input_rows"], stats["kept"]) == (16, 8)
    assert not os.path.exists(os.path.join(out, storage.TMP_DIR))  # temporary files cleaned up at the end


def _complete_lines_before_damage(data: bytes) -> int:
    """Independent of our reader: how many whole lines a truncated gzip stream still holds."""
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    return inflate.decompress(data).count(b"\n")


def test_every_line_of_every_input_file_comes_out_exactly_once(tmp_path, http_server):
    """The invariant: malformed lines, truncated gzip, odd types, bad URLs and bad images mixed."""
    good, bad = http_server.url("/img/jpeg.jpg"), http_server.url("/img/truncated.jpg")
    inputs = tmp_path / "in"
    inputs.mkdir()
    # 00: CSV with a line of too many columns, a short line, bad UTF-8, a quoted newline.
    (inputs / "00.csv").write_bytes(
        f'url,caption\n{good},ok\n{good},a,b\n{bad}\n{good},caf\xe9\n"{good}","two\nlines"\nnot a url,x\n'.encode("latin-1")
    )
    csv_records = 6
    # 01: JSONL with a line that is not JSON, one that is a list, a blank line, mixed-type column.
    (inputs / "01.jsonl").write_text(
        f'{{"url": "{good}", "uid": 1}}\n{{"url": \n[1, 2]\n\n{{"url": "ftp://127.0.0.1/x", "uid": "a"}}\n{{"url": "{http_server.url("/html")}"}}\n'
    )
    jsonl_records = 5
    # 02: a truncated gzip stream of JSON lines.
    lines = "".join(json.dumps({"url": good if i % 2 else http_server.url(f"/status/404?n={i}")}) + "\n" for i in range(60))
    packed = gzip.compress(lines.encode())
    truncated = packed[: len(packed) // 2]
    (inputs / "02.jsonl.gz").write_bytes(truncated)
    gz_records = _complete_lines_before_damage(truncated) + 1  # + the damage itself
    # 03: Parquet with an int64 url column; 04: empty; 05: header only; 06: plain text.
    pq.write_table(pa.table({"url": pa.array([7, 8], pa.int64())}), inputs / "03.parquet")
    (inputs / "04.csv").write_bytes(b"")
    (inputs / "05.csv").write_text("url,caption\n")
    (inputs / "06.txt").write_text(f"{good}\n\n{http_server.url('/img/bomb.png')}\n")
    expected = (
        [make_key(0, i) for i in range(csv_records)]
        + [make_key(1, i) for i in range(jsonl_records)]
        + [make_key(2, i) for i in range(gz_records)]
        + [make_key(3, i) for i in range(2)]
        + [make_key(6, i) for i in range(2)]
    )
    out = str(tmp_path / "out")
    assert build_corpus.main(["--input", str(inputs), "--output", out, *FLAGS, "--shard-size", "4"]) == 0
    assert sorted(output_keys(out)) == sorted(expected)
    rejects = pa.concat_tables(
        [pq.read_table(p) for p in sorted(glob.glob(os.path.join(out, SHARDS_DIR, REJECTS_DIR, "*.parquet")))], promote_options="permissive"
    ).to_pylist()
    reason = {r[schema.KEY]: r[schema.REASON] for r in rejects}
    message = {r[schema.KEY]: r[schema.ERROR_MESSAGE] for r in rejects}
    assert reason[make_key(0, 0)] == R.MALFORMED_INPUT and "00.csv, line 3" in message[make_key(0, 0)]
    assert sum(1 for k, v in reason.items() if k.startswith("00000") and v == R.MALFORMED_INPUT) == 2
    assert [reason[make_key(1, i)] for i in (1, 2)] == [R.MALFORMED_INPUT, R.MALFORMED_INPUT]
    assert "damaged gzip stream" in message[make_key(2, gz_records - 1)]
    assert reason[make_key(3, 0)] == reason[make_key(3, 1)] == R.INVALID_URL
    stats = json.load(open(os.path.join(out, STATS_FILE)))
    assert stats["input_rows"] == len(expected) == stats["kept"] + stats["rejected"]


def test_rows_the_reader_rejected_pass_the_fetch_stage_unchanged():
    import asyncio

    from pipeline.corpus import FetchUnlessRejected
    from pipeline.options import CorpusOptions
    from pipeline.reader import rejected_rows

    bad = rejected_rows([make_key(0, 0)], R.MALFORMED_INPUT, ["in.csv, line 2: expected 2 columns, found 3"])
    only_bad = asyncio.run(FetchUnlessRejected(CorpusOptions())(bad))
    assert only_bad.column(schema.REASON).to_pylist() == [R.MALFORMED_INPUT]
    assert {schema.IMAGE_BYTES, schema.SHA256, schema.WIDTH} <= set(only_bad.column_names)  # later stages need them
    open_row = pa.table({schema.KEY: [make_key(0, 1)], schema.URL: ["not a url"], schema.CAPTION: pa.nulls(1, pa.string())})
    mixed = pa.concat_tables([bad, open_row], promote_options="permissive")
    out = asyncio.run(FetchUnlessRejected(CorpusOptions())(mixed)).sort_by(schema.KEY)
    assert out.column(schema.REASON).to_pylist() == [R.MALFORMED_INPUT, R.INVALID_URL]
    assert out.column(schema.ERROR_MESSAGE)[0].as_py().startswith("in.csv, line 2")
