"""Per-row isolation: a function that raises on chosen rows, injected into each stage, rejects
exactly those rows as internal_error; their batch mates come out as they would have anyway.

The stages run in this process (no Ray), through the same seams the code calls: module-level
functions and methods that monkeypatch replaces for the test's chosen rows.
"""

from __future__ import annotations

import asyncio
import json

import pyarrow as pa
import pytest
import ray.exceptions

import pipeline.labeling as labeling
import pipeline.stages as stages
from model.api import GenerationSettings
from model.tiny import tiny_config
from model.processor import ImageProcessor
from pipeline import schema
from pipeline.download import Fetcher
from pipeline.isolation import is_machinery_failure, row_failure, run_split_on_failure
from pipeline.labeling import LabelModel, TaskSpec, prepare_for_model
from pipeline.options import CorpusOptions
from pipeline.stages import FetchAndFilter
from tests import images

R, S = schema.Reason, schema.Status
CHOSEN = {1, 4}  # the rows whose handling raises
ROWS = 6


class Boom(Exception):
    pass


@pytest.fixture
def url_rows(tmp_path):
    """ROWS local image files, each with its own size (so its own bytes and sha256)."""
    paths = []
    for i in range(ROWS):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(images.png(40 + i, 30))
        paths.append(str(path))
    return pa.table(
        {
            schema.KEY: [f"k{i}" for i in range(ROWS)],
            schema.URL: paths,
            schema.CAPTION: [f"caption {i}" for i in range(ROWS)],
        }
    )


def run_stage(table, options=None, dedup=None):
    stage = FetchAndFilter(options or CorpusOptions(allow_local_files=True), dedup)
    try:
        return stage, asyncio.run(stage(table)).to_pylist()
    finally:
        stage.fetcher.close()


class LocalDedup:
    """DedupIndex's logic in this process; the stage calls it through FetchAndFilter._claim."""

    def __init__(self):
        self.first = {}

    def claim(self, pairs):
        return [None if self.first.setdefault(sha, key) == key else self.first[sha] for sha, key in pairs]


def inject(monkeypatch, stage_name, table):
    """Patch the seam of `stage_name` to raise on the CHOSEN rows."""
    urls = table.column(schema.URL).to_pylist()
    captions = table.column(schema.CAPTION).to_pylist()
    chosen_bytes = [open(urls[i], "rb").read() for i in CHOSEN]
    if stage_name == "input":
        real = stages.validate_url
        monkeypatch.setattr(stages, "validate_url", lambda url, allow: _raise_if(url in [urls[i] for i in CHOSEN]) or real(url, allow))
    elif stage_name == "caption":
        real = stages.check_caption
        monkeypatch.setattr(stages, "check_caption", lambda c, **kw: _raise_if(c in [captions[i] for i in CHOSEN]) or real(c, **kw))
    elif stage_name == "download":
        real = Fetcher.fetch_many
        monkeypatch.setattr(Fetcher, "fetch_many", lambda self, batch: _raise_if(any(u in batch for u in [urls[i] for i in CHOSEN])) or real(self, batch))
    elif stage_name == "inspect":
        real = stages.inspect_image
        monkeypatch.setattr(stages, "inspect_image", lambda data, *a: _raise_if(data in chosen_bytes) or real(data, *a))
    elif stage_name == "probe":  # deeper: a library call inside the inspect stage
        real = stages.probe_image
        monkeypatch.setattr(stages, "probe_image", lambda data: _raise_if(data in chosen_bytes) or real(data))
    elif stage_name == "dedup":
        index = LocalDedup()
        shas = {stages.content_sha256(b) for b in chosen_bytes}
        monkeypatch.setattr(FetchAndFilter, "_claim", lambda self, pairs: _raise_if(any(s in shas for s, _ in pairs)) or index.claim(pairs))
    elif stage_name == "columns":  # a value no int32 column holds
        real = stages.inspect_image

        def huge(data, *a):
            result = real(data, *a)
            if data in chosen_bytes:
                result.values[schema.ORIGINAL_WIDTH] = 2**40
            return result

        monkeypatch.setattr(stages, "inspect_image", huge)


def _raise_if(condition: bool):
    if condition:
        raise Boom("injected")
    return None


