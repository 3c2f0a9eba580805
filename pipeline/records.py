"""Read one input file, untrusted, record by record: batches of rows, and a `Malformed` record
for each line that does not parse and for the place where a damaged file breaks off.

CSV/TSV through pyarrow's streaming reader (rows with a wrong column count handed to us),
JSON Lines line by line, Parquet by batches, plain text by lines; gzip through our own decoder,
which keeps every complete line before damage (see _Gunzip). Files on any store
pipeline.storage knows.
"""

from __future__ import annotations

import io
import json
import os
import zlib
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import storage

FORMATS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".txt": "txt",
}
ROWS_PER_BLOCK = 1024
RAW_TEXT_CHARS = 200  # how much of a malformed line its rejection keeps
GZIP_CHUNK = 1 << 16


def input_format(path: str) -> str | None:
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return FORMATS.get(os.path.splitext(name)[1])


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


def csv_header(uri: str) -> list[str]:
    """The column names of a CSV/TSV file's header (none for an empty file)."""
    fs, path = storage.resolve(uri)
    if not storage.info(fs, path).size:
        return []
    return _csv_names(fs, path, "," if input_format(uri) == "csv" else "\t")
