import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import schema
from pipeline.writer import CorpusSink, OutputDir, SupersededRun, metadata_table, shard_stats


def rows(keys, shard=0, kept=()):
    n = len(keys)
    status = [schema.Status.SUCCESS if k in kept else schema.Status.FAILED_TO_DOWNLOAD for k in keys]
    return pa.table(
        {
            schema.KEY: keys,
            schema.URL: [f"http://x/{k}" for k in keys],
            schema.CAPTION: [f"cap {k}" for k in keys],
            schema.STATUS: status,
            schema.REASON: [None if k in kept else schema.Reason.TIMEOUT for k in keys],
            schema.ERROR_MESSAGE: [None if k in kept else "slow" for k in keys],
            schema.IMAGE_FORMAT: ["PNG" if k in kept else None for k in keys],
            schema.BYTES: [3 if k in kept else None for k in keys],
            schema.IMAGE_BYTES: [b"img" if k in kept else None for k in keys],
            schema.SHARD: pa.array([shard] * n, pa.int32()),
        }
    )


def sink_for(tmp_path, counts, monkeypatch):
    monkeypatch.setattr("pipeline.writer.SETTLE_SECONDS", 0)
    out = OutputDir(str(tmp_path))
    sink = CorpusSink(str(tmp_path), out.claim(), counts)
    sink.on_write_start()
    return out, sink


def test_a_newer_run_fences_writers_of_the_older_one(tmp_path, monkeypatch):
    out, old = sink_for(tmp_path, {0: 1}, monkeypatch)
    new = CorpusSink(str(tmp_path), out.claim(), {0: 1})
    with pytest.raises(SupersededRun):
        old.write([rows(["a"])], None)
    assert out.committed() == set()
    new.write([rows(["a"])], None)
    assert out.committed() == {0}


def test_a_shard_in_pieces_commits_once_all_its_rows_are_there(tmp_path, monkeypatch):
    out, sink = sink_for(tmp_path, {0: 3, 1: 1}, monkeypatch)
    sink.write([rows(["a", "b"], kept={"a"}), rows(["z"], shard=1)], None)
    assert out.committed() == {1}  # shard 1 was whole in this task; shard 0 is a piece
    sink.write([rows(["b"])], None)  # a retried task's piece again: still not complete
    assert out.committed() == {1}
    sink.write([rows(["c"], kept={"c"})], None)
    assert out.committed() == {0, 1}
    corpus = pq.read_table(tmp_path / "shards" / "corpus" / "00000.parquet")
    rejects = pq.read_table(tmp_path / "shards" / "rejects" / "00000.parquet")
    assert corpus.column(schema.KEY).to_pylist() == ["a", "c"] and rejects.column(schema.KEY).to_pylist() == ["b"]
    with tarfile.open(tmp_path / "shards" / "corpus" / "00000.tar") as tar:
        assert tar.getnames() == ["a.png", "a.txt", "a.json", "c.png", "c.txt", "c.json"]
    with tarfile.open(tmp_path / "shards" / "corpus" / "00001.tar") as tar:
        assert tar.getnames() == []  # an empty shard still has its tar: brace patterns never hit a gap
    assert json.loads((tmp_path / "shards" / "stats" / "00000.json").read_text())["input_rows"] == 3


def test_uncommitted_and_temporary_files_are_never_read(tmp_path, monkeypatch):
    out, sink = sink_for(tmp_path, {0: 1, 1: 1}, monkeypatch)
    sink.write([rows(["a"])], None)
    # What a killed run leaves: data files of a shard without its stats file, a partial temp file.
    (tmp_path / "shards" / "corpus" / "00001.parquet").write_bytes(b"")
    (tmp_path / "shards" / "stats" / ".00001.json.0123.tmp").write_bytes(b"{")
    (tmp_path / "_tmp" / ".00001.json.4567.tmp").write_bytes(b"{")
    assert out.committed_names() == ["00000"]
    assert out.read_shard_stats()["input_rows"] == 1


def test_a_row_that_fails_to_write_is_rejected_alone(tmp_path, monkeypatch):
    import pipeline.writer as writer

    real = writer.tar_members

    def tar_members(row, image):
        if row[schema.KEY] == "b":
            raise ValueError("injected")
        return real(row, image)

    monkeypatch.setattr(writer, "tar_members", tar_members)
    out, sink = sink_for(tmp_path, {0: 3}, monkeypatch)
    sink.write([rows(["a", "b", "c"], kept={"a", "b", "c"})], None)
    corpus = pq.read_table(tmp_path / "shards" / "corpus" / "00000.parquet")
    (failed,) = pq.read_table(tmp_path / "shards" / "rejects" / "00000.parquet").to_pylist()
    assert corpus.column(schema.KEY).to_pylist() == ["a", "c"]
    assert (failed[schema.KEY], failed[schema.REASON], failed[schema.STATUS]) == ("b", schema.Reason.INTERNAL_ERROR, schema.Status.INTERNAL_ERROR)
    assert failed[schema.ERROR_MESSAGE] == "writing the sample: ValueError: injected"
    stats = out.read_shard_stats()
    assert (stats["kept"], stats["rejected_by_reason"]) == (2, {schema.Reason.INTERNAL_ERROR: 1})


