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
    cut_shards,
    make_key,
    pack_shard,
    plan_inputs,
    read_shards,
    resolve_input_files,
    unpack_shards,
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


def read_all(files, columns=ColumnMap(), shard_size=10**6):
    inputs = plan_inputs(files, columns)
    source = UrlListDatasource(inputs, columns, cut_shards([f.rows for f in inputs], shard_size))
    tables = [t for task in source.get_read_tasks(1) for t in task()]
    return pa.concat_tables(tables, promote_options="permissive").to_pylist() if tables else []


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


def test_a_block_is_a_whole_shard(tmp_path):
    # the file is read in record batches of ROWS_PER_BLOCK, which cross shard edges
    rows = [{"url": f"http://a/{i}.jpg"} for i in range(2500)]
    path = write(tmp_path / "big.parquet", "parquet", rows)
    inputs = plan_inputs([path], ColumnMap())
    (task,) = UrlListDatasource(inputs, ColumnMap(), cut_shards([2500], 700)).get_read_tasks(1)
    blocks = list(task())
    assert [b.num_rows for b in blocks] == [700, 700, 700, 400]
    for i, block in enumerate(blocks):
        assert set(block.column(schema.SHARD).to_pylist()) == {i}
        assert block.column(schema.KEY).to_pylist() == [make_key(0, r) for r in range(700 * i, 700 * i + block.num_rows)]


def test_a_packed_shard_unpacks_to_the_same_rows(tmp_path):
    rows = [{"url": f"http://a/{i}.jpg", "caption": "x" * (i % 7), "n": i} for i in range(1500)]
    path = write(tmp_path / "l.parquet", "parquet", rows)
    inputs = plan_inputs([path], ColumnMap(caption_col="caption"))
    shards = cut_shards([1500], 700)
    (plain,) = UrlListDatasource(inputs, ColumnMap(caption_col="caption"), shards).get_read_tasks(1)
    blocks = list(plain())
    rows_of_shards = [pack_shard(t) for t in read_shards(inputs[0], 0, shards, ColumnMap(caption_col="caption"))]
    assert [r.num_rows for r in rows_of_shards] == [1, 1, 1]
    assert [r.column(schema.SHARD).to_pylist() for r in rows_of_shards] == [[0], [1], [2]]
    unpacked = [t for r in rows_of_shards for t in unpack_shards(r)]
    assert len(unpacked) == len(blocks) and all(u.equals(b) for u, b in zip(unpacked, blocks))
    # several packed shards in one block (Ray may merge rows) come out one table each
    merged = pa.concat_tables(rows_of_shards)
    assert [t.num_rows for t in unpack_shards(merged)] == [700, 700, 100]


# --- untrusted input files (issue 12 item 3) -------------------------------------------------

R = schema.Reason


