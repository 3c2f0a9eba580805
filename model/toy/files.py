"""Scene images as files a job can download, with the truth beside them.

    python -m model.toy.files OUT [--count N --seed S]     # N fresh scenes, sizes from the world
    python -m model.toy.files examples/scenes --demo        # the set `make demo` labels

Writes OUT/NAME.png|.jpg and OUT/truth.jsonl, one line per image: {"file", "width", "height",
"shapes": [{"name", "box"}]}, with width, height and boxes as displayed (every few images is a
JPEG stored sideways with an EXIF orientation tag, which a viewer, and the pipeline, turns upright).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from model.toy import scenes

EXIF_ORIENTATION = 0x0112
# The demo set: (width, height, shapes): photo sizes, portrait, panoramas, one of each count.
DEMO_LAYOUT = [
    (640, 480, 3), (480, 640, 2), (800, 400, 3), (512, 512, 1), (960, 320, 3),
    (360, 640, 2), (600, 600, 3), (1024, 576, 2), (700, 500, 1),
]
DEMO_SEED = 2026


@dataclass(frozen=True)
class SceneFile:
    name: str
    data: bytes
    content_type: str
    scene: scenes.Scene

    def truth(self) -> dict:
        shapes = [{"name": s.name, "box": list(s.box)} for s in self.scene.shapes]
        return {"file": self.name, "width": self.scene.width, "height": self.scene.height, "shapes": shapes}


def sideways_jpeg(image: Image.Image, quality: int = 92) -> bytes:
    """JPEG bytes stored rotated a quarter turn, tagged EXIF orientation 6 (turn 90 degrees
    clockwise to view), so that it displays as `image`."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return scenes.encode(image.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=quality, exif=exif.tobytes())


def scene_file(index: int, scene: scenes.Scene, kind: str) -> SceneFile:
    image = scenes.render(scene)
    if kind == "png":
        return SceneFile(f"scene-{index:04d}.png", scenes.encode(image, "PNG"), "image/png", scene)
    if kind == "jpeg":
        return SceneFile(f"scene-{index:04d}.jpg", scenes.encode(image, "JPEG", quality=90), "image/jpeg", scene)
    return SceneFile(f"scene-{index:04d}-exif.jpg", sideways_jpeg(image), "image/jpeg", scene)


def fresh_files(count: int, seed: int, exif_every: int = 5) -> list[SceneFile]:
    """count scenes drawn from the world: PNG and JPEG alternating, every exif_every-th sideways."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        kind = "exif" if exif_every and i % exif_every == exif_every - 1 else ("png", "jpeg")[i % 2]
        out.append(scene_file(i, scenes.sample_scene(rng), kind))
    return out


def demo_files() -> list[SceneFile]:
    rng = random.Random(DEMO_SEED)
    out = []
    for i, (width, height, count) in enumerate(DEMO_LAYOUT):
        kind = "exif" if i == 4 else ("png", "jpeg")[i % 2]
        out.append(scene_file(i, scenes.sample_scene(rng, (width, height), count), kind))
    return out


def write_files(files: list[SceneFile], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        (out / f.name).write_bytes(f.data)
    truth = out / "truth.jsonl"
    truth.write_text("".join(json.dumps(f.truth()) + "\n" for f in files))
    return truth


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.toy.files", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--demo", action="store_true", help="the fixed demo set instead of fresh scenes")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    files = demo_files() if args.demo else fresh_files(args.count, args.seed)
    print(write_files(files, args.out))


if __name__ == "__main__":
    main()
