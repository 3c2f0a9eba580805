"""pipeline.storage against the local disk and a real S3 API server on loopback (moto)."""

from __future__ import annotations

import errno
import os

import pyarrow.fs as pafs
import pytest

from pipeline import storage
from tests.s3_server import s3_server  # noqa: F401 - fixture


def test_local_paths_and_file_uris_are_the_local_filesystem(tmp_path):
    fs, path = storage.resolve(str(tmp_path / "a"))
    assert fs.type_name == "local" and path == str(tmp_path / "a")
    fs, path = storage.resolve(f"file://{tmp_path}/b")
    assert fs.type_name == "local" and path == f"{tmp_path}/b"
    fs, path = storage.resolve("relative/dir")
    assert path == os.path.abspath("relative/dir")


def test_s3_uses_the_endpoint_and_keys_from_the_environment(s3_server):
    bucket = s3_server.bucket("unit")
    fs, path = storage.resolve(f"{bucket}/prefix/x.txt")
    assert fs.type_name == "s3" and path == "unit/prefix/x.txt"
    storage.write_atomic(fs, path, b"hello", tmp_root="unit/prefix/_tmp")
    assert storage.read_bytes(fs, path) == b"hello"
    assert s3_server.keys("unit") == ["prefix/x.txt"]  # the temporary object is gone
    assert storage.display(fs, path) == "s3://unit/prefix/x.txt"
    assert [f.path for f in storage.list_files(fs, "unit/prefix")] == ["unit/prefix/x.txt"]


def test_a_failed_write_leaves_nothing_at_the_path(tmp_path, s3_server):
    bucket = s3_server.bucket("failing")
    for uri in (str(tmp_path / "f.bin"), f"{bucket}/f.bin"):
        fs, path = storage.resolve(uri)

        def half_then_fail(stream):
            stream.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

        with pytest.raises(storage.StorageError) as raised:
            storage.write_atomic(fs, path, half_then_fail)
        assert uri in str(raised.value) and "No space left" in str(raised.value)
        assert not storage.exists(fs, path)
    assert s3_server.keys("failing") == []
    assert os.listdir(tmp_path) == []


def test_check_writable_names_what_to_fix(tmp_path, s3_server):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        storage.check_writable(str(tmp_path / "file"))
    # Under a file nothing can be created, whoever runs the test (root ignores permission bits).
    with pytest.raises(ValueError, match="not writable"):
        storage.check_writable(str(tmp_path / "file" / "out"))
    assert storage.check_writable(str(tmp_path / "new" / "out"))[1] == str(tmp_path / "new" / "out")


def test_check_writable_on_s3(s3_server):
    with pytest.raises(ValueError, match="not writable"):
        storage.check_writable("s3://no-such-bucket/out")
    bucket = s3_server.bucket("writable")
    fs, path = storage.check_writable(f"{bucket}/out")
    assert path == "writable/out" and s3_server.keys("writable") == []


def test_other_schemes_go_through_fsspec():
    fs, path = storage.resolve("memory://bucket/a.txt")
    assert isinstance(fs, pafs.PyFileSystem)
    storage.write_atomic(fs, path, b"x")
    assert storage.read_bytes(fs, path) == b"x"


def test_glob_keeps_star_inside_a_folder_and_double_star_recursive(tmp_path):
    for rel in ("a.parquet", "sub/b.parquet", "sub/deep/c.parquet", "x.csv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    fs, root = storage.resolve(str(tmp_path))
    names = lambda pattern: [os.path.relpath(f.path, root) for f in storage.glob(fs, f"{root}/{pattern}")]  # noqa: E731
    assert names("*.parquet") == ["a.parquet"]
    assert names("**/*.parquet") == ["a.parquet", "sub/b.parquet", "sub/deep/c.parquet"]
    assert names("sub/*/?.parquet") == ["sub/deep/c.parquet"]
    assert names("[ax].*") == ["a.parquet", "x.csv"]
