"""End to end: jobs.label with tiny random checkpoints on CPU actors, inputs from the loopback server."""

from __future__ import annotations

import glob
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import label, report
from model.tiny import write_tiny_checkpoint
from pipeline import schema
from pipeline.reader import make_key
from pipeline.writer import LABELS_DIR, PREVIEWS_DIR, SHARDS_DIR, STATS_DIR, STATS_FILE
from tests.http_server import TABLE_OPTIONS

R = schema.Reason
GOOD = ["/img/jpeg.jpg", "/img/png.png", "/img/webp.webp", "/img/exif-rotated.jpg", "/img/rgba.png"]
BAD = {"/status/404": R.HTTP_ERROR, "/html": R.NOT_AN_IMAGE, "/img/truncated.jpg": R.DECODE_ERROR}
NET_FLAGS = ["--timeout", "2", "--retries", "1", "--allow-networks", ",".join(TABLE_OPTIONS.allow_networks)]


pytestmark = pytest.mark.usefixtures("local_ray")  # one embedded Ray for the module (tests/conftest.py)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {v: str(write_tiny_checkpoint(root / v, variant=v)) for v in ("cogvlm", "cogvlm2", "cogagent", "glm4v")}


@pytest.fixture(scope="module")
def url_list(tmp_path_factory, http_server):
    paths = GOOD + list(BAD) + [None]
    table = pa.table(
        {
            "url": [http_server.url(p) if p else None for p in paths],
            "caption": [f"input caption {i}" for i in range(len(paths))],
            "uid": [f"u{i}" for i in range(len(paths))],
            "question": ["What color is it?"] * (len(paths) - 1) + [None],
            "objects": [["the square", "a red circle"]] * 3 + [[]] + [["dog"]] * (len(paths) - 4),
        }
    )
    path = tmp_path_factory.mktemp("input") / "urls.parquet"
    pq.write_table(table, path)
    return str(path), paths


def run_label(out, model, inputs, *flags) -> list[dict]:
    argv = ["--input", inputs, "--output", str(out), "--model", model, "--max-new-tokens", "6", *NET_FLAGS, *flags]
    assert label.main(argv) == 0
    files = sorted(glob.glob(os.path.join(out, SHARDS_DIR, LABELS_DIR, "*.parquet")))
    rows = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive").to_pylist()
    return sorted(rows, key=lambda r: r[schema.KEY])


TASK_FLAGS = {
    "caption": ["--task", "caption", "--prompt", "detailed"],
    "grounded_caption": ["--task", "grounded_caption"],
    "ground": ["--task", "ground", "--phrases-col", "objects"],
    "vqa": ["--task", "vqa", "--prompt-col", "question"],
}


@pytest.mark.parametrize(
    "variant,task",
    [("cogvlm", t) for t in TASK_FLAGS]
    + [("cogvlm2", "caption"), ("cogvlm2", "ground"), ("cogagent", "ground"), ("glm4v", "vqa")],
)
def test_every_task_labels_good_rows_and_records_bad_ones(tmp_path, models, url_list, variant, task):
    inputs, paths = url_list
    rows = run_label(tmp_path / "out", models[variant], inputs, *TASK_FLAGS[task], "--batch-size", "4")
    assert [r[schema.KEY] for r in rows] == [make_key(0, i) for i in range(len(paths))]  # each row exactly once
    for row, path in zip(rows, paths):
        assert row["uid"] == f"u{paths.index(path)}" and row[schema.INPUT_PREFIX + "caption"].startswith("input caption")
        assert row[schema.TASK] == task and row[schema.MODEL].startswith(variant)
        expected = BAD.get(path, None if path else R.MISSING_URL)
        if task == "ground" and path == "/img/exif-rotated.jpg":
            expected = R.MISSING_PROMPT  # its phrase list is empty
        assert row[schema.REASON] == expected, row[schema.ERROR_MESSAGE]
        if expected is None:
            assert row[schema.STATUS] == schema.Status.SUCCESS
            assert isinstance(row[schema.TEXT], str) and row[schema.BOXES] is not None
            assert row[schema.PROMPT] and row[schema.MODEL_SECONDS] >= 0
            assert json.loads(row[schema.GENERATION])["max_new_tokens"] == 6
        else:
            assert row[schema.STATUS] == schema.REASON_STATUS[expected] and row[schema.TEXT] is None
    if task == "ground":
        first = rows[0]
        assert set(json.loads(first[schema.TEXT])) == {"the square", "a red circle"}
        assert first[schema.PROMPT].count("Where is") == 2
    stats = json.load(open(tmp_path / "out" / STATS_FILE))
    assert stats["input_rows"] == len(paths)


