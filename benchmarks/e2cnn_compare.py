"""HNetMNIST (hnets) against the same architecture written with e2cnn, measured in one run.

Run with ``make bench-e2cnn`` (it builds ``.venv-e2cnn``: e2cnn 0.2.3, the latest on
PyPI, calls ``ndarray.tostring``, which NumPy 2 removed, so it needs ``numpy<2``).

The e2cnn network mirrors ``HNetMNIST`` layer for layer, on the group SO(2) with
irreps of frequency 0 and 1 (``Rot2dOnR2(N=-1, maximum_frequency=1)``):

* an H-Net channel holds a complex order-0 stream (two real invariant numbers) and a
  complex order-1 stream (one frequency-1 irrep): in e2cnn, two fields,
  ``irrep(0) + irrep(0)`` and ``irrep(1)``, 4 real dimensions, the same dense width;
* ``R2Conv`` (5x5, SO(2)-steerable basis with its default radial rings), then
  ``NormNonLinearity('n_relu')`` (a ReLU of each field's norm with a bias: exactly
  the H-Net's magnitude nonlinearity per stream) after odd layers and
  ``GNormBatchNorm`` + the same nonlinearity after even ones (``NormBatchNorm``
  refuses fields that contain trivial irreps), ``PointwiseAvgPool(2)`` after blocks
  one and two;
* the last ``R2Conv`` maps to 10 fields of ``irrep(0) + irrep(0)`` (a complex
  order-0 stream per class), ``NormPool`` takes their magnitudes, then a spatial
  mean and a bias per class, as in ``HNetMNIST``.

Differences we cannot remove: e2cnn's basis has its own rings and band-limit
(its parameter count is printed beside ours), its nonlinearities act per field
(for the order-0 pair, per real component) rather than per complex stream.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from torch import nn

from hnets import count_parameters
from hnets.bench import compare_models, machine_description
from hnets.models import HNetMNIST


def build_e2cnn(channels: tuple[int, ...] = (8, 8, 16, 16, 32, 32), n_classes: int = 10):
    from e2cnn import gspaces
    from e2cnn import nn as enn
    from e2cnn.group import directsum

    gs = gspaces.Rot2dOnR2(N=-1, maximum_frequency=1)
    irr0, irr1 = gs.irrep(0), gs.irrep(1)
    complex0 = directsum([irr0, irr0], name="complex-order-0")

    class E2HNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_type = enn.FieldType(gs, [gs.trivial_repr])
            layers = []
            in_type = self.input_type
            for i, c in enumerate(channels):
                out_type = enn.FieldType(gs, c * [complex0, irr1])
                layers.append(enn.R2Conv(in_type, out_type, kernel_size=5, padding=2, bias=False))
                if i % 2 == 1:
                    layers.append(enn.GNormBatchNorm(out_type))
                layers.append(enn.NormNonLinearity(out_type, function="n_relu", bias=True))
                if i in (1, 3):
                    layers.append(enn.PointwiseAvgPool(out_type, 2))
                in_type = out_type
            self.features = enn.SequentialModule(*layers)
            head_type = enn.FieldType(gs, n_classes * [complex0])
            self.head = enn.R2Conv(in_type, head_type, kernel_size=5, padding=2, bias=False)
            self.pool = enn.NormPool(head_type)
            self.bias = nn.Parameter(torch.zeros(n_classes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = enn.GeometricTensor(x / 0.3, self.input_type)
            mags = self.pool(self.head(self.features(z))).tensor
            return mags.mean(dim=(-2, -1)) + self.bias

    return E2HNet()


def main(batch: int = 46, repeats: int = 7) -> None:
    torch.manual_seed(0)
    print(f"machine: {machine_description()}; batch {batch}")
    builds: dict[str, list[float]] = {"hnets HNetMNIST": [], "e2cnn": []}
    for _ in range(3):
        start = time.perf_counter()
        ours = HNetMNIST()
        builds["hnets HNetMNIST"].append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs = build_e2cnn()
        builds["e2cnn"].append(time.perf_counter() - start)
    models = {"hnets HNetMNIST": ours, "e2cnn": theirs}
    x = torch.rand(batch, 1, 28, 28)
    with torch.no_grad():
        theirs.eval()
        turned = (theirs(torch.rot90(x, 1, dims=(-2, -1))) - theirs(x)).abs().max().item()
    print(f"e2cnn model: max logit change under a quarter turn {turned:.1e} (sanity check)")
    timings = compare_models(models, batch=batch, repeats=repeats)
    train, inference = timings["train"], timings["inference"]
    print(f"\n{'':18s} {'params':>8s} {'build (s)':>10s} {'train img/s':>12s} {'infer img/s':>12s}")
    for i, name in enumerate(models):
        print(
            f"{name:18s} {count_parameters(models[name]):8d} "
            f"{statistics.median(builds[name]):10.3f} {batch / train[i].median_s:12.0f} "
            f"{batch / inference[i].median_s:12.0f}"
        )
    build_ratio = statistics.median(builds["e2cnn"]) / statistics.median(builds["hnets HNetMNIST"])
    print(
        f"\nhnets / e2cnn: build {build_ratio:.0f}x faster, "
        f"training {train[1].median_s / train[0].median_s:.2f}x faster, "
        f"inference {inference[1].median_s / inference[0].median_s:.2f}x faster"
    )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
