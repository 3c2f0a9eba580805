"""The model stage's logic without Ray: batch splitting on failure, prompts, parsing into rows."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from model.api import Generation, GenerationSettings
from pipeline import schema
from pipeline.labeling import GROUND_PROMPT, LabelModel, TaskSpec, run_split_on_failure


def oom_above(limit, poison=()):
    succeeded = []

    def run(items):
        if len(items) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        if any(i in poison for i in items):
            raise torch.cuda.OutOfMemoryError("still too big")
        succeeded.append(list(items))
        return [f"ok{i}" for i in items]

    return run, succeeded


@pytest.mark.parametrize(
    "n,limit,poison,expected_failed",
    [
        (8, 8, (), []),  # fits: one call
        (8, 2, (), []),  # halves until it fits
        (5, 1, (), []),  # odd sizes split down to single rows
        (6, 4, (3,), [3]),  # one row never fits: only it fails
        (1, 0, (), [0]),  # a single row that fails is recorded, not raised
    ],
)
def test_oom_splits_batches_in_halves_down_to_one_row(n, limit, poison, expected_failed):
    run, succeeded = oom_above(limit, poison)
    out = run_split_on_failure(list(range(n)), run, lambda e: isinstance(e, torch.cuda.OutOfMemoryError))
    assert len(out) == n
    assert [i for i, o in enumerate(out) if isinstance(o, Exception)] == expected_failed
    assert [o for o in out if not isinstance(o, Exception)] == [f"ok{i}" for i in range(n) if i not in expected_failed]
    # Splitting stops as soon as a part fits: the largest successful calls are as big as allowed.
    assert sorted(i for c in succeeded for i in c) == [i for i in range(n) if i not in expected_failed]
    assert all(len(c) <= limit for c in succeeded)
    if succeeded and not poison:
        assert max(len(c) for c in succeeded) == min(limit, n) or n % 2


def test_empty_batch_runs_nothing():
    assert run_split_on_failure([], lambda items: 1 / 0, lambda e: False) == []


@pytest.mark.parametrize(
    "spec,row,queries",
    [
        (TaskSpec("caption"), {}, ["Describe this image in one sentence."]),
        (TaskSpec("caption", prompt="detailed"), {}, ["Describe this image in detail."]),
        (TaskSpec("caption", prompt="What is this?"), {}, ["What is this?"]),
        (TaskSpec("vqa", prompt_col="q"), {"q": "Why?"}, ["Why?"]),
        (TaskSpec("ground", phrases=("cat", " dog ")), {}, [GROUND_PROMPT.format(expression=p) for p in ("cat", "dog")]),
        (TaskSpec("ground", phrases_col="p"), {"p": ["a", None, " "]}, [GROUND_PROMPT.format(expression="a")]),
        (TaskSpec("ground", phrases_col="p"), {"p": None}, []),
    ],
)
def test_task_queries(spec, row, queries):
    assert spec.queries(row) == queries


class StubModel:
    """Answers from a table; records how many images each call encoded."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []
        self.processor = type(
            "P", (), {"image_size": 2, "pixel_shape": (3, 2, 2), "normalize": staticmethod(lambda x: x.astype(np.float32))}
        )()

    def generate(self, pixels, prompts, image_index, settings):
        self.calls.append((len(pixels), list(image_index)))
        if "boom" in prompts:
            raise RuntimeError("bad row")
        return [Generation(self.answers[p], [1]) for p in prompts]


def stage(task, answers, spec=None):
    s = LabelModel.__new__(LabelModel)
    s.model, s.spec, s.settings = StubModel(answers), spec or TaskSpec(task), GenerationSettings()
    s.model_name, s.generation_json = "stub@0", json.dumps({})
    return s


def rows_table(prompts, phrases=None, status=schema.Status.SUCCESS):
    n = len(prompts)
    return pa.table(
        {
            schema.KEY: [str(i) for i in range(n)],
            schema.STATUS: [status] * n,
            schema.REASON: pa.nulls(n, pa.string()),
            schema.ERROR_MESSAGE: pa.nulls(n, pa.string()),
            schema.ORIGINAL_WIDTH: [200] * n,
            schema.ORIGINAL_HEIGHT: [100] * n,
            schema.PIXEL_VALUES: [bytes(12)] * n,
            schema.PROMPTS: prompts,
            schema.PHRASES: phrases or [None] * n,
        }
    )