def test_batch_size_does_not_change_any_output(tmp_path, models, url_list):
    inputs, _ = url_list
    flags = [*TASK_FLAGS["grounded_caption"], "--max-new-tokens", "12"]
    one = run_label(tmp_path / "bs1", models["cogvlm"], inputs, *flags, "--batch-size", "1")
    four = run_label(tmp_path / "bs4", models["cogvlm"], inputs, *flags, "--batch-size", "4")
    fields = (schema.KEY, schema.STATUS, schema.TEXT, schema.LABEL_CAPTION, schema.BOXES)
    assert [tuple(r[f] for f in fields) for r in one] == [tuple(r[f] for f in fields) for r in four]
    assert any(r[schema.TEXT] for r in one)


def test_rerun_labels_only_missing_rows(tmp_path, models):
    images = tmp_path / "images"
    images.mkdir()
    from tests import images as factory

    for i in range(12):
        (images / f"img{i:02d}.jpg").write_bytes(factory.jpeg(40 + i, 48))
    out = tmp_path / "out"
    flags = ["--task", "caption", "--shard-size", "4"]
    first = run_label(out, models["cogvlm"], str(images), *flags)
    assert len(first) == 12
    # An interrupted run: one shard never committed (no stats file), its labels half-written.
    assert sorted(os.listdir(out / SHARDS_DIR / STATS_DIR)) == ["00000.json", "00001.json", "00002.json"]
    os.remove(out / SHARDS_DIR / STATS_DIR / "00001.json")
    (out / SHARDS_DIR / LABELS_DIR / "00001.parquet").write_bytes(b"PAR1 half a file")
    again = run_label(out, models["cogvlm"], str(images), *flags)
    assert [r[schema.KEY] for r in again] == [f"img{i:02d}.jpg" for i in range(12)]
    assert json.load(open(out / STATS_FILE))["this_run"]["input_rows"] == 4  # the lost shard only
    assert run_label(out, models["cogvlm"], str(images), *flags) == again  # nothing left to do


def test_labels_corpus_output_and_report_renders(tmp_path, models, http_server):
    from jobs import build_corpus

    pq.write_table(pa.table({"url": [http_server.url(p) for p in GOOD], "uid": list("abcde")}), tmp_path / "in.parquet")
    corpus = tmp_path / "corpus"
    assert build_corpus.main(["--input", str(tmp_path / "in.parquet"), "--output", str(corpus), *NET_FLAGS]) == 0
    rows = run_label(tmp_path / "labels", models["cogvlm"], str(corpus), "--task", "caption")
    assert sorted(r["uid"] for r in rows) == list("abcde")
    assert all(r[schema.STATUS] == schema.Status.SUCCESS for r in rows)
    assert glob.glob(str(tmp_path / "labels" / SHARDS_DIR / PREVIEWS_DIR / "*.parquet"))
    assert report.main(["--labels", str(tmp_path / "labels"), "--out", str(tmp_path / "report")]) == 0
    html = (tmp_path / "report" / "index.html").read_text()
    assert all(r[schema.KEY] in html for r in rows)
    assert (tmp_path / "report" / "contact_sheet.png").exists()


