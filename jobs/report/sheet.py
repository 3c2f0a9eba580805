"""The contact sheet: the report's cards as one PNG grid, boxes drawn, the card's words under each.

Sized to be read at 100%: 384-pixel images, 16-pixel text.
"""

from __future__ import annotations

import functools
import math

from PIL import Image, ImageDraw, ImageFont

from jobs.report.cards import (
    ELLIPSIS,
    NO_THUMBNAIL,
    PALETTE,
    Card,
    fit,
    ink_on,
    printable,
    scale_box,
    truncate,
    wrap_text,
)
from pipeline import schema

SHEET_FILE = "contact_sheet.png"
DEFAULT_COLUMNS = 4
THUMB = 384  # longest side of every image on the sheet
PAD = 10
TEXT_SIZE = 17
LABEL_SIZE = 15
LINE_HEIGHT = 22
TEXT_LINES = 5  # under each image: "#N key", then what the card says
CELL_WIDTH = PAD + THUMB + PAD
CELL_HEIGHT = PAD + THUMB + PAD + TEXT_LINES * LINE_HEIGHT + PAD
BOX_LINE = 4  # box outline width, drawn inward from the box edge
GREY = (110, 110, 110)
ERROR_RED = (170, 0, 0)
MIN_LABEL_ROOM = 80  # pixels right of a box's left edge worth labelling in


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
        outline = ERROR_RED if card.failed else (220, 220, 220)
        draw.rectangle([cell_x, cell_y, cell_x + CELL_WIDTH - 1, cell_y + CELL_HEIGHT - 1], outline=outline)
        draw.rectangle([cell_x + PAD, cell_y + PAD, cell_x + PAD + THUMB - 1, cell_y + PAD + THUMB - 1], fill=(238, 238, 238))
        if card.image is None:
            missing = NO_THUMBNAIL if not card.has_thumbnail else "thumbnail could not be decoded"
            draw.text((cell_x + PAD + 8, cell_y + PAD + 8), missing, fill=GREY, font=font(TEXT_SIZE))
            url = card.row.get(schema.URL)
            for i, line in enumerate(wrap_text(url, THUMB - 16, font(TEXT_SIZE).getlength, 4)):
                draw.text((cell_x + PAD + 8, cell_y + PAD + 8 + (i + 1) * LINE_HEIGHT), line, fill=GREY, font=font(TEXT_SIZE))
        else:
            image = boxed_thumbnail(card)
            sheet.paste(image, thumb_origin(index, columns, image.size))
        draw_words(draw, card, cell_x + PAD, cell_y + PAD + THUMB + PAD)
    return sheet


def boxed_thumbnail(card: Card) -> Image.Image:
    image = card.image.convert("RGB").resize(fit(card.image.size, THUMB), Image.Resampling.LANCZOS)
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
    text_width, height = label_font.getlength(text) + 6, LABEL_SIZE + 6
    x = max(0, min(xy[0], width - text_width))
    y = xy[1] - height if xy[1] >= height else xy[1] + BOX_LINE  # above the box, else inside
    draw.rectangle([x, y, x + text_width, y + height - 1], fill=color)
    draw.text((x + 3, y + 2), text, fill=ink_on(color), font=label_font)


def draw_words(draw: ImageDraw.ImageDraw, card: Card, x: int, y: int) -> None:
    """The header, then card.lines(), wrapped into TEXT_LINES - 1 lines; answers in box colours."""
    text_font = font(TEXT_SIZE)
    header = truncate(f"#{card.number}  {printable(card.row.get(schema.KEY))}  {card.row.get(schema.TASK) or ''}", THUMB, text_font.getlength)
    draw.text((x, y), header, fill=GREY, font=text_font)
    row = 1
    for line in card.lines():
        room = TEXT_LINES - row
        if room <= 0:
            break
        color = ERROR_RED if line.kind == "error" else GREY if line.kind == "empty" else (0, 0, 0)
        if line.kind == "answer" and line.box is not None:
            color = PALETTE[line.box % len(PALETTE)]
        wrapped = wrap_text(line.text, THUMB, text_font.getlength, room if line.kind != "answer" else 1)
        for text in wrapped:
            draw.text((x, y + row * LINE_HEIGHT), text, fill=color, font=text_font)
            row += 1
