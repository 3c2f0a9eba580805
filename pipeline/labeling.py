"""Ray Data stages of jobs.label: make model-ready arrays on CPUs, run the model in actors.

CPU tasks decode and resize each kept image and build its prompts, so the model actors (one
per GPU, or CPU actors for small models) only run the model. A failure in a batch is split
in halves down to single rows, so one bad row never fails its neighbours or the job; an
unexpected exception while preparing one row or reading its output is that row's
`internal_error` (pipeline.isolation).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from filters.findings import Finding
from filters.image import decode_image, probe_image
from model.boxes import AGENT_OPERATION, parse_boxes_for_phrase, parse_grounded_operation, parse_grounding
from pipeline import schema
from pipeline.isolation import row_failure, run_split_on_failure
from pipeline.schema import Rejection

TASKS = ("caption", "grounded_caption", "ground", "vqa")
CAPTION_PRESETS = {
    "short": "Describe this image in one sentence.",
    "detailed": "Describe this image in detail.",
}
# Prompts the grounding model was trained with (spec: "Grounding output format").
GROUNDED_CAPTION_PROMPT = (
    "Can you provide a description of the image and include the coordinates [[x0,y0,x1,y1]] for each mentioned object?"
)
GROUND_PROMPT = "Where is {expression}? answer in [[x0,y0,x1,y1]] format."
THUMBNAIL_SIDE = 256


@dataclass(frozen=True)
class TaskSpec:
    """What to ask of every row; built once from the job's flags."""

    task: str
    prompt: str | None = None  # caption: preset name or text; vqa: question for every row
    prompt_col: str | None = None  # vqa: per-row question column
    phrases: tuple[str, ...] = ()  # ground: phrases for every row
    phrases_col: str | None = None  # ground: per-row list column
    template: str | None = None  # base/chat/vqa; default: the checkpoint's template_version

    def queries(self, row: dict) -> list[str]:
        """The questions for one row, before templating (several for `ground`)."""
        if self.task == "caption":
            return [CAPTION_PRESETS.get(self.prompt or "short", self.prompt)]
        if self.task == "grounded_caption":
            return [self.prompt or GROUNDED_CAPTION_PROMPT]
        if self.task == "vqa":
            return [row[self.prompt_col] if self.prompt_col else self.prompt]
        return [GROUND_PROMPT.format(expression=p) for p in self.row_phrases(row)]

    def row_phrases(self, row: dict) -> list[str]:
        phrases = row.get(self.phrases_col) if self.phrases_col else self.phrases
        return [str(p).strip() for p in (phrases or []) if p is not None and str(p).strip()]


def thumbnail(image) -> bytes:
    small = image.copy()
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _reject(row: dict, rejection: Rejection) -> None:
    row[schema.STATUS], row[schema.REASON], row[schema.ERROR_MESSAGE] = rejection.status, rejection.reason, rejection.message


def _with_outcome_columns(table: pa.Table, rows: list[dict]) -> pa.Table:
    """The rows' (possibly updated) status, reason and error_message, written back to the table."""
    for name in (schema.STATUS, schema.REASON, schema.ERROR_MESSAGE):
        table = table.set_column(table.column_names.index(name), name, pa.array([r[name] for r in rows], pa.string()))
    return table


def prepare_for_model(table: pa.Table, model_dir: str, spec: TaskSpec, previews_per_batch: int) -> pa.Table:
    """CPU stage: decoded, resized pixels (uint8, 3 x S x S) and templated prompts per kept row.

    A plain function, so Ray runs it as tasks: nothing holds a CPU between batches.
    """
    from functools import partial

    from model.processor import ImageProcessor, apply_template, read_template_version, read_variant

    processor = ImageProcessor.from_model_dir(model_dir)  # reads config.json only
    template = spec.template or read_template_version(model_dir)
    apply_template = partial(apply_template, variant=read_variant(model_dir))  # each variant has its own templates
    started = time.perf_counter()
    rows = table.to_pylist()
    pixels, prompts, phrases, thumbs = [], [], [], []
    for row in rows:
        try:
            prepared = _prepare_row(row, processor, template, apply_template, spec, sum(t is not None for t in thumbs) < previews_per_batch)
        except Exception as e:
            prepared = row_failure("preprocess", e)
        if isinstance(prepared, Rejection):
            _reject(row, prepared)
            prepared = (None, None, None, None)
        for out, value in zip((pixels, prompts, phrases, thumbs), prepared):
            out.append(value)
    seconds = (time.perf_counter() - started) / max(1, len(rows))
    table = _with_outcome_columns(table, rows)
    # The output's `caption` is the model's; the input's caption is kept beside it.
    table = table.drop_columns([schema.IMAGE_BYTES])
    table = table.rename_columns([schema.INPUT_PREFIX + n if n == schema.CAPTION else n for n in table.column_names])
    prompt_text = [None if p is None else "\n".join(p) for p in prompts]
    return (
        table.append_column(schema.PIXEL_VALUES, pa.array(pixels, pa.binary()))
        .append_column(schema.PROMPT, pa.array(prompt_text, pa.string()))
        .append_column(schema.PROMPTS, pa.array(prompts, pa.list_(pa.string())))
        .append_column(schema.PHRASES, pa.array(phrases, pa.list_(pa.string())))
        .append_column(schema.THUMBNAIL, pa.array(thumbs, pa.binary()))
        .append_column(schema.PREPROCESS_SECONDS, pa.array([seconds] * len(rows), pa.float64()))
    )


