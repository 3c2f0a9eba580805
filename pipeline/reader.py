"""Read URL lists (Parquet, CSV, TSV, JSON Lines, plain text; gzip allowed) as a Ray Datasource.

Each row gets a stable `key` from its file's position in the sorted file list and its row
number in that file, so the same input always yields the same keys. Resuming a killed job
depends on that: Ray Data's checkpoint filter drops rows whose key was already written.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipeline import schema

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


class InputError(ValueError):
    """A job-level input mistake: the message says what to fix."""


def input_format(path: str) -> str | None:
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return FORMATS.get(os.path.splitext(name)[1])


def resolve_input_files(spec: str) -> list[str]:
    """A file, a directory (searched recursively) or a glob, as a sorted list of input files."""
    if os.path.isdir(spec):
        candidates = [
            os.path.join(root, name) for root, _, names in os.walk(spec) for name in names
        ]
    elif glob.has_magic(spec):
        candidates = glob.glob(spec, recursive=True)
    elif os.path.isfile(spec):
        if input_format(spec) is None:
            raise InputError(
                f"--input {spec}: unknown format; use one of "
                f"{', '.join(sorted(FORMATS))} (optionally .gz)"
            )
        return [spec]
    else:
        raise InputError(f"--input {spec}: no such file, directory or glob match")
    files = sorted(p for p in candidates if os.path.isfile(p) and input_format(p))
    if not files:
        raise InputError(
            f"--input {spec}: no input files found (looked for {', '.join(sorted(FORMATS))}, "
            "optionally .gz)"
        )
    if len(files) >= 10**KEY_FILE_DIGITS:
        raise InputError(f"--input {spec}: {len(files)} files; at most {10**KEY_FILE_DIGITS - 1}")
    return files


def make_key(file_index: int, row_index: int) -> str:
    return f"{file_index:0{KEY_FILE_DIGITS}d}{row_index:0{KEY_ROW_DIGITS}d}"


def _csv_reader(path: str, delimiter: str) -> pacsv.CSVStreamingReader:
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    with pa.input_stream(path, compression="detect") as f:
        names = pacsv.open_csv(f, parse_options=parse).schema.names
    # Text columns stay text: a uid "00123" must come out as it went in.
    convert = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names}, strings_can_be_null=False
    )
    return pacsv.open_csv(
        pa.input_stream(path, compression="detect"),
        parse_options=parse,
        convert_options=convert,
        read_options=pacsv.ReadOptions(block_size=1 << 20),
    )


def _raw_batches(path: str, fmt: str, url_col: str) -> Iterator[pa.RecordBatch]:
    if fmt == "parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=ROWS_PER_BLOCK)
    elif fmt in ("csv", "tsv"):
        yield from _csv_reader(path, "," if fmt == "csv" else "\t")
    elif fmt == "jsonl":
        with pa.input_stream(path, compression="detect") as f:
            yield from pajson.read_json(f).to_batches(ROWS_PER_BLOCK)
    else:  # txt: one URL per line; blank lines are not rows
        with pa.input_stream(path, compression="detect") as f:
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines()]
        urls = [ln for ln in lines if ln]
        for start in range(0, len(urls), ROWS_PER_BLOCK):
            yield pa.record_batch({url_col: pa.array(urls[start : start + ROWS_PER_BLOCK], pa.string())})


def column_names(path: str) -> list[str]:
    """Column names of a structured input file (never called for plain text)."""
    fmt = input_format(path)
    if fmt == "parquet":
        return pq.read_schema(path).names
    if fmt in ("csv", "tsv"):
        return _csv_reader(path, "," if fmt == "csv" else "\t").schema.names
    for batch in _raw_batches(path, fmt, url_col=""):
        return batch.schema.names
    return []


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


def check_inputs(files: list[str], columns: ColumnMap) -> None:
    """Fail fast, before any work starts, when a file lacks the url column."""
    for path in files:
        if input_format(path) == "txt":
            continue
        names = column_names(path)
        if columns.url_col not in names:
            raise InputError(
                f"{path}: no column {columns.url_col!r} (columns: {', '.join(names) or 'none'}); "
                f"pass --url-col with the name of the column that holds the image URLs"
            )


class UrlListDatasource(Datasource):
    """One read task per input file; rows keyed by (file index, row number)."""

    def __init__(self, files: list[str], columns: ColumnMap):
        self._files = files
        self._columns = columns

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(os.path.getsize(p) for p in self._files)

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        return [self._read_task(i, path) for i, path in enumerate(self._files)]

    def _read_task(self, file_index: int, path: str) -> ReadTask:
        columns = self._columns
        fmt = input_format(path)

        def read() -> Iterator[pa.Table]:
            row = 0
            for batch in _raw_batches(path, fmt, columns.url_col):
                if batch.num_rows:
                    yield columns.to_rows(batch, file_index, row)
                    row += batch.num_rows

        meta = BlockMetadata(
            num_rows=None,
            size_bytes=os.path.getsize(path),
            exec_stats=None,
            input_files=(path,),
        )
        return ReadTask(read, meta)
