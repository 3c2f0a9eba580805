"""The video stages without Ray: prepare_videos on fetched rows, then VideoLabelModel on its output."""

from __future__ import annotations

import pyarrow as pa
import pytest

from model.api import GenerationSettings
from model.tiny import write_tiny_checkpoint
from pipeline import schema, video
from pipeline.labeling import TaskSpec
from pipeline.video import VideoLabelModel, VideoLimits, prepare_videos
from tests import videos

R = schema.Reason


def fetched(bodies: list[bytes | None]) -> pa.Table:
    """Rows as the fetch stage leaves them: our corpus columns, the bytes, one input column."""
    n = len(bodies)
    columns = {
        schema.KEY: [f"k{i}" for i in range(n)],
        schema.URL: [f"http://x/{i}.mp4" for i in range(n)],
        schema.CAPTION: [f"alt {i}" for i in range(n)],
        "clip_id": list(range(n)),
    }
    table = pa.table(columns)
    for f in schema.CORPUS_FIELDS:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(n, f.type))
    status = [schema.Status.SUCCESS if b is not None else schema.Status.FAILED_TO_DOWNLOAD for b in bodies]
    table = table.set_column(table.column_names.index(schema.STATUS), schema.STATUS, pa.array(status))
    reason = [None if b is not None else R.HTTP_ERROR for b in bodies]
    table = table.set_column(table.column_names.index(schema.REASON), schema.REASON, pa.array(reason, pa.string()))
    return table.append_column(schema.IMAGE_BYTES, pa.array(bodies, pa.binary()))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("m") / "video", "cogvlm2-video"))


def test_prepare_then_label(model_dir):
    bodies = [videos.encode(seconds=3.0), videos.audio_only(), None, videos.encode(seconds=1.0, width=32, height=200)]
    spec = TaskSpec("caption")
    prepared = prepare_videos(fetched(bodies), model_dir, spec, previews_per_batch=1, limits=VideoLimits())
    rows = prepared.to_pylist()
    assert [r[schema.REASON] for r in rows] == [None, R.NO_VIDEO_STREAM, R.HTTP_ERROR, None]
    assert rows[0][schema.THUMBNAIL] and rows[3][schema.THUMBNAIL] is None  # one preview per batch
    assert rows[0][schema.FRAME_TIMESTAMPS] == pytest.approx([0.0, 1.0, 2.0, 2.9])
    assert (rows[3][schema.WIDTH], rows[3][schema.HEIGHT], rows[3][schema.ORIGINAL_WIDTH]) == (32, 200, 32)
    assert rows[0][schema.INPUT_PREFIX + "caption"] == "alt 0" and schema.IMAGE_BYTES not in prepared.column_names
    assert len(rows[0][schema.PIXEL_VALUES]) == 4 * 3 * 224 * 224 * 4  # float32 [T, 3, 224, 224]

    actor = VideoLabelModel(model_dir, None, spec, GenerationSettings(max_new_tokens=5), cpu_threads=1)
    out = actor(prepared).to_pylist()
    assert [r[schema.STATUS] for r in out] == ["success", "failed_to_decode", "failed_to_download", "success"]
    assert all(isinstance(out[i][schema.LABEL_CAPTION], str) and out[i][schema.MODEL_SECONDS] >= 0 for i in (0, 3))
    assert out[1][schema.TEXT] is None and out[0][schema.MODEL] == actor.model_name
    assert [r["clip_id"] for r in out] == [0, 1, 2, 3]
    assert not set(schema.INTERNAL_COLUMNS) & set(out[0])


def test_a_decoder_crash_is_the_rows_rejection(model_dir, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("decoder fell over")

    monkeypatch.setattr(video, "decode_video", explode)
    rows = prepare_videos(fetched([b"x", None]), model_dir, TaskSpec("caption"), 1, VideoLimits()).to_pylist()
    assert rows[0][schema.REASON] == R.DECODE_ERROR and "decoder fell over" in rows[0][schema.ERROR_MESSAGE]
    assert rows[1][schema.REASON] == R.HTTP_ERROR


def test_vqa_rows_without_a_question_are_rejected(model_dir):
    table = fetched([videos.encode(seconds=1.0), videos.encode(seconds=1.0)]).append_column("q", pa.array(["What?", None]))
    rows = prepare_videos(table, model_dir, TaskSpec("vqa", prompt_col="q"), 0, VideoLimits()).to_pylist()
    assert rows[0][schema.PROMPT] == "Question: What? Answer:" and rows[1][schema.REASON] == R.MISSING_PROMPT


@pytest.mark.parametrize(
    "spec, prompt",
    [
        (TaskSpec("caption"), "Question: Please describe this video in detail. Answer:"),
        (TaskSpec("caption", prompt="short"), "Question: Describe this video in one sentence. Answer:"),
        (TaskSpec("caption", template="base", prompt="A clip of"), "A clip of"),
        (TaskSpec("caption", template="vqa", prompt="What is it?"), "Question: What is it? Short answer:"),
    ],
)
def test_prompts_and_templates(model_dir, spec, prompt):
    rows = prepare_videos(fetched([videos.encode(seconds=1.0)]), model_dir, spec, 0, VideoLimits()).to_pylist()
    assert rows[0][schema.PROMPT] == prompt


def test_video_defaults_apply_only_where_the_user_set_nothing(model_dir):
    from jobs.label import parse_args
    from pipeline.video import apply_video_defaults, is_video_model

    assert is_video_model(model_dir) and not is_video_model("/nonexistent")
    args = parse_args(["--input", "x", "--output", "y", "--model", model_dir])
    apply_video_defaults(args, video=True)
    assert (args.max_bytes, args.max_new_tokens) == (256 * 2**20, 2048)  # spec: the caption tool's 2048
    args = parse_args(["--input", "x", "--output", "y", "--model", model_dir, "--max-bytes", "10", "--max-new-tokens", "7"])
    apply_video_defaults(args, video=True)
    assert (args.max_bytes, args.max_new_tokens) == (10, 7)
    args = parse_args(["--input", "x", "--output", "y", "--model", model_dir])
    apply_video_defaults(args, video=False)
    assert (args.max_bytes, args.max_new_tokens) == (32 * 2**20, 128)
