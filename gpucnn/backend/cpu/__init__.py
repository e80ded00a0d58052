"""CPU kernels (NumPy; Numba where it pays). Every function here has a CUDA twin of the same name.

The window kernels share one layout: ``cols`` is (C*k*k, N*OH*OW), rows ordered (c, i, j) for
channel c and kernel offset (i, j), columns ordered (n, oh, ow). Convolution is then one GEMM
with the (F, C*k*k) weight matrix; fused.py is that GEMM's epilogue when a ReLU and a 2×2 max
pool follow (and the backward GEMMs' prologue); direct.py convolves without columns, for
layers with few taps; winograd.py holds the tile transforms of Winograd's F(m×m, 3×3), whose
products are the same GEMM batched over the tiles' points. Pooling loops over the N*C planes
directly. Elementwise kernels and optimizer updates compile the per-element rules of
gpucnn.backend.formulas, which the CUDA kernels compile too. Every kernel, and every product
(gemm.matmul), splits its work over threads.py's threads.
"""

from gpucnn.backend.cpu.batch import (
    affine_params,
    batch_state_advance,
    gather_batch,
    record_step,
)
from gpucnn.backend.cpu.batchnorm import batchnorm2d_bwd, batchnorm2d_fwd
from gpucnn.backend.cpu.direct import conv2d_direct_bwd, conv2d_direct_fwd
from gpucnn.backend.cpu.elementwise import (
    dropout_bwd,
    dropout_bwd_state,
    dropout_fwd,
    dropout_fwd_state,
    dropout_state_advance,
    relu_bwd,
    relu_fwd,
    softmax_xent_fwd,
)
from gpucnn.backend.cpu.fused import conv_relu_pool2x2_bwd, conv_relu_pool2x2_fwd
from gpucnn.backend.cpu.gemm import gemm, gemm_workspace_size, matmul
from gpucnn.backend.cpu.optim import (
    adam_update,
    adam_update_state,
    optim_state_advance,
    sgd_update,
    sgd_update_state,
)
from gpucnn.backend.cpu.pool import (
    avgpool2d_bwd,
    avgpool2d_fwd,
    global_avgpool2d_bwd,
    global_avgpool2d_fwd,
    global_maxpool2d_bwd,
    global_maxpool2d_fwd,
    maxpool2d_bwd,
    maxpool2d_fwd,
)
from gpucnn.backend.cpu.warp import affine_warp
from gpucnn.backend.cpu.window import col2im, im2col
from gpucnn.backend.cpu.winograd import (
    winograd_grad_tf,
    winograd_input_grad,
    winograd_input_tf,
    winograd_output_tf,
    winograd_relu_pool2x2_bwd,
    winograd_relu_pool2x2_fwd,
)

# nn.Sequential runs Conv2d -> ReLU -> MaxPool2d(2) as one conv2d_relu_maxpool step (fused.py)
# on this backend: measured faster, benchmarks/results/fused-cpu.md
FUSES_CONV_RELU_POOL = True

# The most taps (C*k*k) for which gpucnn.functional.conv2d convolves directly (direct.py)
# rather than through im2col and a GEMM: 0, never here. The direct loops are the reference
# for the CUDA kernels; on this CPU they measured slower than im2col + OpenBLAS for the seed
# model's first layer (benchmarks/results/direct-conv-cpu.md)
DIRECT_CONV_MAX_TAPS = 0

# Winograd F(m×m, 3×3) (winograd.py, gpucnn.functional.winograd) for 3×3 stride-1 layers with
# at least WINOGRAD_MIN_CHANNELS input channels: WINOGRAD_TILE is m (0: never). Measured
# against im2col + OpenBLAS per layer shape and per training step
# (benchmarks/results/winograd-cpu.md).
WINOGRAD_TILE = 4
WINOGRAD_MIN_CHANNELS = 8

__all__ = [
    "affine_warp",
    "im2col",
    "col2im",
    "conv2d_direct_fwd",
    "conv2d_direct_bwd",
    "maxpool2d_fwd",
    "maxpool2d_bwd",
    "avgpool2d_fwd",
    "avgpool2d_bwd",
    "conv_relu_pool2x2_fwd",
    "conv_relu_pool2x2_bwd",
    "global_avgpool2d_fwd",
    "global_avgpool2d_bwd",
    "global_maxpool2d_fwd",
    "global_maxpool2d_bwd",
    "relu_fwd",
    "relu_bwd",
    "dropout_fwd",
    "dropout_bwd",
    "dropout_fwd_state",
    "dropout_bwd_state",
    "dropout_state_advance",
    "softmax_xent_fwd",
    "batchnorm2d_fwd",
    "batchnorm2d_bwd",
    "adam_update",
    "sgd_update",
    "optim_state_advance",
    "adam_update_state",
    "sgd_update_state",
    "gemm",
    "gemm_workspace_size",
    "matmul",
    "gather_batch",
    "batch_state_advance",
    "affine_params",
    "record_step",
    "winograd_input_tf",
    "winograd_output_tf",
    "winograd_relu_pool2x2_fwd",
    "winograd_grad_tf",
    "winograd_relu_pool2x2_bwd",
    "winograd_input_grad",
]
