"""Scenes of 1-3 filled shapes on a plain light background, and the right answer for each task.

The world, exactly: any image size and aspect ratio within the corpus filters (up to 6:1);
1 to 3 non-overlapping shapes, each a circle, square or triangle (upright, base at the bottom),
each red, green, blue or yellow, no two with the same colour and kind; the background white,
light grey or a pale tint; each shape's bounding box a square whose side is 12%-50% of the
image's shorter side. Shapes are named left to right (by the centre of their boxes).

Answers, for the prompts pipeline.labeling sends (the model's template is "base": the query
verbatim):

    caption           "a red circle, a blue square and a green triangle"
    grounded_caption  "a red circle [[102,341,360,598]], a blue square [[...]] and ..."
    ground            "Where is the red circle? ..." -> "[[102,341,360,598]]"
    vqa               "How many shapes are there?" -> "3"

Boxes are in the released grounding format (model.boxes): 0..999, zero-padded.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from model.boxes import format_box

KINDS = ("circle", "square", "triangle")
COLOURS = {"red": (214, 40, 40), "green": (46, 160, 67), "blue": (37, 87, 214), "yellow": (240, 196, 25)}
COLOUR_JITTER = 18
MIN_SIDE, MAX_SIDE = 0.12, 0.50  # of the shorter image side
GAP = 0.02  # of the shorter side, kept free between boxes
COUNT_QUESTION = "How many shapes are there?"
COUNT_WORDS = {1: "1", 2: "2", 3: "3"}
# (share of scenes, smallest, largest aspect ratio): mostly ordinary photo shapes, some panoramas
ASPECT_BANDS = ((0.70, 1.0, 2.0), (0.20, 2.0, 4.0), (0.10, 4.0, 6.0))


@dataclass(frozen=True)
class Shape:
    colour: str
    kind: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels (edges, exclusive end)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"

    @property
    def centre_x(self) -> float:
        return (self.box[0] + self.box[2]) / 2


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: tuple[int, int, int]
    shapes: tuple[Shape, ...]  # left to right
    fills: tuple[tuple[int, int, int], ...]  # the drawn colour of each shape

    def box_text(self, shape: Shape) -> str:
        return format_box(*shape.box, self.width, self.height)

    def caption(self) -> str:
        return join_phrases([f"a {s.name}" for s in self.shapes])

    def grounded_caption(self) -> str:
        return join_phrases([f"a {s.name} {self.box_text(s)}" for s in self.shapes])

    def count(self) -> str:
        return COUNT_WORDS[len(self.shapes)]

    def find(self, name: str) -> Shape | None:
        """The shape a ground phrase names ("the red circle", "a red circle", "red circle")."""
        words = name.lower().split()
        if words and words[0] in ("a", "an", "the"):
            words = words[1:]
        return next((s for s in self.shapes if s.name == " ".join(words)), None)


def join_phrases(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def sample_size(rng: random.Random, short_range=(96, 720)) -> tuple[int, int]:
    """A (width, height): shorter side log-uniform in short_range, aspect from ASPECT_BANDS."""
    short = round(math.exp(rng.uniform(math.log(short_range[0]), math.log(short_range[1]))))
    pick, total = rng.random(), 0.0
    for share, low, high in ASPECT_BANDS:
        total += share
        if pick <= total:
            break
    aspect = math.exp(rng.uniform(math.log(low), math.log(high)))
    long = min(round(short * aspect), short * 6)
    return (long, short) if rng.random() < 0.5 else (short, long)


def sample_background(rng: random.Random) -> tuple[int, int, int]:
    kind = rng.choice(("white", "grey", "tint"))
    if kind == "white":
        v = rng.randint(246, 255)
        return (v, v, v)
    if kind == "grey":
        v = rng.randint(205, 235)
        return (v, v, v)
    return tuple(rng.randint(222, 252) for _ in range(3))


def sample_scene(rng: random.Random, size: tuple[int, int] | None = None, count: int | None = None,
                 share: str | None = None) -> Scene:
    """share="kind" or "colour": every shape has the same kind (or colour), the others differ."""
    width, height = size or sample_size(rng)
    short = min(width, height)
    count = count or rng.randint(1, 3)
    if share == "kind":
        kind = rng.choice(KINDS)
        kinds = [(c, kind) for c in rng.sample(list(COLOURS), count)]
    elif share == "colour":
        colour = rng.choice(list(COLOURS))
        kinds = [(colour, k) for k in rng.sample(KINDS, count)]
    else:
        kinds = rng.sample([(c, k) for c in COLOURS for k in KINDS], count)
    for _ in range(200):  # rejection sampling of sizes and places; shrink if crowded
        boxes = []
        for _ in kinds:
            side = rng.uniform(MIN_SIDE, MAX_SIDE) * short
            for _ in range(50):
                x0, y0 = rng.uniform(0, width - side), rng.uniform(0, height - side)
                box = (x0, y0, x0 + side, y0 + side)
                if all(_apart(box, other, GAP * short) for other in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == count:
            break
    else:
        raise RuntimeError(f"could not place {count} shapes in {width}x{height}")
    # whole pixels, so the drawn shape and its box agree exactly
    boxes = [tuple(float(round(v)) for v in b) for b in boxes]
    shapes = sorted((Shape(c, k, b) for (c, k), b in zip(kinds, boxes)), key=lambda s: s.centre_x)
    fills = tuple(tuple(min(255, max(0, v + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for v in COLOURS[s.colour]) for s in shapes)
    return Scene(width, height, sample_background(rng), tuple(shapes), fills)


def _apart(a, b, gap: float) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def render(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (scene.width, scene.height), scene.background)
    draw = ImageDraw.Draw(image)
    for shape, fill in zip(scene.shapes, scene.fills):
        x0, y0, x1, y1 = shape.box
        # PIL's end coordinates are inclusive: the last covered pixel is x1 - 1
        if shape.kind == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif shape.kind == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        else:
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=fill)
    return image


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