def test_job_level_mistakes_fail_fast(tmp_path, models, url_list, capsys):
    inputs, _ = url_list
    (tmp_path / "empty").mkdir()
    cases = [
        (["--model", str(tmp_path / "nope")], "does not exist"),
        (["--model", str(tmp_path / "empty")], "config.json"),
        (["--model", models["cogvlm"], "--task", "vqa"], "--prompt"),
        (["--model", models["cogvlm"], "--task", "ground"], "--phrases"),
        (["--model", models["cogvlm"], "--task", "vqa", "--prompt-col", "nope"], "nope"),
        (["--model", models["cogvlm"], "--url-col", "link"], "--url-col"),
        (["--model", models["glm4v"], "--template", "vqa"], "--template vqa: a glm4v checkpoint has chat"),
    ]
    for flags, needle in cases:
        assert label.main(["--input", inputs, "--output", str(tmp_path / "out"), *flags]) == 2
        assert needle in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out" / SHARDS_DIR)


def test_rope_precision_flag():
    base = ["--input", "x", "--output", "y", "--model", "m"]
    assert label.parse_args(base).rope_precision == "official"
    assert label.parse_args([*base, "--rope-precision", "fp32"]).rope_precision == "fp32"
    with pytest.raises(SystemExit):
        label.parse_args([*base, "--rope-precision", "bf16"])


def test_other_formats_and_changed_settings(tmp_path, models, capsys):
    """jobs.label keeps what build_corpus keeps: BMP/TIFF are re-encoded (labelled) or, with
    --other-formats reject, rejected; a re-run with another task is refused, naming it."""
    import shutil

    from tests import images as factory
    from tests.pipeline.test_odd_images import ODD

    images = tmp_path / "images"
    images.mkdir()
    for name in ("g4_orientation_6.tif", "badwidth.bmp", "orientation_rectangle.jpg"):
        shutil.copy(ODD / name, images / name)
    (images / "pattern.bmp").write_bytes(factory.encode(factory.rgb(64, 48), "BMP"))
    flags = ["--task", "caption", "--max-aspect-ratio", "10"]
    rows = {r[schema.KEY]: r for r in run_label(tmp_path / "png", models["cogvlm"], str(images), *flags)}
    assert set(rows) == {"g4_orientation_6.tif", "badwidth.bmp", "orientation_rectangle.jpg", "pattern.bmp"}
    assert rows["orientation_rectangle.jpg"][schema.IMAGE_FORMAT] == "JPEG"
    assert rows["badwidth.bmp"][schema.REASON] == R.DECODE_ERROR
    tiff = rows["g4_orientation_6.tif"]
    assert (tiff[schema.STATUS], tiff[schema.IMAGE_FORMAT], tiff[schema.ORIGINAL_WIDTH]) == (schema.Status.SUCCESS, "PNG", 590)
    assert (rows["pattern.bmp"][schema.STATUS], rows["pattern.bmp"][schema.IMAGE_FORMAT]) == (schema.Status.SUCCESS, "PNG")

    rejecting = {r[schema.KEY]: r for r in run_label(tmp_path / "reject", models["cogvlm"], str(images), *flags, "--other-formats", "reject")}
    assert rejecting["g4_orientation_6.tif"][schema.REASON] == rejecting["pattern.bmp"][schema.REASON] == R.UNSUPPORTED_FORMAT
    assert rejecting["orientation_rectangle.jpg"][schema.STATUS] == schema.Status.SUCCESS

    capsys.readouterr()
    argv = ["--input", str(images), "--output", str(tmp_path / "png"), "--model", models["cogvlm"], "--max-new-tokens", "6"]
    assert label.main(argv + ["--task", "vqa", "--prompt", "What is it?", "--max-aspect-ratio", "10"]) == 2
    err = capsys.readouterr().err
    assert 'task: "caption" -> "vqa"' in err and err.count("\n") == 1
