"""Write a small labelled image folder in the layout ``hnets --dataset folder:PATH`` reads.

    python examples/make_shapes_folder.py /tmp/shapes        # then see docs/data.md

Three classes of outlined shapes (``triangle``, ``square``, ``star``), each drawn at a
random position, size and rotation, in colour on a dark background at two image
sizes, the way a user's own rotated images (parts on a conveyor, cells, galaxies)
come in all orientations: ``PATH/train/<class>/*.png`` (40 per class) and
``PATH/test/<class>/*.png`` (20 per class). No ``valid/``: hnets then holds out a
stratified sixth of train. Seeded, so the same command writes the same files.
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

CORNERS = {"triangle": 3, "square": 4, "star": 10}


def shape(kind: str, rng: random.Random) -> Image.Image:
    """One image of ``kind``: 40x40 or 56x48, RGB, the outline turned by a random angle."""
    width, height = rng.choice([(40, 40), (56, 48)])
    image = Image.new("RGB", (width, height), (rng.randint(0, 40),) * 3)
    draw = ImageDraw.Draw(image)
    n = CORNERS[kind]
    radius = rng.uniform(0.25, 0.4) * min(width, height)
    cx = rng.uniform(radius, width - radius)
    cy = rng.uniform(radius, height - radius)
    turn = rng.uniform(0, 2 * math.pi)
    points = []
    for k in range(n):
        r = radius * (0.45 if kind == "star" and k % 2 else 1.0)
        angle = turn + 2 * math.pi * k / n
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    colour = tuple(rng.randint(150, 255) for _ in range(3))
    draw.polygon(points, outline=colour, width=3)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to write (created)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for split, count in (("train", 40), ("test", 20)):
        for kind in CORNERS:
            folder = args.out / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                shape(kind, rng).save(folder / f"{i:03d}.png")
    print(f"wrote {args.out}: train/ and test/, classes {', '.join(CORNERS)}")


if __name__ == "__main__":
    main()
