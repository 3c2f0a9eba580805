"""The corpus builder's dataset: read URL lists, fetch and filter, write shards, resume.

Resuming works on whole shards. Each shard is a fixed range of input rows, planned before Ray
starts; a re-run skips the shards whose stats file exists (committed) and redoes every other
shard from its first row. A killed run costs at most the shards it had in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline import raycompat, schema, storage
from pipeline.options import CorpusOptions
from pipeline.reader import ColumnMap, InputError, InputFile, Shard, UrlListDatasource, cut_shards, pack_shard, plan_inputs, read_shards, resolve_input_files, shards_by_file, unpack_shards
from pipeline.stages import DedupIndex, FetchAndFilter
from pipeline.writer import CORPUS_DIR, CorpusSink, OutputDir, ShardSink, SupersededRun, shard_name

PLAN_FILE = "_plan.json"

# Rows per call of the fetch stage. Each call's output becomes one chunk of every column of the
# shards the writers get: 32-row calls gave a 2000-row shard 63 chunks, 256-row calls 8, and cut
# the job time of benchmarks/download.py's 20k-URL run from 10.5 to 9.1 s (CPU 22.6 to 20.1 s).
# Ray Data runs 4 calls at once per actor, so up to 4x this many images wait in an actor.
FETCH_BATCH_ROWS = 256
# Logical CPU reservations. Actors hold theirs for the whole run; if actors held every CPU, no
# read or write task could ever be scheduled. The fetch actors' real load is set by
# --download-workers.
FETCH_ACTOR_CPUS = 0.25
LIGHT_TASK_CPUS = 0.25  # reads and writes mostly wait on I/O
# The fetch actors' processes: Arrow's default (jemalloc) pool keeps much of what the batches of
# images freed, ~50 MiB more per actor than malloc (benchmarks/RESULTS.md, memory). Ray merges
# these env_vars into the job's own runtime_env.
FETCH_ACTOR_RUNTIME_ENV = {"env_vars": {"ARROW_DEFAULT_MEMORY_POOL": "system"}}


_EMBEDDED_RAY = []  # set when connect() started Ray in this process


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join a cluster (--address, or RAY_ADDRESS as set by `ray job submit`), else start one here."""
    if ray.is_initialized():
        return
    _EMBEDDED_RAY.append(True)
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=True)
    else:
        # Ray would otherwise kill idle task workers above num_cpus within a second and start a
        # new one for each write task (benchmarks/results/download.md: ~10% of wall at 100k rows).
        soft_limit = 2 * (num_cpus or os.cpu_count() or 1) + 6  # Ray's default: the CPU count
        embedded_config = {
            "num_workers_soft_limit": soft_limit,
            # no idle workers started ahead of need: each holds ~115 MiB (benchmarks/RESULTS.md,
            # memory) and the corpus builder runs no tasks, only its fetch actors
            "enable_worker_prestart": False,
            "prestart_worker_first_driver": False,
        }
        # "local": never attach to a cluster that `ray start` left on this machine (ray.init's default)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _system_config=embedded_config)
        raycompat.fixed_cluster_resources()


def fetch_workers(options: CorpusOptions, cpus_per_worker: int = 1) -> int:
    """--download-workers, else one per CPU (jobs.label: one per two, its model needs CPUs too)."""
    return options.download_workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_worker)


def start_dedup_index(output: str, kept_dir: str = CORPUS_DIR):
    """Seeded from the committed shards, so a resumed run keeps deduplicating against them."""
    out = OutputDir(output)
    seen = {}
    for name in out.committed_names():
        path = out.shard_file(kept_dir, name, ".parquet")
        table = _read_parquet(out, path, [schema.SHA256, schema.KEY, schema.STATUS])
        for sha, key, status in zip(*(table.column(c).to_pylist() for c in table.column_names)):
            if status == schema.Status.SUCCESS and sha:
                seen.setdefault(sha, key)
    return DedupIndex.remote(seen)


