"""jobs.label over videos: the stages a video checkpoint (CogVLM2-Video, cogvlm2-llama3-caption) gets.

    fetch (FetchVideos: the corpus fetcher, same budgets, caps and address guard; no image checks)
      -> prepare_videos (CPU tasks: PyAV demux + decode, filters, frame sampling, preprocessing,
         a preview strip)
      -> VideoLabelModel (model actors: only the model runs there)

Decoding is pipeline/video_decode.py.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import ray

from filters import video as video_filters
from filters.dedup import content_sha256
from model.video import CAPTION_MAX_NEW_TOKENS, CAPTION_PROMPT, DEFAULT_TEMPLATE
from pipeline import schema
from pipeline.labeling import LabelModel, RowLabel, TaskSpec, _reject, _with_outcome_columns
from pipeline.options import CorpusOptions
from pipeline.schema import Rejection
from pipeline.stages import FetchAndFilter, RowResult
from pipeline.video_decode import DecodedVideo, VideoLimits, decode_video

VIDEO_TASKS = ("caption", "vqa")
VIDEO_MAX_BYTES = 256 * 2**20  # --max-bytes default for video jobs
IMAGE_MAX_NEW_TOKENS = 128  # --max-new-tokens default for image models
# Prompts for --task caption --prompt PRESET with a video model; "detailed" is the caption tool's (spec).
VIDEO_CAPTION_PRESETS = {"detailed": CAPTION_PROMPT, "short": "Describe this video in one sentence."}
DEFAULT_CAPTION_PRESET = "detailed"
FETCH_BATCH_ROWS = 16  # videos are large: fewer bodies per fetch call than images' 256
PREPARE_BATCH_ROWS = 4  # a 24-frame video is 14 MB of float32 pixels

# ----------------------------------------------------------------------------- job wiring


def is_video_model(model_dir: str) -> bool:
    """Whether config.json names the video class; False for a directory that cannot be read
    (the job's checkpoint check then says what is wrong)."""
    from model.config import CheckpointError, ModelConfig

    try:
        return ModelConfig.from_json(model_dir).is_video
    except CheckpointError:
        return False


def video_template(spec: TaskSpec) -> str:
    return spec.template or DEFAULT_TEMPLATE  # spec: pick the template by the use, not by config.json


def video_queries(spec: TaskSpec, row: dict) -> list:
    if spec.task == "caption":
        preset = spec.prompt or DEFAULT_CAPTION_PRESET
        return [VIDEO_CAPTION_PRESETS.get(preset, preset)]
    return spec.queries(row)


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("video (with a CogVLM2-Video or cogvlm2-llama3-caption checkpoint)")
    g.add_argument("--min-duration", dest="min_duration", type=float, default=0.0, help="drop videos shorter than this many seconds (default: %(default)s)")
    g.add_argument("--max-duration", dest="max_duration", type=float, default=None, help="drop videos longer than this many seconds (default: no limit)")
    g.add_argument(
        "--max-frame-pixels", dest="max_frame_pixels", type=int, default=video_filters.DEFAULT_MAX_FRAME_PIXELS,
        help="drop videos whose frames have more pixels, decided from the header (default: %(default)s, 8K UHD); "
        "--min-image-size applies to the frames' shorter side",
    )


def apply_video_defaults(args: argparse.Namespace, video: bool) -> None:
    """Defaults that depend on whether the model is a video model (flags the user set win)."""
    if args.max_bytes is None:
        args.max_bytes = VIDEO_MAX_BYTES if video else CorpusOptions.max_bytes
    if args.max_new_tokens is None:
        args.max_new_tokens = CAPTION_MAX_NEW_TOKENS if video else IMAGE_MAX_NEW_TOKENS


class FetchVideos(FetchAndFilter):
    """The corpus fetch stage with video bodies: downloads (or reads) exactly as for images, with
    the same budgets, caps, guard and dedup; decoding waits for prepare_videos' CPU tasks."""

    def inspect(self, data: bytes) -> RowResult:
        return RowResult(values={schema.SHA256: content_sha256(data), schema.BYTES: len(data)}, image=data)


def video_dataset(ds: ray.data.Dataset, options: CorpusOptions, dedup, spec: TaskSpec, model_dir: str, previews_per_batch: int, limits: VideoLimits) -> ray.data.Dataset:
    """A video job's fetch and prepare stages: rows in, model-ready rows (or rejections) out."""
    from pipeline.corpus import LIGHT_TASK_CPUS, fetch_and_filter

    ds = fetch_and_filter(ds, options, dedup, 2, FetchVideos, FETCH_BATCH_ROWS)  # as jobs.label's image path: the model needs CPUs too
    return ds.map_batches(
        prepare_videos,
        fn_kwargs={"model_dir": model_dir, "spec": spec, "previews_per_batch": previews_per_batch, "limits": limits},
        batch_size=PREPARE_BATCH_ROWS,
        batch_format="pyarrow",
        num_cpus=LIGHT_TASK_CPUS,
    )


def prepare_videos(table: pa.Table, model_dir: str, spec: TaskSpec, previews_per_batch: int, limits: VideoLimits) -> pa.Table:
    """CPU stage: each kept video decoded, filtered, sampled and preprocessed; prompts templated.

    A plain function, so Ray runs it as tasks: decoding never happens on a model actor.
    """
    from model.processor import apply_template

    template = video_template(spec)
    rows = table.to_pylist()
    got: list[DecodedVideo | None] = []
    prompts, seconds = [], []
    previews = 0
    for row in rows:
        started = time.perf_counter()
        prepared = _prepare_row(row, template, spec, limits, previews < previews_per_batch, apply_template)
        seconds.append(time.perf_counter() - started)
        if isinstance(prepared, Rejection):
            _reject(row, prepared)
            prepared = (None, None)
        video, row_prompts = prepared
        previews += video is not None and video.strip is not None
        got.append(video)
        prompts.append(row_prompts)
    table = _with_outcome_columns(table, rows).drop_columns([schema.IMAGE_BYTES])
    table = table.rename_columns([schema.INPUT_PREFIX + n if n == schema.CAPTION else n for n in table.column_names])
    for name in (schema.WIDTH, schema.HEIGHT, schema.ORIGINAL_WIDTH, schema.ORIGINAL_HEIGHT):
        side = [None if v is None else (v.width if name in (schema.WIDTH, schema.ORIGINAL_WIDTH) else v.height) for v in got]
        column = pa.array(side, pa.int32())
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, column)
        else:
            table = table.append_column(name, column)
    video_types = {f.name: f.type for f in schema.VIDEO_FIELDS}
    added = {
        schema.FRAME_TIMESTAMPS: [None if v is None else v.timestamps for v in got],
        schema.DURATION: [None if v is None else v.duration for v in got],
        schema.FPS: [None if v is None else v.fps for v in got],
        schema.VIDEO_CODEC: [None if v is None else v.codec for v in got],
    }
    for name, values in added.items():
        table = table.append_column(name, pa.array(values, video_types[name]))
    return (
        table.append_column(schema.PIXEL_VALUES, pa.array([None if v is None else v.pixels.tobytes() for v in got], pa.binary()))
        .append_column(schema.PROMPT, pa.array([None if p is None else "\n".join(p) for p in prompts], pa.string()))
        .append_column(schema.PROMPTS, pa.array(prompts, pa.list_(pa.string())))
        .append_column(schema.PHRASES, pa.array([None] * len(rows), pa.list_(pa.string())))
        .append_column(schema.THUMBNAIL, pa.array([None if v is None else v.strip for v in got], pa.binary()))
        .append_column(schema.PREPROCESS_SECONDS, pa.array(seconds, pa.float64()))
    )


