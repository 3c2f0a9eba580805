"""Read URL lists (Parquet, CSV, TSV, JSON Lines, plain text; gzip allowed), locally or from any
store pipeline.storage knows, as a Ray Datasource.

Input files are untrusted. A line that does not parse becomes one row rejected as
`malformed_input` (file, line, start of the raw text) and reading goes on; a damaged file (a
truncated gzip stream, a broken Parquet page) keeps the rows before the damage and records the
damage as one more rejected row. A file that cannot be read as its format at all stops the job
before Ray starts (see `plan_inputs`), naming every such file.

Each row gets a stable `key` from its file's position in the sorted file list and its row
number in that file (malformed rows count too), so the same input always yields the same keys
and the same shards: `plan_inputs` counts every file's rows before any work starts, and each
file's rows are cut into shards of --shard-size rows, numbered in input order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import schema, storage
from pipeline.raycompat import Datasource, read_task
from pipeline.records import (  # noqa: F401 - FORMATS, ROWS_PER_BLOCK, input_format: part of this module's API
    FORMATS,
    ROWS_PER_BLOCK,
    Malformed,
    Unreadable,
    csv_header,
    input_format,
    read_records,
)

KEY_FILE_DIGITS = 5
KEY_ROW_DIGITS = 9


class InputError(ValueError):
    """A job-level input mistake: the message says what to fix."""


def resolve_input_files(spec: str) -> list[str]:
    """A file, a directory (searched recursively) or a glob, as a sorted list of input URIs."""
    formats = f"{', '.join(sorted(FORMATS))} (optionally .gz)"
    try:
        fs, path = storage.resolve(spec)
        if storage.has_magic(path):
            candidates = [f.path for f in storage.glob(fs, path)]
        else:
            kind = storage.info(fs, path).type
            if kind == pafs.FileType.File:
                if input_format(path) is None:
                    raise InputError(f"--input {spec}: unknown format; use one of {formats}")
                return [storage.display(fs, path)]
            if kind == pafs.FileType.NotFound:
                raise InputError(f"--input {spec}: no such file, directory or glob match")
            candidates = [f.path for f in storage.list_files(fs, path, recursive=True)]
    except storage.StorageError as e:
        raise InputError(f"--input {spec}: {e.error}") from e
    files = sorted(storage.display(fs, p) for p in candidates if input_format(p) and not os.path.basename(p).startswith("."))
    if not files:
        raise InputError(f"--input {spec}: no input files found (looked for {formats})")
    if len(files) >= 10**KEY_FILE_DIGITS:
        raise InputError(f"--input {spec}: {len(files)} files; at most {10**KEY_FILE_DIGITS - 1}")
    return files


def make_key(file_index: int, row_index: int) -> str:
    return f"{file_index:0{KEY_FILE_DIGITS}d}{row_index:0{KEY_ROW_DIGITS}d}"


# --- rows -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnMap:
    url_col: str = "url"
    caption_col: str = "caption"

    def output_name(self, name: str) -> str:
        if name == self.url_col:
            return schema.URL
        if name == self.caption_col:
            return schema.CAPTION
        if name in schema.reserved_columns():
            return schema.INPUT_PREFIX + name
        return name

    def to_rows(self, batch: pa.RecordBatch, file_index: int, first_row: int) -> pa.Table:
        """Our leading columns (key, url, caption) followed by every other input column."""
        n = batch.num_rows
        keys = pa.array([make_key(file_index, first_row + i) for i in range(n)], pa.string())
        names = batch.schema.names
        url = batch.column(names.index(self.url_col))
        url = url.cast(pa.string()) if not pa.types.is_string(url.type) else url
        if self.caption_col in names:
            caption = batch.column(names.index(self.caption_col)).cast(pa.string())
        else:
            caption = pa.nulls(n, pa.string())
        columns = {schema.KEY: keys, schema.URL: url, schema.CAPTION: caption}
        for name, col in zip(names, batch.columns):
            if name not in (self.url_col, self.caption_col):
                columns[self.output_name(name)] = col
        return pa.table(columns)


def rejected_rows(keys: list[str], reason: str, messages: list[str]) -> pa.Table:
    """Rows that are rejected before any stage sees them: key, outcome, nothing else."""
    n = len(keys)
    status = schema.REASON_STATUS[reason]
    return pa.table(
        {
            schema.KEY: pa.array(keys, pa.string()),
            schema.URL: pa.nulls(n, pa.string()),
            schema.CAPTION: pa.nulls(n, pa.string()),
            schema.STATUS: pa.array([status] * n, pa.string()),
            schema.REASON: pa.array([reason] * n, pa.string()),
            schema.ERROR_MESSAGE: pa.array(messages, pa.string()),
        }
    )


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def rows_of_batch(columns: ColumnMap, batch: pa.RecordBatch, file_index: int, first_row: int) -> pa.Table:
    """A batch as rows; if converting it fails, each row alone, and a row that still fails is
    rejected as internal_error with the exception's type and message."""
    try:
        return columns.to_rows(batch, file_index, first_row)
    except Exception:  # noqa: BLE001 - decided row by row below
        pass
    tables = []
    for i in range(batch.num_rows):
        try:
            tables.append(columns.to_rows(batch.slice(i, 1), file_index, first_row + i))
        except Exception as e:  # noqa: BLE001 - this row alone fails: its rejection says why
            tables.append(rejected_rows([make_key(file_index, first_row + i)], schema.Reason.INTERNAL_ERROR, [_error_text(e)]))
    return pa.concat_tables(tables, promote_options="permissive")


