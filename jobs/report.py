"""Render a sample of labelled images, with their boxes and captions, for people to look at.

    python -m jobs.report --labels out/labels --out out/report

--labels is the --output directory of `python -m jobs.label`. The report is read from its label
and preview shards (and stats.json when the job finished), never from the network:

    OUT/index.html          a self-contained page: totals, failures by reason with an example
                            message each, and one card per sampled row (thumbnail with its boxes,
                            caption, raw model text, task, prompt, model); opens offline
    OUT/images/card-NNNN.*  the thumbnails the page shows
    OUT/contact_sheet.png   the same sample as a grid: boxes drawn, caption under each image

The sample is drawn from rows that have a thumbnail, deterministically for a --seed. Mostly
successes, but up to one card in eight is a failure (if any has a thumbnail), so the
rows a user is debugging show up too. Model output is untrusted: the page escapes every text
it shows and its Content-Security-Policy allows no script at all.
"""

from __future__ import annotations

import argparse
import functools
import html
import io
import json
import math
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from model.boxes import Box
from pipeline import schema
from pipeline.writer import IMAGE_EXTENSIONS, LABELS_DIR, PREVIEWS_DIR, SHARDS_DIR, STATS_FILE

DEFAULT_SAMPLE = 48
DEFAULT_COLUMNS = 8
FAILURE_SHARE = 8  # at most 1 card in 8 is a failure while successes last (see the docstring)

THUMB = 256  # longest side of every image shown, on the page and on the sheet
PAD = 8
LINE_HEIGHT = 16
TEXT_LINES = 5  # under each sheet image: "#N key", then the caption
CELL_WIDTH = PAD + THUMB + PAD
CELL_HEIGHT = PAD + THUMB + PAD + TEXT_LINES * LINE_HEIGHT + PAD
BOX_LINE = 3  # sheet box outline width, drawn inward from the box edge
ELLIPSIS = "…"
EXAMPLE_MESSAGE_CHARS = 300

# Distinct, saturated colours; box i of a card gets PALETTE[i % len(PALETTE)] on page and sheet.
PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (67, 99, 216),
    (245, 130, 49),
    (145, 30, 180),
    (66, 212, 244),
    (240, 50, 230),
    (191, 239, 69),
    (255, 225, 25),
    (70, 153, 144),
]

# Columns of the label rows a card shows; absent ones (an older shard) read as None.
CARD_COLUMNS = [
    schema.KEY,
    schema.URL,
    schema.STATUS,
    schema.REASON,
    schema.ERROR_MESSAGE,
    schema.TASK,
    schema.PROMPT,
    schema.TEXT,
    schema.LABEL_CAPTION,
    schema.BOXES,
    schema.MODEL,
    schema.GENERATION,
]
OUTCOME_COLUMNS = [schema.KEY, schema.STATUS, schema.REASON, schema.ERROR_MESSAGE]


class ReportError(Exception):
    """Something the user must fix (wrong directory, no shards); main() exits with 2."""


# --- reading the label output ----------------------------------------------------------------


def shard_files(labels_dir: str, sub: str) -> list[str]:
    folder = os.path.join(labels_dir, SHARDS_DIR, sub)
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return [os.path.join(folder, n) for n in names if n.endswith(".parquet")]


def label_files(labels_dir: str) -> list[str]:
    files = shard_files(labels_dir, LABELS_DIR)
    if not files:
        where = os.path.join(labels_dir, SHARDS_DIR, LABELS_DIR)
        raise ReportError(
            f"no label shards (*.parquet) in {where}: pass --labels the --output directory "
            "of `python -m jobs.label`, after it has written at least one shard"
        )
    return files


def read_columns(path: str, wanted: list[str], keys: set[str] | None = None) -> pa.Table:
    """One Parquet file: only the wanted columns it has, only rows whose key is in keys."""
    parquet = pq.ParquetFile(path)
    present = set(parquet.schema_arrow.names)
    table = parquet.read(columns=[c for c in wanted if c in present])
    if keys is not None:
        table = table.filter(pc.is_in(table.column(schema.KEY), value_set=_string_array(keys)))
    return table