def _prepare_row(row: dict, template: str, spec: TaskSpec, limits: VideoLimits, want_preview: bool, apply_template):
    """(DecodedVideo, prompts) for a kept row, a Rejection, or Nones for a row rejected earlier."""
    if row[schema.STATUS] != schema.Status.SUCCESS:
        return None, None
    queries = video_queries(spec, row)
    if not queries or any(q is None or not str(q).strip() for q in queries):
        return Rejection(schema.Reason.MISSING_PROMPT, "no question for this row (--prompt/--prompt-col)")
    try:
        video = decode_video(row[schema.IMAGE_BYTES], template, limits, preview=want_preview)
    except Exception as e:  # noqa: BLE001 - whatever a file does to the decoder is this row's rejection
        video = Rejection(schema.Reason.DECODE_ERROR, f"{type(e).__name__}: {e}")
    if isinstance(video, Rejection):
        return video
    return video, [apply_template(str(q), template) for q in queries]


class VideoLabelModel(LabelModel):
    """Actor: the video model loaded once; captions or answers for the kept videos of each batch."""

    def __init__(self, model_dir: str, tokenizer_dir: str | None, spec: TaskSpec, settings, cpu_threads: int | None = None,
                 rope_precision: str = "official"):
        super().__init__(model_dir, tokenizer_dir, spec, settings, cpu_threads, rope_precision)
        self.template = video_template(spec)

    def _label(self, rows: list[dict]) -> list[RowLabel]:
        size = self.model.config.vision.image_size
        videos = [np.frombuffer(r[schema.PIXEL_VALUES], np.float32).reshape(-1, 3, size, size).copy() for r in rows]
        prompts, video_index = [], []
        for i, row in enumerate(rows):
            for prompt in row[schema.PROMPTS]:
                prompts.append(prompt)
                video_index.append(i)
        generations = self.model.generate_videos(videos, prompts, video_index, template=self.template, settings=self.settings)
        # caption and vqa ask one question per video
        return [RowLabel(text=g.text, caption=g.text.strip(), boxes=None) for g in generations]
