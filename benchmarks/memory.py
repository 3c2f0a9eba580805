"""Peak memory (PSS) of the corpus builder's whole process tree vs img2dataset's, by list size.

    python benchmarks/memory.py                              # 20k and 100k rows, shipped settings
    python benchmarks/memory.py --sizes 20000 --variant 'osm-1g={"object_store_memory": 1e9}'

Same private nginx, generated JPEGs and URL lists as benchmarks/download.py (which see). Each job
runs as a fresh subprocess in a session of its own; every 0.5 s a sampler reads
/proc/PID/smaps_rollup of every process in that session (the driver, Ray's GCS, raylet, agents,
task workers and actors; img2dataset's pool) and sums their PSS: shared pages divided among the
processes that map them, so the sum is what the job really holds. Anonymous, file-backed and shared
memory (Ray's object store lives in /dev/shm) are kept apart, and each process is put in a group
(driver, Ray system processes, fetch actors, task workers) so the peak can be told apart into what
Ray costs and what is ours.

`idle-ray` starts the embedded Ray exactly as jobs.build_corpus does (pipeline.corpus.connect),
runs one trivial Ray Data job to start its workers, and waits: Ray's own cost with nothing to do.

Variants (--variant NAME=JSON) run ours through benchmarks/tuned_job.py with the settings given
(object store size, Ray Data block size and object store limit, fetch batch rows, actors' calls in
flight, Ray's idle-worker limit, the CPUs a read/write task reserves); "download_workers" in the
JSON sets the actor count, "env" adds environment variables (allocator settings, inherited by
every Ray worker).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.download import (  # noqa: E402
    DEFAULT_WORK_DIR,
    Budget,
    Nginx,
    _reap_session,
    command,
    count_outputs,
    free_port,
    img2dataset_binary,
    machine,
    make_images,
    nginx_binary,
    process_tree,
    versions,
    write_url_list,
)

DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "memory.md"
TUNED_JOB = ROOT / "benchmarks" / "tuned_job.py"
SAMPLE_SECONDS = 0.5
FIELDS = ("Pss", "Pss_Anon", "Pss_File", "Pss_Shmem")
GROUPS = ("driver", "Ray system", "Ray Data helpers", "fetch actors", "task workers", "img2dataset workers")
IDLE_RAY = """
import sys, time
sys.path.insert(0, {root!r})
import ray
from pipeline.corpus import connect
connect(None)
ray.data.range(64, override_num_blocks=8).map_batches(lambda b: b).materialize()
time.sleep(8)
"""


def smaps(pid: int) -> dict[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines()[1:]:
        name, _, value = line.partition(":")
        if name in FIELDS:
            out[name] = int(value.split()[0]) * 1024
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def group(pid: int, root: int, line: str) -> str:
    if pid == root:
        return "driver"
    if "FetchAndCommit" in line or "FetchAndFilter" in line:  # the corpus stage; jobs.label's fetch stage
        return "fetch actors"
    if "/raylet " in line or line.startswith("raylet "):  # its arguments name default_worker.py
        return "Ray system"
    if line.startswith("ray::_"):
        return "Ray Data helpers"  # _StatsActor, _AutoscalingCoordinatorActor: one each per job
    if "default_worker.py" in line or line.startswith("ray::") and not line.startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent")):
        return "task workers"  # ray::IDLE, ray::ReadUrlList, ray::Write, ...
    if "ray" in line:
        return "Ray system"  # gcs_server, raylet, agents, log monitor, dashboard
    return "img2dataset workers"


class PssSampler(threading.Thread):
    """The sample with the highest PSS sum over the session's processes, with its breakdown."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root = root
        self.peak: dict[str, int] = defaultdict(int)
        self.peak_groups: dict[str, int] = {}
        self.peak_counts: dict[str, int] = {}
        self.peak_processes = 0
        self.peak_detail: list[tuple[str, str, int]] = []  # (group, command line, PSS) at the peak
        self.peak_shmem = 0
        self._names: dict[int, str] = {}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            totals, groups, counts = defaultdict(int), defaultdict(int), defaultdict(int)
            detail = []
            pids = process_tree(self.root)
            for pid in pids:
                numbers = smaps(pid)
                if numbers is None:
                    continue
                self._names[pid] = cmdline(pid) or self._names.get(pid, "")  # Ray renames workers
                for name, value in numbers.items():
                    totals[name] += value
                kind = group(pid, self.root, self._names[pid])
                groups[kind] += numbers.get("Pss", 0)
                counts[kind] += 1
                detail.append((kind, self._names[pid], numbers.get("Pss", 0)))
            self.peak_shmem = max(self.peak_shmem, totals["Pss_Shmem"])
            if totals["Pss"] > self.peak["Pss"]:
                self.peak, self.peak_groups, self.peak_processes = dict(totals), dict(groups), len(pids)
                self.peak_counts = dict(counts)
                self.peak_detail = sorted(detail, key=lambda d: (GROUPS.index(d[0]), -d[2]))
            self._done.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._done.set()
        self.join()


