import json
import math
import re
from dataclasses import asdict, replace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import report
from jobs.report import cards, load, sheet
from jobs.report import page as html_page
from model.boxes import Box
from pipeline import schema
from pipeline.writer import LABELS_DIR, PREVIEWS_DIR, SHARDS_DIR, STATS_DIR, STATS_FILE
from tests import images

LABEL_SCHEMA = pa.schema(schema.CORPUS_FIELDS + schema.LABEL_FIELDS)
PREVIEW_SCHEMA = pa.schema(schema.PREVIEW_FIELDS)
HOSTILE_PHRASE = "<script>alert('phrase')</script>"
HOSTILE_TEXT = "<script>alert('text')</script> a dog"
HOSTILE_ERROR = "<img src=x onerror=alert(1)>"


def box(phrase, x0, y0, x1, y1, width, height):
    rel = [min(999, round(v * 1000 / size)) for v, size in ((x0, width), (y0, height), (x1, width), (y1, height))]
    return asdict(Box(phrase, x0, y0, x1, y1, *rel))


def label_row(key, *, caption="", boxes=(), status=schema.Status.SUCCESS, reason=None, error=None, size=(1024, 768)):
    return {
        schema.KEY: key,
        schema.URL: f"http://127.0.0.1/{key}.jpg",
        schema.STATUS: status,
        schema.REASON: reason,
        schema.ERROR_MESSAGE: error,
        schema.WIDTH: size[0],
        schema.HEIGHT: size[1],
        schema.TASK: "grounded_caption",
        schema.PROMPT: "Describe the image with boxes.",
        schema.TEXT: caption,
        schema.LABEL_CAPTION: caption,
        schema.BOXES: list(boxes),
        schema.MODEL: "tiny-cogvlm",
        schema.GENERATION: json.dumps({"max_new_tokens": 64}),
        schema.PREPROCESS_SECONDS: 0.01,
        schema.MODEL_SECONDS: 0.1,
    }


def preview_row(key, thumb_size, original_size):
    return {
        schema.KEY: key,
        schema.THUMBNAIL: images.jpeg(*thumb_size),
        schema.WIDTH: original_size[0],
        schema.HEIGHT: original_size[1],
    }


# The rows whose drawing the tests check: key -> (thumbnail size, original size, box in original
# pixels). Both land at (64, 48)-(192, 144) in a 256 x 192 drawn thumbnail; the second one's
# thumbnail is half that size, so it is scaled up first.
DOG = ("00000000000001", (256, 192), (1024, 768), (256, 192, 768, 576))
CAT = ("00000000000002", (128, 96), (640, 480), (160, 120, 480, 360))
DRAWN_BOX = (64, 48, 192, 144)
OOM_KEY = "00000000000005"