def _string_array(values: set[str]) -> pa.Array:
    return pa.array(sorted(values), pa.string())


def preview_keys(labels_dir: str) -> set[str]:
    keys: set[str] = set()
    for path in shard_files(labels_dir, PREVIEWS_DIR):
        keys.update(read_columns(path, [schema.KEY]).column(schema.KEY).to_pylist())
    return keys


@dataclass
class Scan:
    """What one pass over the label shards' outcome columns tells."""

    rows: int = 0
    kept: int = 0
    failed_by_reason: Counter = field(default_factory=Counter)
    examples: dict[str, tuple[str, str]] = field(default_factory=dict)  # reason -> (key, message)
    status_of: dict[str, str] = field(default_factory=dict)  # key -> status, rows with a preview
    file_of: dict[str, str] = field(default_factory=dict)  # key -> label shard, rows with a preview


def scan_labels(files: list[str], with_preview: set[str]) -> Scan:
    """Count outcomes over every label row; only failures and previewed rows become Python
    objects, so a run of millions of rows scans in Arrow."""
    scan = Scan()
    preview_set = _string_array(with_preview)
    for path in files:
        table = read_columns(path, OUTCOME_COLUMNS)
        succeeded = pc.fill_null(pc.equal(table.column(schema.STATUS), schema.Status.SUCCESS), False)
        scan.rows += table.num_rows
        scan.kept += pc.sum(succeeded).as_py() or 0
        for row in table.filter(pc.invert(succeeded)).to_pylist():
            reason = failure_label(row)
            scan.failed_by_reason[reason] += 1
            scan.examples.setdefault(reason, (row[schema.KEY], row.get(schema.ERROR_MESSAGE) or ""))
        for row in table.filter(pc.is_in(table.column(schema.KEY), value_set=preview_set)).to_pylist():
            scan.status_of.setdefault(row[schema.KEY], row[schema.STATUS])
            scan.file_of.setdefault(row[schema.KEY], path)
    return scan


def failure_label(row: dict) -> str:
    return row.get(schema.REASON) or row.get(schema.STATUS) or "unknown"


@dataclass
class Totals:
    rows: int
    kept: int
    failed_by_reason: dict[str, int]
    source: str  # where the numbers come from, for the page


