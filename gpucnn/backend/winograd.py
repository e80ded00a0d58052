"""Winograd's minimal filtering matrices for 3×3 convolutions, written once for both devices.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016), after
Winograd's "Arithmetic Complexity of Computations" (1980): m outputs of a 1-D correlation
with an r-tap filter g, read from a tile d of alpha = m + r - 1 inputs, are

    y = Aᵀ [ (G g) ⊙ (Bᵀ d) ]                       F(m, r): alpha multiplications, not m·r

and nesting the 1-D algorithm with itself gives the 2-D one for an m×m output tile:

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A                F(m×m, r×r): alpha² multiplications, not m²r²

Where the matrices come from (Toom-Cook): correlating d with g is multiplying two polynomials
and reading off the middle coefficients. Evaluate both at alpha points (G evaluates the filter,
Bᵀ the data), multiply the values point by point (the ⊙: the only multiplications that
involve both), and interpolate the product back (Aᵀ). The point ∞ stands for "the leading
coefficient", which is why each matrix has a row or column of a single 1. Every entry is a
small integer or a simple fraction, so in exact arithmetic the result IS the correlation; in
floating point it is the correlation up to rounding that grows with the size of the entries.

F(2×2, 3×3), points 0, 1, −1, ∞ (alpha = 4): 16 multiplications per 2×2 tile where the
direct sum needs 36 (2.25× fewer):

    Bᵀ = [[1,  0, -1,  0],      G = [[  1,    0,    0],      Aᵀ = [[1, 1,  1,  0],
          [0,  1,  1,  0],           [1/2,  1/2,  1/2],            [0, 1, -1, -1]]
          [0, -1,  1,  0],           [1/2, -1/2,  1/2],
          [0,  1,  0, -1]]           [  0,    0,    1]]

F(4×4, 3×3), points 0, ±1, ±2, ∞ (alpha = 6): 36 multiplications per 4×4 tile where the
direct sum needs 144 (4× fewer), with larger entries (4, 5, 8, 1/24), so more rounding:

    Bᵀ = [[4,  0, -5,  0, 1, 0],     G = [[ 1/4,     0,    0],    Aᵀ = [[1, 1,  1, 1,  1, 0],
          [0, -4, -4,  1, 1, 0],          [-1/6,  -1/6, -1/6],          [0, 1, -1, 2, -2, 0],
          [0,  4, -4, -1, 1, 0],          [-1/6,   1/6, -1/6],          [0, 1,  1, 4,  4, 0],
          [0, -2, -1,  2, 1, 0],          [1/24,  1/12,  1/6],          [0, 1, -1, 8, -8, 1]]
          [0,  2, -1, -2, 1, 0],          [1/24, -1/12,  1/6],
          [0,  4,  0, -5, 0, 1]]          [   0,     0,    1]]

Measured float32 error against float64 (``python benchmarks/winograd_error.py``, in
``benchmarks/results/winograd-error-cpu.md``: 32→64 and 64→64 channels, N(0, 1) inputs and
filters, the largest error relative to the largest output, worst of 5 seeds): F(2×2, 3×3) is
as accurate as im2col's GEMM (y 2.7e-7 to 3.8e-7 against im2col's 6.2e-7 to 7.5e-7; dw 9e-7
against 5e-7); F(4×4, 3×3) is 14-30× less accurate than F(2×2, 3×3) (y 4.8e-6 to 8.9e-6, dw
up to 1.1e-5; RMS errors 5-7× larger): still far inside what float32 training notices, and
inside the float32 tolerance the PyTorch parity tests use.

For a whole layer the element-wise products of all tiles and channels become alpha² matrix
products over channels: with V[ξ] (T, C) the transformed input tiles, U[ξ] (C, F) the
transformed filters (ξ one of the alpha² points of the tile), M[ξ] = V[ξ] @ U[ξ] (T, F) sums
over the input channels, and the output transform is applied to M tile by tile.
"""

from __future__ import annotations

import numpy as np

TILES = (2, 4)  # the output tile sizes m with matrices here: F(2×2, 3×3) and F(4×4, 3×3)

_MATRICES = {
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: (
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}


def matrices(m: int, dtype: object = np.float64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Bᵀ, G, Aᵀ) of F(m×m, 3×3) as arrays of ``dtype``.

    Shape: Bᵀ (alpha, alpha), G (alpha, 3), Aᵀ (m, alpha), alpha = m + 2.
    """
    if m not in _MATRICES:
        raise ValueError(f"Winograd: no F({m}x{m}, 3x3) here; the tile sizes are {TILES}")
    bt, g, at = _MATRICES[m]
    return tuple(np.array(a, dtype=dtype) for a in (bt, g, at))  # type: ignore[return-value]


def multiplications(m: int, channels: int, filters: int) -> tuple[int, int]:
    """Multiplications per m×m output tile of a C→F 3×3 layer: (Winograd, direct sum)."""
    alpha = m + 2
    return alpha * alpha * channels * filters, m * m * 9 * channels * filters


def tiles(size: int, m: int) -> int:
    """Tiles of m outputs along an axis of ``size`` outputs (the last one may be partial)."""
    return -(-size // m)


def tile_grid(name: str, t: int, n: int, oh: int, ow: int, m: int) -> tuple[int, int]:
    """(TH, TW) of ``n`` images of OH×OW outputs in m×m tiles, checked against the ``t`` tiles
    an array holds (a launcher's argument check; ``name`` is the launcher's).

    Raises:
        ValueError: t is not n·TH·TW.
    """
    th, tw = tiles(oh, m), tiles(ow, m)
    if t != n * th * tw:
        raise ValueError(
            f"{name}: {t} tiles, but {n} images of {oh}x{ow} outputs make {n}x{th}x{tw} "
            f"tiles of {m}x{m}"
        )
    return th, tw
