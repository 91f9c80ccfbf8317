r"""Circular-harmonic filter bases on the pixel grid (pure functions, no parameters).

A harmonic filter of rotation order :math:`m` is

.. math::

    W_m(r, \phi) = R(r)\, e^{i(m\phi + \beta)},

a radial profile :math:`R` times a circular harmonic. We discretise :math:`R` on
``n_rings`` rings: the profile is the piecewise-linear ("hat") interpolation of
one value per ring, evaluated at each pixel's radius. Each (order, ring) pair gives
one complex basis image :math:`B_{m,j}`, so that a filter is
:math:`W_m = e^{i\beta}\sum_j w_j B_{m,j}` with real ring weights :math:`w_j`.

Conventions (the whole package follows them):

* Pixel ``(row, col)`` of a ``k x k`` kernel sits at ``x = col - (k-1)/2`` and
  ``y = (k-1)/2 - row`` (``y`` points *up*, as the image is displayed), and
  :math:`\phi = \operatorname{atan2}(y, x)` is measured counter-clockwise.
* Only pixels inside the inscribed disc (radius ``k/2``) are used, so the filter
  support is as round as the grid allows.
* For :math:`m \neq 0` the centre pixel is zero (the harmonic is undefined there),
  and the rings start at radius 1, so that every ring touches at least one pixel:
  no parameter is ever without a gradient.
* The angular part is computed as :math:`((x + iy)/\rho)^m` from the integer pixel
  offsets. Rotating the grid by 90 degrees maps ``x + iy`` to ``i (x + iy)`` exactly,
  so the discrete basis is *exactly* (bit for bit) equivariant to 90-degree rotations.
* Each basis image is scaled to unit L2 norm, so ring weights of equal size give
  filters of equal energy whatever the ring's circumference.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["default_n_rings", "ring_radii", "harmonic_basis"]


def _check_kernel_size(kernel_size: int) -> None:
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be a positive odd integer (a harmonic filter needs a centre "
            f"pixel); got {kernel_size!r}"
        )


def _pixel_offsets(kernel_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer offsets ``x``, ``y`` (y up) and the disc mask of a ``k x k`` kernel."""
    half = (kernel_size - 1) // 2
    rows, cols = np.mgrid[0:kernel_size, 0:kernel_size]
    x = (cols - half).astype(np.int64)
    y = (half - rows).astype(np.int64)
    inside = 4 * (x * x + y * y) <= kernel_size * kernel_size  # rho <= k / 2
    return x, y, inside


def _distinct_radii(kernel_size: int, order: int) -> np.ndarray:
    x, y, inside = _pixel_offsets(kernel_size)
    r2 = np.unique((x * x + y * y)[inside])
    if order != 0:
        r2 = r2[r2 > 0]
    return np.sqrt(r2.astype(np.float64))


def default_n_rings(kernel_size: int) -> int:
    """Rings used when ``n_rings`` is not given: ``k // 2 + 2``, capped so each ring sees a pixel.

    Gives 2 for 3x3, 4 for 5x5 (the paper's Rot-MNIST setting), 5 for 7x7, 6 for 9x9.
    """
    _check_kernel_size(kernel_size)
    if kernel_size == 1:
        return 1
    return min(kernel_size // 2 + 2, len(_distinct_radii(kernel_size, 1)))


def ring_radii(kernel_size: int, n_rings: int, order: int) -> np.ndarray:
    """Radii of the rings for rotation order ``order`` (float64 array of length ``n_rings``).

    Evenly spaced from 0 (order 0) or 1 (other orders) to the largest pixel radius
    inside the kernel's disc.
    """
    _check_kernel_size(kernel_size)
    radii = _distinct_radii(kernel_size, order)
    if len(radii) == 0:
        raise ValueError(f"a {kernel_size}x{kernel_size} kernel cannot hold rotation order {order}")
    start = 0.0 if order == 0 else 1.0
    if n_rings == 1:
        return np.array([radii[-1] if order != 0 else 0.0])
    return np.linspace(start, radii[-1], n_rings)


def _hat_weights(rho: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Linear-interpolation weights of each ring at radius ``rho``: shape (n_rings, *rho.shape)."""
    if len(radii) == 1:
        return np.ones((1, *rho.shape))
    spacing = radii[1] - radii[0]
    return np.clip(1.0 - np.abs(rho[None] - radii[:, None, None]) / spacing, 0.0, None)


def harmonic_basis(
    kernel_size: int,
    max_order: int,
    n_rings: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Unit-norm circular-harmonic basis images for orders ``0..max_order``.

    Returns:
        A real tensor of shape ``(max_order + 1, n_rings, 2, k, k)``; index ``[m, j, 0]``
        is the real part and ``[m, j, 1]`` the imaginary part of :math:`B_{m,j}`.
        Negative orders are the complex conjugates of these.

    Raises:
        ValueError: for an even kernel size, a negative order, or more rings than the
            kernel can hold (a ring that touches no pixel would be a dead parameter).
    """
    _check_kernel_size(kernel_size)
    if max_order < 0:
        raise ValueError(f"max_order must be >= 0; got {max_order}")
    if n_rings is None:
        n_rings = default_n_rings(kernel_size)
    if n_rings < 1:
        raise ValueError(f"n_rings must be >= 1; got {n_rings}")
    x, y, inside = _pixel_offsets(kernel_size)
    r2 = x * x + y * y
    rho = np.sqrt(r2.astype(np.float64))
    z = x.astype(np.complex128) + 1j * y.astype(np.complex128)
    basis = np.zeros((max_order + 1, n_rings, kernel_size, kernel_size), dtype=np.complex128)
    for m in range(max_order + 1):
        radii = ring_radii(kernel_size, n_rings, m)
        hats = _hat_weights(rho, radii) * inside
        if m == 0:
            angular = np.ones_like(z)
        else:
            hats = hats * (r2 > 0)
            safe_rho = np.where(r2 > 0, rho, 1.0)
            angular = z**m / safe_rho**m  # exact 90-degree symmetry, see module docstring
        for j in range(n_rings):
            if not np.any(hats[j] > 0):
                raise ValueError(
                    f"n_rings={n_rings} is too many for kernel_size={kernel_size}: the ring at "
                    f"radius {radii[j]:.3f} of order {m} touches no pixel "
                    f"(at most {default_n_rings(kernel_size)} recommended)"
                )
            image = hats[j] * angular
            basis[m, j] = image / np.sqrt(np.sum(np.abs(image) ** 2))
    stacked = np.stack([basis.real, basis.imag], axis=2)
    return torch.from_numpy(stacked).to(dtype)