def read_totals(labels_dir: str, scan: Scan) -> Totals:
    """stats.json when the job wrote it (it counts every shard, resumed runs too), else the scan."""
    path = os.path.join(labels_dir, STATS_FILE)
    try:
        with open(path) as f:
            stats = json.load(f)
        return Totals(
            rows=int(stats["input_rows"]),
            kept=int(stats["kept"]),
            failed_by_reason={str(k): int(v) for k, v in stats["rejected_by_reason"].items()},
            source=f"totals from {STATS_FILE}",
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # absent or not ours
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


# --- cards: one sampled row with its thumbnail -----------------------------------------------


@dataclass
class Card:
    number: int  # 1-based, the same on page and sheet
    row: dict  # label columns
    image: Image.Image | None  # the decoded thumbnail, None if it does not decode
    thumbnail: bytes
    original: tuple[int, int] | None  # (width, height) the boxes are in; None if unknown

    @property
    def failed(self) -> bool:
        return self.row.get(schema.STATUS) != schema.Status.SUCCESS

    def boxes(self) -> list[Box]:
        """The row's boxes whose corners are finite numbers, in stored order (colours follow it)."""
        found = [Box(**b) for b in self.row.get(schema.BOXES) or [] if b]
        return [b for b in found if all(_finite(v) for v in (b.x0, b.y0, b.x1, b.y1))]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def load_cards(labels_dir: str, keys: list[str], scan: Scan) -> list[Card]:
    wanted = set(keys)
    previews: dict[str, dict] = {}
    for path in shard_files(labels_dir, PREVIEWS_DIR):
        for row in read_columns(path, [f.name for f in schema.PREVIEW_FIELDS], wanted).to_pylist():
            previews.setdefault(row[schema.KEY], row)
    labels: dict[str, dict] = {}
    for path in sorted({scan.file_of[k] for k in keys}):
        for row in read_columns(path, CARD_COLUMNS, wanted).to_pylist():
            labels.setdefault(row[schema.KEY], row)
    return [_card(i + 1, labels[k], previews[k]) for i, k in enumerate(keys)]


def _card(number: int, row: dict, preview: dict) -> Card:
    width, height = preview.get(schema.WIDTH), preview.get(schema.HEIGHT)
    original = (width, height) if width and height and width > 0 and height > 0 else None
    data = preview[schema.THUMBNAIL] or b""
    return Card(number, row, decode(data), data, original)


def decode(data: bytes) -> Image.Image | None:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception:  # any undecodable thumbnail just shows as missing
        return None
    return image


# --- geometry and text helpers ---------------------------------------------------------------


def fit(size: tuple[int, int], limit: int = THUMB) -> tuple[int, int]:
    """Scale (w, h) so the longest side is limit, aspect kept (small thumbnails grow)."""
    w, h = size
    scale = limit / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def scale_box(box: Box, original: tuple[int, int], drawn: tuple[int, int]) -> tuple[int, int, int, int]:
    """Box in original-image pixels -> integer pixels of the image as drawn, inside it."""
    sx, sy = drawn[0] / original[0], drawn[1] / original[1]
    x0, x1 = sorted((box.x0 * sx, box.x1 * sx))
    y0, y1 = sorted((box.y0 * sy, box.y1 * sy))
    clamp_x = lambda v: min(max(round(v), 0), drawn[0] - 1)  # noqa: E731
    clamp_y = lambda v: min(max(round(v), 0), drawn[1] - 1)  # noqa: E731
    return clamp_x(x0), clamp_y(y0), clamp_x(x1), clamp_y(y1)


def box_percent(box: Box, original: tuple[int, int]) -> tuple[float, float, float, float]:
    """(left, top, width, height) as percentages of the image, for a CSS overlay."""
    x0, x1 = sorted((box.x0, box.x1))
    y0, y1 = sorted((box.y0, box.y1))
    pct = lambda v, size: min(max(100.0 * v / size, 0.0), 100.0)  # noqa: E731
    left, top = pct(x0, original[0]), pct(y0, original[1])
    return left, top, pct(x1, original[0]) - left, pct(y1, original[1]) - top


def printable(text: str | None) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text or "")


def _fitting_prefix(text: str, max_width: float, measure: Callable[[str], float], suffix: str = "") -> int:
    """Length of the longest prefix of text that, with suffix, fits; grown from the start
    because the texts measured can be far longer than a line."""
    end = 0
    while end < len(text) and measure(text[: end + 1] + suffix) <= max_width:
        end += 1
    return end


def ellipsize(text: str, max_width: float, measure: Callable[[str], float]) -> str:
    """The longest prefix of text followed by ELLIPSIS that fits in max_width."""
    return text[: _fitting_prefix(text, max_width, measure, ELLIPSIS)].rstrip() + ELLIPSIS


def truncate(text: str, max_width: float, measure: Callable[[str], float]) -> str:
    """text if it fits in max_width, else its ellipsized prefix."""
    return text if measure(text) <= max_width else ellipsize(text, max_width, measure)


