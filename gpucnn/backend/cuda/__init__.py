"""CUDA kernels (Numba) and their launchers, one file per family mirroring gpucnn.backend.cpu:
the same functions, names and signatures (tests/backend/test_contract.py checks it).

window.py (im2col, col2im), direct.py (convolution without columns, for few taps), pool.py
(max, average and global pooling), fused.py (a conv's bias + ReLU + 2×2 max pool after its
GEMM, and their backward), elementwise.py (ReLU, dropout, softmax cross-entropy), batchnorm.py,
optim.py (fused Adam and SGD), warp.py (augmentation), gemm.py (tiled and split-K GEMM, for a
step captured in a CUDA graph, where cuBLAS is refused) and batch.py (batches gathered and
augmentation drawn on the device, for the same captured step) each hold their ``*_kernel``
functions and the launchers that call them;
launch.py holds what the launchers share (the one stream, launch shapes, argument checks);
selfcheck.py checks the kernel paths that stand in for a reference (the GEMM kernels for
cuBLAS, the direct and fused convolutions for im2col + GEMM and the layers one by one) on
their first use per shape on a device, and switches off a path that disagrees.

For a step captured in a CUDA graph, whose launch arguments are frozen, the ``*_state``
launchers read what changes per step from small device arrays (formulas.STATE_SIZE for the
optimizers, formulas.DROPOUT_SEED for dropout, formulas.BATCH_STEP for the batch) that
``optim_state_advance``, ``dropout_state_advance`` and ``batch_state_advance`` move on once per
step.
"""

from gpucnn.backend.cuda import (
    batch,
    batchnorm,
    direct,
    elementwise,
    fused,
    optim,
    pool,
    selfcheck,  # noqa: F401 - asked which paths are off (gpucnn.train.graph)
    warp,
    window,
    winograd,
)
from gpucnn.backend.cuda import gemm as gemm_module  # the name gemm is its launcher, below
from gpucnn.backend.cuda.batch import (
    affine_params,
    batch_state_advance,
    gather_batch,
    record_step,
)
from gpucnn.backend.cuda.batchnorm import batchnorm2d_bwd, batchnorm2d_fwd
from gpucnn.backend.cuda.direct import conv2d_direct_bwd, conv2d_direct_fwd
from gpucnn.backend.cuda.elementwise import (
    dropout_bwd,
    dropout_bwd_state,
    dropout_fwd,
    dropout_fwd_state,
    dropout_state_advance,
    relu_bwd,
    relu_fwd,
    softmax_xent_fwd,
)
from gpucnn.backend.cuda.fused import conv_relu_pool2x2_bwd, conv_relu_pool2x2_fwd
from gpucnn.backend.cuda.gemm import gemm, gemm_workspace_size, matmul
from gpucnn.backend.cuda.optim import (
    adam_update,
    adam_update_state,
    optim_state_advance,
    sgd_update,
    sgd_update_state,
)
from gpucnn.backend.cuda.pool import (
    avgpool2d_bwd,
    avgpool2d_fwd,
    global_avgpool2d_bwd,
    global_avgpool2d_fwd,
    global_maxpool2d_bwd,
    global_maxpool2d_fwd,
    maxpool2d_bwd,
    maxpool2d_fwd,
)
from gpucnn.backend.cuda.warp import affine_warp
from gpucnn.backend.cuda.window import col2im, im2col
from gpucnn.backend.cuda.winograd import (
    winograd_grad_tf,
    winograd_input_grad,
    winograd_input_tf,
    winograd_output_tf,
    winograd_relu_pool2x2_bwd,
    winograd_relu_pool2x2_fwd,
)

# the modules whose *_kernel functions are this backend's device code (tests and
# benchmarks/gpu_check.py wrap them to record or count launches)
KERNEL_MODULES = (
    window,
    direct,
    pool,
    elementwise,
    batchnorm,
    optim,
    warp,
    gemm_module,
    batch,
    fused,
    winograd,
)

# Whether nn.Sequential runs Conv2d -> ReLU -> MaxPool2d(2) as one conv2d_relu_maxpool step
# (fused.py) on this backend: not until timed faster on a GPU (benchmarks/results/fused-cpu.md
# says what to measure); the kernels are tested in the simulator and compiled to PTX meanwhile
FUSES_CONV_RELU_POOL = False

# The most taps (C*k*k) for which gpucnn.functional.conv2d convolves directly (direct.py)
# rather than through im2col and a GEMM: 0, off, until timed faster on a GPU (gpu_check's
# kernel part times both on the seed model's first layer); simulator- and PTX-tested meanwhile
DIRECT_CONV_MAX_TAPS = 0

# Winograd F(m×m, 3×3) (winograd.py): off here (0) until a GPU times it against im2col and
# cuDNN; the kernels are tested against their CPU twins in the simulator meanwhile
WINOGRAD_TILE = 0
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