def _read_parquet(out: OutputDir, path: str, columns: list[str]) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(out.fs.open_input_file(path))
        return file.read(columns=[c for c in columns if c in file.schema_arrow.names])
    except (OSError, pa.ArrowException) as e:
        raise storage.StorageError(out.uri(path), e) from e


class FetchUnlessRejected:
    """The fetch stage (FetchAndFilter, or a subclass such as video's) for rows still open; rows
    the reader already rejected pass unchanged."""

    def __init__(self, options: CorpusOptions, dedup=None, stage: type[FetchAndFilter] = FetchAndFilter):
        self.stage = stage(options, dedup)

    async def __call__(self, table: pa.Table) -> pa.Table:
        if schema.STATUS not in table.column_names:
            return await self.stage(table)
        decided = pc.is_valid(table.column(schema.STATUS))
        done, todo = table.filter(decided), table.filter(pc.invert(decided))
        if not done.num_rows:
            return await self.stage(todo)
        parts = [_with_stage_columns(done)]
        if todo.num_rows:
            parts.insert(0, await self.stage(todo))
        return pa.concat_tables(parts, promote_options="permissive")


def _with_stage_columns(table: pa.Table) -> pa.Table:
    """Rows that skip the stage still get every column it adds (null), as later stages expect."""
    for f in schema.CORPUS_FIELDS + [pa.field(schema.IMAGE_BYTES, pa.binary())]:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table


def fetch_and_filter(
    ds: ray.data.Dataset,
    options: CorpusOptions,
    dedup=None,
    cpus_per_worker: int = 1,
    stage: type[FetchAndFilter] = FetchAndFilter,
    batch_rows: int = FETCH_BATCH_ROWS,
) -> ray.data.Dataset:
    """dedup: a DedupIndex handle, required when options.dedup is set; stage: the fetch stage's class."""
    return ds.map_batches(
        FetchUnlessRejected,
        fn_constructor_args=(options, dedup, stage),
        batch_size=batch_rows,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=fetch_workers(options, cpus_per_worker)),
        num_cpus=FETCH_ACTOR_CPUS,
        runtime_env=FETCH_ACTOR_RUNTIME_ENV,
    )


class FetchAndCommit:
    """The corpus builder's one stage: whole shards in (packed, a row each), each shard's rows
    fetched and filtered, then its files committed here; a small row per shard out.

    So images never cross between processes and nothing waits in the object store; each fetched
    batch's images go into the shard's tar as soon as the batch is done, so an actor holds the
    images of the batches in flight, never a whole shard's (img2dataset's workers write so too).
    """

    def __init__(self, options: CorpusOptions, dedup, sink: CorpusSink, batch_rows: int = FETCH_BATCH_ROWS):
        self.fetch = FetchUnlessRejected(options, dedup)
        self.sink = sink
        self.batch_rows = batch_rows
        # two fetch batches at a time (of either shard in flight): one downloads while the other
        # is inspected and written
        self.batches = asyncio.Semaphore(2)

    async def _fetch_into(self, writer, rows: pa.Table) -> None:
        async with self.batches:
            fetched = await self.fetch(rows)
            await asyncio.to_thread(writer.add, fetched)

    async def __call__(self, block: pa.Table) -> pa.Table:
        done = []
        for rows in unpack_shards(block):
            shard = rows.column(schema.SHARD)[0].as_py()
            writer = self.sink.open_shard(shard)
            if writer is not None:
                try:
                    await asyncio.gather(*(self._fetch_into(writer, rows.slice(i, self.batch_rows)) for i in range(0, rows.num_rows, self.batch_rows)))
                    await asyncio.to_thread(writer.commit)
                except BaseException:
                    writer.abort()
                    raise
            done.append((shard, rows.num_rows))
        return pa.table({"shard": pa.array([d[0] for d in done], pa.int32()), "rows": pa.array([d[1] for d in done], pa.int64())})