# --- the plan: every file's rows counted, cut into shards, before Ray starts ----------------------


@dataclass(frozen=True)
class InputFile:
    uri: str
    rows: int  # records, malformed ones included: each becomes exactly one output row
    json_types: dict | None = None  # JSON Lines: the file's column types, unified over all lines


@dataclass(frozen=True)
class Shard:
    """A fixed range of one input's rows; output files are named after `index` (see writer)."""

    index: int
    source: int  # index of the input file (or item) it comes from
    first_row: int
    num_rows: int


def cut_shards(row_counts: list[int], shard_size: int) -> list[Shard]:
    """Each input's rows in runs of shard_size, numbered in input order (as img2dataset does)."""
    shards = []
    for source, rows in enumerate(row_counts):
        for first in range(0, rows, shard_size):
            shards.append(Shard(len(shards), source, first, min(shard_size, rows - first)))
    return shards


def _unify_json_types(batch: pa.RecordBatch, types: dict) -> None:
    for field_ in batch.schema:
        known = types.get(field_.name)
        if known is None or pa.types.is_null(known):
            types[field_.name] = field_.type
        elif not pa.types.is_null(field_.type) and known != field_.type:
            try:
                types[field_.name] = pa.unify_schemas(
                    [pa.schema([pa.field("x", known)]), pa.schema([pa.field("x", field_.type)])], promote_options="permissive"
                ).field("x").type
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                types[field_.name] = pa.string()  # values of several kinds: kept as JSON text


def survey_file(uri: str, columns: ColumnMap) -> InputFile:
    """Read a whole file once, as the job will: its row count, and for JSON Lines its column types.

    Raises Unreadable (the file is not its format, or lacks the url column) or StorageError.
    """
    fmt = input_format(uri)
    rows = good = bad = 0
    names: set[str] = set()
    types: dict = {}
    for record in read_records(uri, columns.url_col):
        if isinstance(record, Malformed):
            rows += 1
            bad += record.line is not None  # damage (a file breaking off) is not a line that failed
            continue
        rows, good = rows + record.num_rows, good + record.num_rows
        names.update(record.schema.names)
        if fmt == "jsonl":
            _unify_json_types(record, types)
    if fmt == "parquet":
        fs, path = storage.resolve(uri)
        if storage.info(fs, path).size:
            names.update(pq.read_schema(fs.open_input_file(path)).names)
    elif fmt in ("csv", "tsv") and rows == 0:
        names.update(csv_header(uri))
    if fmt == "jsonl" and bad and not good:
        raise Unreadable(f"no line is a JSON object ({bad} lines tried)")
    if fmt != "txt" and (good or names) and columns.url_col not in names:
        raise Unreadable(
            f"no column {columns.url_col!r} (columns: {', '.join(sorted(names)) or 'none'}); "
            "pass --url-col with the name of the column that holds the image URLs"
        )
    return InputFile(uri, rows, {k: v for k, v in types.items()} if fmt == "jsonl" else None)


def plan_inputs(files: list[str], columns: ColumnMap) -> list[InputFile]:
    """Survey every input file before any work starts; one InputError names every bad file."""
    surveyed, problems = [], []
    for uri in files:
        try:
            surveyed.append(survey_file(uri, columns))
        except (Unreadable, storage.StorageError) as e:
            problems.append(f"{uri} ({e.error if isinstance(e, storage.StorageError) else e})")
    if problems:
        raise InputError(f"cannot read {len(problems)} input file{'s' if len(problems) > 1 else ''}: " + "; ".join(problems))
    return surveyed


def column_names(uri: str, columns: ColumnMap | None = None) -> list[str]:
    """Column names of a structured input file, in our output naming of the input (raw names)."""
    columns = columns or ColumnMap()
    for record in read_records(uri, columns.url_col):
        if not isinstance(record, Malformed):
            return record.schema.names
    fmt = input_format(uri)
    return csv_header(uri) if fmt in ("csv", "tsv") else []


