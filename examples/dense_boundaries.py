"""Train a small fully convolutional H-Net to find shape outlines, and show what it finds.

    python examples/dense_boundaries.py boundaries.png            # about a minute on one core

Each image is a few random filled shapes (discs, squares, triangles, at random positions,
sizes and rotations) with noise; the target marks the pixels on their outlines, a task
that turns with the image, like the boundary detection of Worrall et al. (2017). The
model is ``hnets.HNet(head="dense")``: its per-pixel scores turn with the input exactly
under quarter turns (checked at the end with ``hnets.check_equivariance``). Writes a PNG
of test images, their targets and the predicted outline probabilities.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

import hnets
from hnets.equivariance import format_rows

SIZE = 32


def polygon_mask(cx: float, cy: float, radius: float, corners: int, turn: float) -> torch.Tensor:
    """A filled regular polygon (``corners`` = 0: a disc) on the ``SIZE x SIZE`` grid."""
    y, x = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    dx, dy = x - cx, y - cy
    if corners == 0:
        return (dx.square() + dy.square()).sqrt() <= radius
    # inside every edge's half-plane: distance along each edge normal <= apothem
    inside = torch.ones(SIZE, SIZE, dtype=torch.bool)
    apothem = radius * math.cos(math.pi / corners)
    for i in range(corners):
        a = turn + (2 * i + 1) * math.pi / corners
        inside &= dx * math.cos(a) + dy * math.sin(a) <= apothem
    return inside


def make_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(n, 1, SIZE, SIZE)`` and outline targets ``(n, SIZE, SIZE)`` (0 or 1)."""
    images = torch.zeros(n, 1, SIZE, SIZE)
    targets = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            u = torch.rand(5, generator=generator)
            corners = [0, 3, 4][int(u[0] * 3)]
            mask = polygon_mask(6 + u[1] * 20, 6 + u[2] * 20, 4 + u[3] * 5, corners, u[4] * 6.3)
            images[i, 0][mask] = 0.4 + 0.6 * float(torch.rand(1, generator=generator))
        filled = (images[i] > 0).float()
        # an outline pixel is filled with an empty 4-neighbour, or empty with a filled one
        grown = F.max_pool2d(filled, 3, 1, 1)
        shrunk = -F.max_pool2d(-filled, 3, 1, 1)
        targets[i] = (grown - shrunk)[0] > 0
    images += 0.05 * torch.randn(images.shape, generator=generator)
    return images, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="the PNG to write")
    parser.add_argument("--steps", type=int, default=150, help="training steps (default 150)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = torch.Generator().manual_seed(args.seed)
    model = hnets.HNet(in_channels=1, num_classes=2, channels=(8, 12), depth=1, head="dense",
                       kernel_size=5, input_scale=1.0)  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    weight = torch.tensor([1.0, 3.0])  # outlines are rare: weigh them up
    model.train()
    for step in range(args.steps):
        images, targets = make_batch(16, data)
        loss = F.cross_entropy(model(images), targets, weight=weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}")

    model.eval()
    images, targets = make_batch(4, data)
    with torch.no_grad():
        prob = model(images).softmax(dim=1)[:, 1]
    hit = (prob > 0.5) == targets.bool()
    print(f"test pixels right: {hit.float().mean().item():.1%}")
    print(format_rows(hnets.check_equivariance(model, images, angles=(90, 180, 45))))
    save_figure(images, targets, prob, args.out)
    print(f"wrote {args.out}")


def save_figure(images: torch.Tensor, targets: torch.Tensor, prob: torch.Tensor, out: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 2 * len(images)), layout="constrained")
    axes = fig.subplots(len(images), 3, squeeze=False)
    for i, row in enumerate(axes):
        for ax, (shown, title) in zip(
            row, [(images[i, 0], "image"), (targets[i], "outline"), (prob[i], "H-Net")], strict=True
        ):
            ax.imshow(shown.numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.savefig(out, dpi=80)


if __name__ == "__main__":
    main()