def fetch_and_commit(ds: ray.data.Dataset, options: CorpusOptions, dedup, sink: CorpusSink) -> None:
    """Run FetchAndCommit over the shards' blocks; returns when every call has finished."""
    results = ds.map_batches(
        FetchAndCommit,
        fn_constructor_args=(options, dedup, sink, FETCH_BATCH_ROWS),
        batch_size=None,  # whole blocks: of one shard each (read_whole_shards)
        batch_format="pyarrow",
        # two shards per actor: one downloads while the other is written; more only holds images
        compute=ray.data.ActorPoolStrategy(size=fetch_workers(options), max_tasks_in_flight_per_actor=2),
        num_cpus=FETCH_ACTOR_CPUS,
        runtime_env=FETCH_ACTOR_RUNTIME_ENV,
    )
    for _ in results.iter_batches(batch_size=None, batch_format="pyarrow"):
        pass


def url_list_files(input_spec: str, options: CorpusOptions) -> list[InputFile]:
    """The input files, read through once and counted: raises InputError (before Ray starts)
    on a job-level mistake, naming every file that cannot be read."""
    return plan_inputs(resolve_input_files(input_spec), ColumnMap(options.url_col, options.caption_col))


def read_url_lists(inputs: list[InputFile], options: CorpusOptions, shards: list[Shard]) -> ray.data.Dataset:
    source = UrlListDatasource(inputs, ColumnMap(options.url_col, options.caption_col), shards)
    return ray.data.read_datasource(source, num_cpus=LIGHT_TASK_CPUS)


def read_whole_shards(inputs: list[InputFile], options: CorpusOptions, shards: list[Shard]) -> ray.data.Dataset:
    """A block per shard, of one row (reader.pack_shard): as many calls to the next stage as
    shards, so every actor has work even when there are few.

    The driver reads the lists, as img2dataset's reader cuts its shards' inputs before any download
    starts: a read task would stream them out for the whole job in a Ray worker of its own (~140 MiB,
    benchmarks/RESULTS.md, memory), and a packed shard is small (~100 bytes a row). from_blocks
    keeps one block per shard and takes each block's metadata here (from_arrow_refs would run a
    task per block for it, in workers that then stay).
    """
    columns = ColumnMap(options.url_col, options.caption_col)
    return ray.data.from_blocks([pack_shard(rows) for i, group in shards_by_file(shards) for rows in read_shards(inputs[i], i, group, columns)])


class IncompleteOutput(RuntimeError):
    """The job ended with shards not committed; a re-run finishes them."""


def check_output(uri: str) -> OutputDir:
    """Fail before Ray starts when --output cannot be written (exit 2 via InputError)."""
    try:
        storage.check_writable(uri)
    except ValueError as e:
        raise InputError(str(e)) from e
    return OutputDir(uri)


def record_plan(out: OutputDir, job: str, inputs: list[tuple[str, int]], shard_size: int | None) -> None:
    """The output's shard plan: a re-run must plan the same shards, or refuse before Ray starts."""
    plan = {"job": job, "shard_size": shard_size, "inputs": [[uri, rows] for uri, rows in inputs]}
    path = out.join(PLAN_FILE)
    if storage.exists(out.fs, path):
        try:
            before = json.loads(storage.read_bytes(out.fs, path))
        except ValueError:
            before = None
        if before is not None and before != plan:
            what = []
            if before.get("job") != plan["job"]:
                what.append(f"it was written by {before.get('job')}")
            if before.get("shard_size") != plan["shard_size"]:
                what.append(f"--shard-size was {before.get('shard_size')}")
            if before.get("inputs") != plan["inputs"]:
                what.append(f"--input had {len(before.get('inputs') or [])} files / {sum(r for _, r in before.get('inputs') or [])} rows, now {len(inputs)} / {sum(r for _, r in inputs)}")
            raise InputError(
                f"--output {out.uri_} was started with another plan ({'; '.join(what) or 'different inputs'}): "
                "re-run with the same --input and --shard-size, or write to a new --output"
            )
        if before == plan:
            return
    out.write(path, json.dumps(plan, indent=1).encode())


