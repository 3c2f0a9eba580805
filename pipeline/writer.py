"""Write shards. Corpus: for each block a webdataset tar of kept samples with a Parquet file
beside it, a Parquet file of rejected rows, and a stats file. Labels: one Parquet of every row
and a Parquet of a few thumbnails for jobs.report.

All files of one write task share one basename. Ray Data's checkpointing relies on that: a task
killed before its commit leaves a pending checkpoint named after the basename, and the next
run deletes every file starting with it before redoing those rows.

Layout under OUTPUT:
    shards/corpus/BASE.tar       kept samples: BASE-KEY.{jpg,png,...}, .txt (caption), .json (row)
    shards/corpus/BASE.parquet   one row per kept sample (img2dataset's columns + ours + input's)
    shards/rejects/BASE.parquet  one row per rejected input row, with status, reason, message
    shards/labels/BASE.parquet   jobs.label: every row of the shard, labelled or failed
    shards/previews/BASE.parquet jobs.label: a few thumbnails (key, JPEG, original size)
    shards/stats/BASE.json       counts for this shard
    _checkpoint/                 Ray Data's record of finished keys (outside shards/ on purpose:
                                 its cleanup lists shards/ recursively by basename prefix)
    _run                         the id of the run that owns the output now (see claim_output)
    stats.json                   totals over all shards, written when the job ends
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tarfile
import time
import uuid
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow.fs import FileSelector
from ray.data._internal.execution.interfaces import TaskContext
from ray.data._internal.planner.plan_write_op import WRITE_UUID_KWARG_NAME
from ray.data.block import BlockAccessor
from ray.data.datasource.file_datasink import _FileDatasink
from ray.data.datasource.filename_provider import FilenameProvider, _split_base_and_ext

from pipeline import schema

SHARDS_DIR = "shards"
CORPUS_DIR = "corpus"
REJECTS_DIR = "rejects"
STATS_DIR = "stats"
LABELS_DIR = "labels"
PREVIEWS_DIR = "previews"
CHECKPOINT_DIR = "_checkpoint"
RUN_FILE = "_run"
# How long a new run waits after taking over an output from an earlier run; see claim_output.
SETTLE_SECONDS = 3.0
STATS_FILE = "stats.json"

IMAGE_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}  # the only formats stages keep


class ShardNames(FilenameProvider):
    """`part-<write id>-<task>`: unique across runs, so a resumed run never overwrites."""

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"part-{write_uuid[:8]}-{task_index:06d}"


def metadata_table(table: pa.Table) -> pa.Table:
    """The row's Parquet form: internal columns dropped, our columns typed as the schema says."""
    table = table.drop_columns([c for c in schema.INTERNAL_COLUMNS if c in table.column_names])
    for field in schema.CORPUS_FIELDS + schema.LABEL_FIELDS:
        if field.name in table.column_names:
            i = table.column_names.index(field.name)
            if table.schema.field(i).type != field.type:
                table = table.set_column(i, field, table.column(i).cast(field.type))
    return table


def _json_safe(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def write_tar(samples: pa.Table, images: list[bytes], stream) -> None:
    """webdataset layout: members grouped by key, image + txt + json per sample."""
    with tarfile.open(fileobj=stream, mode="w|") as tar:
        for row, image in zip(samples.to_pylist(), images):
            key = row[schema.KEY]
            ext = IMAGE_EXTENSIONS.get(row[schema.IMAGE_FORMAT] or "", "bin")
            caption = row[schema.CAPTION] or ""
            members = [
                (ext, image),
                ("txt", caption.encode("utf-8")),
                ("json", json.dumps(_json_safe(row), ensure_ascii=False).encode("utf-8")),
            ]
            for suffix, data in members:
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))


def shard_stats(kept: pa.Table, rejected: pa.Table) -> dict:
    reasons = Counter(rejected.column(schema.REASON).to_pylist()) if rejected.num_rows else {}
    nbytes = pc.sum(kept.column(schema.BYTES)).as_py() if kept.num_rows and schema.BYTES in kept.column_names else 0
    return {
        "input_rows": kept.num_rows + rejected.num_rows,
        "kept": kept.num_rows,
        "rejected": rejected.num_rows,
        "rejected_by_reason": dict(sorted(reasons.items())),
        "bytes": nbytes or 0,
    }


class SupersededRun(RuntimeError):
    """A newer run owns the output: this (orphaned) writer must not commit anything."""


def claim_output(output_dir: str) -> str:
    """Make this run the owner of output_dir; returns its run id.

    Ray workers outlive a killed driver by seconds. A shard write still in flight could land
    after the next run has loaded its checkpoint (rows written twice), or commit while that
    run's cleanup deletes its files (rows lost). So writers check the owner before and after
    writing (see _ShardSink.write_block), and a run that takes over an output waits until a
    writer that passed its last check just before the takeover has committed.
    """
    run_id = uuid.uuid4().hex
    path = os.path.join(output_dir, RUN_FILE)
    taking_over = os.path.exists(path)
    tmp = os.path.join(output_dir, f".{RUN_FILE}.{run_id}")
    with open(tmp, "w") as f:
        f.write(run_id)
    os.replace(tmp, path)
    if taking_over:
        time.sleep(SETTLE_SECONDS)
    return run_id


