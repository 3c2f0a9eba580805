"""What a report card says and how its boxes map onto a thumbnail, shared by the page, the
contact sheet and the command-line summary, so all three use the same words.

A Card is one sampled row: its label columns, its thumbnail (None when the row has none, as for
rows that failed before the model) and the original size the boxes are in. Renderers draw
`card.image` with `card.boxes()` and then the `card.lines()`; a new kind of card content (a strip
of video frames, say) is a new field here plus one drawing function in page.py and sheet.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable

from PIL import Image

from model.boxes import Box
from pipeline import schema

ELLIPSIS = "…"

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

# The words for the totals, as jobs.label's own summary prints them.
ROWS_WORD, KEPT_WORD, FAILED_WORD = "input rows", "labelled", "rejected"
NO_THUMBNAIL = "no thumbnail"


def failure_label(row: dict) -> str:
    return row.get(schema.REASON) or row.get(schema.STATUS) or "unknown"


@dataclass
class Line:
    """One line of what a card says; `box` is the index of the box it names (for its colour)."""

    kind: str  # "caption", "answer", "error", "empty"
    text: str
    box: int | None = None


@dataclass
class Card:
    number: int  # 1-based, the same on page and sheet
    row: dict  # label columns
    image: Image.Image | None  # the decoded thumbnail; None if there is none or it does not decode
    thumbnail: bytes
    original: tuple[int, int] | None  # (width, height) the boxes are in; None if unknown

    @property
    def failed(self) -> bool:
        return self.row.get(schema.STATUS) != schema.Status.SUCCESS

    @property
    def has_thumbnail(self) -> bool:
        return bool(self.thumbnail)

    def boxes(self) -> list[Box]:
        """The row's boxes whose corners are finite numbers, in stored order (colours follow it)."""
        found = [Box(**b) for b in self.row.get(schema.BOXES) or [] if b]
        return [b for b in found if all(_finite(v) for v in (b.x0, b.y0, b.x1, b.y1))]

    def answers(self) -> list[tuple[str, str]]:
        """`ground` rows: (phrase, the model's answer) pairs from the text column's JSON object."""
        if self.row.get(schema.TASK) != "ground" or not self.row.get(schema.TEXT):
            return []
        try:
            pairs = json.loads(self.row[schema.TEXT])
        except ValueError:
            return []
        return [(str(k), str(v)) for k, v in pairs.items()] if isinstance(pairs, dict) else []

    def lines(self) -> list[Line]:
        """What the card says under its image: the failure, then the caption or the answers."""
        out = []
        if self.failed:
            out.append(Line("error", f"{failure_label(self.row)}: {self.row.get(schema.ERROR_MESSAGE) or ''}".rstrip(": ")))
        answers = self.answers()
        if answers:
            boxes = self.boxes()
            for phrase, answer in answers:
                index = next((i for i, b in enumerate(boxes) if b.phrase == phrase), None)
                out.append(Line("answer", f"{phrase} → {' '.join(printable(answer).split()) or '(empty)'}", index))
        elif self.row.get(schema.LABEL_CAPTION):
            out.append(Line("caption", self.row[schema.LABEL_CAPTION]))
        elif not self.failed:
            out.append(Line("empty", "(no caption)"))
        return out


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# --- geometry --------------------------------------------------------------------------------


def fit(size: tuple[int, int], limit: int) -> tuple[int, int]:
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


def rel_text(box: Box) -> str:
    """The model's own 0..999 values, as the grounding format writes them."""
    return "[[" + ",".join(f"{v:03d}" if isinstance(v, int) else "?" for v in (box.x0_rel, box.y0_rel, box.x1_rel, box.y1_rel)) + "]]"


# --- text ------------------------------------------------------------------------------------


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


def ink_on(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on rgb."""
    r, g, b = rgb
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def hex_color(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)