def make_labels(root, *, stats=True, previews=True, plain_rows=10):
    """A fake `jobs.label` output in two shards; returns the rows that have a preview."""
    labels_dir = root / "labels"
    for sub in (LABELS_DIR, PREVIEWS_DIR):
        (labels_dir / SHARDS_DIR / sub).mkdir(parents=True)
    shard_a = [
        label_row(DOG[0], caption="a dog on a sofa", boxes=[box("dog", *DOG[3], *DOG[2])], size=DOG[2]),
        label_row(CAT[0], caption="a cat & a \"mat\"", boxes=[box("cat", *CAT[3], *CAT[2])], size=CAT[2]),
        label_row(
            "00000000000003",
            caption=HOSTILE_TEXT,
            boxes=[box(HOSTILE_PHRASE, 10, 300, 600, 700, 1024, 768), box("sofa", 500, 20, 1000, 200, 1024, 768)],
        ),
        label_row("00000000000004", status=schema.Status.FAILED_TO_LABEL, reason=schema.Reason.MODEL_ERROR, error=HOSTILE_ERROR),
        label_row(OOM_KEY, status=schema.Status.FAILED_TO_LABEL, reason=schema.Reason.OUT_OF_MEMORY, error="CUDA OOM"),
    ]
    shard_b = [label_row(f"000010000000{i:02d}", caption=f"plain picture number {i}") for i in range(plain_rows)]
    # An input column only one shard has: shards need not share a schema.
    extra = pa.schema(list(LABEL_SCHEMA) + [pa.field("uid", pa.string())])
    shard_b_table = pa.Table.from_pylist([{**r, "uid": r[schema.KEY]} for r in shard_b], schema=extra)
    pq.write_table(pa.Table.from_pylist(shard_a, schema=LABEL_SCHEMA), labels_dir / SHARDS_DIR / LABELS_DIR / "00000.parquet")
    pq.write_table(shard_b_table, labels_dir / SHARDS_DIR / LABELS_DIR / "00001.parquet")
    previewed = shard_a[:4] + shard_b  # not the out-of-memory row, which fails before its thumbnail
    if previews:
        rows_a = [preview_row(DOG[0], DOG[1], DOG[2]), preview_row(CAT[0], CAT[1], CAT[2])]
        rows_a += [preview_row(r[schema.KEY], (256, 192), (1024, 768)) for r in shard_a[2:4]]
        rows_b = [preview_row(r[schema.KEY], (192, 256), (768, 1024)) for r in shard_b]
        for name, rows in (("00000.parquet", rows_a), ("00001.parquet", rows_b)):
            pq.write_table(pa.Table.from_pylist(rows, schema=PREVIEW_SCHEMA), labels_dir / SHARDS_DIR / PREVIEWS_DIR / name)
    (labels_dir / SHARDS_DIR / STATS_DIR).mkdir()
    for name in ("00000", "00001"):  # committed: a shard's stats file is written last
        (labels_dir / SHARDS_DIR / STATS_DIR / f"{name}.json").write_text("{}")
    if stats:
        totals = {"input_rows": 17, "kept": 13, "rejected": 4, "rejected_by_reason": {"model_error": 3, "out_of_memory": 1}}
        (labels_dir / STATS_FILE).write_text(json.dumps(totals))
    return labels_dir, previewed


def run(labels_dir, out_dir, *extra):
    return report.main(["--labels", str(labels_dir), "--out", str(out_dir), *extra])


def card_keys(page: str) -> list[str]:
    return re.findall(r'<h3>#\d+ <code>([^<]*)</code>', page)


def test_page_shows_every_sampled_row_escaped_with_existing_images(tmp_path):
    labels_dir, previewed = make_labels(tmp_path)
    out = tmp_path / "report"
    assert run(labels_dir, out) == 0
    page = (out / "index.html").read_text(encoding="utf-8")

    # Every previewed row and every failure (the out-of-memory row has no thumbnail: its card says so).
    assert sorted(card_keys(page)) == sorted([r[schema.KEY] for r in previewed] + [OOM_KEY])
    oom_card = page[page.index('id="card-'):]
    oom_card = oom_card[oom_card.index(f"<code>{OOM_KEY}</code>"):]
    oom_card = oom_card[: oom_card.index("</section>")]
    assert cards.NO_THUMBNAIL in oom_card and '<p class="error"><b>out_of_memory</b>: CUDA OOM</p>' in oom_card
    for row in previewed:
        if row[schema.LABEL_CAPTION]:
            assert f'<p class="caption">{html_page.esc(row[schema.LABEL_CAPTION])}</p>' in page
    assert "a cat &amp; a &quot;mat&quot;" in page
    # Model text, phrases and error messages are shown, but only escaped.
    assert "&lt;script&gt;alert(&#x27;phrase&#x27;)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(&#x27;text&#x27;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert "script-src" not in page and "default-src 'none'" in page  # no script allowed at all

    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(previewed)
    for src in sources:
        with Image.open(out / src) as image:
            assert max(image.size) == 256 or image.size == CAT[1]

    # Header: totals from stats.json, failures by reason with an example from the shards.
    assert "<th>input rows</th><td class=\"n\">17</td>" in page
    assert "<th>rejected</th><td class=\"n\">4</td>" in page
    assert "<td>out_of_memory</td><td class=\"n\">1</td><td><code>00000000000005</code></td><td>CUDA OOM</td>" in page


