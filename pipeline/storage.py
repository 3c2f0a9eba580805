"""Where a job's files live: local paths, `s3://bucket/prefix`, and any filesystem pyarrow or fsspec knows.

`resolve(uri)` gives a pyarrow FileSystem and a path in it. Local paths and `file://` use
pyarrow's LocalFileSystem; `s3://`, `gs://` and `hdfs://` use pyarrow's own filesystems, which
read credentials, region and endpoint where users already set them (AWS_ACCESS_KEY_ID,
AWS_PROFILE, ~/.aws/config and credentials, AWS_ENDPOINT_URL for S3-compatible stores, instance
roles); any other scheme goes through fsspec, wrapped for pyarrow. The filesystem objects pickle,
so Ray workers get them with the job and resolve credentials on their own node.

Every file is written under a temporary name and moved into place (`write_atomic`): a reader
sees a file whole or not at all, a killed writer leaves only a temporary file, which nothing
reads. A storage failure is a `StorageError` that names the path.
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

TMP_DIR = "_tmp"  # under an output: temporary files, moved into place when whole
_PYARROW_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


class StorageError(OSError):
    """Reading or writing a file failed: one line naming the path and the error."""

    def __init__(self, path: str, error: BaseException | str):
        self.path = path
        self.error = str(error)
        super().__init__(f"{path}: {self.error}")

    def __reduce__(self):  # survives pickling from a Ray worker
        return StorageError, (self.path, self.error)


def scheme(uri: str) -> str:
    head, sep, _ = uri.partition("://")
    return head.lower() if sep and head.isalnum() else ""


def is_local(uri: str) -> bool:
    return scheme(uri) in ("", "file")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI; never touches the store."""
    kind = scheme(uri)
    if kind in ("", "file"):
        path = uri[len("file://"):] if kind else uri
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    try:
        if kind in _PYARROW_SCHEMES:
            fs, path = pafs.FileSystem.from_uri(uri)
            return fs, path.rstrip("/")
        import fsspec  # any other scheme fsspec has an implementation for (az://, hf://, ...)

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path.rstrip("/")
    except (ValueError, ImportError, OSError, pa.ArrowException) as e:
        raise StorageError(uri, e) from e


def join(*parts: str) -> str:
    return posixpath.join(*parts)


def kind(fs: pafs.FileSystem) -> str:
    """local, s3, gcs, memory, ...: the store behind a filesystem, wrapped for pyarrow or not."""
    name = fs.type_name.removeprefix("py::")
    return name.split("+", 1)[1] if name.startswith("fsspec+") else name


def display(fs: pafs.FileSystem, path: str) -> str:
    """The path as the user would write it (s3://bucket/key), for messages."""
    name = kind(fs)
    if name == "local":
        return path
    return f"{'gs' if name == 'gcs' else name}://{path}"


def info(fs: pafs.FileSystem, path: str) -> pafs.FileInfo:
    try:
        return fs.get_file_info(path)
    except (OSError, pa.ArrowException) as e:
        raise StorageError(display(fs, path), e) from e


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return info(fs, path).type != pafs.FileType.NotFound


def list_files(fs: pafs.FileSystem, path: str, recursive: bool = False) -> list[pafs.FileInfo]:
    """Files under a directory (none if it does not exist), sorted by path."""
    try:
        found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=recursive))
    except (OSError, pa.ArrowException) as e:
        raise StorageError(display(fs, path), e) from e
    return sorted((f for f in found if f.type == pafs.FileType.File), key=lambda f: f.path)