def wrap_text(text: str | None, max_width: float, measure: Callable[[str], float], max_lines: int) -> list[str]:
    """Greedy word wrap into at most max_lines; if text does not fit, the last line ends with
    ELLIPSIS. Words wider than a line are broken; control characters count as spaces."""
    lines: list[str] = []
    current = ""
    for word in printable(text).split():
        if len(lines) > max_lines:
            break
        candidate = f"{current} {word}" if current else word
        if measure(candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = word
        while measure(current) > max_width and len(lines) <= max_lines:
            cut = max(1, _fitting_prefix(current, max_width, measure))
            lines.append(current[:cut])
            current = current[cut:]
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [ellipsize(lines[max_lines - 1], max_width, measure)]
    return lines


def hex_color(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def ink_on(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on rgb."""
    r, g, b = rgb
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def esc(value) -> str:
    """HTML-escape anything (None -> ""), quotes too, so it is safe in text and attributes."""
    return html.escape("" if value is None else str(value), quote=True)


# --- the page --------------------------------------------------------------------------------

IMAGES_DIR = "images"
INDEX_FILE = "index.html"
SHEET_FILE = "contact_sheet.png"
CARD_IMAGE_PREFIX = "card-"

# No script may run, whatever the escaping missed; images only from files beside the page.
CSP = "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'"

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
td.n{text-align:right}.muted{color:#777}code{font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(290px,1fr));gap:1em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em;overflow-wrap:anywhere}
.card.failed{border-color:#c33;background:#fff6f6}.card h3{font-size:13px;margin:0 0 .5em}
.status{color:#383}.failed .status{color:#c33}
.frame{position:relative;margin:1.4em auto .5em;background:#eee}.frame img{display:block}
.box{position:absolute;border:2px solid;box-sizing:border-box}
.box span{position:absolute;left:-2px;bottom:100%;font-size:11px;padding:0 3px;white-space:nowrap;
max-width:250px;overflow:hidden;text-overflow:ellipsis}.box.inside span{top:0;bottom:auto}
.missing{width:256px;height:96px;margin:.5em auto;display:flex;align-items:center;justify-content:center;background:#eee;color:#777}
.caption{font-size:15px;margin:.4em 0}.error{color:#a00}
ol.boxes{margin:.3em 0;padding-left:1.6em;font-size:13px}ol.boxes i{display:inline-block;width:.8em;height:.8em;margin-right:.3em}
dl{display:grid;grid-template-columns:auto 1fr;gap:0 .6em;font-size:12px;margin:.4em 0}dt{color:#777}dd{margin:0}
pre{white-space:pre-wrap;font-size:12px;background:#f3f3f3;padding:.4em;margin:.3em 0}
summary{cursor:pointer;font-size:12px;color:#555}
"""


def render_page(cards: list[Card], sources: dict[int, str], totals: Totals, scan: Scan, labels_dir: str, seed: int) -> str:
    failed = sum(card.failed for card in cards)
    body = [
        "<h1>Label report</h1>",
        f'<p class="muted">{esc(os.path.abspath(labels_dir))}; {esc(totals.source)}</p>',
        totals_html(totals),
        "<h2>Failures by reason</h2>",
        failures_html(totals, scan),
        "<h2>Sample</h2>",
        f"<p>{len(cards)} of {len(scan.status_of):,} rows with a thumbnail ({len(cards) - failed} succeeded, "
        f'{failed} failed), seed {seed}. <a href="{SHEET_FILE}">{SHEET_FILE}</a> shows the same cards.</p>',
        '<div class="grid">',
        *(card_html(card, sources.get(card.number)) for card in cards),
        "</div>",
    ]
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>Label report: {esc(os.path.basename(os.path.abspath(labels_dir)))}</title>"
        f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def totals_html(totals: Totals) -> str:
    failed = sum(totals.failed_by_reason.values())
    cells = [("rows", totals.rows), ("kept", totals.kept), ("failed", failed)]
    return "<table>" + "".join(f'<tr><th>{name}</th><td class="n">{n:,}</td></tr>' for name, n in cells) + "</table>"


def failures_html(totals: Totals, scan: Scan) -> str:
    if not totals.failed_by_reason:
        return "<p>No failures.</p>"
    rows = ["<tr><th>reason</th><th>rows</th><th>example key</th><th>example message</th></tr>"]
    for reason, count in sorted(totals.failed_by_reason.items(), key=lambda item: (-item[1], item[0])):
        key, message = scan.examples.get(reason, ("", ""))
        if len(message) > EXAMPLE_MESSAGE_CHARS:
            message = message[:EXAMPLE_MESSAGE_CHARS] + ELLIPSIS
        rows.append(
            f'<tr><td>{esc(reason)}</td><td class="n">{count:,}</td><td><code>{esc(key)}</code></td>'
            f"<td>{esc(message)}</td></tr>"
        )
    return "<table>" + "".join(rows) + "</table>"


def card_html(card: Card, image_src: str | None) -> str:
    row = card.row
    parts = [
        f'<section class="card{" failed" if card.failed else ""}" id="card-{card.number}">',
        f'<h3>#{card.number} <code>{esc(row.get(schema.KEY))}</code> '
        f'<span class="status">{esc(row.get(schema.STATUS))}</span></h3>',
        frame_html(card, image_src),
    ]
    if card.failed:
        parts.append(
            f'<p class="error"><b>{esc(failure_label(row))}</b>: {esc(row.get(schema.ERROR_MESSAGE))}</p>'
        )
    caption = row.get(schema.LABEL_CAPTION)
    parts.append(f'<p class="caption">{esc(caption)}</p>' if caption else '<p class="caption muted">(no caption)</p>')
    parts.append(boxes_list_html(card.boxes()))
    size = f"{card.original[0]} × {card.original[1]}" if card.original else "unknown"
    meta = [("task", row.get(schema.TASK)), ("prompt", row.get(schema.PROMPT)), ("model", row.get(schema.MODEL)),
            ("size", size), ("url", row.get(schema.URL))]
    parts.append("<dl>" + "".join(f"<dt>{name}</dt><dd>{esc(value)}</dd>" for name, value in meta) + "</dl>")
    for name, value in (("raw text", row.get(schema.TEXT)), ("generation", row.get(schema.GENERATION))):
        if value:
            parts.append(f"<details><summary>{name}</summary><pre>{esc(value)}</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


def frame_html(card: Card, image_src: str | None) -> str:
    if card.image is None or image_src is None:
        return '<div class="missing">thumbnail could not be decoded</div>'
    width, height = fit(card.image.size)
    overlays = [box_html(box, i, card.original) for i, box in enumerate(card.boxes())] if card.original else []
    return (
        f'<div class="frame" style="width:{width}px;height:{height}px">'
        f'<img src="{esc(image_src)}" width="{width}" height="{height}" alt="">' + "".join(overlays) + "</div>"
    )


def box_html(box: Box, index: int, original: tuple[int, int]) -> str:
    color = PALETTE[index % len(PALETTE)]
    left, top, width, height = box_percent(box, original)
    inside = " inside" if top < 8 else ""  # no room above: label goes inside the box
    return (
        f'<div class="box{inside}" style="left:{left:.2f}%;top:{top:.2f}%;width:{width:.2f}%;'
        f'height:{height:.2f}%;border-color:{hex_color(color)}">'
        f'<span style="background:{hex_color(color)};color:{hex_color(ink_on(color))}">{esc(box.phrase)}</span></div>'
    )


def boxes_list_html(boxes: list[Box]) -> str:
    if not boxes:
        return ""
    items = []
    for i, box in enumerate(boxes):
        rel = ",".join(f"{v:03d}" if isinstance(v, int) else "?" for v in (box.x0_rel, box.y0_rel, box.x1_rel, box.y1_rel))
        items.append(
            f'<li><i style="background:{hex_color(PALETTE[i % len(PALETTE)])}"></i>{esc(box.phrase)} '
            f'<small class="muted">[[{rel}]]</small></li>'
        )
    return '<ol class="boxes">' + "".join(items) + "</ol>"


def write_images(cards: list[Card], out_dir: str) -> dict[int, str]:
    """Each decodable thumbnail as OUT/images/card-NNNN.EXT; returns card number -> page src.

    Card images of an earlier report in the same folder are removed so none goes stale.
    """
    folder = os.path.join(out_dir, IMAGES_DIR)
    os.makedirs(folder, exist_ok=True)
    sources = {}
    for card in cards:
        if card.image is None:
            continue
        ext = IMAGE_EXTENSIONS.get(card.image.format or "")
        data = card.thumbnail
        if ext is None:  # not a format browsers are sure to show: store it as PNG
            ext, buffer = "png", io.BytesIO()
            card.image.save(buffer, format="PNG")
            data = buffer.getvalue()
        name = f"{CARD_IMAGE_PREFIX}{card.number:04d}.{ext}"
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        sources[card.number] = f"{IMAGES_DIR}/{name}"
    written = {os.path.basename(src) for src in sources.values()}
    for name in os.listdir(folder):
        if name.startswith(CARD_IMAGE_PREFIX) and name not in written:
            os.remove(os.path.join(folder, name))
    return sources


# --- the contact sheet -----------------------------------------------------------------------

TEXT_SIZE = 13
LABEL_SIZE = 12
GREY = (120, 120, 120)
ERROR_RED = (170, 0, 0)
MIN_LABEL_ROOM = 64  # sheet pixels right of a box's left edge worth labelling in


@functools.lru_cache(maxsize=None)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def sheet_size(count: int, columns: int) -> tuple[int, int]:
    """Pixel size of the sheet for count cards; fewer cards than columns narrow it."""
    columns = min(columns, count)
    return columns * CELL_WIDTH, math.ceil(count / columns) * CELL_HEIGHT


def cell_origin(index: int, columns: int) -> tuple[int, int]:
    return (index % columns) * CELL_WIDTH, (index // columns) * CELL_HEIGHT


def thumb_origin(index: int, columns: int, drawn: tuple[int, int]) -> tuple[int, int]:
    """Top-left sheet pixel of card index's image, drawn at size drawn, centred in its square."""
    cell_x, cell_y = cell_origin(index, columns)
    return cell_x + PAD + (THUMB - drawn[0]) // 2, cell_y + PAD + (THUMB - drawn[1]) // 2


def render_sheet(cards: list[Card], columns: int) -> Image.Image:
    sheet = Image.new("RGB", sheet_size(len(cards), columns), "white")
    draw = ImageDraw.Draw(sheet)
    columns = min(columns, len(cards))
    for index, card in enumerate(cards):
        cell_x, cell_y = cell_origin(index, columns)
        draw.rectangle([cell_x, cell_y, cell_x + CELL_WIDTH - 1, cell_y + CELL_HEIGHT - 1], outline=(220, 220, 220))
        draw.rectangle([cell_x + PAD, cell_y + PAD, cell_x + PAD + THUMB - 1, cell_y + PAD + THUMB - 1], fill=(238, 238, 238))
        if card.image is None:
            draw.text((cell_x + PAD + 4, cell_y + PAD + 4), "thumbnail could not be decoded", fill=GREY, font=font(TEXT_SIZE))
        else:
            image = boxed_thumbnail(card)
            sheet.paste(image, thumb_origin(index, columns, image.size))
        draw_caption(draw, card, cell_x + PAD, cell_y + PAD + THUMB + PAD)
    return sheet


def boxed_thumbnail(card: Card) -> Image.Image:
    image = card.image.convert("RGB").resize(fit(card.image.size), Image.Resampling.LANCZOS)
    if card.original is None:
        return image
    draw = ImageDraw.Draw(image)
    placed = [(box, scale_box(box, card.original, image.size), PALETTE[i % len(PALETTE)]) for i, box in enumerate(card.boxes())]
    for _, xy, color in placed:
        draw.rectangle(xy, outline=color, width=BOX_LINE)
    for box, xy, color in placed:  # after every outline, so no outline crosses a label
        draw_label(draw, box.phrase, xy, color, image.width)
    return image


def draw_label(draw: ImageDraw.ImageDraw, phrase: str | None, xy: tuple[int, int, int, int], color, width: int) -> None:
    label_font = font(LABEL_SIZE)
    phrase = " ".join(printable(phrase).split())
    # Start at the box's left edge, cut to the room right of it; only a box so near the
    # right edge that little would show moves its label left.
    room = width - xy[0] - 4 if width - xy[0] >= MIN_LABEL_ROOM else width - 4
    text = truncate(phrase, room, label_font.getlength)
    if not text or text == ELLIPSIS:
        return
    text_width, height = label_font.getlength(text) + 4, LABEL_SIZE + 4
    x = max(0, min(xy[0], width - text_width))
    y = xy[1] - height if xy[1] >= height else xy[1] + BOX_LINE  # above the box, else inside
    draw.rectangle([x, y, x + text_width, y + height - 1], fill=color)
    draw.text((x + 2, y + 1), text, fill=ink_on(color), font=label_font)


def draw_caption(draw: ImageDraw.ImageDraw, card: Card, x: int, y: int) -> None:
    text_font = font(TEXT_SIZE)
    header = truncate(f"#{card.number}  {printable(card.row.get(schema.KEY))}", THUMB, text_font.getlength)
    draw.text((x, y), header, fill=GREY, font=text_font)
    if card.failed:
        text, color = f"{failure_label(card.row)}: {card.row.get(schema.ERROR_MESSAGE) or ''}", ERROR_RED
    else:
        text, color = card.row.get(schema.LABEL_CAPTION) or card.row.get(schema.TEXT) or "", (0, 0, 0)
    for i, line in enumerate(wrap_text(text, THUMB, text_font.getlength, TEXT_LINES - 1)):
        draw.text((x, y + (i + 1) * LINE_HEIGHT), line, fill=color, font=text_font)


# --- command line ----------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--labels", required=True, help="the --output directory of `python -m jobs.label`")
    parser.add_argument("--out", required=True, help="directory for index.html, contact_sheet.png and images/ (created)")
    parser.add_argument("--sample", type=positive_int, default=DEFAULT_SAMPLE, help=f"cards to show (default {DEFAULT_SAMPLE})")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed; the same seed picks the same rows (default 0)")
    parser.add_argument("--columns", type=positive_int, default=DEFAULT_COLUMNS, help=f"contact sheet columns (default {DEFAULT_COLUMNS})")
    return parser.parse_args(argv)


def write_report(labels_dir: str, out_dir: str, sample: int, seed: int, columns: int) -> list[Card]:
    files = label_files(labels_dir)
    scan = scan_labels(files, preview_keys(labels_dir))
    cards = load_cards(labels_dir, choose_sample(scan.status_of, sample, seed), scan)
    os.makedirs(out_dir, exist_ok=True)
    sources = write_images(cards, out_dir)
    page = render_page(cards, sources, read_totals(labels_dir, scan), scan, labels_dir, seed)
    with open(os.path.join(out_dir, INDEX_FILE), "w", encoding="utf-8") as f:
        f.write(page)
    sheet_path = os.path.join(out_dir, SHEET_FILE)
    if cards:
        render_sheet(cards, columns).save(sheet_path)
    elif os.path.exists(sheet_path):  # an earlier report's sheet would contradict the page
        os.remove(sheet_path)
    return cards


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cards = write_report(args.labels, args.out, args.sample, args.seed, args.columns)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.join(args.out, INDEX_FILE)} with {len(cards)} cards")
    if cards:
        print(f"wrote {os.path.join(args.out, SHEET_FILE)}")
    else:
        print(
            f"warning: no row has a thumbnail in {os.path.join(args.labels, SHARDS_DIR, PREVIEWS_DIR)}; "
            "the page shows totals only and no contact sheet was written",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
