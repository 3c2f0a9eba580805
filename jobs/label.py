"""Label images with a CogVLM-family model: captions, grounded captions, boxes for phrases, answers.

    python -m jobs.label --input urls.parquet --output labels/ --model /models/cogvlm-chat-hf \\
        --tokenizer /models/vicuna-7b-v1.5 --task caption

--input is a URL list (read, downloaded and filtered exactly as jobs.build_corpus does, with the
same flags), a jobs.build_corpus output, an img2dataset output (webdataset tars or Parquet with
image bytes), or a folder of images, locally or at a URI (s3://...). Output: Parquet under
OUTPUT/shards/labels/ (a path or URI), one row per input row; a corpus's shard NNNNN is
labelled into shard NNNNN. Runs on an embedded local Ray unless --address or RAY_ADDRESS names a cluster.
Re-running into the same --output labels only the rows still missing; it refuses if the settings
that shape the rows (task, prompts, template, model, generation, filters) differ from those
recorded in OUTPUT/settings.json (--overwrite starts the output afresh instead).

With a video checkpoint (CogVLM2-Video chat/base, cogvlm2-llama3-caption; told apart by its
config.json) the inputs are videos: URL lists of video URLs, folders of video files, or
video2dataset's webdataset tars; --task is caption or vqa, the template defaults to chat, the
caption prompt to the caption tool's, --max-new-tokens to 2048 and --max-bytes to 256 MiB.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
import sys

import ray

from model.config import ROPE_PRECISIONS
from pipeline.corpus import (
    LIGHT_TASK_CPUS,
    check_output,
    connect,
    fetch_and_filter,
    job_error,
    read_url_lists,
    record_plan,
    run_shards,
    start_dedup_index,
    summary,
    url_list_files,
    write_rows,
)
from pipeline.labeling import CAPTION_PRESETS, TASKS, LabelModel, TaskSpec, prepare_for_model
from pipeline.options import CorpusOptions, OneLineParser, add_corpus_arguments, number
from pipeline.reader import ColumnMap, InputError, cut_shards
from pipeline.settings import add_overwrite_argument, label_settings, prepare_output
from pipeline.sources import INPUT_FORMATS, detect_format, image_source
from pipeline.video import (
    VIDEO_TASKS,
    VideoLabelModel,
    VideoLimits,
    add_video_arguments,
    apply_video_defaults,
    is_video_model,
    video_dataset,
)
from pipeline.writer import LABELS_DIR, LabelSink

PREPARE_BATCH_ROWS = 16
# The model actor's logical CPU share; its real threads are set from the machine (see run()).
# Kept below 1 so that a 2-CPU machine still has room to schedule read, preprocess and write tasks.
MODEL_ACTOR_CPUS = 0.5


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m jobs.label", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="URL list(s), a corpus directory, tar/Parquet shards, or a folder of images; paths or URIs (s3://...)")
    p.add_argument("--input-format", dest="input_format", choices=INPUT_FORMATS, default="auto", help="(default: detected from what is on disk)")
    p.add_argument("--output", required=True, help="output directory, a path or s3://... URI (created; re-running resumes)")
    p.add_argument("--model", required=True, help="checkpoint directory (config.json + safetensors), e.g. cogvlm-chat-hf")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model directory; CogVLM v1 needs Vicuna's)")

    g = p.add_argument_group("task")
    g.add_argument("--task", choices=TASKS, default="caption", help="(default: %(default)s)")
    g.add_argument("--prompt", default=None, help=f"caption: a preset ({', '.join(CAPTION_PRESETS)}; default short) or your own text; vqa: the question for every row")
    g.add_argument("--prompt-col", dest="prompt_col", default=None, help="vqa: input column holding each row's question")
    g.add_argument("--phrases", default=None, help='ground: comma-separated phrases for every row, e.g. "cat,dog,person"')
    g.add_argument("--phrases-col", dest="phrases_col", default=None, help="ground: input list column holding each row's phrases")
    g.add_argument("--template", choices=("base", "chat", "vqa", "chat_old"), default=None, help="prompt template (default: the checkpoint's template_version; chat_old is CogAgent's, GLM-4V has chat only)")

    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", dest="max_new_tokens", type=number(int, at_least=1), default=None, help="(default: 128; video models: 2048, as the caption tool)")
    g.add_argument("--temperature", type=number(float, at_least=0), default=0.0, help="0 means greedy (default: %(default)s)")
    g.add_argument("--top-p", dest="top_p", type=number(float, above=0, at_most=1), default=1.0, help="(default: %(default)s)")
    g.add_argument("--num-beams", dest="num_beams", type=number(int, at_least=1), default=1, help="(default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    g.add_argument("--rope-precision", dest="rope_precision", choices=ROPE_PRECISIONS, default="official",
                   help="RoPE tables in bf16: official (the official code with its module in bf16), hf (as its Hugging Face demos load it), fp32 (exact); README: RoPE numerics (default: %(default)s)")

    g = p.add_argument_group("execution")
    g.add_argument("--batch-size", dest="batch_size", type=number(int, at_least=1), default=8, help="images per model call (default: %(default)s)")
    g.add_argument("--actors", type=number(int, at_least=1), default=None, help="model actors (default: one per GPU, else 1 on CPU)")
    g.add_argument("--num-gpus-per-actor", dest="num_gpus_per_actor", type=number(float, at_least=0), default=None, help="(default: 1 where GPUs exist, else 0: CPU actors)")
    g.add_argument("--previews-per-shard", dest="previews_per_shard", type=number(int, at_least=0), default=8, help="thumbnails kept per shard for jobs.report (default: %(default)s)")
    g.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    g.add_argument("--num-cpus", dest="num_cpus", type=number(int, at_least=1), default=None, help="CPUs for the embedded local Ray (default: all)")
    add_overwrite_argument(p)
    add_corpus_arguments(p)
    add_video_arguments(p)
    p.set_defaults(shard_size=1000, max_bytes=None)  # max_bytes: 32 MiB, video models 256 MiB
    return p.parse_args(argv)


def task_spec(args: argparse.Namespace) -> TaskSpec:
    if args.task == "vqa" and not (args.prompt or args.prompt_col):
        raise InputError("--task vqa needs --prompt (one question for every row) or --prompt-col")
    if args.task == "ground" and not (args.phrases or args.phrases_col):
        raise InputError('--task ground needs --phrases "a,b,c" or --phrases-col')
    phrases = tuple(p.strip() for p in (args.phrases or "").split(",") if p.strip())
    return TaskSpec(args.task, args.prompt, args.prompt_col, phrases, args.phrases_col, args.template)


def check_model_dirs(model_dir: str, tokenizer_dir: str | None, template: str | None = None) -> None:
    """Fail before any work if the checkpoint or tokenizer cannot be read, or lacks the template."""
    from model.config import TEMPLATES_BY_VARIANT
    from model.loading import CheckpointError, check_checkpoint_dir
    from model.processor import load_tokenizer

    try:
        variant = check_checkpoint_dir(model_dir).variant
        load_tokenizer(model_dir, tokenizer_dir)
    except CheckpointError as e:
        raise InputError(str(e)) from e
    known = TEMPLATES_BY_VARIANT.get(variant, TEMPLATES_BY_VARIANT["cogvlm"])
    if template and template not in known:
        raise InputError(f"--template {template}: a {variant} checkpoint has {', '.join(known)}")


def generation_settings(args: argparse.Namespace):
    from model.api import GenerationSettings

    try:
        return GenerationSettings(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, num_beams=args.num_beams, seed=args.seed
        )
    except ValueError as e:  # e.g. beam search with sampling
        raise InputError(f"generation settings: {e}") from e


def source_dataset(args, options: CorpusOptions):
    """The input's shards (planned and counted before Ray starts), a function making the Dataset
    of chosen shards' rows, the kind of input, and the plan to record in the output."""
    kind = detect_format(args.input) if args.input_format == "auto" else args.input_format
    columns = ColumnMap(options.url_col, options.caption_col)
    if kind == "urls":
        inputs = url_list_files(args.input, options)
        for col in (args.prompt_col, args.phrases_col):
            for f in inputs:
                if col and f.rows and col not in _input_columns(f.uri, columns):
                    raise InputError(f"{f.uri}: no column {col!r} for --prompt-col/--phrases-col")
        shards = cut_shards([f.rows for f in inputs], options.shard_size)
        plan = ([(f.uri, f.rows) for f in inputs], options.shard_size)
        return shards, lambda todo: read_url_lists(inputs, options, todo), kind, plan
    source, counts = image_source(kind, args.input, columns, options.shard_size)

    def read(todo):
        source.shards = todo
        return ray.data.read_datasource(source, num_cpus=LIGHT_TASK_CPUS)

    items = [item if isinstance(item, str) else (item[0] if isinstance(item, tuple) else f"{len(item)} images") for item in source._items]
    plan = (list(zip(items, counts)), options.shard_size if kind == "images" else None)
    return list(source.shards), read, kind, plan


