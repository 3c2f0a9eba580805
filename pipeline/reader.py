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

import io
import json
import os
import zlib
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import schema, storage
from pipeline.raycompat import Datasource, read_task

FORMATS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".txt": "txt",
}
ROWS_PER_BLOCK = 1024
KEY_FILE_DIGITS = 5
KEY_ROW_DIGITS = 9
RAW_TEXT_CHARS = 200  # how much of a malformed line its rejection keeps
GZIP_CHUNK = 1 << 16


class InputError(ValueError):
    """A job-level input mistake: the message says what to fix."""


def input_format(path: str) -> str | None:
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return FORMATS.get(os.path.splitext(name)[1])


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


# --- reading one file: good rows and malformed records, in file order -------------------------


@dataclass(frozen=True)
class Malformed:
    """One input record that is not a row: a line that does not parse, or where a file breaks off."""

    line: int | None  # 1-based line (CSV: record number counting the header); None: no line
    text: str
    problem: str

    def message(self, uri: str) -> str:
        where = f"{uri}, line {self.line}" if self.line is not None else uri
        raw = f": {self.text[:RAW_TEXT_CHARS]!r}" if self.text else ""
        return f"{where}: {self.problem}{raw}"


class Unreadable(Exception):
    """The file cannot be read as its format at all (garbage, a Parquet file without footer)."""


class _Gunzip(io.RawIOBase):
    """gzip decoding that keeps every complete line before damage instead of failing the read.

    Python's and Arrow's gzip readers raise on a truncated or corrupt stream and lose what was
    decoded with the failing chunk. This one stops at the damage, drops the partial line before
    it (a cut URL must not pass as a real one) and says what happened in `damage`.
    """

    def __init__(self, raw):
        self._raw = raw
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._ready = b""  # complete lines, ready to hand out
        self._partial = b""  # bytes after the last newline, held back until the line completes
        self._done = False
        self.damage: str | None = None
        first = raw.read(2)
        if first and first != b"\x1f\x8b":
            raise Unreadable("not a gzip file (bad magic bytes)")
        self._pending = first

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while not self._ready and not self._done:
            chunk = self._pending + self._raw.read(GZIP_CHUNK)
            self._pending = b""
            try:
                if not chunk:
                    if not self._inflate.eof:
                        raise zlib.error("the compressed stream ends before its end marker (truncated)")
                    self._ready, self._partial, self._done = self._partial, b"", True
                    return
                out = self._inflate.decompress(chunk)
                while self._inflate.eof and self._inflate.unused_data:  # concatenated gzip members
                    rest = self._inflate.unused_data
                    self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    out += self._inflate.decompress(rest)
            except zlib.error as e:
                dropped = len(self._partial)
                self.damage = f"damaged gzip stream: {e}" + (f"; {dropped} bytes of a cut line dropped" if dropped else "")
                self._partial, self._done = b"", True
                return
            data = self._partial + out
            cut = data.rfind(b"\n") + 1
            self._ready, self._partial = data[:cut], data[cut:]

    def readinto(self, buffer) -> int:
        self._fill()
        n = min(len(buffer), len(self._ready))
        buffer[:n] = self._ready[:n]
        self._ready = self._ready[n:]
        return n


class _Plain(io.RawIOBase):
    """A pyarrow input stream as a Python raw stream (pyarrow's own has no readline)."""

    damage = None

    def __init__(self, raw):
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _open_text(fs: pafs.FileSystem, path: str) -> io.BufferedReader:
    """A buffered binary stream of the file's text; `.raw.damage` says where a gzip stream broke."""
    raw = fs.open_input_stream(path, compression=None)  # gzip is ours to decode, see _Gunzip
    wrapper = _Gunzip(raw) if path.lower().endswith(".gz") else _Plain(raw)
    return io.BufferedReader(wrapper, buffer_size=GZIP_CHUNK)


def _decoded(column: pa.Array) -> pa.Array:
    """CSV cells read as bytes, as text; undecodable bytes become U+FFFD instead of failing the block."""
    try:
        return column.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array([None if v is None else v.decode("utf-8", "replace") for v in column.to_pylist()], pa.string())


