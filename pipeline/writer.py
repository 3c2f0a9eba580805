"""Write shards with predictable names, each visible only when complete, never rewritten.

A shard is a fixed range of input rows decided before any work starts (pipeline.reader.cut_shards
for URL lists, pipeline.sources for inputs that hold images), named by its number: 00000,
00001, ... in input order. All files of a shard share the name, so training loaders address
them with brace patterns (`shards/corpus/{00000..00099}.tar`).

Layout under OUTPUT (a local directory or any pipeline.storage URI):
    shards/corpus/NNNNN.tar       kept samples: KEY.{jpg,png,...}, .txt (caption), .json (row)
    shards/corpus/NNNNN.parquet   one row per kept sample (img2dataset's columns + ours + input's)
    shards/rejects/NNNNN.parquet  one row per rejected input row, with status, reason, message
    shards/labels/NNNNN.parquet   jobs.label: every row of the shard, labelled or failed
    shards/previews/NNNNN.parquet jobs.label: a few thumbnails (key, JPEG, original size)
    shards/stats/NNNNN.json       counts for this shard; written last: it commits the shard
    _run                          the id of the run that owns the output now (see OutputDir.claim)
    _tmp/                         temporary files and pieces of shards; never read as output
    stats.json                    totals over all committed shards, written when the job ends

Every file of a shard is written whole (pipeline.storage.write_atomic); the stats file comes
last. Everything that reads an output (totals, dedup seeding, resuming, reports) reads only
committed shards, so files that a killed run left of an unfinished shard are never trusted:
the next run writes that shard again from scratch.

Ray Data hands the sink blocks whose rows need not line up with shards. A write task that holds
all of a shard's rows commits it at once; otherwise its rows are kept as a piece under
_tmp/pieces/RUN/NNNNN/ and whichever task completes the shard's row count assembles it.
"""

from __future__ import annotations

import contextlib
import io
import json
import posixpath
import re
import tarfile
import threading
import time
import uuid
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import schema, storage
from pipeline.raycompat import Datasink

SHARDS_DIR = "shards"
CORPUS_DIR = "corpus"
REJECTS_DIR = "rejects"
STATS_DIR = "stats"
LABELS_DIR = "labels"
PREVIEWS_DIR = "previews"
RUN_FILE = "_run"
PIECES_DIR = "pieces"
# How long a new run waits after taking over an output from an earlier run; see OutputDir.claim.
SETTLE_SECONDS = 3.0
STATS_FILE = "stats.json"
SHARD_NAME_DIGITS = 5
_SHARD_NAME = re.compile(r"^(\d{%d,})\.json$" % SHARD_NAME_DIGITS)

IMAGE_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}  # the only formats stages keep


def shard_name(index: int) -> str:
    return f"{index:0{SHARD_NAME_DIGITS}d}"


class SupersededRun(RuntimeError):
    """A newer run owns the output: this (orphaned) writer must not commit anything."""