def check_inputs(files: list[str], columns: ColumnMap) -> list[InputFile]:
    """Kept for callers that only validate: the plan's checks (url column, readable files)."""
    return plan_inputs(files, columns)


# --- the datasource ---------------------------------------------------------------------------


@dataclass
class UrlListDatasource(Datasource):
    """One read task per input file with shards to do; each row tagged with its shard."""

    inputs: list[InputFile]
    columns: ColumnMap
    shards: list[Shard]  # the shards to produce (all, or those left)

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        return [self._read_task(i, shards) for i, shards in shards_by_file(self.shards)]

    def _read_task(self, file_index: int, shards: list[Shard]):
        columns, source = self.columns, self.inputs[file_index]
        return read_task(lambda: read_shards(source, file_index, shards, columns), (source.uri,))


def shards_by_file(shards: list[Shard]) -> list[tuple[int, list[Shard]]]:
    """(input file index, its shards), in file order."""
    by_file: dict[int, list[Shard]] = {}
    for shard in shards:
        by_file.setdefault(shard.source, []).append(shard)
    return sorted(by_file.items())


PACKED_ROWS = "rows"  # a packed shard's rows: one Arrow IPC stream


def pack_shard(table: pa.Table) -> pa.Table:
    """One row for a shard's rows (all of one shard): its index, and the rows as IPC bytes. Ray
    Data reshapes blocks as it likes (merges small ones, splits large ones), but never splits a
    row, so a stage that must get whole shards gets them packed."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    data = sink.getvalue()
    packed = pa.LargeBinaryArray.from_buffers(pa.large_binary(), 1, [None, pa.array([0, data.size], pa.int64()).buffers()[1], data])
    shard = table.column(schema.SHARD)[0].as_py()
    return pa.table({schema.SHARD: pa.array([shard], pa.int32()), PACKED_ROWS: packed})


def unpack_shards(block: pa.Table) -> Iterator[pa.Table]:
    """The shards' row tables in a block of packed shards."""
    for data in block.column(PACKED_ROWS).chunks:
        for value in data:
            yield pa.ipc.open_stream(value.as_buffer()).read_all()


def _shard_ids(shards: list[Shard], first_row: int, n: int) -> tuple[pa.Array, pa.Array]:
    """For rows first_row..first_row+n of a file: whether each is wanted, and its shard index."""
    firsts = np.array([s.first_row for s in shards])
    ends = firsts + np.array([s.num_rows for s in shards])
    rows = np.arange(first_row, first_row + n)
    at = np.searchsorted(firsts, rows, side="right") - 1
    wanted = (at >= 0) & (rows < ends[np.maximum(at, 0)])
    ids = np.where(wanted, np.array([s.index for s in shards])[np.maximum(at, 0)], -1)
    return pa.array(wanted), pa.array(ids, pa.int32())


def read_shards(source: InputFile, file_index: int, shards: list[Shard], columns: ColumnMap) -> Iterator[pa.Table]:
    """The rows of the wanted shards of one file, one table per shard, each row with its shard
    index in schema.SHARD."""
    shards = sorted(shards, key=lambda s: s.first_row)
    size = {s.index: s.num_rows for s in shards}
    pending: dict[int, list[pa.Table]] = {}
    row = 0
    last = shards[-1].first_row + shards[-1].num_rows
    for record in read_records(source.uri, columns.url_col, source.json_types):
        if row >= last:
            break
        if isinstance(record, Malformed):
            table = rejected_rows([make_key(file_index, row)], schema.Reason.MALFORMED_INPUT, [record.message(source.uri)])
        else:
            table = rows_of_batch(columns, record, file_index, row)
        wanted, ids = _shard_ids(shards, row, table.num_rows)
        row += table.num_rows
        table = table.append_column(schema.SHARD, ids).filter(wanted)
        if not table.num_rows:
            continue
        shard_of_row = table.column(schema.SHARD).to_numpy()
        starts = [0, *(np.flatnonzero(np.diff(shard_of_row)) + 1)]  # rows come in file order: runs
        for start, end in zip(starts, [*starts[1:], table.num_rows]):
            shard = int(shard_of_row[start])
            parts = pending.setdefault(shard, [])
            parts.append(table.slice(start, end - start))
            if sum(p.num_rows for p in parts) == size[shard]:
                yield pa.concat_tables(pending.pop(shard), promote_options="permissive")
    if row < last:
        raise storage.StorageError(source.uri, f"has {row} rows now, {source.rows} when the job was planned: the input changed")
