"""Inputs that already hold images, for jobs.label: corpora written by us or by img2dataset
(webdataset tars or Parquet with image bytes), plain folders of image files, and, for video models,
folders of video files and video2dataset's webdataset tars.

Every source yields rows with key, url, caption, the image bytes (or a path the fetch stage
reads) and the input's own columns, like pipeline.reader does for URL lists. Inputs may live on
any store pipeline.storage knows. Output shards follow the input: one per tar or Parquet file
(a corpus's shard 00007 is labelled into shard 00007), and runs of --shard-size images of a
folder; their row counts are known before any work starts (see `image_source`).
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from filters.video import VIDEO_EXTENSIONS
from pipeline import schema, storage
from pipeline.raycompat import Datasource, read_task
from pipeline.reader import ROWS_PER_BLOCK, ColumnMap, InputError, Shard, input_format, rejected_rows
from pipeline.writer import CORPUS_DIR, SHARDS_DIR, STATS_DIR, OutputDir

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


def _tar_samples(uri: str, with_data: bool = True) -> Iterator[dict]:
    """webdataset convention: members grouped by the name before the first dot of the basename.

    Without data, only headers are read (seeking past each member): counting a tar's samples.
    """
    fs, path = storage.resolve(uri)
    sample: dict = {}
    try:
        if with_data:
            tar = tarfile.open(fileobj=fs.open_input_stream(path, compression=None), mode="r|*")
        else:
            tar = tarfile.open(fileobj=fs.open_input_file(path), mode="r:")
        with tar:
            for member in tar:
                if not member.isfile():
                    continue
                dirname, base = posixpath.split(member.name)
                key, _, ext = base.partition(".")
                key = posixpath.join(dirname, key) if dirname else key
                if sample and sample["__key__"] != key:
                    yield sample
                    sample = {}
                sample["__key__"] = key
                sample[ext.lower()] = tar.extractfile(member).read() if with_data else b""
    except (OSError, tarfile.TarError, pa.ArrowException) as e:
        raise storage.StorageError(uri, e) from e
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


class _RejectedRow(dict):
    """A sample that cannot be made a row (its JSON does not parse, ...): key and why."""


def _isolated(samples: Iterator, make_row) -> Iterator[dict]:
    """make_row per sample; a sample it fails on becomes that row's rejection, the rest go on."""
    for sample in samples:
        try:
            yield make_row(sample)
        except Exception as e:  # noqa: BLE001 - this sample alone fails: its rejection says why
            key = str(sample.get("__key__", "")) if isinstance(sample, dict) else str(sample)
            reason = schema.Reason.MALFORMED_INPUT if isinstance(e, (ValueError, UnicodeError)) else schema.Reason.INTERNAL_ERROR
            yield _RejectedRow(key=key, reason=reason, message=f"{type(e).__name__}: {e}")


def _blocks(rows: Iterator[dict], columns: ColumnMap, shard: int) -> Iterator[pa.Table]:
    def tables(batch):
        good = [r for r in batch if not isinstance(r, _RejectedRow)]
        bad = [r for r in batch if isinstance(r, _RejectedRow)]
        parts = [_rows_to_table(good, columns)] if good else []
        for r in bad:
            parts.append(rejected_rows([r["key"]], r["reason"], [r["message"]]))
        for t in parts:
            yield t.append_column(schema.SHARD, pa.array([shard] * t.num_rows, pa.int32()))

    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == ROWS_PER_BLOCK:
            yield from tables(batch)
            batch = []
    if batch:
        yield from tables(batch)


def _parquet_file(uri: str) -> pq.ParquetFile:
    fs, path = storage.resolve(uri)
    try:
        return pq.ParquetFile(fs.open_input_file(path))
    except (OSError, pa.ArrowException) as e:
        raise storage.StorageError(uri, e) from e


def _parquet_image_rows(path: str, image_col: str) -> Iterator[dict]:
    for batch in _parquet_file(path).iter_batches(batch_size=ROWS_PER_BLOCK):
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
    """One read task per shard: a tar file, a Parquet file, or a run of image paths.

    items[i] is shard i's input; `shards` are the ones to produce (all, or those left to do).
    """

    def __init__(self, kind: str, items: list, columns: ColumnMap, shards: list[Shard], root: str = ""):
        self._kind, self._items, self._columns, self._root = kind, items, columns, root
        self.shards = shards

    def estimate_inmemory_data_size(self):
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        return [self._task(shard) for shard in self.shards]

    def _task(self, shard: Shard):
        kind, columns, root, item = self._kind, self._columns, self._root, self._items[shard.source]

        def read() -> Iterator[pa.Table]:
            if kind in ("images", "videos"):
                yield from _blocks(_isolated(iter(item), lambda p: _image_row(p, root)), columns, shard.index)
            elif kind == "webdataset":
                yield from _blocks(_isolated(_tar_samples(item), _sample_row), columns, shard.index)
            else:
                path, image_col = item
                yield from _blocks(_parquet_image_rows(path, image_col), columns, shard.index)

        files = tuple(p if isinstance(p, str) else p[0] for p in (item if kind in ("images", "videos") else [item]))
        return read_task(read, files)


