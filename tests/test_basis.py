"""The circular-harmonic basis: shape, normalisation, exact quarter-turn symmetry, ring support."""

import numpy as np
import pytest
import torch

from hnets.basis import default_n_rings, harmonic_basis, ring_radii


@pytest.mark.parametrize("k", [3, 5, 7, 9])
@pytest.mark.parametrize("max_order", [0, 1, 3])
def test_shape_and_unit_norm(k, max_order):
    basis = harmonic_basis(k, max_order, dtype=torch.float64)
    rings = default_n_rings(k)
    assert basis.shape == (max_order + 1, rings, 2, k, k)
    norms = basis.square().sum(dim=(2, 3, 4))
    torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("k", [3, 5, 7, 9])
@pytest.mark.parametrize("m", [0, 1, 2, 3])
def test_quarter_turn_of_the_kernel_multiplies_order_m_by_i_to_the_minus_m_exactly(k, m):
    """B_m(R p) = i^m B_m(p), so the rotated image B_m(R^-1 p) is (-i)^m B_m, bit for bit."""
    basis = harmonic_basis(k, 3, dtype=torch.float64)[m].numpy()
    z = basis[:, 0] + 1j * basis[:, 1]  # (rings, k, k)
    # sampling a rotated function: B(R^{-1} p) on the grid is np.rot90(B, k=1)
    rotated = np.rot90(z, 1, axes=(-2, -1))
    expected = z * (-1j) ** m
    # (-1j)**m is exact for integer m, so compare exactly (up to the sign of zero)
    assert np.array_equal(rotated.real + 0.0, expected.real + 0.0)
    assert np.array_equal(rotated.imag + 0.0, expected.imag + 0.0)


@pytest.mark.parametrize("k", [3, 5, 7, 9])
def test_angular_part_is_the_circular_harmonic(k):
    """Away from the centre, B_m / |B_m| = e^{i m phi} with phi counter-clockwise, y up."""
    basis = harmonic_basis(k, 2, dtype=torch.float64).numpy()
    half = (k - 1) / 2
    rows, cols = np.mgrid[0:k, 0:k]
    phi = np.arctan2(half - rows, cols - half)
    for m in (1, 2):
        z = basis[m, :, 0] + 1j * basis[m, :, 1]
        total = z.sum(axis=0)
        nz = np.abs(total) > 1e-9
        np.testing.assert_allclose(
            total[nz] / np.abs(total[nz]), np.exp(1j * m * phi[nz]), atol=1e-12
        )


@pytest.mark.parametrize("k", [3, 5, 7, 9])
def test_every_ring_touches_a_pixel(k):
    basis = harmonic_basis(k, 3)
    energy = basis.square().sum(dim=(2, 3, 4))
    assert (energy > 0).all()


def test_default_rings_match_the_paper_for_5x5():
    assert default_n_rings(5) == 4
    assert [default_n_rings(k) for k in (3, 7, 9)] == [2, 5, 6]
    np.testing.assert_allclose(ring_radii(5, 4, 0)[[0, -1]], [0.0, np.sqrt(5)])
    np.testing.assert_allclose(ring_radii(5, 4, 1)[0], 1.0)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="odd"):
        harmonic_basis(4, 1)
    with pytest.raises(ValueError, match="touches no pixel"):
        harmonic_basis(3, 1, n_rings=6)
    with pytest.raises(ValueError, match="max_order"):
        harmonic_basis(5, -1)


def test_centre_pixel_is_zero_for_nonzero_orders():
    basis = harmonic_basis(5, 2)
    assert basis[1:, :, :, 2, 2].abs().max() == 0
    assert basis[0, 0, 0, 2, 2] > 0
