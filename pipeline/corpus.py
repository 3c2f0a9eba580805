"""The corpus builder's dataset: read URL lists, fetch and filter, write shards, resume."""

from __future__ import annotations

import glob
import json
import os
import time

import pyarrow.parquet as pq
import ray
from ray.data.checkpoint import CheckpointConfig

from pipeline import schema
from pipeline.options import CorpusOptions
from pipeline.reader import ColumnMap, UrlListDatasource, check_inputs, resolve_input_files
from pipeline.stages import DedupIndex, FetchAndFilter
from pipeline.writer import (
    CHECKPOINT_DIR,
    CORPUS_DIR,
    SHARDS_DIR,
    STATS_FILE,
    CorpusSink,
    claim_output,
    read_shard_stats,
)

# Rows per call of the fetch stage. Each call's output becomes one chunk of every column of the
# shards the writers get: 32-row calls gave a 2000-row shard 63 chunks, 256-row calls 8, and cut
# the job time of benchmarks/download.py's 20k-URL run from 10.5 to 9.1 s (CPU 22.6 to 20.1 s).
# Ray Data runs 4 calls at once per actor, so up to 4x this many images wait in an actor.
FETCH_BATCH_ROWS = 256
# Logical CPU reservations. Actors hold theirs for the whole run, and on a resumed run Ray Data
# adds a checkpoint-filter actor that holds a whole CPU; if actors held every CPU, no read or
# write task could ever be scheduled. The fetch actors' real load is set by --download-workers.
FETCH_ACTOR_CPUS = 0.25
LIGHT_TASK_CPUS = 0.25  # reads and writes mostly wait on I/O


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join a cluster (--address, or RAY_ADDRESS as set by `ray job submit`), else start one here."""
    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=True)
    else:
        # Ray would otherwise kill idle task workers above num_cpus within a second and start a
        # new one for each write task (benchmarks/results/download.md: ~10% of wall at 100k rows).
        soft_limit = 2 * (num_cpus or os.cpu_count() or 1) + 6  # Ray's default: the CPU count
        # "local": never attach to a cluster that `ray start` left on this machine (ray.init's default)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _system_config={"num_workers_soft_limit": soft_limit})


def enable_resume(output_dir: str, key_column: str = schema.KEY) -> None:
    """Ray Data records each written key under OUTPUT/_checkpoint and skips them next run."""
    ctx = ray.data.DataContext.get_current()
    ctx.checkpoint_config = CheckpointConfig(
        id_column=key_column,
        checkpoint_path=os.path.join(os.path.abspath(output_dir), CHECKPOINT_DIR),
        delete_checkpoint_on_success=False,  # a re-run of a finished output must write nothing
    )


def fetch_workers(options: CorpusOptions, cpus_per_worker: int = 1) -> int:
    """--download-workers, else one per CPU (jobs.label: one per two, its model needs CPUs too)."""
    return options.download_workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_worker)


def start_dedup_index(output_dir: str, kept_dir: str = CORPUS_DIR):
    """Seeded from the shards already written, so a resumed run keeps deduplicating against them."""
    seen = {}
    for path in glob.glob(os.path.join(output_dir, SHARDS_DIR, kept_dir, "*.parquet")):
        table = pq.read_table(path, columns=[schema.SHA256, schema.KEY, schema.STATUS])
        for sha, key, status in zip(*(table.column(c).to_pylist() for c in table.column_names)):
            if status == schema.Status.SUCCESS:
                seen.setdefault(sha, key)
    return DedupIndex.remote(seen)


def fetch_and_filter(ds: ray.data.Dataset, options: CorpusOptions, dedup=None, cpus_per_worker: int = 1) -> ray.data.Dataset:
    """dedup: a DedupIndex handle, required when options.dedup is set."""
    return ds.map_batches(
        FetchAndFilter,
        fn_constructor_args=(options, dedup),
        batch_size=FETCH_BATCH_ROWS,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=fetch_workers(options, cpus_per_worker)),
        num_cpus=FETCH_ACTOR_CPUS,
    )


def write_shards(ds: ray.data.Dataset, sink, shard_size: int) -> None:
    """One shard per block of at most shard_size rows (streaming: nothing waits for the whole set)."""
    ds = ds.repartition(target_num_rows_per_block=shard_size)
    ds.write_datasink(sink, ray_remote_args={"num_cpus": LIGHT_TASK_CPUS})


def url_list_files(input_spec: str, options: CorpusOptions) -> list[str]:
    """The input files, checked: raises InputError (before Ray starts) on a job-level mistake."""
    files = resolve_input_files(input_spec)
    check_inputs(files, ColumnMap(options.url_col, options.caption_col))
    return files


def read_url_lists(files: list[str], options: CorpusOptions) -> ray.data.Dataset:
    source = UrlListDatasource(files, ColumnMap(options.url_col, options.caption_col))
    return ray.data.read_datasource(source, num_cpus=LIGHT_TASK_CPUS)


def build_corpus(files: list[str], output_dir: str, options: CorpusOptions) -> dict:
    """Run the whole job into output_dir; returns the totals also written to stats.json."""
    os.makedirs(output_dir, exist_ok=True)
    enable_resume(output_dir)  # before the dataset exists: it copies the context when made
    ds = read_url_lists(files, options)
    dedup = start_dedup_index(output_dir) if options.dedup else None
    started = time.monotonic()
    before = read_shard_stats(output_dir)["input_rows"]
    sink = CorpusSink(output_dir, claim_output(output_dir))
    write_shards(fetch_and_filter(ds, options, dedup), sink, options.shard_size)
    wall = time.monotonic() - started
    totals = read_shard_stats(output_dir)
    totals["this_run"] = {
        "input_rows": totals["input_rows"] - before,
        "wall_seconds": round(wall, 3),
        "rows_per_second": round((totals["input_rows"] - before) / wall, 2) if wall > 0 else None,
    }
    with open(os.path.join(output_dir, STATS_FILE), "w") as f:
        json.dump(totals, f, indent=1)
    return totals


def summary(totals: dict, kept_word: str = "kept") -> str:
    run = totals["this_run"]
    lines = [
        f"input rows    {totals['input_rows']:>10}   ({run['input_rows']} this run, "
        f"{run['wall_seconds']:.1f} s, {run['rows_per_second']} rows/s)",
        f"{kept_word:<14}{totals['kept']:>10}",
        f"rejected      {totals['rejected']:>10}",
    ]
    lines += [f"  {reason:<22}{count:>8}" for reason, count in totals["rejected_by_reason"].items()]
    lines.append(f"image bytes   {totals['bytes']:>10}")
    return "\n".join(lines)