def _prepare_row(row: dict, processor, template: str, apply_template, spec: TaskSpec, want_thumbnail: bool):
    """(pixels, prompts, phrases, thumbnail) for a kept row, a Rejection, or Nones for a rejected row."""
    if row[schema.STATUS] != schema.Status.SUCCESS:
        return None, None, None, None
    data = row[schema.IMAGE_BYTES]
    info = probe_image(data)
    image = info if isinstance(info, Finding) else decode_image(data, info)
    if isinstance(image, Finding):
        return Rejection.of(image)
    queries = spec.queries(row)
    if not queries or any(q is None or not str(q).strip() for q in queries):
        what = "--phrases/--phrases-col" if spec.task == "ground" else "--prompt/--prompt-col"
        return Rejection(schema.Reason.MISSING_PROMPT, f"no question for this row ({what})")
    pixels = processor.resize(image).tobytes()
    prompts = [apply_template(str(q), template) for q in queries]
    phrases = spec.row_phrases(row) if spec.task == "ground" else None
    return pixels, prompts, phrases, thumbnail(image) if want_thumbnail else None


@dataclass
class RowLabel:
    text: str | None = None
    caption: str | None = None
    boxes: list | None = None
    rejection: Rejection | None = None


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _is_oom(e: Exception) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError)


def box_dicts(parsed) -> list[dict]:
    return [asdict(b) for b in parsed.boxes]  # Box's fields are schema.BOX_TYPE's, in order


class LabelModel:
    """Actor: the model loaded once; labels the kept rows of each batch."""

    def __init__(self, model_dir: str, tokenizer_dir: str | None, spec: TaskSpec, settings, cpu_threads: int | None = None,
                 rope_precision: str = "official"):
        import torch

        from model.api import VisualExpertModel

        if cpu_threads:  # CPU actors: Ray sets one thread per logical CPU, often a fraction
            torch.set_num_threads(cpu_threads)
        self.model = VisualExpertModel.load(model_dir, tokenizer_dir, rope_precision=rope_precision)
        self.spec = spec
        self.settings = settings
        self.model_name = self.model.describe()
        self.generation_json = json.dumps(asdict(settings), sort_keys=True)

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = table.to_pylist()
        todo = [i for i, r in enumerate(rows) if r[schema.STATUS] == schema.Status.SUCCESS]
        started = time.perf_counter()
        outcomes = run_split_on_failure([rows[i] for i in todo], self._label, _is_oom, _free_accelerator_memory)
        seconds = (time.perf_counter() - started) / max(1, len(todo))
        labels = {i: self._as_label(o) for i, o in zip(todo, outcomes)}
        return self._with_label_columns(table, rows, labels, seconds)

    def _label(self, rows: list[dict]) -> list[RowLabel]:
        shape = self.model.processor.pixel_shape
        pixels = np.stack([np.frombuffer(r[schema.PIXEL_VALUES], np.uint8).reshape(shape) for r in rows])
        prompts, image_index = [], []
        for i, row in enumerate(rows):
            for prompt in row[schema.PROMPTS]:
                prompts.append(prompt)
                image_index.append(i)
        generations = self.model.generate(
            self.model.processor.normalize(pixels), prompts, image_index=image_index, settings=self.settings
        )
        out, g = [], 0
        for i, row in enumerate(rows):
            n = image_index.count(i)
            try:  # the model ran: a failure to read one row's output is that row's alone
                out.append(self._parse(row, [x.text for x in generations[g : g + n]]))
            except Exception as e:
                out.append(RowLabel(rejection=row_failure("label", e)))
            g += n
        return out

    def _parse(self, row: dict, texts: list[str]) -> RowLabel:
        width, height = row[schema.ORIGINAL_WIDTH], row[schema.ORIGINAL_HEIGHT]
        if self.spec.task == "ground":
            boxes, problems = [], []
            for phrase, text in zip(row[schema.PHRASES], texts):
                parsed = parse_boxes_for_phrase(text, phrase, width, height)
                boxes += box_dicts(parsed)
            raw = json.dumps(dict(zip(row[schema.PHRASES], texts)), ensure_ascii=False)
            return RowLabel(text=raw, caption=None, boxes=boxes)
        (text,) = texts
        # CogAgent's agent answers end in a grounded operation, whose boxes belong to the operation
        parse = parse_grounded_operation if AGENT_OPERATION in text else parse_grounding
        parsed = parse(text, width, height)
        return RowLabel(text=text, caption=parsed.caption, boxes=box_dicts(parsed))

    @staticmethod
    def _as_label(outcome) -> RowLabel:
        if isinstance(outcome, RowLabel):
            return outcome
        reason = schema.Reason.OUT_OF_MEMORY if _is_oom(outcome) else schema.Reason.MODEL_ERROR
        return RowLabel(rejection=Rejection(reason, f"{type(outcome).__name__}: {outcome}"))

    def _with_label_columns(self, table: pa.Table, rows: list[dict], labels: dict, seconds: float) -> pa.Table:
        empty = RowLabel()
        got = [labels.get(i, empty) for i in range(len(rows))]
        for i, label in labels.items():
            if label.rejection:
                _reject(rows[i], label.rejection)
        labelled = [i in labels and labels[i].rejection is None for i in range(len(rows))]
        table = _with_outcome_columns(table, rows).drop_columns([schema.PIXEL_VALUES, schema.PHRASES, schema.PROMPTS])
        field = {f.name: f.type for f in schema.LABEL_FIELDS}
        added = {
            schema.TASK: [self.spec.task] * len(rows),
            schema.TEXT: [g.text for g in got],
            schema.LABEL_CAPTION: [g.caption for g in got],
            schema.BOXES: [g.boxes if ok else None for g, ok in zip(got, labelled)],
            schema.MODEL: [self.model_name] * len(rows),
            schema.GENERATION: [self.generation_json] * len(rows),
            schema.MODEL_SECONDS: [seconds if ok else None for ok in labelled],
        }
        for name, values in added.items():
            table = table.append_column(name, pa.array(values, field[name]))
        return table
