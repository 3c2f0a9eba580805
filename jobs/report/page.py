"""The report page: one self-contained HTML file; no script, every text escaped."""

from __future__ import annotations

import html
import io
import os

from jobs.report.cards import (
    FAILED_WORD,
    KEPT_WORD,
    NO_THUMBNAIL,
    PALETTE,
    ROWS_WORD,
    Card,
    box_percent,
    fit,
    hex_color,
    ink_on,
    rel_text,
)
from jobs.report.load import Scan, Totals
from pipeline import schema
from pipeline.writer import IMAGE_EXTENSIONS

THUMB = 256  # longest side of every image on the page
EXAMPLE_MESSAGE_CHARS = 300
IMAGES_DIR = "images"
INDEX_FILE = "index.html"
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
ol.boxes,ul.answers{margin:.3em 0;padding-left:1.6em;font-size:13px}ul.answers{font-size:15px}
ol.boxes i,ul.answers i{display:inline-block;width:.8em;height:.8em;margin-right:.3em}
dl{display:grid;grid-template-columns:auto 1fr;gap:0 .6em;font-size:12px;margin:.4em 0}dt{color:#777}dd{margin:0}
pre{white-space:pre-wrap;font-size:12px;background:#f3f3f3;padding:.4em;margin:.3em 0}
summary{cursor:pointer;font-size:12px;color:#555}
"""


def esc(value) -> str:
    """HTML-escape anything (None -> ""), quotes too, so it is safe in text and attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def render_page(cards: list[Card], sources: dict[int, str], totals: Totals, scan: Scan, shown_dir: str, seed: int, sheet_file: str) -> str:
    failed = sum(card.failed for card in cards)
    body = [
        "<h1>Label report</h1>",
        f'<p class="muted">{esc(shown_dir)}; {esc(totals.source)}</p>',
        totals_html(totals),
        f"<h2>{FAILED_WORD.capitalize()} by reason</h2>",
        failures_html(totals, scan),
        "<h2>Sample</h2>",
        f"<p>{sample_sentence(cards, scan, seed)} <a href=\"{sheet_file}\">{sheet_file}</a> shows the same cards.</p>",
        '<div class="grid">',
        *(card_html(card, sources.get(card.number)) for card in cards),
        "</div>",
    ]
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>Label report: {esc(os.path.basename(shown_dir.rstrip('/')))}</title>"
        f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def sample_sentence(cards: list[Card], scan: Scan, seed: int) -> str:
    """The sample in words, as the command line prints it too."""
    failed = sum(card.failed for card in cards)
    return (
        f"{len(cards)} cards ({len(cards) - failed} {KEPT_WORD}, {failed} {FAILED_WORD}) from "
        f"{len(scan.previewed):,} rows with a thumbnail and {sum(scan.failed_by_reason.values()):,} {FAILED_WORD} rows, seed {seed}."
    )


def totals_html(totals: Totals) -> str:
    cells = [(ROWS_WORD, totals.rows), (KEPT_WORD, totals.kept), (FAILED_WORD, totals.failed)]
    return "<table>" + "".join(f'<tr><th>{name}</th><td class="n">{n:,}</td></tr>' for name, n in cells) + "</table>"


def failures_html(totals: Totals, scan: Scan) -> str:
    if not totals.failed_by_reason:
        return f"<p>No {FAILED_WORD} rows.</p>"
    rows = ["<tr><th>reason</th><th>rows</th><th>example key</th><th>example message</th></tr>"]
    for reason, count in sorted(totals.failed_by_reason.items(), key=lambda item: (-item[1], item[0])):
        key, message = scan.examples.get(reason, ("", ""))
        if len(message) > EXAMPLE_MESSAGE_CHARS:
            message = message[:EXAMPLE_MESSAGE_CHARS] + "…"
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
        lines_html(card),
        boxes_list_html(card),
    ]
    size = f"{card.original[0]} × {card.original[1]}" if card.original else "unknown"
    meta = [("task", row.get(schema.TASK)), ("prompt", row.get(schema.PROMPT)), ("model", row.get(schema.MODEL)),
            ("size", size), ("url", row.get(schema.URL))]
    parts.append("<dl>" + "".join(f"<dt>{name}</dt><dd>{esc(value)}</dd>" for name, value in meta if value) + "</dl>")
    for name, value in (("raw text", row.get(schema.TEXT)), ("generation", row.get(schema.GENERATION))):
        if value:
            parts.append(f"<details><summary>{name}</summary><pre>{esc(value)}</pre></details>")
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def lines_html(card: Card) -> str:
    out, answers = [], []
    for line in card.lines():
        if line.kind == "error":
            reason, _, message = line.text.partition(": ")
            out.append(f'<p class="error"><b>{esc(reason)}</b>{": " + esc(message) if message else ""}</p>')
        elif line.kind == "answer":
            chip = "" if line.box is None else f'<i style="background:{hex_color(PALETTE[line.box % len(PALETTE)])}"></i>'
            answers.append(f"<li>{chip}{esc(line.text)}</li>")
        elif line.kind == "caption":
            out.append(f'<p class="caption">{esc(line.text)}</p>')
        else:
            out.append(f'<p class="caption muted">{esc(line.text)}</p>')
    if answers:
        out.append('<ul class="answers">' + "".join(answers) + "</ul>")
    return "\n".join(out)


def frame_html(card: Card, image_src: str | None) -> str:
    if not card.has_thumbnail:
        return f'<div class="missing">{NO_THUMBNAIL}</div>'
    if card.image is None or image_src is None:
        return '<div class="missing">thumbnail could not be decoded</div>'
    width, height = fit(card.image.size, THUMB)
    overlays = [box_html(box, i, card.original) for i, box in enumerate(card.boxes())] if card.original else []
    return (
        f'<div class="frame" style="width:{width}px;height:{height}px">'
        f'<img src="{esc(image_src)}" width="{width}" height="{height}" alt="">' + "".join(overlays) + "</div>"
    )


def box_html(box, index: int, original: tuple[int, int]) -> str:
    color = PALETTE[index % len(PALETTE)]
    left, top, width, height = box_percent(box, original)
    inside = " inside" if top < 8 else ""  # no room above: label goes inside the box
    return (
        f'<div class="box{inside}" style="left:{left:.2f}%;top:{top:.2f}%;width:{width:.2f}%;'
        f'height:{height:.2f}%;border-color:{hex_color(color)}">'
        f'<span style="background:{hex_color(color)};color:{hex_color(ink_on(color))}">{esc(box.phrase)}</span></div>'
    )


def boxes_list_html(card: Card) -> str:
    boxes = card.boxes()
    if not boxes or card.answers():  # a ground card's answers already list its boxes
        return ""
    items = [
        f'<li><i style="background:{hex_color(PALETTE[i % len(PALETTE)])}"></i>{esc(box.phrase)} '
        f'<small class="muted">{rel_text(box)}</small></li>'
        for i, box in enumerate(boxes)
    ]
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
