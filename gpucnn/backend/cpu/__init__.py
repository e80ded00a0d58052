"""CPU kernels (NumPy; Numba where it pays). Every function here has a CUDA twin of the same name.

The window kernels share one layout: ``cols`` is (C*k*k, N*OH*OW), rows ordered (c, i, j) for
channel c and kernel offset (i, j), columns ordered (n, oh, ow). Convolution is then one GEMM
with the (F, C*k*k) weight matrix, and pooling is a reduction over the rows of the columns of a
(N*C, 1, H, W) view.
"""

import numpy as np

from gpucnn.backend.cpu.pool import avgpool2d_bwd, avgpool2d_fwd, maxpool2d_bwd, maxpool2d_fwd
from gpucnn.backend.cpu.warp import affine_warp
from gpucnn.backend.cpu.window import col2im, im2col


def generator(seed: int) -> np.random.Generator:
    """A random generator living on this device (dropout masks)."""
    return np.random.default_rng(seed)


__all__ = [
    "affine_warp",
    "im2col",
    "col2im",
    "maxpool2d_fwd",
    "maxpool2d_bwd",
    "avgpool2d_fwd",
    "avgpool2d_bwd",
    "generator",
]