class _ShardSink(_FileDatasink):
    """One shard per write task; subclasses say which files a shard has."""

    SUBDIRS: tuple[str, ...] = ()

    def __init__(self, output_dir: str, run_id: str):
        super().__init__(posixpath.join(output_dir, SHARDS_DIR), filename_provider=ShardNames())
        self._run_file = posixpath.join(output_dir, RUN_FILE)
        self._run_id = run_id

    def _check_owner(self) -> None:
        with self.filesystem.open_input_stream(self._run_file) as f:
            owner = f.read().decode()
        if owner != self._run_id:
            raise SupersededRun(f"run {self._run_id} was superseded by run {owner}; not writing")

    def on_write_start(self, schema_=None) -> None:
        super().on_write_start(schema_)
        for sub in self.SUBDIRS + (STATS_DIR,):
            self.filesystem.create_dir(posixpath.join(self.path, sub), recursive=True)

    def write_block(self, block: BlockAccessor, block_index: int, ctx: TaskContext) -> None:
        # Must equal the basename Ray Data's checkpointing derives for this task.
        name = self.filename_provider.get_filename_for_task(ctx.kwargs[WRITE_UUID_KWARG_NAME], ctx.task_idx)
        base, _ = _split_base_and_ext(name)
        table = block.to_arrow()
        is_kept = pc.equal(table.column(schema.STATUS), schema.Status.SUCCESS)
        kept, rejected = table.filter(is_kept), table.filter(pc.invert(is_kept))
        self._check_owner()
        self.write_shard(base, kept, rejected)
        stats = json.dumps(shard_stats(kept, rejected), indent=1).encode()
        with self.open_output_stream(posixpath.join(self.path, STATS_DIR, base + ".json")) as f:
            f.write(stats)
        try:
            self._check_owner()
        except SupersededRun:
            self._delete_shard(base)  # the new run may already have cleaned up; leave nothing
            raise

    def _delete_shard(self, base: str) -> None:
        for sub in self.SUBDIRS + (STATS_DIR,):
            for info in self.filesystem.get_file_info(FileSelector(posixpath.join(self.path, sub), allow_not_found=True)):
                if posixpath.basename(info.path).startswith(base + "."):
                    self.filesystem.delete_file(info.path)

    def write_shard(self, base: str, kept: pa.Table, rejected: pa.Table) -> None:
        raise NotImplementedError

    def _write_parquet(self, table: pa.Table, subdir: str, base: str) -> None:
        with self.open_output_stream(posixpath.join(self.path, subdir, base + ".parquet")) as f:
            pq.write_table(table, f)


class CorpusSink(_ShardSink):
    """Kept samples as a webdataset tar with a Parquet beside it; rejected rows apart."""

    SUBDIRS = (CORPUS_DIR, REJECTS_DIR)

    def write_shard(self, base: str, kept: pa.Table, rejected: pa.Table) -> None:
        if kept.num_rows:
            images = kept.column(schema.IMAGE_BYTES).to_pylist()
            kept = metadata_table(kept)
            with self.open_output_stream(posixpath.join(self.path, CORPUS_DIR, base + ".tar")) as f:
                write_tar(kept, images, f)
            self._write_parquet(kept, CORPUS_DIR, base)
        if rejected.num_rows:
            self._write_parquet(metadata_table(rejected), REJECTS_DIR, base)


class LabelSink(_ShardSink):
    """Every row, labelled or failed, in one Parquet per shard; a few thumbnails beside it."""

    SUBDIRS = (LABELS_DIR, PREVIEWS_DIR)

    def __init__(self, output_dir: str, run_id: str, previews_per_shard: int):
        super().__init__(output_dir, run_id)
        self._previews = previews_per_shard

    def write_shard(self, base: str, kept: pa.Table, rejected: pa.Table) -> None:
        with_thumb = kept.filter(pc.is_valid(kept.column(schema.THUMBNAIL))).slice(0, self._previews)
        if with_thumb.num_rows:
            previews = pa.table(
                {
                    schema.KEY: with_thumb.column(schema.KEY),
                    schema.THUMBNAIL: with_thumb.column(schema.THUMBNAIL),
                    schema.WIDTH: with_thumb.column(schema.ORIGINAL_WIDTH),
                    schema.HEIGHT: with_thumb.column(schema.ORIGINAL_HEIGHT),
                },
                schema=pa.schema(schema.PREVIEW_FIELDS),
            )
            self._write_parquet(previews, PREVIEWS_DIR, base)
        rows = pa.concat_tables([kept, rejected]).drop_columns([schema.THUMBNAIL])
        rows = rows.sort_by(schema.KEY)
        self._write_parquet(metadata_table(rows), LABELS_DIR, base)


def read_shard_stats(output_dir: str) -> dict:
    """Totals over every shard written so far, this run's and earlier runs'."""
    totals = {"input_rows": 0, "kept": 0, "rejected": 0, "rejected_by_reason": Counter(), "bytes": 0, "shards": 0}
    stats_dir = os.path.join(output_dir, SHARDS_DIR, STATS_DIR)
    for name in sorted(os.listdir(stats_dir)) if os.path.isdir(stats_dir) else []:
        with open(os.path.join(stats_dir, name)) as f:
            shard = json.load(f)
        totals["shards"] += 1
        for k in ("input_rows", "kept", "rejected", "bytes"):
            totals[k] += shard[k]
        totals["rejected_by_reason"].update(shard["rejected_by_reason"])
    totals["rejected_by_reason"] = dict(sorted(totals["rejected_by_reason"].items()))
    return totals
