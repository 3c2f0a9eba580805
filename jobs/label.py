"""Label images with a CogVLM-family model: captions, grounded captions, boxes for phrases, answers.

    python -m jobs.label --input urls.parquet --output labels/ --model /models/cogvlm-chat-hf \\
        --tokenizer /models/vicuna-7b-v1.5 --task caption

--input is a URL list (read, downloaded and filtered exactly as jobs.build_corpus does, with the
same flags), a jobs.build_corpus output, an img2dataset output (webdataset tars or Parquet with
image bytes), or a folder of images. Output: Parquet under OUTPUT/shards/labels/, one row per
input row. Runs on an embedded local Ray unless --address or RAY_ADDRESS names a cluster.
Re-running into the same --output labels only the rows still missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import ray

from pipeline import schema
from pipeline.corpus import (
    LIGHT_TASK_CPUS,
    connect,
    enable_resume,
    fetch_and_filter,
    read_url_lists,
    start_dedup_index,
    summary,
    url_list_files,
    write_shards,
)
from pipeline.labeling import CAPTION_PRESETS, TASKS, LabelModel, TaskSpec, prepare_for_model
from pipeline.options import CorpusOptions, add_corpus_arguments
from pipeline.reader import ColumnMap, InputError, column_names
from pipeline.sources import INPUT_FORMATS, detect_format, image_source
from pipeline.writer import LABELS_DIR, STATS_FILE, LabelSink, claim_output, read_shard_stats

PREPARE_BATCH_ROWS = 16
# The model actor's logical CPU share; its real threads are set from the machine (see run()).
# Kept below 1 so that, with Ray Data's checkpoint filter actor on a resumed run, a 2-CPU
# machine still has room to schedule read, preprocess and write tasks.
MODEL_ACTOR_CPUS = 0.5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.label", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="URL list(s), a corpus directory, tar/Parquet shards, or a folder of images")
    p.add_argument("--input-format", dest="input_format", choices=INPUT_FORMATS, default="auto", help="(default: detected from what is on disk)")
    p.add_argument("--output", required=True, help="output directory (created; re-running resumes)")
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
    g.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=128, help="(default: %(default)s)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 means greedy (default: %(default)s)")
    g.add_argument("--top-p", dest="top_p", type=float, default=1.0, help="(default: %(default)s)")
    g.add_argument("--num-beams", dest="num_beams", type=int, default=1, help="(default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")

    g = p.add_argument_group("execution")
    g.add_argument("--batch-size", dest="batch_size", type=int, default=8, help="images per model call (default: %(default)s)")
    g.add_argument("--actors", type=int, default=None, help="model actors (default: one per GPU, else 1 on CPU)")
    g.add_argument("--num-gpus-per-actor", dest="num_gpus_per_actor", type=float, default=None, help="(default: 1 where GPUs exist, else 0: CPU actors)")
    g.add_argument("--previews-per-shard", dest="previews_per_shard", type=int, default=8, help="thumbnails kept per shard for jobs.report (default: %(default)s)")
    g.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    g.add_argument("--num-cpus", dest="num_cpus", type=int, default=None, help="CPUs for the embedded local Ray (default: all)")
    add_corpus_arguments(p)
    p.set_defaults(shard_size=1000)
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

    return GenerationSettings(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, num_beams=args.num_beams, seed=args.seed
    )


def source_dataset(args, options: CorpusOptions):
    """The input rows, with their URL or image bytes, and the kind of input they came from."""
    kind = detect_format(args.input) if args.input_format == "auto" else args.input_format
    columns = ColumnMap(options.url_col, options.caption_col)
    if kind == "urls":
        files = url_list_files(args.input, options)
        for col in (args.prompt_col, args.phrases_col):
            for path in files:
                if col and col not in column_names(path):
                    raise InputError(f"{path}: no column {col!r} for --prompt-col/--phrases-col")
        return lambda: read_url_lists(files, options), kind
    source = image_source(kind, args.input, columns)
    return lambda: ray.data.read_datasource(source, num_cpus=LIGHT_TASK_CPUS), kind


def model_actors(args) -> tuple[int, float]:
    gpus = int(ray.cluster_resources().get("GPU", 0))
    per_actor = args.num_gpus_per_actor if args.num_gpus_per_actor is not None else (1.0 if gpus else 0.0)
    actors = args.actors or (max(1, int(gpus / per_actor)) if per_actor else 1)
    return actors, per_actor


def run(args) -> dict:
    options = CorpusOptions.from_args(args)
    if options.resize != "no":
        raise InputError("--resize does not apply to jobs.label: the model resizes to its own input size")
    spec = task_spec(args)
    check_model_dirs(args.model, args.tokenizer, args.template)
    read, kind = source_dataset(args, options)
    if kind == "images":
        options = CorpusOptions(**{**options.__dict__, "allow_local_files": True})
    connect(args.address, args.num_cpus)
    os.makedirs(args.output, exist_ok=True)
    enable_resume(args.output)
    dedup = start_dedup_index(args.output, LABELS_DIR) if options.dedup else None
    actors, gpus_per_actor = model_actors(args)
    settings = generation_settings(args)
    started = time.monotonic()
    before = read_shard_stats(args.output)["input_rows"]

    ds = fetch_and_filter(read(), options, dedup, cpus_per_worker=2)
    ds = ds.map_batches(
        prepare_for_model,
        fn_kwargs={"model_dir": args.model, "spec": spec, "previews_per_batch": args.previews_per_shard},
        batch_size=PREPARE_BATCH_ROWS,
        batch_format="pyarrow",
        num_cpus=LIGHT_TASK_CPUS,
    )
    cpu_threads = None if gpus_per_actor else max(1, (os.cpu_count() or 1) // actors)
    ds = ds.map_batches(
        LabelModel,
        fn_constructor_args=(args.model, args.tokenizer, spec, settings, cpu_threads),
        batch_size=args.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus_per_actor,
        num_cpus=MODEL_ACTOR_CPUS,
    )
    sink = LabelSink(args.output, claim_output(args.output), args.previews_per_shard)
    write_shards(ds, sink, options.shard_size)

    wall = time.monotonic() - started
    totals = read_shard_stats(args.output)
    done = totals["input_rows"] - before
    totals["this_run"] = {"input_rows": done, "wall_seconds": round(wall, 3), "rows_per_second": round(done / wall, 2) if wall else None}
    with open(os.path.join(args.output, STATS_FILE), "w") as f:
        json.dump(totals, f, indent=1)
    return totals


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        totals = run(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(totals, kept_word="labelled"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
