"""A local filesystem that runs out of space while writing chosen files, for Ray workers too.

`FullDisk(root_pattern)` is a pyarrow FileSystemHandler over the local disk: a stream opened for
a path matching `pattern` takes `budget` bytes, then every write raises ENOSPC, as a full disk
does part-way through a file. It pickles (pattern and budget only), so the job's workers get it
with the output's filesystem.
"""

from __future__ import annotations

import errno
import re

import pyarrow as pa
import pyarrow.fs as pafs


class _FillingStream:
    def __init__(self, target, budget: int):
        self._target, self._left = target, budget
        self.closed = False

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self._left:
            self._target.write(data[: self._left])
            self._left = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._left -= len(data)
        return self._target.write(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self._target.flush()

    def close(self) -> None:
        if not self.closed:
            self._target.close()
            self.closed = True


class FullDisk(pafs.FileSystemHandler):
    def __init__(self, pattern: str, budget: int = 100):
        self.pattern, self.budget = pattern, budget
        self._local = pafs.LocalFileSystem()

    def __reduce__(self):
        return FullDisk, (self.pattern, self.budget)

    def __eq__(self, other):
        return isinstance(other, FullDisk) and (other.pattern, other.budget) == (self.pattern, self.budget)

    def __ne__(self, other):
        return not self == other

    def get_type_name(self) -> str:
        return "local"

    def normalize_path(self, path):
        return self._local.normalize_path(path)

    def get_file_info(self, paths):
        return self._local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self._local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self._local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self._local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("refusing to delete the root")

    def delete_file(self, path):
        self._local.delete_file(path)

    def move(self, src, dest):
        self._local.move(src, dest)

    def copy_file(self, src, dest):
        self._local.copy_file(src, dest)

    def open_input_stream(self, path):
        return self._local.open_input_stream(path, compression=None)

    def open_input_file(self, path):
        return self._local.open_input_file(path)

    def open_output_stream(self, path, metadata):
        stream = self._local.open_output_stream(path, compression=None)
        if re.search(self.pattern, path):
            return pa.PythonFile(_FillingStream(stream, self.budget), mode="w")
        return stream

    def open_append_stream(self, path, metadata):
        return self._local.open_append_stream(path, compression=None)