def _image_row(uri: str, root: str) -> dict:
    key = posixpath.relpath(uri, root) if root else posixpath.basename(uri)
    if storage.is_local(uri):  # the fetch stage reads it, with the same byte cap as downloads
        return {schema.KEY: key, schema.URL: os.path.abspath(uri)}
    fs, path = storage.resolve(uri)
    return {schema.KEY: key, schema.URL: uri, schema.IMAGE_BYTES: storage.read_bytes(fs, path)}


def _image_column(uri: str) -> str | None:
    for field in _parquet_file(uri).schema_arrow:
        if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            if field.name in ("jpg", "jpeg", "png", "webp", "image", "image_bytes"):
                return field.name
    return None


def _corpus_dir(spec: str) -> str | None:
    """OUTPUT/shards/corpus when spec is a jobs.build_corpus output, else None."""
    fs, path = storage.resolve(spec)
    folder = posixpath.join(path, SHARDS_DIR, CORPUS_DIR)
    return folder if storage.info(fs, folder).type == pafs.FileType.Directory else None


def _listing(spec: str) -> list[str]:
    """Every file a spec names (a file, a directory searched recursively, or a glob), as URIs."""
    fs, path = storage.resolve(spec)
    if storage.has_magic(path):
        found = [f.path for f in storage.glob(fs, path)]
    else:
        kind = storage.info(fs, path).type
        found = [path] if kind == pafs.FileType.File else [f.path for f in storage.list_files(fs, path, recursive=True)]
    return sorted(storage.display(fs, p) for p in found if not posixpath.basename(p).startswith("."))


def detect_format(spec: str) -> str:
    """Which kind of input `spec` is, from what is in storage."""
    try:
        if _corpus_dir(spec):
            return "webdataset"
        paths = _listing(spec)
        if any(p.endswith(".tar") for p in paths):
            return "webdataset"
        parquet = [p for p in paths if p.endswith(".parquet")]
        if parquet and all(_image_column(p) for p in parquet):
            return "parquet-images"
    except storage.StorageError as e:
        raise InputError(f"--input {spec}: {e}") from e
    if any(input_format(p) for p in paths):
        return "urls"
    if any(p.lower().endswith(IMAGE_EXTENSIONS) for p in paths):
        return "images"
    if any(p.lower().endswith(VIDEO_EXTENSIONS) for p in paths):
        return "videos"
    raise InputError(f"--input {spec}: found no URL lists, tar shards, Parquet, image or video files")


def _files(spec: str, suffixes: tuple[str, ...]) -> list[str]:
    try:
        files = [p for p in _listing(spec) if p.lower().endswith(suffixes)]
    except storage.StorageError as e:
        raise InputError(f"--input {spec}: {e}") from e
    if not files:
        raise InputError(f"--input {spec}: no {'/'.join(suffixes)} files found")
    return files


def _corpus_shards(spec: str) -> tuple[list[str], list[int]]:
    """A jobs.build_corpus output: its committed shards' tars and their sample counts."""
    out = OutputDir(spec)
    tars, counts = [], []
    for name in out.committed_names():
        stats = json.loads(storage.read_bytes(out.fs, out.join(SHARDS_DIR, STATS_DIR, name + ".json")))
        tars.append(out.uri(out.shard_file(CORPUS_DIR, name, ".tar")))
        counts.append(int(stats["kept"]))
    if not tars:
        raise InputError(f"--input {spec}: a corpus output without any finished shard")
    return tars, counts


def image_source(kind: str, spec: str, columns: ColumnMap, shard_size: int) -> tuple[FileListDatasource, list[int]]:
    """The datasource for an input that holds images, and each of its shards' row counts.

    Counting happens here, before Ray starts: a corpus's stats files, Parquet footers, tar
    headers of other webdataset tars, the image listing. Raises InputError on a mismatch.
    """
    try:
        if kind == "webdataset":
            if _corpus_dir(spec):
                items, counts = _corpus_shards(spec)
            else:
                items = _files(spec, (".tar",))
                counts = [sum(1 for _ in _tar_samples(t, with_data=False)) for t in items]
            root = ""
        elif kind == "parquet-images":
            items, counts = [], []
            for path in _files(spec, (".parquet",)):
                image_col = _image_column(path)
                if image_col is None:
                    raise InputError(f"{path}: no binary image column (looked for jpg, png, webp, image)")
                items.append((path, image_col))
                counts.append(_parquet_file(path).metadata.num_rows)
            root = ""
        elif kind in ("images", "videos"):
            paths = _files(spec, IMAGE_EXTENSIONS if kind == "images" else VIDEO_EXTENSIONS)
            fs, path = storage.resolve(spec)
            is_dir = storage.info(fs, path).type == pafs.FileType.Directory
            root = spec.rstrip("/") if is_dir else posixpath.dirname(spec)
            if storage.is_local(spec):
                root = os.path.abspath(root)
            items = [paths[i : i + shard_size] for i in range(0, len(paths), shard_size)]
            counts = [len(chunk) for chunk in items]
        else:
            raise ValueError(kind)
    except storage.StorageError as e:
        raise InputError(f"--input {spec}: cannot read {e}") from e
    shards = [Shard(i, i, 0, n) for i, n in enumerate(counts)]
    return FileListDatasource(kind, items, columns, shards, root=root), counts