@dataclass
class Run:
    label: str
    rows: int
    wall: float
    peak: dict[str, int]
    groups: dict[str, int]
    counts: dict[str, int]
    peak_shmem: int
    processes: int
    kept: int
    cmd: list[str] = field(repr=False)
    settings: dict = field(default_factory=dict)
    detail: list[tuple[str, str, int]] = field(default_factory=list, repr=False)


def run_job(label: str, cmd: list[str], env: dict, rows: int, work_dir: Path, output: Path | None, contender: str | None) -> Run:
    log_path = work_dir / "logs" / f"memory-{label}-{rows}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        sampler = PssSampler(process.pid)
        sampler.start()
        code = process.wait()
        wall = time.monotonic() - started
        sampler.stop()
    _reap_session(process.pid)
    if code != 0:
        sys.exit(f"{label} exited with {code}; see {log_path}")
    kept = 0
    if output is not None and contender is not None:
        accounted, kept = count_outputs(contender, output)
        if accounted != rows:
            sys.exit(f"{label} accounted for {accounted} rows of {rows}")
        shutil.rmtree(output, ignore_errors=True)
    return Run(label, rows, wall, sampler.peak, sampler.peak_groups, sampler.peak_counts, sampler.peak_shmem, sampler.peak_processes, kept, cmd,
               detail=sampler.peak_detail)


def base_env() -> dict:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return env


def run_contender(label: str, contender: str, url_list: Path, rows: int, work_dir: Path, budget: Budget, settings: dict) -> Run:
    output = work_dir / "out" / f"memory-{label}"
    shutil.rmtree(output, ignore_errors=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    settings = dict(settings)
    workers = settings.pop("download_workers", None)
    extra_env = settings.pop("env", {})  # e.g. allocator settings, inherited by every Ray worker
    cmd = command(contender, url_list, output, budget)
    env = {**base_env(), **extra_env}
    if contender.startswith("ours"):
        if workers is not None:
            cmd[cmd.index("--download-workers") + 1] = str(workers)
        if settings:
            cmd = [cmd[0], str(TUNED_JOB), *cmd[3:]]  # python benchmarks/tuned_job.py ARGS
            env["COGSCALE_BENCH_SETTINGS"] = json.dumps(settings)
    run = run_job(label, cmd, env, rows, work_dir, output, contender)
    run.settings = {**settings, **({"download_workers": workers} if workers is not None else {}), **extra_env}
    return run


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def report(runs: list[Run], args: argparse.Namespace) -> str:
    lines = [
        "# Peak memory: corpus builder vs img2dataset (PSS of the whole process tree)",
        "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- machine: {machine()}; other work was running on the same 2 cores (compare rows of one run)",
        f"- versions: {versions()}",
        f"- list: benchmarks/download.py's (nginx on loopback, {args.distinct_images} distinct JPEGs, "
        f"{args.missing_fraction:.0%} 404s); budget {args.workers} workers x {args.requests} requests, "
        f"shard size {args.shard_size}",
        "- PSS sampled every 0.5 s from /proc/PID/smaps_rollup over the job's session; the peak sample "
        "is shown, split by kind of memory and by process group (at that sample; MiB (processes)). "
        "Pss_Shmem is mostly Ray's object store (/dev/shm).",
        "",
        "| run | settings | rows | wall (s) | peak PSS (MiB) | anon | file | shmem | " + " | ".join(GROUPS) + " | processes |",
        "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(GROUPS) + "---:|",
    ]
    for r in runs:
        settings = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.settings.items()) or "as shipped"
        lines.append(
            f"| {r.label} | {settings} | {r.rows:,} | {r.wall:.1f} | **{_mib(r.peak.get('Pss', 0))}** | "
            f"{_mib(r.peak.get('Pss_Anon', 0))} | {_mib(r.peak.get('Pss_File', 0))} | {_mib(r.peak.get('Pss_Shmem', 0))} | "
            + " | ".join(f"{_mib(r.groups[g])} ({r.counts.get(g, 0)})" if r.groups.get(g) else "" for g in GROUPS)
            + f" | {r.processes} |"
        )
    lines += ["", "## Processes at the peak sample (PSS, MiB)", ""]
    for r in runs:
        lines.append(f"- {r.label}, {r.rows:,} rows: " + "; ".join(f"{_process_name(name)} {_mib(pss)}" for _, name, pss in r.detail))
    lines += ["", "## Commands", "", f"`python {' '.join(sys.argv)}`", ""]
    return "\n".join(lines) + "\n"