def has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _glob_regex(pattern: str) -> re.Pattern:
    """Shell glob as in Python's glob with recursive=True: `*` stays inside a folder, `**` does not."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith("!") else body) + "]"
            i = end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def glob(fs: pafs.FileSystem, pattern: str) -> list[pafs.FileInfo]:
    """Files matching a glob pattern (`*`, `?`, `[...]`, `**`), listed from its fixed prefix."""
    root = pattern
    while has_magic(root):
        root = posixpath.dirname(root)
    regex = _glob_regex(pattern)
    return [f for f in list_files(fs, root, recursive=True) if regex.match(f.path)]


def makedirs(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.create_dir(path, recursive=True)
    except (OSError, pa.ArrowException) as e:
        raise StorageError(display(fs, path), e) from e


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    try:
        with fs.open_input_stream(path, compression=None) as f:
            return f.read()
    except (OSError, pa.ArrowException) as e:
        raise StorageError(display(fs, path), e) from e


def delete(fs: pafs.FileSystem, path: str) -> None:
    """Best effort: a file that is already gone is fine."""
    try:
        fs.delete_file(path)
    except (OSError, pa.ArrowException):
        pass


def delete_dir(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_dir(path)
    except (OSError, pa.ArrowException):
        pass


def temp_path(final: str, tmp_root: str | None = None) -> str:
    """A unique temporary name for `final`: in tmp_root (an output's _tmp/) or beside it, hidden."""
    parent = posixpath.basename(posixpath.dirname(final))
    name = f".{parent}-{posixpath.basename(final)}.{uuid.uuid4().hex[:12]}.tmp"
    return posixpath.join(tmp_root or posixpath.dirname(final), name)


@contextmanager
def atomic_output(fs: pafs.FileSystem, path: str, tmp_root: str | None = None) -> Iterator[pa.NativeFile]:
    """A stream whose bytes appear at `path` only when the block finishes without an error.

    Written under a temporary name, then moved into place: a rename on local disks, a
    server-side copy on object stores, where an object appears whole or not at all.
    On any failure the temporary file is removed (best effort) and a StorageError names `path`.
    """
    tmp = temp_path(path, tmp_root)
    try:
        if kind(fs) == "local":  # object stores have no directories to make
            fs.create_dir(posixpath.dirname(tmp), recursive=True)
            fs.create_dir(posixpath.dirname(path), recursive=True)
        stream = fs.open_output_stream(tmp)
    except (OSError, pa.ArrowException) as e:
        raise StorageError(display(fs, path), e) from e
    try:
        try:
            yield stream
        finally:
            stream.close()
        fs.move(tmp, path)
    except BaseException as e:
        delete(fs, tmp)
        if isinstance(e, (OSError, pa.ArrowException)) and not isinstance(e, StorageError):
            raise StorageError(display(fs, path), e) from e
        raise


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes | Callable[[pa.NativeFile], None], tmp_root: str | None = None) -> None:
    """Write bytes (or whatever `data(stream)` writes) to `path` atomically; see atomic_output."""
    with atomic_output(fs, path, tmp_root) as stream:
        if callable(data):
            data(stream)
        else:
            stream.write(data)


def write_parquet(fs: pafs.FileSystem, path: str, table: pa.Table, tmp_root: str | None = None) -> None:
    write_atomic(fs, path, lambda stream: pq.write_table(table, stream), tmp_root)


def check_writable(uri: str) -> tuple[pafs.FileSystem, str]:
    """Fail before any work when `uri` cannot be an output directory; returns (fs, path).

    Raises ValueError with one line that says what to fix: the output is a file, or a probe
    file cannot be written there (missing bucket, no permission, read-only disk).
    """
    try:
        fs, path = resolve(uri)
        kind = info(fs, path).type
    except StorageError as e:
        raise ValueError(f"--output {uri}: {e.error}") from e
    if kind == pafs.FileType.File:
        raise ValueError(f"--output {uri} is a file; give a directory (it is created if missing)")
    probe = posixpath.join(path, TMP_DIR, f".probe-{uuid.uuid4().hex[:12]}")
    try:
        fs.create_dir(posixpath.join(path, TMP_DIR), recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"--output {uri} is not writable: {e}") from e
    return fs, path


# --- label output, for readers such as jobs.report ---------------------------------------------


def committed_shard_files(output_uri: str, sub: str, ext: str = ".parquet") -> list[str]:
    """URIs of `OUTPUT/shards/<sub>/NNNNN<ext>` of every committed shard, in shard order.

    A shard is committed once its stats file exists (it is written last), so files of a shard a
    killed run left behind are never listed. Open each with `open_input_file(uri)`.
    """
    from pipeline.writer import OutputDir

    out = OutputDir(output_uri)
    return [out.uri(out.shard_file(sub, name, ext)) for name in out.committed_names()]


def open_input_file(uri: str) -> pa.NativeFile:
    """A seekable file (what pyarrow.parquet.ParquetFile needs) for a path or URI."""
    fs, path = resolve(uri)
    try:
        return fs.open_input_file(path)
    except (OSError, pa.ArrowException) as e:
        raise StorageError(uri, e) from e
