r"""Upsampling of harmonic maps: :class:`HUpsample`."""

from __future__ import annotations

from typing import List, Optional  # noqa: UP035 (TorchScript reads these annotations)

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HUpsample", "upsample"]


def upsample(
    z: torch.Tensor,
    scale_factor: int = 2,
    size: Optional[List[int]] = None,  # noqa: UP006, UP045
    mode: str = "bilinear",
) -> torch.Tensor:
    """Resample every real and imaginary map of ``z`` (see :class:`HUpsample`)."""
    b, c, m, two, h, w = z.shape
    x = z.reshape(b, c * m * two, h, w)
    if size is None:
        out = F.interpolate(x, scale_factor=float(scale_factor), mode=mode, align_corners=False)
    else:
        out = F.interpolate(x, size=size, mode=mode, align_corners=False)
    return out.reshape(b, c, m, two, out.shape[-2], out.shape[-1])


class HUpsample(nn.Module):
    r"""Bilinear upsampling of each real and imaginary plane of a harmonic map.

    Interpolation is linear and acts on every plane alike, so it never mixes the real
    and imaginary parts of a stream and keeps its phase: a rotation's factor
    :math:`e^{im\theta}` passes through unchanged. With ``align_corners=False`` the
    output grid maps onto the input grid by an affine map that sends the image centre to
    the image centre, so resampling commutes with flips and transposes, hence **exactly**
    with quarter turns (``torch.rot90``), for every input size, an integer
    ``scale_factor`` or a target ``size`` (pass ``size`` to ``forward``, e.g. a skip
    connection's height and width). It is *not* exact where the output shape itself
    breaks the symmetry: a fixed non-square ``size`` on a rotated (transposed) input.
    Other angles are equivariant up to the grid's discretisation, as for every layer.

    Args:
        scale_factor: integer factor on both sides (used when ``forward`` gets no ``size``).
        mode: ``"bilinear"`` (default) or ``"bicubic"`` (also exact under quarter turns).

    Shape:
        ``(B, C, M, 2, H, W)`` -> ``(B, C, M, 2, H * s, W * s)`` or ``(..., *size)``.
    """

    def __init__(self, scale_factor: int = 2, mode: str = "bilinear") -> None:
        super().__init__()
        if int(scale_factor) != scale_factor or scale_factor < 1:
            raise ValueError(
                f"HUpsample: scale_factor must be a positive integer; got {scale_factor}"
            )
        if mode not in ("bilinear", "bicubic"):
            raise ValueError(f"HUpsample: mode must be 'bilinear' or 'bicubic'; got {mode!r}")
        self.scale_factor = int(scale_factor)
        self.mode = mode

    def forward(
        self,
        z: torch.Tensor,
        size: Optional[List[int]] = None,  # noqa: UP006, UP045
    ) -> torch.Tensor:
        return upsample(z, self.scale_factor, size, self.mode)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}"