class OutputDir:
    """A job's output directory on any filesystem. Pickles with its filesystem object (pyarrow's
    own pickling: a worker resolves credentials on its node, from the same configuration)."""

    def __init__(self, uri: str):
        self.uri_ = uri
        self.fs, self.path = storage.resolve(uri)

    def join(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def uri(self, path: str) -> str:
        return storage.display(self.fs, path)

    def shard_file(self, sub: str, name: str, ext: str) -> str:
        return self.join(SHARDS_DIR, sub, name + ext)

    @property
    def tmp(self) -> str:
        return self.join(storage.TMP_DIR)

    def write(self, path: str, data) -> None:
        storage.write_atomic(self.fs, path, data, tmp_root=self.tmp)

    def committed_names(self) -> list[str]:
        """Names of committed shards (their stats file exists), in order."""
        found = storage.list_files(self.fs, self.join(SHARDS_DIR, STATS_DIR))
        names = []
        for info in found:
            match = _SHARD_NAME.match(posixpath.basename(info.path))
            if match:
                names.append(match.group(1))
        return sorted(names)

    def committed(self) -> set[int]:
        return {int(n) for n in self.committed_names()}

    def claim(self) -> str:
        """Make this run the owner of the output; returns its run id.

        Ray workers outlive a killed driver by seconds. A shard commit still in flight could
        interleave with the next run's commit of the same shard (files of two runs mixed).
        So writers check the owner before committing (see ShardSink), and a run that takes
        over an output waits until a writer that passed its check just before the takeover has
        committed; only then does it list the committed shards.
        """
        run_id = uuid.uuid4().hex
        path = self.join(RUN_FILE)
        taking_over = storage.exists(self.fs, path)
        self.write(path, run_id.encode())
        if taking_over:
            time.sleep(SETTLE_SECONDS)
        return run_id

    def owner(self) -> str:
        return storage.read_bytes(self.fs, self.join(RUN_FILE)).decode()

    def read_shard_stats(self) -> dict:
        """Totals over every committed shard, this run's and earlier runs'."""
        totals = {"input_rows": 0, "kept": 0, "rejected": 0, "rejected_by_reason": Counter(), "bytes": 0, "shards": 0}
        for name in self.committed_names():
            path = self.join(SHARDS_DIR, STATS_DIR, name + ".json")
            try:
                shard = json.loads(storage.read_bytes(self.fs, path))
                totals["shards"] += 1
                for k in ("input_rows", "kept", "rejected", "bytes"):
                    totals[k] += shard[k]
                totals["rejected_by_reason"].update(shard["rejected_by_reason"])
            except (ValueError, KeyError, TypeError) as e:
                raise storage.StorageError(self.uri(path), f"not a shard stats file ({e})") from e
        totals["rejected_by_reason"] = dict(sorted(totals["rejected_by_reason"].items()))
        return totals

    def write_totals(self, totals: dict) -> None:
        self.write(self.join(STATS_FILE), json.dumps(totals, indent=1).encode())

    def clean_tmp(self) -> None:
        """Remove temporary files and pieces: only when every shard is committed."""
        storage.delete_dir(self.fs, self.tmp)


def read_shard_stats(output: str | OutputDir) -> dict:
    out = output if isinstance(output, OutputDir) else OutputDir(output)
    return out.read_shard_stats()


def metadata_table(table: pa.Table) -> pa.Table:
    """The row's Parquet form: internal columns dropped, our columns typed as the schema says."""
    table = table.drop_columns([c for c in schema.INTERNAL_COLUMNS if c in table.column_names])
    for field in schema.CORPUS_FIELDS + schema.LABEL_FIELDS:
        if field.name in table.column_names:
            i = table.column_names.index(field.name)
            if table.schema.field(i).type != field.type:
                table = table.set_column(i, field, table.column(i).cast(field.type))
    return table


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def reject_as_internal(rows: pa.Table, messages: list[str]) -> pa.Table:
    """Rows a stage could not handle: our measured columns cleared, the outcome says what failed."""
    n = rows.num_rows
    keep = {schema.KEY, schema.URL, schema.CAPTION}
    ours = {f.name for f in schema.CORPUS_FIELDS + schema.LABEL_FIELDS} - keep
    for name in list(rows.column_names):
        if name in ours:
            rows = rows.set_column(rows.column_names.index(name), name, pa.nulls(n, rows.schema.field(name).type))
    outcome = {
        schema.STATUS: [schema.Status.INTERNAL_ERROR] * n,
        schema.REASON: [schema.Reason.INTERNAL_ERROR] * n,
        schema.ERROR_MESSAGE: messages,
    }
    for name, values in outcome.items():
        column = pa.array(values, pa.string())
        if name in rows.column_names:
            rows = rows.set_column(rows.column_names.index(name), name, column)
        else:
            rows = rows.append_column(name, column)
    return rows


def typed_rows(table: pa.Table) -> pa.Table:
    """metadata_table, row by row when the whole table fails: a row that cannot be typed (a
    value no column can hold) becomes an internal_error rejection; the others are unaffected."""
    try:
        return metadata_table(table)
    except Exception:  # noqa: BLE001 - decided row by row below
        pass
    out = []
    for i in range(table.num_rows):
        row = table.slice(i, 1)
        try:
            out.append(metadata_table(row))
        except Exception as e:  # noqa: BLE001 - this row alone fails: its rejection says why
            out.append(metadata_table(reject_as_internal(row, [f"writing the row: {_error_text(e)}"])))
    return pa.concat_tables(out, promote_options="permissive") if out else metadata_table(table)


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


def tar_members(row: dict, image: bytes) -> list[tuple[str, bytes]]:
    """One sample's tar members in webdataset layout: image, caption, the row as JSON."""
    key = row[schema.KEY]
    ext = IMAGE_EXTENSIONS.get(row[schema.IMAGE_FORMAT] or "", "bin")
    caption = row[schema.CAPTION] or ""
    return [
        (f"{key}.{ext}", image),
        (f"{key}.txt", caption.encode("utf-8")),
        (f"{key}.json", json.dumps(_json_safe(row), ensure_ascii=False).encode("utf-8")),
    ]


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


def _sorted_by_key(rows: pa.Table) -> pa.Table:
    """Rows in key order; those that come whole from the reader already are, and are not copied."""
    keys = rows.column(schema.KEY)
    if rows.num_rows < 2 or pc.all(pc.greater_equal(keys.slice(1), keys.slice(0, rows.num_rows - 1))).as_py():
        return rows
    return rows.sort_by(schema.KEY)


def _is_kept(table: pa.Table) -> pa.ChunkedArray:
    return pc.fill_null(pc.equal(table.column(schema.STATUS), schema.Status.SUCCESS), False)


def _split(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    is_kept = _is_kept(table)
    return table.filter(is_kept), table.filter(pc.invert(is_kept))


class ShardSink(Datasink):
    """Groups the rows it gets by shard and commits each shard once all its rows are there.

    `counts`: shard index -> the number of input rows the shard holds (from the plan).
    """

    SUBDIRS: tuple[str, ...] = ()

    def __init__(self, output: str, run_id: str, counts: dict[int, int]):
        self.out = OutputDir(output)
        self.run_id = run_id
        self.counts = counts

    def on_write_start(self, schema_=None) -> None:
        for sub in self.SUBDIRS + (STATS_DIR,):
            storage.makedirs(self.out.fs, self.out.join(SHARDS_DIR, sub))

    def write(self, blocks, ctx) -> None:
        tables = [pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return
        table = pa.concat_tables(tables, promote_options="permissive")
        shards = sorted(set(table.column(schema.SHARD).to_pylist()))
        for shard in shards:
            # one shard (the corpus builder's case) needs no filter, which would copy its images
            rows = table if len(shards) == 1 else table.filter(pc.equal(table.column(schema.SHARD), shard))
            if rows.num_rows == self.counts[shard]:
                self.commit(shard, rows)
            else:
                self._add_piece(shard, rows)

    # --- pieces: rows of a shard that came in several write tasks ---

    def _pieces_dir(self, shard: int) -> str:
        return self.out.join(storage.TMP_DIR, PIECES_DIR, self.run_id, shard_name(shard))

    def _add_piece(self, shard: int, rows: pa.Table) -> None:
        folder = self._pieces_dir(shard)
        first = rows.column(schema.KEY)[0].as_py()
        # Named by content: a retried write task rewrites the same piece instead of adding one.
        name = f"{uuid.uuid5(uuid.NAMESPACE_OID, first).hex[:16]}-{rows.num_rows}.parquet"
        storage.write_parquet(self.out.fs, posixpath.join(folder, name), rows, tmp_root=self.out.tmp)
        self.assemble_if_complete(shard)

    def assemble_if_complete(self, shard: int) -> bool:
        folder = self._pieces_dir(shard)
        pieces = storage.list_files(self.out.fs, folder)
        if sum(int(posixpath.basename(p.path).rsplit("-", 1)[1].split(".")[0]) for p in pieces) < self.counts[shard]:
            return False
        tables = []
        for piece in pieces:
            try:
                tables.append(pq.read_table(self.out.fs.open_input_file(piece.path)))
            except (OSError, pa.ArrowException) as e:
                raise storage.StorageError(self.out.uri(piece.path), e) from e
        rows = pa.concat_tables(tables, promote_options="permissive")
        # A piece may overlap another after a retried upstream task: keep each key once.
        seen, first = set(), []
        for i, key in enumerate(rows.column(schema.KEY).to_pylist()):
            if key not in seen:
                seen.add(key)
                first.append(i)
        rows = rows.take(first)
        if rows.num_rows != self.counts[shard]:
            return False
        self.commit(shard, rows)
        return True

    # --- commit ---

    def commit(self, shard: int, rows: pa.Table) -> None:
        """Write the shard's files whole, then its stats file, which makes it visible as done."""
        name = shard_name(shard)
        if not self._may_write(name):
            return
        self._write_stats(name, self.write_shard(name, _sorted_by_key(rows)))

    def _may_write(self, name: str) -> bool:
        """False when the shard is committed already (a retried task): a finished shard is never
        rewritten. Raises SupersededRun when another run owns the output."""
        if storage.exists(self.out.fs, self.out.shard_file(STATS_DIR, name, ".json")):
            return False
        self._check_owner()
        return True

    def _write_stats(self, name: str, stats: dict) -> None:
        """The shard's last file, which commits it; only while this run still owns the output."""
        self._check_owner()
        self.out.write(self.out.shard_file(STATS_DIR, name, ".json"), json.dumps(stats, indent=1).encode())

    def _check_owner(self) -> None:
        owner = self.out.owner()
        if owner != self.run_id:
            raise SupersededRun(f"run {self.run_id} was superseded by run {owner}; not writing")

    def write_shard(self, name: str, rows: pa.Table) -> dict:
        """Write the shard's data files; returns its stats."""
        raise NotImplementedError

    def _parquet(self, sub: str, name: str, table: pa.Table) -> None:
        self.out.write(self.out.shard_file(sub, name, ".parquet"), lambda stream: pq.write_table(table, stream))


class CorpusSink(ShardSink):
    """Kept samples as a webdataset tar with a Parquet beside it; rejected rows apart.

    Every shard has all three files, empty ones too, so brace patterns never hit a gap.
    """

    SUBDIRS = (CORPUS_DIR, REJECTS_DIR)

    def open_shard(self, shard: int) -> "CorpusShardWriter | None":
        """A writer that streams the shard's rows out as they come (None: committed already)."""
        name = shard_name(shard)
        return CorpusShardWriter(self, name) if self._may_write(name) else None

    def write_shard(self, name: str, rows: pa.Table) -> dict:
        writer = CorpusShardWriter(self, name)
        writer.add(rows)
        return writer.finish()


class CorpusShardWriter:
    """One corpus shard written as its rows arrive, in any order and any grouping: each batch's
    kept images go straight into the shard's tar (under a temporary name), only the rows' facts
    stay in memory, so a fetch actor holds the images of the batches in flight, not of a shard.
    Samples follow in arrival order, as img2dataset's; the Parquet files are in key order.

    add() may be called from several threads. finish() writes the Parquet files, then the stats
    file that commits the shard (CorpusSink.commit's order); abort() leaves nothing behind.
    """

    def __init__(self, sink: CorpusSink, name: str):
        self.sink, self.name = sink, name
        out = sink.out
        self._lock = threading.Lock()
        self._files = contextlib.ExitStack()
        self._stream = self._files.enter_context(storage.atomic_output(out.fs, out.shard_file(CORPUS_DIR, name, ".tar"), out.tmp))
        self._tar = tarfile.open(fileobj=self._stream, mode="w|")
        self._kept: list[pa.Table] = []
        self._rejected: list[pa.Table] = []

    def add(self, rows: pa.Table) -> None:
        with self._lock:
            try:
                self._add(rows)
            except BaseException as e:
                self._fail(e)

    def _add(self, rows: pa.Table) -> None:
        # The image column is read in place, row by row: filtering it would copy every image.
        images = rows.column(schema.IMAGE_BYTES) if schema.IMAGE_BYTES in rows.column_names else None
        is_kept = _is_kept(rows)
        kept_at = np.flatnonzero(is_kept.to_numpy(zero_copy_only=False))  # kept row -> row of `rows`
        facts = rows.drop_columns([schema.IMAGE_BYTES]) if images is not None else rows
        kept, rejected = typed_rows(facts.filter(is_kept)), typed_rows(facts.filter(pc.invert(is_kept)))
        failed, messages = [], []
        for i, row in enumerate(kept.to_pylist()):
            try:
                if row[schema.STATUS] != schema.Status.SUCCESS:  # typed_rows rejected it
                    failed.append(i)
                    messages.append(row[schema.ERROR_MESSAGE])
                    continue
                members = tar_members(row, images[int(kept_at[i])].as_py())
            except Exception as e:  # noqa: BLE001 - this row alone fails: its rejection says why
                failed.append(i)
                messages.append(f"writing the sample: {_error_text(e)}")
                continue
            add_sample(self._tar, members)
        if failed:
            is_failed = pa.array(np.isin(np.arange(kept.num_rows), failed))
            rejected = pa.concat_tables([rejected, metadata_table(reject_as_internal(kept.filter(is_failed), messages))], promote_options="permissive")
            kept = kept.filter(pc.invert(is_failed))
        self._kept.append(kept)
        self._rejected.append(rejected)

    def finish(self) -> dict:
        """Close the tar (moved into place), write the Parquet files; returns the shard's stats."""
        with self._lock:
            try:
                self._tar.close()
                self._files.close()
            except BaseException as e:
                self._fail(e)
        kept, rejected = (_sorted_by_key(pa.concat_tables(t, promote_options="permissive")) for t in (self._kept, self._rejected))
        self.sink._parquet(CORPUS_DIR, self.name, kept)
        self.sink._parquet(REJECTS_DIR, self.name, rejected)
        return shard_stats(kept, rejected)

    def commit(self) -> None:
        """finish(), then the stats file that makes the shard visible (see ShardSink.commit)."""
        self.sink._write_stats(self.name, self.finish())

    def abort(self) -> None:
        """Drop the temporary tar, if it is still open (the shard is redone from its first row)."""
        with self._lock:
            aborted = RuntimeError(f"shard {self.name} aborted")
            try:
                self._files.__exit__(RuntimeError, aborted, None)
            except RuntimeError as e:  # atomic_output re-raises what it was closed with
                if e is not aborted:
                    raise

    def _fail(self, e: BaseException):
        """The temporary tar is removed; a storage failure is raised as a StorageError naming the tar."""
        self._files.__exit__(type(e), e, e.__traceback__)  # atomic_output re-raises as StorageError
        raise e


def add_sample(tar: tarfile.TarFile, members: list[tuple[str, bytes]]) -> None:
    for name, data in members:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))


class LabelSink(ShardSink):
    """Every row, labelled or failed, in one Parquet per shard; a few thumbnails beside it."""

    SUBDIRS = (LABELS_DIR, PREVIEWS_DIR)

    def __init__(self, output: str, run_id: str, counts: dict[int, int], previews_per_shard: int):
        super().__init__(output, run_id, counts)
        self._previews = previews_per_shard

    def write_shard(self, name: str, rows: pa.Table) -> dict:
        kept, _ = _split(rows)
        with_thumb = kept.filter(pc.is_valid(kept.column(schema.THUMBNAIL))).slice(0, self._previews) if kept.num_rows else kept
        previews = pa.table(
            {
                schema.KEY: with_thumb.column(schema.KEY).cast(pa.string()),
                schema.THUMBNAIL: with_thumb.column(schema.THUMBNAIL).cast(pa.binary()),
                schema.WIDTH: with_thumb.column(schema.ORIGINAL_WIDTH).cast(pa.int32()),
                schema.HEIGHT: with_thumb.column(schema.ORIGINAL_HEIGHT).cast(pa.int32()),
            },
            schema=pa.schema(schema.PREVIEW_FIELDS),
        ) if with_thumb.num_rows else pa.schema(schema.PREVIEW_FIELDS).empty_table()
        labels = typed_rows(rows.drop_columns([c for c in (schema.THUMBNAIL,) if c in rows.column_names]))
        self._parquet(LABELS_DIR, name, labels)
        self._parquet(PREVIEWS_DIR, name, previews)
        kept, rejected = _split(labels)
        return shard_stats(kept, rejected)