def empty_rows() -> pa.Table:
    """A shard without rows still gets its (empty) files."""
    fields = schema.CORPUS_FIELDS + [pa.field(schema.IMAGE_BYTES, pa.binary()), pa.field(schema.THUMBNAIL, pa.binary()), pa.field(schema.SHARD, pa.int32())]
    return pa.schema(fields).empty_table()


def write_rows(ds: ray.data.Dataset, sink: ShardSink, todo: list[Shard]) -> None:
    """Write a dataset whose rows arrive in any order and grouping: the sink gathers each shard."""
    ds = ds.repartition(target_num_rows_per_block=max(s.num_rows for s in todo))
    ds.write_datasink(sink, ray_remote_args={"num_cpus": LIGHT_TASK_CPUS})


def run_shards(out: OutputDir, shards: list[Shard], make_sink, process) -> dict:
    """Process every shard not yet committed; returns the totals also written to stats.json.

    make_sink(run_id, counts) -> ShardSink; process(todo, sink) runs the job over the shards
    `todo` and commits them through `sink` (write_rows, or a stage that commits, as the corpus
    builder's FetchAndCommit).
    """
    run_id = out.claim()  # waits out a killed run's last writers before listing what is done
    committed = out.committed()
    before = out.read_shard_stats()["input_rows"]
    todo = [s for s in shards if s.index not in committed]
    sink: ShardSink = make_sink(run_id, {s.index: s.num_rows for s in shards})
    started = time.monotonic()
    for shard in [s for s in todo if s.num_rows == 0]:
        sink.on_write_start()
        sink.commit(shard.index, empty_rows())
    todo = [s for s in todo if s.num_rows]
    if todo:
        process(todo, sink)
    wall = time.monotonic() - started
    missing = [s for s in todo if s.index not in out.committed() and not sink.assemble_if_complete(s.index)]
    if missing:
        names = ", ".join(shard_name(s.index) for s in missing[:10])
        raise IncompleteOutput(f"{len(missing)} shards were not completed ({names}{', ...' if len(missing) > 10 else ''}); re-run to finish them")
    totals = out.read_shard_stats()
    totals["this_run"] = {
        "input_rows": totals["input_rows"] - before,
        "wall_seconds": round(wall, 3),
        "rows_per_second": round((totals["input_rows"] - before) / wall, 2) if wall > 0 else None,
    }
    out.write_totals(totals)
    out.clean_tmp()
    return totals


def build_corpus(inputs: list[InputFile], output: str, options: CorpusOptions) -> dict:
    """Run the whole job into output (a path or URI); returns the totals also in stats.json."""
    out = OutputDir(output)
    shards = cut_shards([f.rows for f in inputs], options.shard_size)
    record_plan(out, "build_corpus", [(f.uri, f.rows) for f in inputs], options.shard_size)
    dedup = start_dedup_index(output) if options.dedup else None
    return run_shards(
        out,
        shards,
        lambda run_id, counts: CorpusSink(output, run_id, counts),
        lambda todo, sink: fetch_and_commit(read_whole_shards(inputs, options, todo), options, dedup, sink),
    )


def job_error(e: BaseException) -> str | None:
    """One line for a failure that is about storage or the output, not a bug: else None.

    When this process started Ray, Ray is shut down first: workers' log lines about the failed
    task are forwarded asynchronously and would otherwise come after the line that matters.
    """
    line = _job_error_line(e)
    if line is not None and _EMBEDDED_RAY and ray.is_initialized():
        ray.shutdown()
    return line


def _job_error_line(e: BaseException) -> str | None:
    seen = set()
    stack = [e]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        cause = getattr(err, "cause", None)  # Ray's RayTaskError(X) wraps X with the traceback text
        if isinstance(cause, BaseException):
            stack.append(cause)
            continue
        if isinstance(err, (storage.StorageError, IncompleteOutput, SupersededRun)):
            return str(err).strip().splitlines()[0]
        stack += [err.__cause__, err.__context__]
    text = str(e)
    for marker in ("StorageError: ", "SupersededRun: "):
        if marker in text:
            return text.split(marker, 1)[1].splitlines()[0]
    return None


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
