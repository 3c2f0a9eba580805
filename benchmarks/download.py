"""Corpus builder vs img2dataset: same machine, same URL list, same worker budget, one run.

    python benchmarks/download.py                                  # 20k URLs, memory at 20k and 100k
    python benchmarks/download.py --urls 20000 --sizes 20000,100000 --repeats 2

A private nginx (started here on 127.0.0.1 and a free port, config, pid, logs and temp files under
--work-dir, stopped at the end) serves a few hundred distinct generated JPEGs under as many names
as the list needs; a tenth of the URLs point at files that do not exist (404). The JPEGs are made
once and cached in --work-dir.

Each job runs as its own subprocess, one after the other, while a sampler thread sums the memory
of its whole process tree every 0.2 s. Throughput is input rows over the subprocess's wall time,
start-up included (Ray's for ours, the process pool's for img2dataset); a 200-row list, run once
per contender, shows what that fixed cost is. Contenders:

    ours                       python -m jobs.build_corpus (default: keeps the original bytes,
                               probes the header and verifies that the image decodes)
    img2dataset                img2dataset's defaults: decode, resize to 256 (border), re-encode
    img2dataset-no-reencode    --disable_all_reencoding True: original bytes, never decoded
    ours-resize                ours with --resize border --image-size 256: img2dataset's default
                               plus our 1/8-scale decode check before the resizer
    ours-resize-no-check       ours-resize with --decode-check none: the like-for-like of
                               img2dataset's default, which never checks before resizing
    ours-no-check              ours with --decode-check none: original bytes after the header
                               probe, never decoded; the like-for-like of --disable_all_reencoding
    ours-tuned                 ours through benchmarks/tuned_job.py with --tuned-settings (Ray and
                               Ray Data settings): levers measured before they go into the code

Needs nginx (Debian: apt-get install -y nginx) and img2dataset in the environment.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import grp
import importlib.metadata
import json
import os
import platform
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORK_DIR = ROOT / "benchmarks" / "_work"
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "download.md"
CONTENDERS = ("ours", "img2dataset", "img2dataset-no-reencode", "ours-resize", "ours-no-check", "ours-resize-no-check", "ours-tuned")
TUNED_JOB = ROOT / "benchmarks" / "tuned_job.py"
# (ours, theirs): the throughput ratios reported, each ours / theirs.
RATIOS = (
    ("ours", "img2dataset"),
    ("ours", "img2dataset-no-reencode"),
    ("ours-resize", "img2dataset"),
    ("ours-no-check", "img2dataset-no-reencode"),
    ("ours-resize-no-check", "img2dataset"),
    ("ours-tuned", "img2dataset-no-reencode"),
)
SAMPLE_SECONDS = 0.2
PSS_EVERY = 5  # PSS walks every mapping of every process: read it every 5th sample only
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


# --- the images and the list ---------------------------------------------------------------


def make_images(folder: Path, count: int, seed: int = 0) -> list[int]:
    """`count` distinct JPEGs, 256-640 px a side, quality 85: smooth colour fields with shapes and
    grain, ~10-50 KB like web photos (noise alone would be far bigger, flat colour far smaller).
    Made once; returns their sizes in bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / f"done-{count}-{seed}"
    if not done.exists():
        rng = np.random.default_rng(seed)
        for i in range(count):
            width, height = (int(v) for v in rng.integers(256, 641, 2))
            colours = rng.integers(0, 256, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
            image = Image.fromarray(colours).resize((width, height), Image.BICUBIC)
            draw = ImageDraw.Draw(image)
            for _ in range(int(rng.integers(5, 25))):
                x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
                box = [x, y, x + int(rng.integers(10, 200)), y + int(rng.integers(10, 200))]
                colour = tuple(int(c) for c in rng.integers(0, 256, 3))
                (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
            grain = rng.normal(0, rng.uniform(0.5, 4), (height, width, 1))
            pixels = (np.asarray(image, dtype=np.float32) + grain).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", "JPEG", quality=85)
        done.touch()
    return [(folder / f"{i}.jpg").stat().st_size for i in range(count)]


def write_url_list(path: Path, rows: int, port: int, distinct: int, missing_fraction: float, seed: int = 0) -> int:
    """Parquet with url and caption. Row i is served the bytes of image i % distinct under a name of
    its own; a random `missing_fraction` of rows point at /missing/ (404). Returns the 404 count."""
    rng = random.Random(seed)
    missing = set(rng.sample(range(rows), round(rows * missing_fraction)))
    base = f"http://127.0.0.1:{port}"
    urls = [
        f"{base}/missing/{i}.jpg" if i in missing else f"{base}/img/{i % distinct}/{i}.jpg" for i in range(rows)
    ]
    captions = [f"generated picture number {i}" for i in range(rows)]
    pq.write_table(pa.table({"url": urls, "caption": captions}), path)
    return len(missing)


# --- nginx ---------------------------------------------------------------------------------------


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)
    if found is None:
        sys.exit("nginx not found. Install it (Debian/Ubuntu: apt-get install -y nginx) and run again.")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """Our own nginx master in the foreground (daemon off), so it is ours to stop and nothing else's."""

    def __init__(self, work_dir: Path, images_dir: Path, port: int):
        self.port = port
        self.prefix = work_dir / "nginx"
        for sub in ("logs", "temp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        self.config = self.prefix / "nginx.conf"
        self.config.write_text(self._config(images_dir))
        self.process: subprocess.Popen | None = None

    def _config(self, images_dir: Path) -> str:
        temp = self.prefix / "temp"
        # A root master hands requests to workers running as `user`; that user must read the images.
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};" if os.getuid() == 0 else ""
        return f"""{user}
worker_processes 1;
pid {self.prefix}/nginx.pid;
error_log {self.prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    types {{ image/jpeg jpg; }}
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {temp}/client;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        root {images_dir};
        # /img/<distinct image>/<row>.jpg: a name per row, the bytes of one of the distinct images.
        location /img/ {{ rewrite ^/img/(\\d+)/[^/]+$ /$1.jpg break; }}
        location / {{ return 404; }}
    }}
}}
"""

    def __enter__(self) -> "Nginx":
        binary = nginx_binary()
        log = open(self.prefix / "logs" / "stderr.log", "wb")
        cmd = [binary, "-p", str(self.prefix), "-e", str(self.prefix / "logs" / "error.log"), "-c", str(self.config), "-g", "daemon off;"]
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"nginx exited with {self.process.returncode}; see {self.prefix / 'logs'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        sys.exit("nginx did not start listening within 10 s")

    def __exit__(self, *exc_info) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: workers finish, then the master exits
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- memory of a process tree ---------------------------------------------------------------------


def _stat_fields(pid: int) -> tuple[int, int, float] | None:
    """(parent pid, session id, CPU seconds used) from /proc/PID/stat; None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parens
    return int(rest[1]), int(rest[3]), (int(rest[11]) + int(rest[12])) / TICKS


def tree_cpu_seconds(root: int) -> float:
    return sum(fields[2] for pid in process_tree(root) if (fields := _stat_fields(pid)) is not None)


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used since boot (every core; idle and iowait left out)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / TICKS  # user..steal; guest is inside user


def process_tree(root: int) -> set[int]:
    """`root`, its descendants, and anything left in its session (started with a session of its own,
    so daemons that re-parent themselves to init are still counted)."""
    parents, members = {}, {root}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents[int(entry)] = fields[0]
                if fields[1] == root:
                    members.add(int(entry))
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in members} - members
        members |= children
        grew = bool(children)
    return {pid for pid in members if pid in parents}


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


class TreeSampler(threading.Thread):
    """Peak of the summed RSS of a process tree (every 0.2 s), of its summed PSS (every 1 s), and
    the CPU time its processes used (each process as last seen: a process's last 0.2 s is missed).

    RSS counts shared pages (Ray's object store, libraries) once per process that maps them, so the
    RSS sum overstates; PSS divides each shared page among its users and adds up to real use."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root = root
        self.peak_rss = self.peak_pss = self.peak_processes = 0
        self._cpu: dict[int, float] = {}
        self._done = threading.Event()

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu.values())

    def run(self) -> None:
        tick = 0
        while not self._done.is_set():
            pids = process_tree(self.root)
            for pid in pids:
                if (fields := _stat_fields(pid)) is not None:
                    self._cpu[pid] = fields[2]
            self.peak_processes = max(self.peak_processes, len(pids))
            self.peak_rss = max(self.peak_rss, sum(_rss(pid) for pid in pids))
            if tick % PSS_EVERY == 0:
                self.peak_pss = max(self.peak_pss, sum(_pss(pid) for pid in pids))
            tick += 1
            self._done.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._done.set()
        self.join()


# --- the contenders -------------------------------------------------------------------------------


@dataclass
class Budget:
    workers: int
    requests: int
    timeout: int
    shard_size: int


def img2dataset_binary() -> str:
    found = Path(sys.executable).parent / "img2dataset"
    if not found.exists():
        sys.exit(f"{found} not found: install img2dataset in this environment (pip install img2dataset)")
    return str(found)


def command(contender: str, url_list: Path, output: Path, budget: Budget) -> list[str]:
    if contender.startswith("ours"):
        cmd = [
            sys.executable, "-m", "jobs.build_corpus",
            "--input", str(url_list), "--output", str(output),
            "--allow-networks", "127.0.0.1/32",
            "--download-workers", str(budget.workers), "--requests-per-worker", str(budget.requests),
            "--timeout", str(budget.timeout), "--shard-size", str(budget.shard_size),
        ]  # fmt: skip
        if contender == "ours-tuned":
            cmd[1:3] = [str(TUNED_JOB)]
        if contender in ("ours-no-check", "ours-resize-no-check"):
            cmd += ["--decode-check", "none"]
        return cmd + (["--resize", "border", "--image-size", "256"] if contender.startswith("ours-resize") else [])
    cmd = [
        img2dataset_binary(),
        "--url_list", str(url_list), "--input_format", "parquet",
        "--url_col", "url", "--caption_col", "caption",
        "--output_format", "webdataset", "--output_folder", str(output),
        "--processes_count", str(budget.workers), "--thread_count", str(budget.requests),
        "--distributor", "multiprocessing",
        "--timeout", str(budget.timeout), "--number_sample_per_shard", str(budget.shard_size),
    ]  # fmt: skip
    return cmd + (["--disable_all_reencoding", "True"] if contender == "img2dataset-no-reencode" else [])


def count_outputs(contender: str, output: Path) -> tuple[int, int]:
    """(rows accounted for, images kept) as the job itself reports them."""
    if contender.startswith("ours"):
        stats = json.loads((output / "stats.json").read_text())
        return stats["input_rows"], stats["kept"]
    rows = kept = 0
    for path in glob.glob(str(output / "*_stats.json")):
        stats = json.loads(Path(path).read_text())
        rows += stats["count"]
        kept += stats["successes"]
    return rows, kept


@dataclass
class Run:
    contender: str
    rows: int
    wall: float
    peak_rss: int
    peak_pss: int
    processes: int
    accounted: int
    kept: int
    cpu: float  # CPU seconds the job's process tree used
    server_cpu: float  # ... and nginx, serving it
    other_cpu: float  # ... and every other process on the machine: the noise in this run's timing
    cmd: list[str] = field(repr=False)

    @property
    def urls_per_second(self) -> float:
        return self.rows / self.wall


def run_one(contender: str, url_list: Path, rows: int, work_dir: Path, budget: Budget, server: int, tuned: str = "{}") -> Run:
    """server: the nginx master's pid, to tell the CPU its workers spend apart from other noise.
    tuned: the JSON settings of ours-tuned."""
    output = work_dir / "out" / contender
    shutil.rmtree(output, ignore_errors=True)  # ours resumes from an existing output: start clean
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = command(contender, url_list, output, budget)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)  # a fresh embedded Ray, never someone's cluster
    if contender == "ours-tuned":
        env["COGSCALE_BENCH_SETTINGS"] = tuned
    log_path = work_dir / "logs" / f"{contender}-{rows}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    busy, server_cpu, own_cpu = machine_busy_seconds(), tree_cpu_seconds(server), time.process_time()
    with open(log_path, "wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        sampler = TreeSampler(process.pid)
        sampler.start()
        code = process.wait()
        wall = time.monotonic() - started
        sampler.stop()
    busy = machine_busy_seconds() - busy
    server_cpu = tree_cpu_seconds(server) - server_cpu
    other_cpu = max(0.0, busy - sampler.cpu_seconds - server_cpu - (time.process_time() - own_cpu))
    _reap_session(process.pid)
    if code != 0:
        sys.exit(f"{contender} exited with {code}; see {log_path}")
    accounted, kept = count_outputs(contender, output)
    shutil.rmtree(output, ignore_errors=True)
    return Run(
        contender, rows, wall, sampler.peak_rss, sampler.peak_pss, sampler.peak_processes, accounted, kept,
        sampler.cpu_seconds, server_cpu, other_cpu, cmd,
    )  # fmt: skip


def _reap_session(session: int) -> None:
    """Stop what the job left behind in its session (a Ray worker still shutting down) before the
    next job starts, so it is not timed alongside it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [pid for pid in process_tree(session) if pid != session]
        if not left:
            return
        time.sleep(0.2)
    for pid in process_tree(session):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- the report -----------------------------------------------------------------------------------


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    total_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:"))
    return f"{os.cpu_count()} CPUs ({model}), {total_kb / 2**20:.1f} GiB RAM, {platform.system()} {platform.release()}"


def versions() -> str:
    found = []
    for name in ("ray", "img2dataset", "aiohttp", "pillow", "opencv-python-headless", "pyarrow"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    nginx = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]
    return ", ".join([f"python {platform.python_version()}", *found, f"nginx {nginx}"])


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def report(runs: list[Run], args: argparse.Namespace, image_sizes: list[int], missing: int) -> str:
    throughput = [r for r in runs if r.rows == args.urls]
    best = {c: max((r for r in throughput if r.contender == c), key=lambda r: r.urls_per_second) for c in dict.fromkeys(r.contender for r in throughput)}
    lines = [
        "# Download benchmark: corpus builder vs img2dataset",
        "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- machine: {machine()}",
        f"- versions: {versions()}",
        f"- server: our own nginx on 127.0.0.1 (1 worker process, sendfile, access log off, keep-alive on "
        f"by default), {args.distinct_images} distinct JPEGs (256-640 px sides, quality 85, mean "
        f"{np.mean(image_sizes) / 1024:.1f} KiB, median {np.median(image_sizes) / 1024:.1f} KiB) served under a "
        f"name per row; {args.missing_fraction:.0%} of rows are 404s ({missing} of {args.urls}).",
        f"- budget: ours `--download-workers {args.workers} --requests-per-worker {args.requests}`, img2dataset "
        f"`--processes_count {args.workers} --thread_count {args.requests}` (distributor multiprocessing): the "
        f"same number of worker processes and of requests in flight per process. Both: timeout {args.timeout} s, "
        f"{args.shard_size} rows per shard, webdataset output.",
        f"- each run is a fresh subprocess; URLs/s = rows / its wall time, start-up included. "
        f"{args.repeats} runs each, interleaved; the table shows the best run, the spread is in 'all runs'. "
        "CPU seconds are sampled from /proc (a process's last 0.2 s can be missed); 'other processes' is "
        "what the rest of the machine used meanwhile (2 cores give 2 CPU s per second): the noise.",
        "",
        f"## Throughput at {args.urls:,} URLs",
        "",
        "| contender | what it does with each image | URLs/s (best) | all runs: URLs/s (CPU s of other processes) | CPU s (job + nginx), best run | kept | peak RSS sum (MiB) | peak PSS sum (MiB) |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    what = {
        "ours": "keeps original bytes; header probe + decode check (JPEG at 1/8 scale)",
        "ours-resize": "decodes, resizes to 256 (border), re-encodes JPEG",
        "img2dataset": "default: decodes, resizes to 256 (border), re-encodes JPEG q95",
        "img2dataset-no-reencode": "`--disable_all_reencoding True`: original bytes, never decoded",
        "ours-no-check": "`--decode-check none`: original bytes after the header probe, never decoded",
        "ours-resize-no-check": "`--resize border --image-size 256 --decode-check none`: resized without the 1/8-scale check first",
        "ours-tuned": f"ours with `{args.tuned_settings}`",
    }
    for contender, run in best.items():
        spread = ", ".join(f"{r.urls_per_second:,.0f} ({r.other_cpu:.0f})" for r in throughput if r.contender == contender)
        lines.append(
            f"| {contender} | {what[contender]} | {run.urls_per_second:,.0f} | {spread} | "
            f"{run.cpu:.0f} + {run.server_cpu:.0f} | {run.kept:,} | "
            f"{_mib(run.peak_rss)} | {_mib(run.peak_pss)} |"
        )
    pairs = [(ours, theirs) for ours, theirs in RATIOS if ours in best and theirs in best]
    if pairs:
        lines += ["", "| ratio (best run / best run) | URLs/s |", "|---|---:|"]
        lines += [f"| {ours} / {theirs} | {best[ours].urls_per_second / best[theirs].urls_per_second:.2f} |" for ours, theirs in pairs]
    lines += [
        "",
        "## Wall time and peak memory by list size",
        "",
        (f"The {args.startup_rows}-row runs show the fixed cost of starting and stopping each job. " if args.startup_rows else "")
        + "Memory is summed over the job's whole process tree (Ray: driver, raylet, GCS, workers; img2dataset: its "
        "pool), highest over the runs at that size; wall time is the fastest run.",
        "",
        "| contender | rows | wall (s) | URLs/s | peak RSS sum (MiB) | peak PSS sum (MiB) | processes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for contender in dict.fromkeys(r.contender for r in runs):
        for rows in sorted({r.rows for r in runs if r.contender == contender}):
            same = [r for r in runs if r.contender == contender and r.rows == rows]
            fastest = min(same, key=lambda r: r.wall)
            lines.append(
                f"| {contender} | {rows:,} | {fastest.wall:.1f} | {fastest.urls_per_second:,.0f} | "
                f"{_mib(max(r.peak_rss for r in same))} | {_mib(max(r.peak_pss for r in same))} | "
                f"{max(r.processes for r in same)} |"
            )
    lines += ["", "## Commands", "", f"`python {' '.join(sys.argv)}` ran:", ""]
    for contender in dict.fromkeys(r.contender for r in runs):
        cmd = max((r for r in runs if r.contender == contender), key=lambda r: r.rows == args.urls).cmd
        lines.append(f"- {contender}: `{' '.join(_shorten(part) for part in cmd)}`")
    return "\n".join(lines) + "\n"


def _shorten(part: str) -> str:
    return part.replace(str(ROOT) + "/", "").replace(str(Path(sys.executable).parent) + "/", "")


# --- main --------------------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    return sorted({int(part) for part in text.split(",") if part.strip()})


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=20_000, help="list size for the throughput comparison (default: %(default)s)")
    parser.add_argument("--sizes", type=_sizes, default=[20_000, 100_000], help="list sizes for peak memory, comma-separated (default: 20000,100000)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS[:6]), help=f"comma-separated, from {', '.join(CONTENDERS)} (default: all but ours-tuned)")
    parser.add_argument("--memory-contenders", default="ours,img2dataset-no-reencode", help="who also runs at every --sizes (default: %(default)s)")
    parser.add_argument("--startup-rows", type=int, default=200, help="a list this small, run once per contender, shows start-up and shut-down cost; 0: skip (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per contender at --urls (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="our --download-workers = img2dataset --processes_count (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=64, help="our --requests-per-worker = img2dataset --thread_count (default: %(default)s)")
    parser.add_argument("--timeout", type=int, default=10, help="per-URL timeout, both (default: %(default)s)")
    parser.add_argument("--shard-size", type=int, default=2000, help="rows per output shard, both (default: %(default)s)")
    parser.add_argument("--distinct-images", type=int, default=500, help="distinct JPEGs generated (default: %(default)s)")
    parser.add_argument("--missing-fraction", type=float, default=0.1, help="share of URLs that 404 (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="images, lists, nginx files, logs (default: benchmarks/_work)")
    parser.add_argument("--tuned-settings", default='{}', help="JSON settings of ours-tuned, see benchmarks/tuned_job.py (default: %(default)s)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="markdown written here (default: benchmarks/results/download.md)")
    args = parser.parse_args(argv)
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    args.memory_contenders = [c.strip() for c in args.memory_contenders.split(",") if c.strip()]
    for name in args.contenders + args.memory_contenders:
        if name not in CONTENDERS:
            parser.error(f"unknown contender {name!r}; choose from {', '.join(CONTENDERS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    nginx_binary()  # fail before generating anything
    if any(c.startswith("img2dataset") for c in args.contenders + args.memory_contenders):
        img2dataset_binary()
    work_dir = args.work_dir.resolve()
    images_dir = work_dir / "images"
    print(f"images: {args.distinct_images} distinct JPEGs in {images_dir} ...", flush=True)
    image_sizes = make_images(images_dir, args.distinct_images)
    port = free_port()
    runs: list[Run] = []
    with Nginx(work_dir, images_dir, port) as server:
        lists, missing = {}, {}
        for rows in sorted({args.urls, *args.sizes, *([args.startup_rows] if args.startup_rows else [])}):
            lists[rows] = work_dir / "lists" / f"urls-{rows}.parquet"
            lists[rows].parent.mkdir(parents=True, exist_ok=True)
            missing[rows] = write_url_list(lists[rows], rows, port, args.distinct_images, args.missing_fraction)
        budget = Budget(args.workers, args.requests, args.timeout, args.shard_size)
        plan = [(c, args.startup_rows) for c in args.contenders if args.startup_rows]
        plan += [(c, args.urls) for _ in range(args.repeats) for c in args.contenders]  # interleaved
        plan += [
            (c, rows)
            for c in args.memory_contenders
            for rows in args.sizes
            if rows != args.urls or c not in args.contenders or not args.repeats
        ]
        for contender, rows in plan:
            run = run_one(contender, lists[rows], rows, work_dir, budget, server.process.pid, args.tuned_settings)
            runs.append(run)
            print(
                f"{contender:<24} {rows:>7} rows  {run.wall:6.1f} s  {run.urls_per_second:7,.0f} URLs/s  "
                f"kept {run.kept:>7,}  peak RSS {_mib(run.peak_rss):>6} MiB  PSS {_mib(run.peak_pss):>6} MiB  "
                f"CPU s: job {run.cpu:.0f}, nginx {run.server_cpu:.0f}, others {run.other_cpu:.0f}",
                flush=True,
            )
            if run.accounted != rows:
                sys.exit(f"{contender} accounted for {run.accounted} rows of {rows}")
            if run.kept != rows - missing[rows]:  # e.g. timeouts on a machine too busy to answer
                print(f"warning: {contender} kept {run.kept} of the {rows - missing[rows]} images served", flush=True)
    markdown = report(runs, args, image_sizes, missing[args.urls])
    print()
    print(markdown)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(markdown)
    print(f"written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
