"""Inputs that already hold images, for jobs.label: corpora written by us or by img2dataset
(webdataset tars or Parquet with image bytes), plain folders of image files, and, for video models,
folders of video files and video2dataset's webdataset tars.

Every source yields rows with key, url, caption, the image bytes (or a path the fetch stage
reads) and the input's own columns, like pipeline.reader does for URL lists.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from filters.video import VIDEO_EXTENSIONS
from pipeline import schema
from pipeline.reader import ROWS_PER_BLOCK, ColumnMap, InputError, input_format
from pipeline.writer import CORPUS_DIR, SHARDS_DIR

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
# A corpus row's own facts are measured again by the fetch stage; carrying the old values
# too would only confuse. Everything else in a sample's json is the user's and is kept.
_REMEASURED = set(schema.CORPUS_COLUMNS) | {"exif", "__key__"}
INPUT_FORMATS = ("auto", "urls", "images", "videos", "webdataset", "parquet-images")


def _rows_to_table(rows: list[dict], columns: ColumnMap) -> pa.Table:
    """Leading columns (key, url, caption[, image bytes]), then the input's other columns.

    Only sources that hold images get the image-bytes column; the fetch stage never
    downloads a row of such a source (a missing image there is a rejected row).
    """
    leading = [schema.KEY, schema.URL, schema.CAPTION]
    if rows and schema.IMAGE_BYTES in rows[0]:
        leading.append(schema.IMAGE_BYTES)
    out: dict[str, list] = {name: [] for name in leading}
    extra = sorted({name for row in rows for name in row} - set(out))
    for name in extra:
        out[columns.output_name(name)] = []
    for row in rows:
        for name in leading:
            out[name].append(row.get(name))
        for name in extra:
            out[columns.output_name(name)].append(row.get(name))
    types = {schema.KEY: pa.string(), schema.URL: pa.string(), schema.CAPTION: pa.string(), schema.IMAGE_BYTES: pa.binary()}
    return pa.table({name: pa.array(values, types.get(name)) for name, values in out.items()})


def _tar_samples(path: str) -> Iterator[dict]:
    """webdataset convention: members grouped by the name before the first dot of the basename."""
    sample: dict = {}
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            dirname, base = os.path.split(member.name)
            key, _, ext = base.partition(".")
            key = os.path.join(dirname, key) if dirname else key
            if sample and sample["__key__"] != key:
                yield sample
                sample = {}
            sample["__key__"] = key
            sample[ext.lower()] = tar.extractfile(member).read()
    if sample:
        yield sample


def _sample_row(sample: dict) -> dict:
    meta = json.loads(sample["json"]) if "json" in sample else {}
    # video2dataset's tars hold KEY.mp4 (etc.) where img2dataset's hold KEY.jpg
    media = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    image = next((sample[e.lstrip(".")] for e in media if e.lstrip(".") in sample), None)
    row = {k: v for k, v in meta.items() if k not in _REMEASURED and not isinstance(v, (dict, list))}
    row.update(
        {
            schema.KEY: str(meta.get(schema.KEY) or sample["__key__"]),
            schema.URL: meta.get(schema.URL),
            schema.CAPTION: sample["txt"].decode("utf-8", "replace") if "txt" in sample else meta.get(schema.CAPTION),
            schema.IMAGE_BYTES: image,
        }
    )
    return row


def _blocks(rows: Iterator[dict], columns: ColumnMap) -> Iterator[pa.Table]:
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == ROWS_PER_BLOCK:
            yield _rows_to_table(batch, columns)
            batch = []
    if batch:
        yield _rows_to_table(batch, columns)


def _parquet_image_rows(path: str, image_col: str) -> Iterator[dict]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=ROWS_PER_BLOCK):
        for row in batch.to_pylist():
            image = row.pop(image_col)
            out = {k: v for k, v in row.items() if k not in _REMEASURED}
            out.update(
                {
                    schema.KEY: str(row.get(schema.KEY)),
                    schema.URL: row.get(schema.URL),
                    schema.CAPTION: row.get(schema.CAPTION),
                    schema.IMAGE_BYTES: image,
                }
            )
            yield out


class FileListDatasource(Datasource):
    """One read task per file (a tar shard, a Parquet file, or a chunk of image paths)."""

    def __init__(self, kind: str, items: list, columns: ColumnMap, root: str = ""):
        self._kind, self._items, self._columns, self._root = kind, items, columns, root

    def estimate_inmemory_data_size(self):
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        if self._kind in ("images", "videos"):
            chunks = [self._items[i : i + ROWS_PER_BLOCK] for i in range(0, len(self._items), ROWS_PER_BLOCK)]
            return [self._task(chunk) for chunk in chunks]
        return [self._task([item]) for item in self._items]

    def _task(self, items: list) -> ReadTask:
        kind, columns, root = self._kind, self._columns, self._root

        def read() -> Iterator[pa.Table]:
            if kind in ("images", "videos"):
                # Paths only: the fetch stage reads them with the same byte cap as downloads.
                rows = ({schema.KEY: os.path.relpath(p, root), schema.URL: os.path.abspath(p)} for p in items)
                yield from _blocks(rows, columns)
            elif kind == "webdataset":
                yield from _blocks((_sample_row(s) for s in _tar_samples(items[0])), columns)
            else:
                path, image_col = items[0]
                yield from _blocks(_parquet_image_rows(path, image_col), columns)

        files = tuple(p if isinstance(p, str) else p[0] for p in items)
        return ReadTask(read, BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=files))


def _image_column(path: str) -> str | None:
    for field in pq.read_schema(path):
        if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            if field.name in ("jpg", "jpeg", "png", "webp", "image", "image_bytes"):
                return field.name
    return None


def detect_format(spec: str) -> str:
    """Which kind of input `spec` is, from what is on disk."""
    if os.path.isdir(os.path.join(spec, SHARDS_DIR, CORPUS_DIR)):
        return "webdataset"
    paths = [spec] if os.path.isfile(spec) else (
        [os.path.join(r, n) for r, _, ns in os.walk(spec) for n in ns] if os.path.isdir(spec) else glob.glob(spec)
    )
    if any(p.endswith(".tar") for p in paths):
        return "webdataset"
    parquet = [p for p in paths if p.endswith(".parquet")]
    if parquet and all(_image_column(p) for p in parquet):
        return "parquet-images"
    if any(input_format(p) for p in paths):
        return "urls"
    if any(p.lower().endswith(IMAGE_EXTENSIONS) for p in paths):
        return "images"
    if any(p.lower().endswith(VIDEO_EXTENSIONS) for p in paths):
        return "videos"
    raise InputError(f"--input {spec}: found no URL lists, tar shards, Parquet, image or video files")


def _files(spec: str, suffixes: tuple[str, ...]) -> list[str]:
    if os.path.isdir(os.path.join(spec, SHARDS_DIR, CORPUS_DIR)):
        spec = os.path.join(spec, SHARDS_DIR, CORPUS_DIR)
    if os.path.isfile(spec):
        found = [spec]
    elif os.path.isdir(spec):
        found = [os.path.join(r, n) for r, _, ns in os.walk(spec) for n in ns]
    else:
        found = glob.glob(spec, recursive=True)
    files = sorted(p for p in found if p.lower().endswith(suffixes))
    if not files:
        raise InputError(f"--input {spec}: no {'/'.join(suffixes)} files found")
    return files


def image_source(kind: str, spec: str, columns: ColumnMap) -> FileListDatasource:
    """The datasource for an input that holds images; raises InputError on a mismatch."""
    if kind == "webdataset":
        return FileListDatasource(kind, _files(spec, (".tar",)), columns)
    if kind == "parquet-images":
        items = []
        for path in _files(spec, (".parquet",)):
            image_col = _image_column(path)
            if image_col is None:
                raise InputError(f"{path}: no binary image column (looked for jpg, png, webp, image)")
            items.append((path, image_col))
        return FileListDatasource(kind, items, columns)
    if kind == "images":
        root = spec if os.path.isdir(spec) else os.path.dirname(spec)
        return FileListDatasource(kind, _files(spec, IMAGE_EXTENSIONS), columns, root=root)
    if kind == "videos":
        root = spec if os.path.isdir(spec) else os.path.dirname(spec)
        return FileListDatasource(kind, _files(spec, VIDEO_EXTENSIONS), columns, root=root)
    raise ValueError(kind)