@pytest.mark.parametrize(
    "stage_name, message_start",
    [
        ("input", "input: Boom: injected"),
        ("caption", "input: Boom: injected"),
        ("download", "download: Boom: injected"),
        ("inspect", "inspect: Boom: injected"),
        ("probe", "inspect: Boom: injected"),
        ("dedup", "dedup: Boom: injected"),
        ("columns", "columns: ValueError: original_width = 1099511627776 does not fit int32"),
    ],
)
def test_a_raising_row_is_rejected_alone_in_the_fetch_stage(monkeypatch, url_rows, stage_name, message_start):
    dedup = object() if stage_name == "dedup" else None  # the handle _claim would call
    if dedup:
        monkeypatch.setattr(FetchAndFilter, "_claim", lambda self, pairs: LocalDedup().claim(pairs))
    _, expected = run_stage(url_rows, dedup=dedup)
    inject(monkeypatch, stage_name, url_rows)
    _, got = run_stage(url_rows, dedup=dedup)
    assert len(got) == ROWS
    for i, (row, clean) in enumerate(zip(got, expected)):
        if i in CHOSEN:
            assert (row[schema.STATUS], row[schema.REASON]) == (S.INTERNAL_ERROR, R.INTERNAL_ERROR)
            assert row[schema.ERROR_MESSAGE].startswith(message_start), row[schema.ERROR_MESSAGE]
            assert row[schema.IMAGE_BYTES] is None
        else:
            row.pop(schema.DOWNLOAD_SECONDS), clean.pop(schema.DOWNLOAD_SECONDS)
            assert row == clean  # batch mates: exactly what they are without the injection
            assert row[schema.STATUS] == S.SUCCESS


def test_a_failing_download_batch_is_split_down_to_the_failing_url(monkeypatch, url_rows):
    calls = []
    real = Fetcher.fetch_many
    bad = url_rows.column(schema.URL)[1].as_py()

    def fetch_many(self, batch):
        calls.append(len(batch))
        if bad in batch:
            raise Boom("one URL breaks the batch")
        return real(self, batch)

    monkeypatch.setattr(Fetcher, "fetch_many", fetch_many)
    _, got = run_stage(url_rows)
    assert [r[schema.STATUS] for r in got] == [S.SUCCESS, S.INTERNAL_ERROR] + [S.SUCCESS] * (ROWS - 2)
    assert sum(n for n in calls) <= ROWS * 3  # halves, not one call per URL per level


@pytest.mark.parametrize(
    "error",
    [ray.exceptions.ActorDiedError(), ray.exceptions.WorkerCrashedError(), ray.exceptions.ObjectLostError("0" * 56, "", "")],
    ids=["actor_died", "worker_crashed", "object_lost"],
)
def test_ray_machinery_failures_are_raised_for_ray_to_retry(monkeypatch, url_rows, error):
    def claim(self, pairs):
        raise error

    monkeypatch.setattr(FetchAndFilter, "_claim", claim)
    with pytest.raises(type(error)):
        run_stage(url_rows, dedup=object())
    assert is_machinery_failure(error)
    with pytest.raises(type(error)):
        row_failure("dedup", error)


def test_an_error_raised_in_a_ray_worker_by_our_code_is_a_row_failure():
    try:
        raise ValueError("bad sha")
    except ValueError as cause:
        wrapped = ray.exceptions.RayTaskError("claim", "traceback", cause)
    assert not is_machinery_failure(wrapped)
    assert row_failure("dedup", wrapped).message == "dedup: ValueError: bad sha"


def test_long_messages_are_cut():
    message = row_failure("inspect", Boom("x" * 10_000)).message
    assert len(message) < 600 and message.endswith("(10000 characters)")


def test_split_on_failure_raises_machinery_failures_at_once():
    calls = []

    def run(items):
        calls.append(list(items))
        raise ray.exceptions.ActorDiedError()

    with pytest.raises(ray.exceptions.ActorDiedError):
        run_split_on_failure([1, 2, 3, 4], run)
    assert calls == [[1, 2, 3, 4]]


# --- the label job's CPU and model stages ------------------------------------------------------


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    """prepare_for_model reads config.json only."""
    out = tmp_path_factory.mktemp("tiny-config")
    (out / "config.json").write_text(json.dumps(tiny_config("cogvlm")))
    return str(out)