def _input_columns(uri: str, columns: ColumnMap) -> list[str]:
    from pipeline.reader import column_names

    return column_names(uri, columns)


def model_actors(args) -> tuple[int, float]:
    gpus = int(ray.cluster_resources().get("GPU", 0))
    per_actor = args.num_gpus_per_actor if args.num_gpus_per_actor is not None else (1.0 if gpus else 0.0)
    actors = args.actors or (max(1, int(gpus / per_actor)) if per_actor else 1)
    return actors, per_actor


def run(args) -> dict:
    video = is_video_model(args.model)
    apply_video_defaults(args, video)
    if video and args.task not in VIDEO_TASKS:
        raise InputError(f"--task {args.task}: a video model does {' or '.join(VIDEO_TASKS)}")
    options = CorpusOptions.from_args(args)
    if options.resize != "no":
        raise InputError("--resize does not apply to jobs.label: the model resizes to its own input size")
    spec = task_spec(args)
    settings = generation_settings(args)
    check_model_dirs(args.model, args.tokenizer, args.template)
    shards, read, kind, (inputs, shard_size) = source_dataset(args, options)
    if kind in ("images", "videos"):
        options = CorpusOptions(**{**options.__dict__, "allow_local_files": True})
    from model.processor import read_template_version

    template = spec.template or read_template_version(args.model)
    recorded = label_settings(options, spec, template, args.model, args.tokenizer, settings)
    recorded["rope_precision"] = args.rope_precision  # changes the numbers, so the text
    if video:
        recorded["video"] = asdict(VideoLimits.from_args(args))
    out = check_output(args.output)
    prepare_output(args.output, "label", recorded, args.overwrite)
    record_plan(out, "label", inputs, shard_size)
    connect(args.address, args.num_cpus)
    dedup = start_dedup_index(args.output, LABELS_DIR) if options.dedup else None
    actors, gpus_per_actor = model_actors(args)

    def dataset(todo):
        if video:  # decoding and sampling run in the prepare tasks, on CPUs
            ds = video_dataset(read(todo), options, dedup, spec, args.model, args.previews_per_shard, VideoLimits.from_args(args))
        else:
            ds = fetch_and_filter(read(todo), options, dedup, cpus_per_worker=2)
            ds = ds.map_batches(
                prepare_for_model,
                fn_kwargs={"model_dir": args.model, "spec": spec, "previews_per_batch": args.previews_per_shard},
                batch_size=PREPARE_BATCH_ROWS,
                batch_format="pyarrow",
                num_cpus=LIGHT_TASK_CPUS,
            )
        cpu_threads = None if gpus_per_actor else max(1, (os.cpu_count() or 1) // actors)
        return ds.map_batches(
            VideoLabelModel if video else LabelModel,
            fn_constructor_args=(args.model, args.tokenizer, spec, settings, cpu_threads),
            fn_constructor_kwargs={"rope_precision": args.rope_precision},
            batch_size=args.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=gpus_per_actor,
            num_cpus=MODEL_ACTOR_CPUS,
        )

    return run_shards(
        out, shards, lambda run_id, counts: LabelSink(args.output, run_id, counts, args.previews_per_shard),
        lambda todo, sink: write_rows(dataset(todo), sink, todo),
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        totals = run(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        line = job_error(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    print(summary(totals, kept_word="labelled"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