def _csv_names(fs: pafs.FileSystem, path: str, delimiter: str) -> list[str]:
    """The header's column names (an extra pass over the file's first block)."""
    with _open_text(fs, path) as stream:
        try:
            parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=lambda row: "skip")
            reader = pacsv.open_csv(stream, parse_options=parse,
                                    read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 20))
        except pa.ArrowInvalid as e:
            if "Empty CSV file" in str(e):
                return []
            raise Unreadable(f"not {'CSV' if delimiter == ',' else 'TSV'}: {e}") from e
        return reader.schema.names


def _csv_records(stream, delimiter: str, names: list[str]) -> Iterator[pa.RecordBatch | Malformed]:
    bad: list[Malformed] = []

    def invalid_row(row) -> str:
        problem = f"expected {row.expected_columns} columns, found {row.actual_columns}"
        bad.append(Malformed(row.number, row.text or "", problem))
        return "skip"

    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=invalid_row)
    read = pacsv.ReadOptions(use_threads=False, block_size=1 << 20)
    # Every column as bytes, decoded afterwards (see _decoded): a uid "00123" stays text, and
    # bad UTF-8 in one cell cannot fail a whole block.
    convert = pacsv.ConvertOptions(strings_can_be_null=False, column_types={n: pa.binary() for n in names})
    try:
        reader = pacsv.open_csv(stream, parse_options=parse, read_options=read, convert_options=convert)
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            return
        raise Unreadable(f"not {'CSV' if delimiter == ',' else 'TSV'}: {e}") from e
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except (pa.ArrowInvalid, OSError) as e:  # the parser cannot go on: the rest is one damage record
            yield from bad
            yield Malformed(None, "", f"unreadable from here on ({e})")
            return
        yield from bad
        bad.clear()
        yield pa.record_batch([_decoded(c) for c in batch.columns], names=batch.schema.names)
    yield from bad


def _jsonl_records(stream) -> Iterator[dict | Malformed]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            yield Malformed(number, line.decode("utf-8", "replace").rstrip("\r\n"), f"not JSON ({e})")
            continue
        if not isinstance(value, dict):
            yield Malformed(number, line.decode("utf-8", "replace").rstrip("\r\n"), f"a JSON {type(value).__name__}, not an object")
            continue
        yield value


def _dict_batches(records: Iterator[dict | Malformed], types: dict[str, pa.DataType] | None) -> Iterator[pa.RecordBatch | Malformed]:
    rows: list[dict] = []

    def flush():
        table = _rows_table(rows, types)
        rows.clear()
        return table

    for record in records:
        if isinstance(record, Malformed):
            if rows:
                yield flush()
            yield record
            continue
        rows.append(record)
        if len(rows) == ROWS_PER_BLOCK:
            yield flush()
    if rows:
        yield flush()


def _json_text(value) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _rows_table(rows: list[dict], types: dict[str, pa.DataType] | None) -> pa.RecordBatch:
    """JSON objects as a batch. With `types` (the file's unified column types, from the plan),
    every batch of the file gets the same columns; a column whose values disagree in type is text."""
    names = list(types) if types is not None else list(dict.fromkeys(k for r in rows for k in r))
    arrays = []
    for name in names:
        values = [r.get(name) for r in rows]
        kind = types.get(name) if types is not None else None
        if kind is not None and pa.types.is_string(kind):
            values = [_json_text(v) for v in values]
        try:
            arrays.append(pa.array(values, kind))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            arrays.append(pa.array([_json_text(v) for v in values], pa.string()))
    return pa.record_batch(arrays, names=names)


def _parquet_records(fs: pafs.FileSystem, path: str) -> Iterator[pa.RecordBatch | Malformed]:
    try:
        file = pq.ParquetFile(fs.open_input_file(path))
    except (pa.ArrowInvalid, OSError) as e:
        raise Unreadable(f"not a Parquet file ({e})") from e
    batches = file.iter_batches(batch_size=ROWS_PER_BLOCK)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            yield Malformed(None, "", f"damaged Parquet data, rows from here on lost ({e})")
            return
        yield batch