def kept_rows():
    data = [images.png(40 + i, 30) for i in range(ROWS)]
    return pa.table(
        {
            schema.KEY: [f"k{i}" for i in range(ROWS)],
            schema.CAPTION: [f"c{i}" for i in range(ROWS)],
            schema.STATUS: [S.SUCCESS] * ROWS,
            schema.REASON: pa.nulls(ROWS, pa.string()),
            schema.ERROR_MESSAGE: pa.nulls(ROWS, pa.string()),
            schema.ORIGINAL_WIDTH: [40 + i for i in range(ROWS)],
            schema.ORIGINAL_HEIGHT: [30] * ROWS,
            schema.IMAGE_BYTES: data,
        }
    ), data


@pytest.mark.parametrize("seam", ["decode_image", "thumbnail"])
def test_a_raising_row_is_rejected_alone_in_the_preprocess_stage(monkeypatch, config_dir, seam):
    table, data = kept_rows()
    spec = TaskSpec("caption")
    expected = prepare_for_model(table, config_dir, spec, previews_per_batch=ROWS).to_pylist()
    real = getattr(labeling, seam)
    if seam == "decode_image":
        chosen = [data[i] for i in CHOSEN]
        monkeypatch.setattr(labeling, "decode_image", lambda d, info: _raise_if(d in chosen) or real(d, info))
    else:
        chosen_sizes = [(40 + i, 30) for i in CHOSEN]
        monkeypatch.setattr(labeling, "thumbnail", lambda image: _raise_if(image.size in chosen_sizes) or real(image))
    got = prepare_for_model(table, config_dir, spec, previews_per_batch=ROWS).to_pylist()
    for i, (row, clean) in enumerate(zip(got, expected)):
        if i in CHOSEN:
            assert (row[schema.STATUS], row[schema.REASON]) == (S.INTERNAL_ERROR, R.INTERNAL_ERROR)
            assert row[schema.ERROR_MESSAGE].startswith("preprocess: Boom: injected")
            assert row[schema.PIXEL_VALUES] is None and row[schema.PROMPTS] is None
        else:
            row.pop(schema.PREPROCESS_SECONDS), clean.pop(schema.PREPROCESS_SECONDS)
            assert row == clean


class AnsweringModel:
    processor = ImageProcessor(2)

    def generate(self, pixels, prompts, image_index, settings):
        from model.api import Generation

        return [Generation(f"a caption for {p}", [1]) for p in prompts]


def test_a_raising_row_is_rejected_alone_in_the_label_stage(monkeypatch):
    stage = LabelModel.__new__(LabelModel)
    stage.model, stage.spec, stage.settings = AnsweringModel(), TaskSpec("caption"), GenerationSettings()
    stage.model_name, stage.generation_json = "stub@0", "{}"
    table = pa.table(
        {
            schema.KEY: [f"k{i}" for i in range(ROWS)],
            schema.STATUS: [S.SUCCESS] * ROWS,
            schema.REASON: pa.nulls(ROWS, pa.string()),
            schema.ERROR_MESSAGE: pa.nulls(ROWS, pa.string()),
            schema.ORIGINAL_WIDTH: [100] * ROWS,
            schema.ORIGINAL_HEIGHT: [100] * ROWS,
            schema.PIXEL_VALUES: [bytes(12)] * ROWS,
            schema.PROMPTS: [[f"q{i}"] for i in range(ROWS)],
            schema.PHRASES: [None] * ROWS,
        }
    )
    real = labeling.parse_grounding
    chosen = [f"a caption for q{i}" for i in CHOSEN]
    monkeypatch.setattr(labeling, "parse_grounding", lambda text, w, h: _raise_if(text in chosen) or real(text, w, h))
    got = stage(table).to_pylist()
    for i, row in enumerate(got):
        if i in CHOSEN:
            assert (row[schema.STATUS], row[schema.REASON]) == (S.INTERNAL_ERROR, R.INTERNAL_ERROR)
            assert row[schema.ERROR_MESSAGE].startswith("label: Boom: injected")
            assert row[schema.TEXT] is None and row[schema.BOXES] is None
        else:
            assert (row[schema.STATUS], row[schema.TEXT]) == (S.SUCCESS, f"a caption for q{i}")