def test_grounded_caption_becomes_caption_and_pixel_boxes():
    s = stage("grounded_caption", {"q": "a dog [[100,200,500,999]] on a sofa [[000,000,999,500]]"})
    out = s(rows_table([["q"]])).to_pylist()[0]
    assert out[schema.STATUS] == schema.Status.SUCCESS
    assert out[schema.LABEL_CAPTION] == "a dog on a sofa"
    assert [(b["phrase"], b["x0"], pytest.approx(b["y1"]), b["x1_rel"]) for b in out[schema.BOXES]] == [
        ("dog", 20.0, 99.9, 500),  # 200 x 100 px image: 100/1000*200, 999/1000*100
        ("sofa", 0.0, 50.0, 999),
    ]
    assert schema.PIXEL_VALUES not in out and schema.PROMPTS not in out


def test_cogagent_grounded_operation_boxes_belong_to_the_operation():
    answer = (
        "Plan: 1. Type 'CogVLM' into the search bar [[100,100,200,200]]. 2. Press enter.\n"
        "Next Action: Move the cursor to the search bar, and type 'CogVLM' into it.\n"
        "Grounded Operation:[combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]"
    )
    out = stage("caption", {"q": answer})(rows_table([["q"]])).to_pylist()[0]
    assert [(b["phrase"], b["x0_rel"], b["y1_rel"], b["x0"]) for b in out[schema.BOXES]] == [
        ("[combobox] Search -> TYPE: CogVLM", 212, 564, pytest.approx(42.4)),  # only the operation's box
    ]
    assert out[schema.LABEL_CAPTION].endswith("TYPE: CogVLM at the box") and "[[" not in out[schema.LABEL_CAPTION]


def test_ground_encodes_each_image_once_and_gives_one_box_entry_per_phrase_found():
    answers = {"where cat": "[[010,010,100,100]]", "where dog": "no dog here", "where sun": "[[0,0,9,9]]"}
    s = stage("ground", answers)
    table = rows_table([["where cat", "where dog"], ["where sun"]], phrases=[["cat", "dog"], ["sun"]])
    out = s(table).to_pylist()
    assert s.model.calls == [(2, [0, 0, 1])]  # two images encoded, three prompts
    assert [b["phrase"] for b in out[0][schema.BOXES]] == ["cat"]
    assert json.loads(out[0][schema.TEXT]) == {"cat": "[[010,010,100,100]]", "dog": "no dog here"}
    assert [b["phrase"] for b in out[1][schema.BOXES]] == ["sun"]


def test_a_failing_row_is_recorded_and_its_batch_mates_are_labelled():
    s = stage("caption", {"a": "fine", "c": "also fine"})
    out = s(rows_table([["a"], ["boom"], ["c"]])).to_pylist()
    assert [r[schema.STATUS] for r in out] == [schema.Status.SUCCESS, schema.Status.FAILED_TO_LABEL, schema.Status.SUCCESS]
    assert out[1][schema.REASON] == schema.Reason.MODEL_ERROR and "bad row" in out[1][schema.ERROR_MESSAGE]
    assert out[1][schema.BOXES] is None and out[0][schema.TEXT] == "fine"


def test_rows_rejected_upstream_pass_through_untouched():
    s = stage("caption", {})
    table = rows_table([None], status=schema.Status.FAILED_TO_DOWNLOAD)
    out = s(table).to_pylist()[0]
    assert out[schema.STATUS] == schema.Status.FAILED_TO_DOWNLOAD and out[schema.TEXT] is None
    assert s.model.calls == []


def test_the_actor_loads_the_model_with_the_rope_precision_asked_for(tmp_path):
    from model.tiny import write_tiny_checkpoint

    model_dir = str(write_tiny_checkpoint(tmp_path, "cogvlm"))
    spec = TaskSpec("caption")
    assert LabelModel(model_dir, None, spec, GenerationSettings()).model.model.rope_precision == "official"
    actor = LabelModel(model_dir, None, spec, GenerationSettings(), rope_precision="fp32")
    assert actor.model.model.rope_precision == "fp32"