def test_a_value_no_column_can_hold_rejects_only_its_row(tmp_path, monkeypatch):
    out, sink = sink_for(tmp_path, {0: 2}, monkeypatch)
    table = rows(["a", "b"], kept={"a", "b"}).append_column(schema.WIDTH, pa.array([10, 2**40], pa.int64()))
    sink.write([table], None)
    corpus = pq.read_table(tmp_path / "shards" / "corpus" / "00000.parquet").to_pylist()
    (failed,) = pq.read_table(tmp_path / "shards" / "rejects" / "00000.parquet").to_pylist()
    assert [(r[schema.KEY], r[schema.WIDTH]) for r in corpus] == [("a", 10)]
    assert failed[schema.KEY] == "b" and failed[schema.REASON] == schema.Reason.INTERNAL_ERROR and failed[schema.WIDTH] is None


def test_metadata_table_types_our_columns_and_drops_internal_ones():
    table = pa.table({schema.KEY: ["k"], schema.WIDTH: pa.array([5], pa.int64()), schema.IMAGE_BYTES: [b"x"], "uid": [1]})
    out = metadata_table(table)
    assert out.column_names == [schema.KEY, schema.WIDTH, "uid"]
    assert out.schema.field(schema.WIDTH).type == pa.int32()


def test_shard_stats_counts_reasons():
    kept = pa.table({schema.BYTES: [10, 20], schema.REASON: [None, None]})
    rejected = pa.table({schema.BYTES: [None] * 3, schema.REASON: ["timeout", "timeout", "too_small"]})
    assert shard_stats(kept, rejected) == {
        "input_rows": 5, "kept": 2, "rejected": 3, "rejected_by_reason": {"timeout": 2, "too_small": 1}, "bytes": 30,
    }


def test_a_committed_shard_is_never_rewritten(tmp_path, monkeypatch):
    out, sink = sink_for(tmp_path, {0: 1}, monkeypatch)
    sink.write([rows(["a"], kept={"a"})], None)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").rglob("*") if p.is_file()}
    sink.write([rows(["a"])], None)  # a retried write task, with another outcome for the row
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").rglob("*") if p.is_file()}
    assert before == after
    assert pq.read_table(tmp_path / "shards" / "corpus" / "00000.parquet").num_rows == 1


def test_a_shard_streams_in_as_batches_arrive_and_commits_once_whole(tmp_path, monkeypatch):
    """FetchAndCommit's path: batches in any order go straight into the shard's tar (a temporary
    file until the shard commits); the Parquet files come out in key order."""
    out, sink = sink_for(tmp_path, {0: 5}, monkeypatch)

    def batch(keys, kept):  # images large enough to leave the writers' buffers
        table = rows(keys, kept=kept)
        images = [b"\x89" * 65536 if k in kept else None for k in keys]
        return table.set_column(table.column_names.index(schema.IMAGE_BYTES), schema.IMAGE_BYTES, pa.array(images, pa.binary()))

    writer = sink.open_shard(0)
    writer.add(batch(["c", "d", "e"], kept={"c", "e"}))
    writer.add(batch(["a", "b"], kept={"b"}))
    assert out.committed() == set() and not (tmp_path / "shards" / "corpus" / "00000.tar").exists()
    (tmp_tar,) = [p for p in (tmp_path / "_tmp").iterdir() if "00000.tar" in p.name]
    with tarfile.open(tmp_tar, mode="r|") as tar:  # the first batch's samples are on disk already
        assert tar.next().name == "c.png"
    writer.commit()
    assert out.committed() == {0} and sink.open_shard(0) is None  # never opened again
    with tarfile.open(tmp_path / "shards" / "corpus" / "00000.tar") as tar:
        assert [n for n in tar.getnames() if n.endswith(".png")] == ["c.png", "e.png", "b.png"]  # as they came
    assert pq.read_table(tmp_path / "shards" / "corpus" / "00000.parquet").column(schema.KEY).to_pylist() == ["b", "c", "e"]
    assert pq.read_table(tmp_path / "shards" / "rejects" / "00000.parquet").column(schema.KEY).to_pylist() == ["a", "d"]
    assert out.read_shard_stats()["input_rows"] == 5


def test_an_aborted_shard_leaves_nothing_and_is_redone_whole(tmp_path, monkeypatch):
    out, sink = sink_for(tmp_path, {0: 2}, monkeypatch)
    writer = sink.open_shard(0)
    writer.add(rows(["a"], kept={"a"}))
    writer.abort()
    writer.abort()  # twice is harmless (a failure after the tar was closed aborts too)
    assert out.committed() == set() and not [p for p in (tmp_path / "_tmp").iterdir() if ".tar." in p.name]
    again = sink.open_shard(0)
    again.add(rows(["a", "b"], kept={"a", "b"}))
    again.commit()
    with tarfile.open(tmp_path / "shards" / "corpus" / "00000.tar") as tar:
        assert [n for n in tar.getnames() if n.endswith(".png")] == ["a.png", "b.png"]


def test_a_superseded_run_opens_no_shard(tmp_path, monkeypatch):
    out, old = sink_for(tmp_path, {0: 1}, monkeypatch)
    CorpusSink(str(tmp_path), out.claim(), {0: 1})
    with pytest.raises(SupersededRun):
        old.open_shard(0)
