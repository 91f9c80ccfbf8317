r"""Skip connections between harmonic maps of the same rotation orders: :class:`HSkip`."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["HSkip", "harmonic_cat"]


def harmonic_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Stack two harmonic maps of the same orders along channels: ``(B, C1 + C2, M, 2, H, W)``."""
    if a.shape[2:] != b.shape[2:]:
        raise ValueError(
            "harmonic_cat: the maps must share orders and size; got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    return torch.cat([a, b], dim=1)


class HSkip(nn.Module):
    r"""Join a harmonic map with a skip connection: ``x + skip`` or ``cat([x, skip])``.

    Both maps carry the same rotation orders, and order :math:`m` of each picks up the
    same factor :math:`e^{im\theta}` under a rotation, so their sum and their channel-wise
    concatenation are equivariant whenever both inputs are.

    Args:
        mode: ``"add"`` (same channels) or ``"concat"`` (channels add up).

    Shape:
        ``(B, C, M, 2, H, W)`` and ``(B, C', M, 2, H, W)`` -> ``(B, C, M, 2, H, W)`` (add,
        ``C' == C``) or ``(B, C + C', M, 2, H, W)`` (concat).
    """

    def __init__(self, mode: str = "concat") -> None:
        super().__init__()
        if mode not in ("add", "concat"):
            raise ValueError(f"HSkip: mode must be 'add' or 'concat'; got {mode!r}")
        self.mode = mode

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.mode == "add":
            return x + skip
        return torch.cat([x, skip], dim=1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
