import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import schema
from pipeline.reader import (
    ColumnMap,
    InputError,
    UrlListDatasource,
    check_inputs,
    make_key,
    resolve_input_files,
)

ROWS = [
    {"url": "http://a/1.jpg", "caption": "one", "uid": "00123"},
    {"url": "http://a/2.jpg", "caption": "two, with comma", "uid": "00456"},
    {"url": "", "caption": None, "uid": "00789"},
]


def write(path, fmt, rows=ROWS):
    opener = gzip.open if str(path).endswith(".gz") else open
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        with opener(path, "wt") as f:
            f.write(sep.join(rows[0]) + "\n")
            for r in rows:
                cells = ["" if v is None else (f'"{v}"' if sep in v else v) for v in r.values()]
                f.write(sep.join(cells) + "\n")
    elif fmt == "jsonl":
        with opener(path, "wt") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    elif fmt == "txt":
        with opener(path, "wt") as f:
            f.write("\n".join(r["url"] for r in rows) + "\n")
    return str(path)


def read_all(files, columns=ColumnMap()):
    tables = [t for task in UrlListDatasource(files, columns).get_read_tasks(1) for t in task()]
    return pa.concat_tables(tables).to_pylist()


@pytest.mark.parametrize(
    "name,fmt",
    [
        ("in.parquet", "parquet"),
        ("in.csv", "csv"),
        ("in.csv.gz", "csv"),
        ("in.tsv", "tsv"),
        ("in.jsonl", "jsonl"),
        ("in.jsonl.gz", "jsonl"),
    ],
)
def test_structured_formats_carry_every_column_unchanged(tmp_path, name, fmt):
    rows = read_all([write(tmp_path / name, fmt)])
    assert [r[schema.KEY] for r in rows] == [make_key(0, i) for i in range(3)]
    assert [r[schema.URL] for r in rows] == [r["url"] for r in ROWS]
    assert [r["uid"] for r in rows] == ["00123", "00456", "00789"]  # text stays text
    assert rows[1][schema.CAPTION] == "two, with comma"


@pytest.mark.parametrize("name", ["urls.txt", "urls.txt.gz"])
def test_plain_text_one_url_per_line_blank_lines_skipped(tmp_path, name):
    rows = read_all([write(tmp_path / name, "txt")])
    assert [r[schema.URL] for r in rows] == ["http://a/1.jpg", "http://a/2.jpg"]
    assert all(r[schema.CAPTION] is None for r in rows)


def test_custom_column_names_and_colliding_input_columns(tmp_path):
    rows = [{"URL": "http://a/1.jpg", "TEXT": "hi", "status": "x", "key": "k1"}]
    path = write(tmp_path / "laion.parquet", "parquet", rows)
    (out,) = read_all([path], ColumnMap(url_col="URL", caption_col="TEXT"))
    assert out[schema.URL] == "http://a/1.jpg" and out[schema.CAPTION] == "hi"
    assert out[schema.INPUT_PREFIX + "status"] == "x"
    assert out[schema.INPUT_PREFIX + "key"] == "k1"
    assert out[schema.KEY] == make_key(0, 0)
    assert "URL" not in out and "TEXT" not in out


def test_keys_are_stable_and_unique_across_files(tmp_path):
    a = write(tmp_path / "a.parquet", "parquet")
    b = write(tmp_path / "b.csv", "csv")
    files = resolve_input_files(str(tmp_path))
    assert files == [a, b]
    first = read_all(files)
    assert [r[schema.KEY] for r in first] == [make_key(f, i) for f in (0, 1) for i in range(3)]
    assert read_all(files) == first


def test_resolve_directory_glob_and_errors(tmp_path):
    write(tmp_path / "a.parquet", "parquet")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "b.jsonl", "jsonl")
    (tmp_path / "notes.md").write_text("ignored")
    assert len(resolve_input_files(str(tmp_path))) == 2
    assert resolve_input_files(str(tmp_path / "*.parquet")) == [str(tmp_path / "a.parquet")]
    with pytest.raises(InputError, match="no such file"):
        resolve_input_files(str(tmp_path / "missing.csv"))
    with pytest.raises(InputError, match="unknown format"):
        resolve_input_files(str(tmp_path / "notes.md"))
    with pytest.raises(InputError, match="no input files"):
        resolve_input_files(str(tmp_path / "*.xyz"))


def test_missing_url_column_fails_fast_naming_the_fix(tmp_path):
    path = write(tmp_path / "in.csv", "csv")
    with pytest.raises(InputError, match=r"no column 'image_url'.*--url-col"):
        check_inputs([path], ColumnMap(url_col="image_url"))
    check_inputs([path], ColumnMap())


def test_large_file_streams_in_blocks(tmp_path):
    rows = [{"url": f"http://a/{i}.jpg"} for i in range(2500)]
    path = write(tmp_path / "big.parquet", "parquet", rows)
    (task,) = UrlListDatasource([path], ColumnMap()).get_read_tasks(1)
    blocks = list(task())
    assert len(blocks) == 3 and sum(b.num_rows for b in blocks) == 2500
    assert blocks[2].column(schema.KEY)[0].as_py() == make_key(0, 2048)