def _gz_truncated(text: str) -> bytes:
    data = gzip.compress(text.encode())
    return data[: len(data) * 2 // 3]


GOOD_LINES = [json.dumps({"url": f"http://a/{i}.jpg", "n": i}) for i in range(40)]
# name -> (bytes, good URLs read, malformed rows and what their message must say)
DAMAGED = {
    "extra-column.csv": (b"url,caption\nhttp://a/1,one\nhttp://a/2,two,three\nhttp://a/3,x\n", 2, ["line 3", "expected 2 columns, found 3", "http://a/2,two,three"]),
    "short-row.tsv": (b"url\tcaption\nhttp://a/1\tone\nhttp://a/2\n", 1, ["line 3", "expected 2 columns, found 1"]),
    "bad-utf8.csv": (b"url,caption\nhttp://a/1,caf\xff\n", 1, []),
    "not-json.jsonl": (b'{"url": "http://a/1"}\n{"url": \n\n[1]\n{"url": "http://a/2"}\n', 2, ["line 2", "not JSON", "line 4", "not an object"]),
    "truncated.jsonl.gz": (_gz_truncated("\n".join(GOOD_LINES) + "\n"), None, ["damaged gzip stream", "truncated"]),
    "truncated.csv.gz": (_gz_truncated("url\n" + "\n".join(f"http://a/{i}" for i in range(40)) + "\n"), None, ["damaged gzip stream"]),
}


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_malformed_lines_become_rejected_rows_and_reading_goes_on(tmp_path, name):
    data, good, needles = DAMAGED[name]
    (tmp_path / name).write_bytes(data)
    rows = read_all([str(tmp_path / name)], shard_size=3)
    kept = [r for r in rows if r.get(schema.STATUS) is None]
    bad = [r for r in rows if r.get(schema.STATUS) is not None]
    assert [r[schema.KEY] for r in rows] == sorted(make_key(0, i) for i in range(len(rows)))  # one key per record
    if good is not None:
        assert len(kept) == good
    else:  # truncated: every row before the damage, no cut URL, then one row for the damage
        assert 0 < len(kept) < 40 and all(r[schema.URL].startswith("http://a/") for r in kept)
        assert [int(r[schema.URL].rsplit("/", 1)[1].split(".")[0]) for r in kept] == list(range(len(kept)))
    assert all(r[schema.REASON] == R.MALFORMED_INPUT and r[schema.STATUS] == schema.Status.INVALID_INPUT for r in bad)
    messages = " | ".join(r[schema.ERROR_MESSAGE] for r in bad)
    assert all(needle in messages for needle in needles), messages
    assert all(str(tmp_path / name) in r[schema.ERROR_MESSAGE] for r in bad)
    assert (len(bad) > 0) == bool(needles)
    # The plan counts exactly what reading yields, and shards are fixed ranges of those rows.
    (planned,) = plan_inputs([str(tmp_path / name)], ColumnMap())
    assert planned.rows == len(rows)
    assert sorted(r[schema.SHARD] for r in rows) == [i // 3 for i in range(len(rows))]


@pytest.mark.parametrize(
    "name,data",
    [
        ("empty.csv", b""),
        ("empty.jsonl.gz", b""),
        ("empty.parquet", b""),
        ("header-only.csv", b"url,caption\n"),
        ("blank.txt", b"\n\n"),
    ],
)
def test_empty_inputs_give_no_rows_and_no_error(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    assert read_all([str(tmp_path / name)]) == []
    assert plan_inputs([str(tmp_path / name)], ColumnMap())[0].rows == 0


def test_zero_row_parquet_and_int_url_column(tmp_path):
    pq.write_table(pa.table({"url": pa.array([], pa.string())}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"url": pa.array([1, 2], pa.int64())}), tmp_path / "b.parquet")
    rows = read_all(resolve_input_files(str(tmp_path)))
    assert [r[schema.URL] for r in rows] == ["1", "2"]  # text the URL check rejects downstream


def test_unreadable_files_stop_the_job_naming_every_one(tmp_path):
    (tmp_path / "good.csv").write_bytes(b"url\nhttp://a/1\n")
    (tmp_path / "no-footer.parquet").write_bytes(b"PAR1" + bytes(100))
    (tmp_path / "garbage.jsonl").write_bytes(b"\x00\x01\x02 garbage\n\xff\xfe\n")
    (tmp_path / "not-gzip.csv.gz").write_bytes(b"plain text, not gzip\n")
    with pytest.raises(InputError) as raised:
        plan_inputs(resolve_input_files(str(tmp_path)), ColumnMap())
    message = str(raised.value)
    assert "cannot read 3 input files" in message and "\n" not in message
    for name in ("no-footer.parquet", "garbage.jsonl", "not-gzip.csv.gz"):
        assert str(tmp_path / name) in message
    assert "good.csv" not in message


def test_a_row_that_fails_to_convert_is_rejected_alone(tmp_path, monkeypatch):
    path = write(tmp_path / "in.csv", "csv")
    real = ColumnMap.to_rows

    def to_rows(self, batch, file_index, first_row):
        if batch.num_rows == 1 and batch.column(0)[0].as_py() == "http://a/2.jpg":
            raise RuntimeError("injected")
        if batch.num_rows > 1:
            raise ValueError("whole batch fails")
        return real(self, batch, file_index, first_row)

    monkeypatch.setattr(ColumnMap, "to_rows", to_rows)
    rows = read_all([path])
    assert [r[schema.KEY] for r in rows] == [make_key(0, i) for i in range(3)]
    failed = [r for r in rows if r.get(schema.REASON)]
    assert [(r[schema.KEY], r[schema.REASON], r[schema.ERROR_MESSAGE]) for r in failed] == [
        (make_key(0, 1), R.INTERNAL_ERROR, "RuntimeError: injected")
    ]
    assert rows[0][schema.URL] == "http://a/1.jpg" and rows[2]["uid"] == "00789"


def test_shards_are_fixed_runs_of_each_file_in_input_order():
    shards = cut_shards([5, 0, 2], 2)
    assert [(s.index, s.source, s.first_row, s.num_rows) for s in shards] == [
        (0, 0, 0, 2), (1, 0, 2, 2), (2, 0, 4, 1), (3, 2, 0, 2),
    ]
