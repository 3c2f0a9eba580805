"""Read a jobs.label output, local or remote, through pyarrow.fs, and pick the cards to show.

Only the outcome columns of every label shard are scanned (in Arrow); only failures and rows
with a thumbnail become Python objects, so an output of millions of rows scans quickly.
"""

from __future__ import annotations

import io
import json
import posixpath
import random
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from jobs.report.cards import Card, failure_label
from pipeline import schema, storage
from pipeline.video_strip import report_image
from pipeline.writer import LABELS_DIR, PREVIEWS_DIR, SHARDS_DIR, STATS_FILE, OutputDir

FAILURE_SHARE = 8  # at most 1 card in 8 is a failure while successes last

# Columns of the label rows a card shows; absent ones (an older shard) read as None.
CARD_COLUMNS = [
    schema.KEY,
    schema.URL,
    schema.STATUS,
    schema.REASON,
    schema.ERROR_MESSAGE,
    schema.ORIGINAL_WIDTH,
    schema.ORIGINAL_HEIGHT,
    schema.TASK,
    schema.PROMPT,
    schema.TEXT,
    schema.LABEL_CAPTION,
    schema.BOXES,
    schema.MODEL,
    schema.GENERATION,
    schema.FRAME_TIMESTAMPS,  # video rows: their preview is a strip of the sampled frames
]
OUTCOME_COLUMNS = [schema.KEY, schema.STATUS, schema.REASON, schema.ERROR_MESSAGE]


class ReportError(Exception):
    """Something the user must fix (wrong directory, no shards); main() exits with 2."""


@dataclass(frozen=True)
class LabelOutput:
    """A jobs.label --output directory on some filesystem."""

    fs: pafs.FileSystem
    root: str  # path inside fs
    shown: str  # as the user wrote it, for messages and the page

    @classmethod
    def open(cls, where: str) -> "LabelOutput":
        """A local path (relative is fine) or a URI (file://, s3://, gs://, ...), as jobs.label's --output."""
        try:
            fs, root = storage.resolve(where)
        except storage.StorageError as e:
            raise ReportError(f"cannot open --labels {where!r}: {e}") from None
        return cls(fs, root.rstrip("/"), where)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def shard_files(self, sub: str) -> list[str]:
        """The sub's Parquet files of committed shards only: a killed run's leftovers are never read."""
        try:
            committed = set(OutputDir(self.shown).committed_names())
            infos = self.fs.get_file_info(pafs.FileSelector(self.path(SHARDS_DIR, sub), allow_not_found=True))
        except (OSError, pa.ArrowException) as e:
            raise ReportError(f"cannot list {self.shown}/{SHARDS_DIR}/{sub}: {e}") from None
        return sorted(
            i.path for i in infos
            if i.type == pafs.FileType.File and i.path.endswith(".parquet") and posixpath.basename(i.path)[: -len(".parquet")] in committed
        )

    def label_files(self) -> list[str]:
        files = self.shard_files(LABELS_DIR)
        if not files:
            where = posixpath.join(self.shown, SHARDS_DIR, LABELS_DIR)
            raise ReportError(
                f"no label shards (*.parquet) in {where}: pass --labels the --output directory "
                "of `python -m jobs.label`, after it has written at least one shard"
            )
        return files

    def read_columns(self, path: str, wanted: list[str], keys: set[str] | None = None) -> pa.Table:
        """One Parquet file: only the wanted columns it has, only rows whose key is in keys."""
        with self.fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            present = set(parquet.schema_arrow.names)
            table = parquet.read(columns=[c for c in wanted if c in present])
        if keys is not None:
            table = table.filter(pc.is_in(table.column(schema.KEY), value_set=_string_array(keys)))
        return table

    def read_stats(self) -> dict | None:
        try:
            with self.fs.open_input_stream(self.path(STATS_FILE)) as f:
                return json.loads(f.read())
        except (OSError, ValueError, pa.ArrowException):
            return None


def _string_array(values: set[str]) -> pa.Array:
    return pa.array(sorted(values), pa.string())


def preview_keys(out: LabelOutput) -> set[str]:
    keys: set[str] = set()
    for path in out.shard_files(PREVIEWS_DIR):
        keys.update(out.read_columns(path, [schema.KEY]).column(schema.KEY).to_pylist())
    return keys


@dataclass
class Scan:
    """What one pass over the label shards' outcome columns tells."""

    rows: int = 0
    kept: int = 0
    failed_by_reason: Counter = field(default_factory=Counter)
    examples: dict[str, tuple[str, str]] = field(default_factory=dict)  # reason -> (key, message)
    status_of: dict[str, str] = field(default_factory=dict)  # key -> status: rows with a preview, and failures
    file_of: dict[str, str] = field(default_factory=dict)  # key -> label shard, for the same rows
    previewed: set[str] = field(default_factory=set)


