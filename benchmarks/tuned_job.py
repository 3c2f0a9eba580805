"""`python -m jobs.build_corpus` with Ray and Ray Data settings the job does not expose, for
benchmarks/memory.py and benchmarks/download.py to measure levers before they go into the code.

    COGSCALE_BENCH_SETTINGS='{"object_store_memory": 1e9}' python benchmarks/tuned_job.py --input ...

Settings (JSON object, every key optional):
    object_store_memory      bytes of Ray's object store (ray.init object_store_memory)
    num_workers_soft_limit   Ray's idle-worker cap (_system_config), replaces the job's own
    system_config            more of Ray's _system_config (e.g. {"enable_worker_prestart": false})
    target_max_block_size    DataContext.target_max_block_size, bytes
    data_object_store_limit  DataContext.execution_options.resource_limits.object_store_memory:
                             the bytes of object store Ray Data lets its operators hold
    fetch_batch_rows         pipeline.corpus.FETCH_BATCH_ROWS (rows per fetch call)
    max_tasks_in_flight_per_actor  fetch calls Ray Data runs at once per actor (default 4)
    max_concurrency          the fetch actors' Ray max_concurrency
    light_task_cpus          pipeline.corpus.LIGHT_TASK_CPUS: the CPUs each read/write task reserves,
                             which caps how many run (each in a worker process of its own) at once
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import ray  # noqa: E402
import ray.data  # noqa: E402

SETTINGS_ENV = "COGSCALE_BENCH_SETTINGS"
KNOWN = {
    "object_store_memory", "num_workers_soft_limit", "target_max_block_size", "data_object_store_limit",
    "fetch_batch_rows", "max_tasks_in_flight_per_actor", "max_concurrency", "light_task_cpus", "system_config",
}  # fmt: skip


def apply(settings: dict) -> None:
    unknown = set(settings) - KNOWN
    if unknown:
        sys.exit(f"unknown settings {sorted(unknown)}; known: {sorted(KNOWN)}")
    import pipeline.corpus as corpus

    original_init = ray.init

    def init(*args, **kwargs):
        if "object_store_memory" in settings:
            kwargs["object_store_memory"] = int(settings["object_store_memory"])
        config = dict(kwargs.get("_system_config") or {})
        if "num_workers_soft_limit" in settings:
            config["num_workers_soft_limit"] = int(settings["num_workers_soft_limit"])
        config.update(settings.get("system_config", {}))
        if config:
            kwargs["_system_config"] = config
        return original_init(*args, **kwargs)

    ray.init = init
    ctx = ray.data.DataContext.get_current()
    if "target_max_block_size" in settings:
        ctx.target_max_block_size = int(settings["target_max_block_size"])
    if "data_object_store_limit" in settings:
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
            object_store_memory=int(settings["data_object_store_limit"])
        )
    for key, name, kind in (("light_task_cpus", "LIGHT_TASK_CPUS", float), ("fetch_batch_rows", "FETCH_BATCH_ROWS", int)):
        if key in settings:
            if not hasattr(corpus, name):  # renamed in pipeline/corpus.py: say so, never measure nothing
                sys.exit(f"pipeline.corpus has no {name} any more; update benchmarks/tuned_job.py")
            setattr(corpus, name, kind(settings[key]))
    if "max_tasks_in_flight_per_actor" in settings:
        strategy = ray.data.ActorPoolStrategy

        def tuned_strategy(**kwargs):
            kwargs["max_tasks_in_flight_per_actor"] = int(settings["max_tasks_in_flight_per_actor"])
            return strategy(**kwargs)

        corpus.ray.data.ActorPoolStrategy = tuned_strategy
    if "max_concurrency" in settings:  # a Ray remote arg of the fetch actors
        map_batches = ray.data.Dataset.map_batches

        def tuned_map_batches(self, fn, *args, **kwargs):
            if getattr(fn, "__name__", "") == "FetchAndCommit":
                kwargs["max_concurrency"] = int(settings["max_concurrency"])
            return map_batches(self, fn, *args, **kwargs)

        ray.data.Dataset.map_batches = tuned_map_batches


def main() -> int:
    apply(json.loads(os.environ.get(SETTINGS_ENV) or "{}"))
    from jobs.build_corpus import main as build_corpus

    return build_corpus(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
