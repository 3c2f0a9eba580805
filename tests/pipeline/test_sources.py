"""Inputs that already hold images: our corpus, img2dataset tars and Parquet, image folders."""

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import schema
from pipeline.reader import ColumnMap, InputError
from pipeline.sources import detect_format, image_source
from tests import images


def read_all(made):
    source, counts = made
    rows = pa.concat_tables([t for task in source.get_read_tasks(1) for t in task()], promote_options="permissive").to_pylist()
    assert len(rows) == sum(counts)  # counted before reading, as the shard plan needs
    return rows


def write_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_img2dataset_webdataset_tar(tmp_path):
    meta = {"url": "http://x/a.jpg", "key": "000000001", "status": "success", "width": 64, "uid": "u1", "exif": "{}"}
    jpg = images.jpeg()
    write_tar(tmp_path / "00000.tar", [("000000001", {"jpg": jpg, "txt": b"a cat", "json": json.dumps(meta).encode()})])
    assert detect_format(str(tmp_path)) == "webdataset"
    (row,) = read_all(image_source("webdataset", str(tmp_path), ColumnMap(), 1000))
    assert row[schema.KEY] == "000000001" and row[schema.URL] == "http://x/a.jpg" and row[schema.CAPTION] == "a cat"
    assert row[schema.IMAGE_BYTES] == jpg and row["uid"] == "u1"
    assert "width" not in row and "exif" not in row  # measured again downstream


def test_img2dataset_parquet_with_image_bytes_and_a_failed_row(tmp_path):
    table = pa.table({"key": ["1", "2"], "url": ["http://x/1", "http://x/2"], "caption": ["c", None],
                      "jpg": [images.jpeg(), None], "status": ["success", "failed_to_download"]})
    pq.write_table(table, tmp_path / "00000.parquet")
    assert detect_format(str(tmp_path)) == "parquet-images"
    rows = read_all(image_source("parquet-images", str(tmp_path), ColumnMap(), 1000))
    assert [r[schema.KEY] for r in rows] == ["1", "2"]
    assert rows[0][schema.IMAGE_BYTES] and rows[1][schema.IMAGE_BYTES] is None


def test_image_folder_rows_are_paths_keyed_by_relative_path(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.png").write_bytes(images.png())
    (tmp_path / "sub" / "a.jpg").write_bytes(images.jpeg())
    (tmp_path / "notes.md").write_text("x")
    assert detect_format(str(tmp_path)) == "images"
    rows = read_all(image_source("images", str(tmp_path), ColumnMap(), 1))
    assert [r[schema.KEY] for r in rows] == ["b.png", "sub/a.jpg"]
    assert [r[schema.SHARD] for r in rows] == [0, 1]  # --shard-size 1: one image per shard
    assert rows[1][schema.URL] == str(tmp_path / "sub" / "a.jpg") and schema.IMAGE_BYTES not in rows[1]


def test_url_lists_are_detected_and_empty_inputs_refused(tmp_path):
    pq.write_table(pa.table({"url": ["http://x/1"]}), tmp_path / "list.parquet")
    assert detect_format(str(tmp_path / "list.parquet")) == "urls"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError):
        detect_format(str(tmp_path / "empty"))


def test_a_tar_sample_whose_json_does_not_parse_is_rejected_alone(tmp_path):
    jpg = images.jpeg()
    write_tar(tmp_path / "00000.tar", [
        ("a", {"jpg": jpg, "json": b'{"url": "http://x/a"}'}),
        ("b", {"jpg": jpg, "json": b'{"url": '}),
        ("c", {"jpg": jpg, "json": b'{"url": "http://x/c"}'}),
    ])
    rows = read_all(image_source("webdataset", str(tmp_path), ColumnMap(), 1000))
    assert sorted(r[schema.KEY] for r in rows) == ["a", "b", "c"]
    (bad,) = [r for r in rows if r.get(schema.REASON)]
    assert bad[schema.KEY] == "b" and bad[schema.REASON] == schema.Reason.MALFORMED_INPUT
    assert "JSONDecodeError" in bad[schema.ERROR_MESSAGE]