def scan_labels(out: LabelOutput, files: list[str], with_preview: set[str]) -> Scan:
    scan = Scan(previewed=with_preview)
    preview_set = _string_array(with_preview)
    for path in files:
        table = out.read_columns(path, OUTCOME_COLUMNS)
        succeeded = pc.fill_null(pc.equal(table.column(schema.STATUS), schema.Status.SUCCESS), False)
        scan.rows += table.num_rows
        scan.kept += pc.sum(succeeded).as_py() or 0
        shown = pc.or_(pc.invert(succeeded), pc.is_in(table.column(schema.KEY), value_set=preview_set))
        for row in table.filter(shown).to_pylist():
            if row[schema.STATUS] != schema.Status.SUCCESS:
                reason = failure_label(row)
                scan.failed_by_reason[reason] += 1
                scan.examples.setdefault(reason, (row[schema.KEY], row.get(schema.ERROR_MESSAGE) or ""))
            scan.status_of.setdefault(row[schema.KEY], row[schema.STATUS])
            scan.file_of.setdefault(row[schema.KEY], path)
    return scan


@dataclass
class Totals:
    rows: int
    kept: int
    failed_by_reason: dict[str, int]
    source: str  # where the numbers come from, for the page

    @property
    def failed(self) -> int:
        return sum(self.failed_by_reason.values())


def read_totals(out: LabelOutput, scan: Scan) -> Totals:
    """stats.json when the job wrote it (it counts every shard, resumed runs too), else the scan."""
    stats = out.read_stats()
    try:
        return Totals(
            rows=int(stats["input_rows"]),
            kept=int(stats["kept"]),
            failed_by_reason={str(k): int(v) for k, v in stats["rejected_by_reason"].items()},
            source=f"totals from {STATS_FILE}",
        )
    except (ValueError, KeyError, TypeError, AttributeError):  # absent or not ours
        return Totals(
            rows=scan.rows,
            kept=scan.kept,
            failed_by_reason=dict(sorted(scan.failed_by_reason.items())),
            source=f"totals counted in the label shards (no readable {STATS_FILE}: has the job finished?)",
        )


def choose_sample(status_of: dict[str, str], n: int, seed: int) -> list[str]:
    """n keys: successes first, then up to n // FAILURE_SHARE failures (more if successes run out).

    Deterministic for a seed; each group is sorted by key so the page reads in a stable order.
    """
    rng = random.Random(seed)
    ok = sorted(k for k, s in status_of.items() if s == schema.Status.SUCCESS)
    failed = sorted(k for k, s in status_of.items() if s != schema.Status.SUCCESS)
    n_failed = min(len(failed), n // FAILURE_SHARE)
    n_ok = min(len(ok), n - n_failed)
    n_failed = min(len(failed), n - n_ok)
    return sorted(rng.sample(ok, n_ok)) + sorted(rng.sample(failed, n_failed))


def sample_keys(scan: Scan, n: int, seed: int) -> list[str]:
    """choose_sample over successes that have a thumbnail (nothing else to show) and all failures."""
    candidates = {k: s for k, s in scan.status_of.items() if s != schema.Status.SUCCESS or k in scan.previewed}
    return choose_sample(candidates, n, seed)


def load_cards(out: LabelOutput, keys: list[str], scan: Scan) -> list[Card]:
    wanted = set(keys)
    previews: dict[str, dict] = {}
    for path in out.shard_files(PREVIEWS_DIR):
        for row in out.read_columns(path, [f.name for f in schema.PREVIEW_FIELDS], wanted).to_pylist():
            previews.setdefault(row[schema.KEY], row)
    labels: dict[str, dict] = {}
    for path in sorted({scan.file_of[k] for k in keys}):
        for row in out.read_columns(path, CARD_COLUMNS, wanted).to_pylist():
            labels.setdefault(row[schema.KEY], row)
    return [make_card(i + 1, labels[k], previews.get(k)) for i, k in enumerate(keys)]


def make_card(number: int, row: dict, preview: dict | None) -> Card:
    preview = preview or {}
    width = preview.get(schema.WIDTH) or row.get(schema.ORIGINAL_WIDTH)
    height = preview.get(schema.HEIGHT) or row.get(schema.ORIGINAL_HEIGHT)
    original = (width, height) if width and height and width > 0 and height > 0 else None
    data = preview.get(schema.THUMBNAIL) or b""
    strip = report_image(data, row)  # a video row: its frames, their times and the caption
    if strip is not None:
        data, original = strip, None
    return Card(number, row, decode(data) if data else None, data, original)


def decode(data: bytes) -> Image.Image | None:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception:  # any undecodable thumbnail just shows as missing
        return None
    return image