def read_records(uri: str, url_col: str, json_types: dict[str, pa.DataType] | None = None) -> Iterator[pa.RecordBatch | Malformed]:
    """Every record of one input file in order: batches of rows and Malformed records.

    Raises Unreadable when the file is not its format at all, StorageError when it cannot be read.
    """
    fmt = input_format(uri)
    fs, path = storage.resolve(uri)
    try:
        if storage.info(fs, path).size == 0:
            return
        if fmt == "parquet":
            yield from _parquet_records(fs, path)
            return
        delimiter = "," if fmt == "csv" else "\t"
        names = _csv_names(fs, path, delimiter) if fmt in ("csv", "tsv") else []
        with _open_text(fs, path) as stream:
            if fmt in ("csv", "tsv"):
                if names:
                    yield from _csv_records(stream, delimiter, names)
            elif fmt == "jsonl":
                yield from _dict_batches(_jsonl_records(stream), json_types)
            else:  # txt: one URL per line; blank lines are not rows
                yield from _txt_batches(stream, url_col)
            damage = stream.raw.damage
        if damage:
            yield Malformed(None, "", damage)
    except (OSError, pa.ArrowException) as e:
        if isinstance(e, storage.StorageError):
            raise
        raise storage.StorageError(uri, e) from e


def _txt_batches(stream, url_col: str) -> Iterator[pa.RecordBatch]:
    urls: list[str] = []
    for line in stream:
        text = line.decode("utf-8", "replace").strip()
        if text:
            urls.append(text)
        if len(urls) == ROWS_PER_BLOCK:
            yield pa.record_batch({url_col: pa.array(urls, pa.string())})
            urls = []
    if urls:
        yield pa.record_batch({url_col: pa.array(urls, pa.string())})


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
        names.update(_csv_header(uri, fmt))
    if fmt == "jsonl" and bad and not good:
        raise Unreadable(f"no line is a JSON object ({bad} lines tried)")
    if fmt != "txt" and (good or names) and columns.url_col not in names:
        raise Unreadable(
            f"no column {columns.url_col!r} (columns: {', '.join(sorted(names)) or 'none'}); "
            "pass --url-col with the name of the column that holds the image URLs"
        )
    return InputFile(uri, rows, {k: v for k, v in types.items()} if fmt == "jsonl" else None)


def _csv_header(uri: str, fmt: str) -> list[str]:
    fs, path = storage.resolve(uri)
    if not storage.info(fs, path).size:
        return []
    return _csv_names(fs, path, "," if fmt == "csv" else "\t")


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
    return _csv_header(uri, fmt) if fmt in ("csv", "tsv") else []


def check_inputs(files: list[str], columns: ColumnMap) -> list[InputFile]:
    """Kept for callers that only validate: the plan's checks (url column, readable files)."""
    return plan_inputs(files, columns)


# --- the datasource ---------------------------------------------------------------------------


@dataclass
class UrlListDatasource(Datasource):
    """One read task per input file with shards to do; each row tagged with its shard."""

    inputs: list[InputFile]
    columns: ColumnMap
    shards: list[Shard] = field(default_factory=list)  # the shards to produce (all, or those left)

    def __post_init__(self):
        if not self.shards:
            self.shards = cut_shards([f.rows for f in self.inputs], 10**12)

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        by_file: dict[int, list[Shard]] = {}
        for shard in self.shards:
            by_file.setdefault(shard.source, []).append(shard)
        return [self._read_task(i, shards) for i, shards in sorted(by_file.items())]

    def _read_task(self, file_index: int, shards: list[Shard]):
        columns, source = self.columns, self.inputs[file_index]
        return read_task(lambda: read_shards(source, file_index, shards, columns), (source.uri,))


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
    """The rows of the wanted shards of one file, each with its shard index in schema.SHARD."""
    shards = sorted(shards, key=lambda s: s.first_row)
    row = 0
    last = shards[-1].first_row + shards[-1].num_rows
    for record in read_records(source.uri, columns.url_col, source.json_types):
        if row >= last:
            return
        if isinstance(record, Malformed):
            table = rejected_rows([make_key(file_index, row)], schema.Reason.MALFORMED_INPUT, [record.message(source.uri)])
        else:
            table = rows_of_batch(columns, record, file_index, row)
        wanted, ids = _shard_ids(shards, row, table.num_rows)
        row += table.num_rows
        table = table.append_column(schema.SHARD, ids).filter(wanted)
        if table.num_rows:
            yield table
    if row < last:
        raise storage.StorageError(source.uri, f"has {row} rows now, {source.rows} when the job was planned: the input changed")