def test_boxes_sit_where_the_original_pixels_say(tmp_path):
    labels_dir, _ = make_labels(tmp_path)
    page_out = tmp_path / "report"
    assert run(labels_dir, page_out) == 0
    page = (page_out / "index.html").read_text(encoding="utf-8")
    # 256/1024 = 25%, 192/768 = 25%, width and height 50%.
    assert 'style="left:25.00%;top:25.00%;width:50.00%;height:50.00%;border-color:#e6194b"' in page


def test_contact_sheet_grid_and_box_pixels(tmp_path):
    labels_dir, previewed = make_labels(tmp_path)
    out = tmp_path / "report"
    columns = 3
    assert run(labels_dir, out, "--columns", str(columns)) == 0
    keys = card_keys((out / "index.html").read_text(encoding="utf-8"))
    with Image.open(out / "contact_sheet.png") as png:
        png = png.convert("RGB")
    rows = math.ceil((len(previewed) + 1) / columns)  # + the failed row without a thumbnail
    assert png.size == (columns * sheet.CELL_WIDTH, rows * sheet.CELL_HEIGHT)

    first_color = cards.PALETTE[0]
    for key in (DOG[0], CAT[0]):
        index = keys.index(key)
        left = (index % columns) * sheet.CELL_WIDTH + sheet.PAD
        # The sheet draws 256 x 192 thumbnails at THUMB x THUMB * 3/4, centred in a THUMB square.
        scale = sheet.THUMB / 256
        top = (index // columns) * sheet.CELL_HEIGHT + sheet.PAD + (sheet.THUMB - round(192 * scale)) // 2
        x0, y0, x1, y1 = (round(v * scale) for v in DRAWN_BOX)
        middle_y, middle_x = (y0 + y1) // 2, (x0 + x1) // 2
        for x, y in ((x0, middle_y), (x1, middle_y), (middle_x, y1)):
            assert png.getpixel((left + x, top + y)) == first_color, (key, x, y)
        for x, y in ((x0 - 3, middle_y), (x0 + 10, middle_y), (x1 + 3, middle_y)):
            assert png.getpixel((left + x, top + y)) != first_color, (key, x, y)


def test_sampling_is_deterministic_for_a_seed(tmp_path):
    labels_dir, _ = make_labels(tmp_path, plain_rows=30)
    picks = []
    for seed in ("1", "1", "2"):
        out = tmp_path / f"report-{len(picks)}"
        assert run(labels_dir, out, "--sample", "8", "--seed", seed) == 0
        picks.append(card_keys((out / "index.html").read_text(encoding="utf-8")))
    assert len(picks[0]) == 8
    assert picks[0] == picks[1]
    assert picks[0] != picks[2]


def test_choose_sample_keeps_a_share_for_failures():
    status_of = {f"ok{i:02d}": schema.Status.SUCCESS for i in range(40)}
    status_of |= {f"bad{i}": schema.Status.FAILED_TO_LABEL for i in range(10)}
    chosen = load.choose_sample(status_of, 16, seed=0)
    assert len(chosen) == 16 and len(set(chosen)) == 16
    assert [k.startswith("bad") for k in chosen] == [False] * 14 + [True] * 2
    # Too few successes: failures fill the rest; too few rows: all of them.
    few_ok = {"ok": schema.Status.SUCCESS, "bad1": schema.Status.FAILED_TO_LABEL, "bad2": schema.Status.FAILED_TO_LABEL}
    assert load.choose_sample(few_ok, 2, seed=0) in (["ok", "bad1"], ["ok", "bad2"])
    assert load.choose_sample(few_ok, 10, seed=0) == ["ok", "bad1", "bad2"]
    assert load.choose_sample({}, 10, seed=0) == []


def test_a_replaced_report_leaves_no_stale_images(tmp_path):
    labels_dir, _ = make_labels(tmp_path)
    out = tmp_path / "report"
    assert run(labels_dir, out) == 0
    assert run(labels_dir, out, "--sample", "2") == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["card-0001.jpg", "card-0002.jpg"]


@pytest.mark.parametrize("make_dir", [False, True])
def test_missing_label_shards_exit_2_with_a_message(tmp_path, capsys, make_dir):
    labels_dir = tmp_path / "nothing-here"
    if make_dir:
        (labels_dir / SHARDS_DIR / LABELS_DIR).mkdir(parents=True)
    assert run(labels_dir, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert str(labels_dir / SHARDS_DIR / LABELS_DIR) in err and "jobs.label" in err
    assert not (tmp_path / "out").exists()


def test_without_stats_or_previews_the_page_still_has_counts_and_failures(tmp_path, capsys):
    labels_dir, _ = make_labels(tmp_path, stats=False, previews=False)
    out = tmp_path / "report"
    assert run(labels_dir, out) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "counted in the label shards" in page
    assert "<th>input rows</th><td class=\"n\">15</td>" in page  # 5 + 10 rows
    assert "<td>model_error</td><td class=\"n\">1</td>" in page
    # Only the failures have cards: nothing else has a picture to show.
    assert card_keys(page) == ["00000000000004", OOM_KEY]
    assert page.count(cards.NO_THUMBNAIL) == 2
    assert (out / "contact_sheet.png").exists()
    printed = capsys.readouterr().out
    # The command line says what the page says, in the same words.
    for words in ("input rows", "labelled", "rejected", "model_error", "2 cards (0 labelled, 2 rejected)"):
        assert words in printed and words in page


def test_no_cards_at_all_writes_no_sheet(tmp_path, capsys):
    labels_dir, _ = make_labels(tmp_path, stats=False, previews=False)
    shard = labels_dir / SHARDS_DIR / LABELS_DIR / "00000.parquet"
    table = pq.ParquetFile(shard).read()
    pq.write_table(table.filter(pc.equal(table.column(schema.STATUS), schema.Status.SUCCESS)), shard)
    out = tmp_path / "report"
    assert run(labels_dir, out) == 0
    assert card_keys((out / "index.html").read_text(encoding="utf-8")) == []
    assert not (out / "contact_sheet.png").exists()
    assert "no row has a thumbnail" in capsys.readouterr().err


def test_bad_arguments_exit_2(tmp_path):
    for bad in (["--sample", "0"], ["--columns", "-1"], ["--seed", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            run(tmp_path, tmp_path / "out", *bad)
        assert exit_info.value.code == 2


# --- pure helpers --------------------------------------------------------------------------


def test_fit_keeps_aspect_and_fills_the_square():
    assert cards.fit((1024, 768), 256) == (256, 192)
    assert cards.fit((128, 96), 256) == (256, 192)
    assert cards.fit((10, 1000), 256) == (3, 256)
    assert cards.fit((1, 5000), 256) == (1, 256)


def test_scale_box_maps_original_pixels_to_drawn_pixels():
    dog = Box("dog", *DOG[3], 250, 250, 750, 750)
    assert cards.scale_box(dog, (1024, 768), (256, 192)) == DRAWN_BOX
    flipped = Box("dog", 768, 576, 256, 192, 0, 0, 0, 0)
    assert cards.scale_box(flipped, (1024, 768), (256, 192)) == DRAWN_BOX
    whole = Box("all", 0, 0, 1024, 768, 0, 0, 999, 999)
    assert cards.scale_box(whole, (1024, 768), (256, 192)) == (0, 0, 255, 191)  # stays inside


def test_unusable_boxes_are_skipped():
    good = Box("dog", *DOG[3], 250, 250, 750, 750)
    broken = [replace(good, x0=None), replace(good, y1=float("nan")), replace(good, x1=float("inf"))]
    rows = [None, asdict(good), *(asdict(b) for b in broken)]
    card = cards.Card(1, {schema.BOXES: rows}, None, b"", DOG[2])
    assert [b.phrase for b in card.boxes()] == ["dog"]


def test_box_percent():
    assert cards.box_percent(Box("x", 100, 50, 300, 150, 0, 0, 0, 0), (400, 200)) == (25.0, 25.0, 50.0, 50.0)
    assert cards.box_percent(Box("x", -10, 0, 500, 300, 0, 0, 0, 0), (400, 200)) == (0.0, 0.0, 100.0, 100.0)


def test_wrap_text_wraps_breaks_and_ellipsizes():
    assert cards.wrap_text("a dog on a red sofa", 10, len, 3) == ["a dog on a", "red sofa"]
    assert cards.wrap_text("abcdefghijklmnopqrstuvw xy", 10, len, 4) == ["abcdefghij", "klmnopqrst", "uvw xy"]
    assert cards.wrap_text("one two three four five six", 9, len, 2) == ["one two", "three…"]
    assert cards.wrap_text("tab\there\x00nul\nline", 40, len, 2) == ["tab here nul line"]
    assert cards.wrap_text(None, 10, len, 2) == []
    long = cards.wrap_text("x" * 100_000, 10, len, 3)
    assert long == ["x" * 10, "x" * 10, "x" * 9 + "…"]


def test_truncate_and_esc():
    assert cards.truncate("short", 10, len) == "short"
    assert cards.truncate("a long phrase", 8, len) == "a long…"
    assert html_page.esc('<a href="x">&\'</a>') == "&lt;a href=&quot;x&quot;&gt;&amp;&#x27;&lt;/a&gt;"
    assert html_page.esc(None) == ""


def test_ground_cards_show_each_phrase_with_its_answer_on_page_and_sheet(tmp_path):
    labels_dir = tmp_path / "labels"
    for sub in (LABELS_DIR, PREVIEWS_DIR):
        (labels_dir / SHARDS_DIR / sub).mkdir(parents=True)
    answers = {"the red circle": "[[250,250,750,750]]", "the blue square": "I cannot see it"}
    row = label_row(DOG[0], boxes=[box("the red circle", *DOG[3], *DOG[2])], size=DOG[2])
    row.update({schema.TASK: "ground", schema.TEXT: json.dumps(answers), schema.LABEL_CAPTION: None})
    pq.write_table(pa.Table.from_pylist([row], schema=LABEL_SCHEMA), labels_dir / SHARDS_DIR / LABELS_DIR / "00000.parquet")
    preview = pa.Table.from_pylist([preview_row(DOG[0], DOG[1], DOG[2])], schema=PREVIEW_SCHEMA)
    pq.write_table(preview, labels_dir / SHARDS_DIR / PREVIEWS_DIR / "00000.parquet")
    (labels_dir / SHARDS_DIR / STATS_DIR).mkdir()
    (labels_dir / SHARDS_DIR / STATS_DIR / "00000.json").write_text("{}")
    out = tmp_path / "report"
    # A URI, as for remote outputs: the same code reads file:// and s3:// through pyarrow.fs.
    assert run(labels_dir.as_uri(), out) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<li><i style=\"background:#e6194b\"></i>the red circle → [[250,250,750,750]]</li>" in page
    assert "<li>the blue square → I cannot see it</li>" in page
    output = load.LabelOutput.open(str(labels_dir))
    [card] = load.load_cards(output, [DOG[0]], load.scan_labels(output, output.label_files(), {DOG[0]}))
    assert [(line.kind, line.text, line.box) for line in card.lines()] == [
        ("answer", "the red circle → [[250,250,750,750]]", 0),
        ("answer", "the blue square → I cannot see it", None),
    ]
    with Image.open(out / "contact_sheet.png") as png:
        # the first answer line is written in its box's colour under the image
        text_band = png.convert("RGB").crop((0, sheet.PAD + sheet.THUMB + sheet.PAD + sheet.LINE_HEIGHT, sheet.CELL_WIDTH, sheet.CELL_HEIGHT))
        assert cards.PALETTE[0] in {c for _, c in text_band.getcolors(1 << 16)}


def test_an_unknown_uri_scheme_exits_2(tmp_path, capsys):
    assert run("nosuchscheme://bucket/labels", tmp_path / "out") == 2
    assert "cannot open --labels" in capsys.readouterr().err


def test_files_of_an_uncommitted_shard_are_never_read(tmp_path):
    """A killed jobs.label run can leave a shard's label Parquet without its stats file: the
    report counts committed shards only, as resuming does."""
    labels_dir, previewed = make_labels(tmp_path)
    leftover = [label_row("00002000000000", caption="from a killed run")]
    pq.write_table(pa.Table.from_pylist(leftover, schema=LABEL_SCHEMA), labels_dir / SHARDS_DIR / LABELS_DIR / "00002.parquet")
    assert run(labels_dir, tmp_path / "report", "--sample", "100") == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "00002000000000" not in card_keys(page) and "from a killed run" not in page
