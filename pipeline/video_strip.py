"""Preview strips of video rows: what jobs.label stores and what jobs.report draws.

For a previewed video row, jobs.label stores in the previews Parquet (column `thumbnail`) one JPEG
of up to STRIP_FRAMES of the frames the model saw, side by side, all one size, chosen evenly over
them by `strip_positions`. The label row's `frame_timestamps` says when each sampled frame starts,
so `strip_card(strip, frame_timestamps, caption)` can put each tile's time under it and the caption
below: the picture jobs.report shows for a video (`report_image` gives it as PNG bytes for a row).
"""

from __future__ import annotations

import io
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline import schema

STRIP_FRAMES = 8
TILE_HEIGHT = 96
CARD_PADDING = 6
CAPTION_LINES = 6
BACKGROUND, INK, TIME_INK = (255, 255, 255), (20, 20, 20), (90, 90, 90)


def strip_positions(sampled: int, frames: int = STRIP_FRAMES) -> list[int]:
    """Which of the `sampled` frames go into the strip: up to `frames`, first and last included."""
    if sampled <= frames:
        return list(range(sampled))
    return sorted({round(i * (sampled - 1) / (frames - 1)) for i in range(frames)})


def tile(rgb: np.ndarray, height: int = TILE_HEIGHT) -> Image.Image:
    """One frame (uint8 [H, W, 3]) scaled to the strip's height."""
    image = Image.fromarray(rgb)
    width = max(1, round(image.width * height / image.height))
    return image.resize((width, height), Image.BILINEAR)


def frame_strip(tiles: Sequence[Image.Image], quality: int = 80) -> bytes:
    """Tiles of one size side by side, as JPEG bytes."""
    strip = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)), BACKGROUND)
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.width
    buf = io.BytesIO()
    strip.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def wrap(text: str, max_width: float, measure: Callable[[str], float], max_lines: int = CAPTION_LINES) -> list[str]:
    """Greedy word wrap; a word wider than the line is cut; the last line ends in "..." if text is left."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if measure(candidate) <= max_width or not line:
            line = candidate
            while measure(line) > max_width and len(line) > 1:  # a single over-long word
                cut = len(line) - 1
                while cut > 1 and measure(line[:cut]) > max_width:
                    cut -= 1
                lines.append(line[:cut])
                line = line[cut:]
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and measure(last + "...") > max_width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last + "..."]
    return lines


def strip_card(strip_jpeg: bytes, timestamps: Sequence[float], caption: str | None) -> Image.Image:
    """The strip with each tile's start time under it and the caption wrapped below it."""
    strip = Image.open(io.BytesIO(strip_jpeg)).convert("RGB")
    shown = [timestamps[i] for i in strip_positions(len(timestamps))] if timestamps else []
    font = _font()
    draw = ImageDraw.Draw(strip)
    measure = lambda s: draw.textlength(s, font=font)  # noqa: E731
    line_height = font.getbbox("Ag")[3] + 3
    lines = wrap(" ".join((caption or "(no caption)").split()), strip.width - 2 * CARD_PADDING, measure)
    height = strip.height + line_height + CARD_PADDING + len(lines) * line_height + CARD_PADDING
    card = Image.new("RGB", (strip.width, height), BACKGROUND)
    card.paste(strip, (0, 0))
    draw = ImageDraw.Draw(card)
    if shown:
        tile_width = strip.width / len(shown)
        for i, t in enumerate(shown):
            label = f"{t:.1f} s"
            draw.text((i * tile_width + (tile_width - measure(label)) / 2, strip.height + 2), label, fill=TIME_INK, font=font)
    y = strip.height + line_height + CARD_PADDING
    for line in lines:
        draw.text((CARD_PADDING, y), line, fill=INK, font=font)
        y += line_height
    return card


def report_image(thumbnail: bytes, row: dict) -> bytes | None:
    """jobs.report: the PNG to show for a label row's preview if it is a video row (its
    frame_timestamps are set): the strip, the times and the caption. None for image rows."""
    timestamps = row.get(schema.FRAME_TIMESTAMPS)
    if not timestamps or not thumbnail:
        return None
    try:
        card = strip_card(thumbnail, timestamps, row.get(schema.LABEL_CAPTION))
    except Exception:  # noqa: BLE001 - an undecodable preview shows as missing, as for images
        return None
    buf = io.BytesIO()
    card.save(buf, format="PNG")
    return buf.getvalue()
