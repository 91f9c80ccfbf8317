r"""Magnitude batch normalisation: :class:`HBatchNorm`."""

from __future__ import annotations

import torch
from torch import nn

from .layout import check_harmonic, from_pixel_major, pair_dot, per_pair, to_pixel_major

__all__ = ["HBatchNorm"]


def power_scale(power: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """The magnitude batch norm's factor per stream: ``weight / sqrt(power + eps)``."""
    scale = (power + eps).rsqrt()
    return scale if weight is None else scale * weight.to(scale.dtype)


class HBatchNorm(nn.Module):
    r"""Batch normalisation of magnitudes, per channel and rotation order, phase kept:

    .. math::

        z_{c,m} \;\mapsto\; \gamma_{c,m}\, \frac{z_{c,m}}{\sqrt{E[|z_{c,m}|^2] + \epsilon}}

    where the expectation runs over the batch and all positions. Each stream is only
    multiplied by a positive real number that does not depend on the position, so
    the layer is exactly rotation equivariant in training *and* eval mode, unlike
    batch norm applied to real and imaginary parts separately (which breaks the
    coupling of the two parts that a rotation relies on). There is no shift: a
    shift of the magnitude belongs in the bias of the :class:`HNonLinearity` that
    follows (it is how the original "batch norm with ReLU" block is built here).

    In training mode the batch statistic is used and a running estimate is updated
    with ``momentum``; in eval mode the running estimate is used.

    Shape:
        ``(B, C, M, 2, H, W)`` -> same shape.
    """

    def __init__(
        self,
        channels: int,
        max_order: int = 1,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.max_order = max_order
        self.eps = eps
        self.momentum = momentum
        factory = {"device": device, "dtype": dtype}
        shape = (channels, max_order + 1)
        if affine:
            self.weight = nn.Parameter(torch.ones(shape, **factory))
        else:
            self.register_parameter("weight", None)
        self.register_buffer("running_power", torch.ones(shape, **factory))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @torch.no_grad()
    def update_running_power(self, power: torch.Tensor) -> None:
        """Move the running estimate towards a batch's power ``(C, M)`` by ``momentum``."""
        self.running_power.lerp_(power.detach().to(self.running_power.dtype), self.momentum)
        self.num_batches_tracked.add_(1)

    def stream_scale(self, z: torch.Tensor) -> torch.Tensor:
        """The factor each stream is multiplied by, ``(C, M)`` in ``z``'s dtype.

        In training mode this is where the batch statistic is taken (with gradient)
        and the running estimate updated, exactly as :meth:`forward` does. Followed by
        a nonlinearity, the two run fused in :class:`hnets.nn.HBlock`.
        """
        check_harmonic(z, channels=self.channels, orders=self.max_order + 1, where="HBatchNorm")
        if self.training:
            pairs = to_pixel_major(z)  # (B, H, W, C, M, 2)
            pf = pairs if pairs.dtype in (torch.float32, torch.float64) else pairs.float()
            power = pair_dot(pf, pf).mean(dim=(0, 1, 2))  # (C, M)
            self.update_running_power(power)
        else:
            power = self.running_power
        return self.scale_of(power).to(z.dtype)

    def scale_of(self, power: torch.Tensor) -> torch.Tensor:
        """``weight / sqrt(power + eps)`` per stream ``(C, M)``; eval mode multiplies by
        ``scale_of(running_power)``."""
        return power_scale(power, self.weight, self.eps)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        scale = self.stream_scale(z)
        return from_pixel_major(to_pixel_major(z) * per_pair(scale))

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, max_order={self.max_order}, eps={self.eps}, "
            f"momentum={self.momentum}, affine={self.weight is not None}"
        )
