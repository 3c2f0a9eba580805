import pyarrow as pa
import pytest

from pipeline import schema
from pipeline.writer import CorpusSink, SupersededRun, claim_output, metadata_table, shard_stats


def test_a_newer_run_fences_writers_of_the_older_one(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.writer.SETTLE_SECONDS", 0)
    old = CorpusSink(str(tmp_path), claim_output(str(tmp_path)))
    old._check_owner()
    new = CorpusSink(str(tmp_path), claim_output(str(tmp_path)))
    new._check_owner()
    with pytest.raises(SupersededRun):
        old._check_owner()


def test_superseded_writer_deletes_only_its_own_shard(tmp_path):
    sink = CorpusSink(str(tmp_path), claim_output(str(tmp_path)))
    sink.on_write_start()
    mine = [tmp_path / "shards" / sub / f"part-a-000001.{ext}" for sub, ext in (("corpus", "tar"), ("corpus", "parquet"), ("rejects", "parquet"), ("stats", "json"))]
    other = tmp_path / "shards" / "corpus" / "part-a-0000011.tar"
    for p in mine + [other]:
        p.write_bytes(b"x")
    sink._delete_shard("part-a-000001")
    assert not any(p.exists() for p in mine) and other.exists()


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
