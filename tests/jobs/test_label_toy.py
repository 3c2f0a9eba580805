"""End to end with the trained toy model: `jobs.label` downloads fresh scenes from the loopback
server, and the boxes it writes land on the drawn shapes in the original image's pixels,
EXIF-rotated and non-square images included; batch size does not change any output.

The plumbing tests hold whatever the model says; the quality tests need the shipped model to be
about as good as its training record claims (tests/model/toy/quality.py).
"""

from __future__ import annotations

import glob
import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import label
from pipeline import schema
from pipeline.writer import LABELS_DIR, SHARDS_DIR
from tests.http_server import TABLE_OPTIONS
from tests.model.toy.quality import MODEL, floor
from model.toy import files, scenes

NET_FLAGS = ["--timeout", "5", "--retries", "1", "--allow-networks", ",".join(TABLE_OPTIONS.allow_networks)]
# (width, height as displayed, shapes, how the file is stored): unseen scenes (the seed below
# is used nowhere else), square, portrait, landscape and panoramas, two stored sideways.
LAYOUT = [
    (512, 512, 3, "png"), (300, 800, 2, "jpeg"), (1000, 320, 3, "png"), (640, 480, 2, "exif"),
    (400, 900, 3, "exif"), (800, 600, 1, "jpeg"), (1200, 240, 2, "png"), (448, 336, 3, "jpeg"),
]
SEED = 90210


pytestmark = pytest.mark.usefixtures("local_ray")  # one embedded Ray for the module (tests/conftest.py)


@pytest.fixture(scope="module")
def served(http_server, tmp_path_factory):
    """The scenes on the loopback server, a URL list with each row's phrases, and the truth by uid."""
    rng = random.Random(SEED)
    made = [files.scene_file(i, scenes.sample_scene(rng, (w, h), n), kind) for i, (w, h, n, kind) in enumerate(LAYOUT)]
    urls = [http_server.add_file(f"toy-{SEED}-{f.name}", f.data, f.content_type) for f in made]
    table = pa.table({
        "url": urls,
        "uid": [f.name for f in made],
        "objects": [[f"the {s.name}" for s in f.scene.shapes] for f in made],
    })
    path = tmp_path_factory.mktemp("toy-input") / "urls.parquet"
    pq.write_table(table, path)
    return str(path), {f.name: f for f in made}


def run_label(out, inputs, *flags) -> list[dict]:
    argv = ["--input", inputs, "--output", str(out), "--model", str(MODEL), "--max-new-tokens", "128", *NET_FLAGS, *flags]
    assert label.main(argv) == 0
    paths = sorted(glob.glob(os.path.join(out, SHARDS_DIR, LABELS_DIR, "*.parquet")))
    rows = pa.concat_tables([pq.read_table(p) for p in paths], promote_options="permissive").to_pylist()
    return sorted(rows, key=lambda r: r[schema.KEY])


@pytest.fixture(scope="module")
def grounded(served, tmp_path_factory):
    inputs, _ = served
    out = tmp_path_factory.mktemp("toy-labels")
    return {bs: run_label(out / f"bs{bs}", inputs, "--task", "grounded_caption", "--batch-size", str(bs)) for bs in (8, 1)}


@pytest.fixture(scope="module")
def grounds(served, tmp_path_factory):
    inputs, _ = served
    return run_label(tmp_path_factory.mktemp("toy-ground") / "out", inputs, "--task", "ground", "--phrases-col", "objects", "--batch-size", "8")


def box_of(b: dict) -> tuple[float, float, float, float]:
    return (b["x0"], b["y0"], b["x1"], b["y1"])


def test_every_scene_is_labelled_in_its_displayed_pixels(grounded, served):
    _, truth = served
    for row in grounded[8]:
        scene = truth[row["uid"]].scene
        assert row[schema.STATUS] == schema.Status.SUCCESS, row[schema.ERROR_MESSAGE]
        # EXIF orientation applied: the sideways files are labelled as displayed
        assert (row[schema.ORIGINAL_WIDTH], row[schema.ORIGINAL_HEIGHT]) == (scene.width, scene.height)
        for b in row[schema.BOXES]:  # pixels = rel / 1000 * the displayed size, never the stored one
            assert b["x0"] == pytest.approx(b["x0_rel"] * scene.width / 1000, abs=1e-3)
            assert b["y1"] == pytest.approx(b["y1_rel"] * scene.height / 1000, abs=1e-3)


def test_batch_size_does_not_change_any_output(grounded):
    fields = (schema.KEY, schema.TEXT, schema.LABEL_CAPTION, schema.BOXES)
    assert [[r[f] for f in fields] for r in grounded[1]] == [[r[f] for f in fields] for r in grounded[8]]


def test_ground_asks_every_phrase_of_every_row(grounds, served):
    _, truth = served
    for row in grounds:
        assert row[schema.STATUS] == schema.Status.SUCCESS, row[schema.ERROR_MESSAGE]
        assert list(json.loads(row[schema.TEXT])) == [f"the {s.name}" for s in truth[row["uid"]].scene.shapes]
        assert {b["phrase"] for b in row[schema.BOXES]} <= set(json.loads(row[schema.TEXT]))


def test_grounded_captions_land_on_the_shapes(grounded, served):
    _, truth = served
    found = {}
    for row in grounded[8]:
        scene = truth[row["uid"]].scene
        boxes = row[schema.BOXES] or []
        found[row["uid"]] = [
            any(b["phrase"] == s.name and scenes.iou(box_of(b), s.box) >= 0.5 for b in boxes) for s in scene.shapes
        ]
    shapes = [h for per_image in found.values() for h in per_image]
    assert sum(shapes) >= floor("grounded") * len(shapes), found
    # the stored-sideways and panorama files too: their pixels are where mistakes would show
    sideways = [h for name, per_image in found.items() if "exif" in name for h in per_image]
    lopsided = [h for name, per_image in found.items() if truth[name].scene.width / truth[name].scene.height > 2.5 for h in per_image]
    assert sum(sideways) >= floor("grounded") * len(sideways) and sum(lopsided) >= floor("grounded") * len(lopsided), found


def test_ground_answers_land_on_the_named_shapes(grounds, served):
    _, truth = served
    right = total = 0
    for row in grounds:
        boxes = {b["phrase"]: b for b in row[schema.BOXES]}
        for shape in truth[row["uid"]].scene.shapes:
            total += 1
            b = boxes.get(f"the {shape.name}")
            right += b is not None and scenes.iou(box_of(b), shape.box) >= 0.5
    assert right >= floor("ground") * total, (right, total)