def _process_name(cmd: str) -> str:
    """`ray::_StatsActor`, `raylet`, `log_monitor.py`, ...: what a process is, without its arguments."""
    first = cmd.split()[0] if cmd.split() else "?"
    if first.startswith("ray::") or first.endswith(("/raylet", "/gcs_server")):
        return first
    script = next((w for w in cmd.split()[1:] if w.endswith(".py")), None)
    return os.path.basename(script or first)


def _variant(text: str) -> tuple[str, dict]:
    name, _, settings = text.partition("=")
    return name.strip(), json.loads(settings or "{}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20000,100000", help="list sizes, comma-separated (default: %(default)s)")
    parser.add_argument("--variant", action="append", type=_variant, default=[], help="NAME=JSON settings for ours (repeatable); 'ours' as shipped always runs unless --no-shipped")
    parser.add_argument("--no-shipped", action="store_true", help="skip ours as shipped")
    parser.add_argument("--no-img2dataset", action="store_true", help="skip img2dataset")
    parser.add_argument("--no-idle", action="store_true", help="skip the idle-Ray measurement")
    parser.add_argument("--img2dataset-mode", default="img2dataset-no-reencode", choices=("img2dataset", "img2dataset-no-reencode"))
    parser.add_argument("--variant-sizes", default=None, help="sizes for the variants (default: --sizes)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--timeout", type=int, default=10)
    parser.add_argument("--shard-size", type=int, default=2000)
    parser.add_argument("--distinct-images", type=int, default=500)
    parser.add_argument("--missing-fraction", type=float, default=0.1)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args(argv)
    args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    args.variant_sizes = sorted({int(s) for s in args.variant_sizes.split(",")}) if args.variant_sizes else args.sizes
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    nginx_binary()
    if not args.no_img2dataset:
        img2dataset_binary()
    work_dir = args.work_dir.resolve()
    images_dir = work_dir / "images"
    make_images(images_dir, args.distinct_images)
    budget = Budget(args.workers, args.requests, args.timeout, args.shard_size)
    runs: list[Run] = []

    def record(run: Run) -> None:
        runs.append(run)
        groups = ", ".join(f"{g} {_mib(v)} ({run.counts.get(g, 0)})" for g, v in run.groups.items())
        print(f"{run.label:<28} {run.rows:>7} rows {run.wall:6.1f} s  peak PSS {_mib(run.peak.get('Pss', 0)):>6} MiB "
              f"(shmem {_mib(run.peak.get('Pss_Shmem', 0))})  [{groups}]", flush=True)  # fmt: skip

    if not args.no_idle:
        record(run_job("idle-ray", [sys.executable, "-c", IDLE_RAY.format(root=str(ROOT))], base_env(), 0, work_dir, None, None))
    port = free_port()
    with Nginx(work_dir, images_dir, port):
        lists = {}
        for rows in sorted({*args.sizes, *args.variant_sizes}):
            lists[rows] = work_dir / "lists" / f"urls-{rows}.parquet"
            lists[rows].parent.mkdir(parents=True, exist_ok=True)
            write_url_list(lists[rows], rows, port, args.distinct_images, args.missing_fraction)
        for rows in args.sizes:
            if not args.no_img2dataset:
                record(run_contender(args.img2dataset_mode, args.img2dataset_mode, lists[rows], rows, work_dir, budget, {}))
            if not args.no_shipped:
                record(run_contender("ours", "ours", lists[rows], rows, work_dir, budget, {}))
        for rows in args.variant_sizes:
            for name, settings in args.variant:
                record(run_contender(name, "ours", lists[rows], rows, work_dir, budget, settings))
    markdown = report(runs, args)
    print()
    print(markdown)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    if args.results.exists() and args.results.stat().st_size:
        markdown = args.results.read_text().rstrip() + "\n\n---\n\n" + markdown  # keep earlier runs
    args.results.write_text(markdown)
    print(f"written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
