"""GEMM on the GPU without cuBLAS: ``out = alpha * op(a) @ op(b) + beta * out`` as Numba
kernels, so that a training step captured into one CUDA graph may hold its matrix products
(CuPy refuses cuBLAS during stream capture, cupy issue 6290). The CPU twin is
gpucnn.backend.cpu.gemm.

``op(x)`` is ``x.T`` when ``trans_x`` is set: the kernels read the stored array through
transposed indexing and never materialise a transpose. An F-contiguous argument (``w.T`` of
a C-contiguous ``w``) is taken as its C-contiguous transpose with the flag flipped, for free.
``out`` is preallocated and nothing is allocated here (graph capture needs static buffers);
with ``beta == 0`` it is only written, never read, so it may hold garbage. ``out`` must not
overlap ``a`` or ``b``.

Tiling (``gemm_tile_kernel``): a block of 256 threads computes a 64×64 tile of the product,
stepping through K 16 at a time. Each step the block stages a 16×64 slice of op(a) and of
op(b) in shared memory (4 elements per thread each; the thread-to-element map follows the
stored layout, so a warp reads consecutive addresses whatever the transposition; one column
of padding keeps the transposed stores free of bank conflicts), then each thread
accumulates a 4×4 register tile: rows ``ty + 16 i``, columns ``tx + 16 j`` (i, j < 4), which
reads shared memory without bank conflicts (a warp reads 16 consecutive op(b) values and
broadcasts 2 op(a) values) and stores ``out`` in 64-byte runs. 64×64 because the step's
short GEMM side is mostly 64 or less (F = 32 and 64, the batch of the linear layers): a
128-row tile would be half padding there. 4×4 gives 16 FMAs per 8 shared loads with 16 + 8
registers of data per thread, and 8.3 KB of shared memory per block (float32) leaves room
for several resident blocks per SM. Out-of-range rows, columns and K are staged as zeros, so
the inner loop has no branch; only the final stores are guarded.

Split-K (the same kernel, ``grid.z > 1``, then ``gemm_reduce_kernel``): when the M×N tiles
cannot fill the GPU, K is cut into ``splits`` chunks (multiples of 16); block z writes its
chunk's partial product into ``workspace`` viewed as (splits, M, N), and the reduce kernel
sums the partials in the fixed order z = 0, 1, ... into ``out`` with alpha and beta. No
atomics: a result is bit-for-bit reproducible for given shapes (the split depends on the
shapes only, never on the device). The workspace is the caller's, sized by
``gemm_workspace_size(m, n, k)`` (0 when the shapes do not split); without one the launcher
runs the single-pass kernel (same result up to summation order, slower for tall K).

Heuristic (``_plan``, cached per shape): ``tiles = ceil(M/64) * ceil(N/64)``. With at least
``2 * SMS`` tiles (SMS = 132, an H200/H100 SXM; a constant so that a shape splits the same
on every device) the grid already fills the GPU: no split. Otherwise split into
``min(ceil(2 * SMS / tiles), K // 256, 64)`` chunks when that is at least 2: about two
blocks per SM, each chunk at least 256 deep (16 steps, which pays for the partial's write
and read), at most 64 partials.

Which step GEMM each variant serves (seed model: conv1 1->32 on 28×28, conv2 32->64 on
14×14, fc1 3136->128, fc2 128->10; NHW = N·OH·OW; gpucnn/functional/conv.py and linear.py).
The split counts are for batch 64 / 512:

- conv forward ``Y = Wm @ cols`` (F×CKK @ CKK×NHW) and ``dcols = Wm.T @ dY2`` (``trans_a``;
  CKK×F @ F×NHW): N = NHW gives hundreds to thousands of tiles: the single pass.
- conv ``dW = dY2 @ cols.T`` (``trans_b``; F×NHW @ NHW×CKK): K = NHW against 1-5 tiles:
  split-K (conv2: K = 12544 / 100352, 49 / 53 chunks; conv1: 64 / 64 chunks).
- linear forward ``y = x @ W.T`` (``trans_b``; ``+ b`` stays outside): K = in_features;
  split-K for a wide layer next to few tiles (fc1: 12 / 12 chunks), else single pass.
- linear ``dx = dy @ W`` (K = out_features): single pass.
- linear ``dW = dy.T @ x`` (``trans_a``; out×N @ N×in): K = batch; single pass at 64,
  2 chunks for fc1 and fc2 at 512.

``matmul(a, b)`` is what the functional ops call for those products: CuPy's ``a @ b``
(cuBLAS) normally, and while launch.capturing() (a step being captured into a CUDA graph, or
its warm-up) ``gemm`` into a new output, with a new workspace when the shapes split K (memory
allocated during a capture is kept for the graph's life by CudaBackend.capture). op(a) and
op(b) are then read in place: a transposed view (``w.T``) costs nothing.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from gpucnn.backend.cuda import selfcheck
from gpucnn.backend.cuda.launch import array_module, capturing, check, config, stream
from gpucnn.backend.numba_cuda import cuda

BM = 64  # rows of out per block
BN = 64  # columns of out per block
BK = 16  # depth of one shared-memory step
TM = 4  # rows of out per thread
TN = 4  # columns of out per thread
TY = BM // TM  # 16 threads down a tile
TX = BN // TN  # 16 threads across a tile
GEMM_THREADS = TX * TY  # 256
A_LOADS = BM * BK // GEMM_THREADS  # 4 staged elements of op(a) per thread and step
B_LOADS = BK * BN // GEMM_THREADS  # 4 of op(b)
SA_WIDTH = BM + 1  # shared rows padded by one column (a kernel's shapes must be plain names)
SB_WIDTH = BN + 1

SMS = 132  # streaming multiprocessors of an H200 (and H100 SXM)
MIN_SPLIT_K = 256  # the shallowest chunk split-K makes
MAX_SPLITS = 64

__all__ = ["gemm", "gemm_workspace_size", "matmul"]


@cuda.jit(cache=True)
def gemm_tile_kernel(  # pragma: no cover - device code
    a, b, trans_a, trans_b, kchunk, alpha, beta, use_beta, zero, dst
):
    # dst (splits, M, N): block (x, y, z) computes rows y*BM.., columns x*BN.. of the product
    # over K in [z*kchunk, (z+1)*kchunk); dst = alpha * that (+ beta * dst when use_beta)
    _, m, n = dst.shape
    k = a.shape[0] if trans_a else a.shape[1]
    sa = cuda.shared.array((BK, SA_WIDTH), dtype=a.dtype)  # sa[kk, mm] = op(a)[row0+mm, k0+kk]
    sb = cuda.shared.array((BK, SB_WIDTH), dtype=a.dtype)  # sb[kk, nn] = op(b)[k0+kk, col0+nn]
    acc = cuda.local.array((TM, TN), dtype=a.dtype)
    ra = cuda.local.array(TM, dtype=a.dtype)
    rb = cuda.local.array(TN, dtype=a.dtype)
    tid = cuda.threadIdx.x
    tx, ty = tid % TX, tid // TX
    row0, col0, z = cuda.blockIdx.y * BM, cuda.blockIdx.x * BN, cuda.blockIdx.z
    k_begin = z * kchunk
    k_end = k_begin + kchunk
    if k_end > k:  # (no min(): Numba's CUDA target resolves it to the iterable overload)
        k_end = k
    for i in range(TM):
        for j in range(TN):
            acc[i, j] = zero
    for k0 in range(k_begin, k_end, BK):
        for t in range(A_LOADS):
            e = tid + t * GEMM_THREADS
            if trans_a:  # a is (K, M): consecutive threads take consecutive m
                mm, kk = e % BM, e // BM
            else:  # a is (M, K): consecutive threads take consecutive k
                mm, kk = e // BK, e % BK
            gm, gk = row0 + mm, k0 + kk
            v = zero
            if gm < m and gk < k_end:
                v = a[gk, gm] if trans_a else a[gm, gk]
            sa[kk, mm] = v
        for t in range(B_LOADS):
            e = tid + t * GEMM_THREADS
            if trans_b:  # b is (N, K): consecutive threads take consecutive k
                nn, kk = e // BK, e % BK
            else:  # b is (K, N): consecutive threads take consecutive n
                nn, kk = e % BN, e // BN
            gn, gk = col0 + nn, k0 + kk
            v = zero
            if gn < n and gk < k_end:
                v = b[gn, gk] if trans_b else b[gk, gn]
            sb[kk, nn] = v
        cuda.syncthreads()
        for kk in range(BK):
            for i in range(TM):
                ra[i] = sa[kk, ty + TY * i]
            for j in range(TN):
                rb[j] = sb[kk, tx + TX * j]
            for i in range(TM):
                for j in range(TN):
                    acc[i, j] += ra[i] * rb[j]
        cuda.syncthreads()
    for i in range(TM):
        r = row0 + ty + TY * i
        if r < m:
            for j in range(TN):
                c = col0 + tx + TX * j
                if c < n:
                    v = alpha * acc[i, j]
                    if use_beta:
                        v += beta * dst[z, r, c]
                    dst[z, r, c] = v


@cuda.jit(cache=True)
def gemm_reduce_kernel(parts, alpha, beta, use_beta, zero, out):  # pragma: no cover - device
    # out = alpha * sum over z of parts[z] (+ beta * out), z in order: deterministic
    splits, m, n = parts.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, m * n, step):
        r, c = e // n, e % n
        acc = zero
        for z in range(splits):
            acc += parts[z, r, c]
        v = alpha * acc
        if use_beta:
            v += beta * out[r, c]
        out[r, c] = v


@functools.lru_cache(maxsize=256)
def _plan(m: int, n: int, k: int) -> tuple[tuple[int, int, int], int, int]:
    """(grid, splits, kchunk) for an M×N product over K: see the module docstring."""
    tiles_m, tiles_n = -(-m // BM), -(-n // BN)
    tiles = tiles_m * tiles_n
    splits = 1
    if 0 < tiles < 2 * SMS:
        splits = min(-(-2 * SMS // tiles), k // MIN_SPLIT_K, MAX_SPLITS)
    if splits < 2:
        return (tiles_n, tiles_m, 1), 1, k
    kchunk = -(-k // splits)
    kchunk = -(-kchunk // BK) * BK  # whole shared-memory steps
    splits = -(-k // kchunk)  # no empty chunk
    return (tiles_n, tiles_m, splits), splits, kchunk


def gemm_workspace_size(m: int, n: int, k: int) -> int:
    """Elements (of out's dtype) ``gemm`` needs in ``workspace`` to split K for an M×N
    product over K; 0 when these shapes do not split."""
    _, splits, _ = _plan(m, n, k)
    return splits * m * n if splits > 1 else 0


def _operand(name: str, x: Any, trans: bool) -> tuple[Any, bool]:
    """x as a C-contiguous 2-D array and its flag: an F-contiguous x is read as x.T."""
    if x.ndim == 2 and not x.flags.c_contiguous and x.flags.f_contiguous:
        x, trans = x.T, not trans
    check(f"gemm {name}", x, 2)
    return x, bool(trans)  # one compiled specialisation, whatever truthy value came in


def gemm(
    a: Any,
    b: Any,
    out: Any,
    trans_a: bool = False,
    trans_b: bool = False,
    alpha: float = 1.0,
    beta: float = 0.0,
    workspace: Any = None,
) -> Any:
    """Shape: op(a) (M, K), op(b) (K, N), out (M, N) -> out, written in place.

    out = alpha * op(a) @ op(b) + beta * out, op(x) = x.T when trans_x. Split-K uses
    ``workspace`` (1-D, out's dtype, at least ``gemm_workspace_size(M, N, K)`` elements) and
    is skipped without one. Nothing is allocated.
    """
    a, trans_a = _operand("a", a, trans_a)
    b, trans_b = _operand("b", b, trans_b)
    check("gemm out", out, 2)
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k != kb or out.shape != (m, n):
        raise ValueError(
            f"gemm: op(a) {(m, k)} @ op(b) {(kb, n)} does not give out {tuple(out.shape)} "
            f"(trans_a={trans_a}, trans_b={trans_b})"
        )
    if not a.dtype == b.dtype == out.dtype:
        raise ValueError(f"gemm: a {a.dtype}, b {b.dtype} and out {out.dtype} differ")
    if m == 0 or n == 0:
        return out
    grid, splits, kchunk = _plan(m, n, k)
    if splits > 1 and workspace is not None:
        check("gemm workspace", workspace, 1)
        if workspace.dtype != out.dtype or workspace.size < splits * m * n:
            raise ValueError(
                f"gemm: workspace {workspace.dtype} of {workspace.size} elements, needs "
                f"{out.dtype} of gemm_workspace_size({m}, {n}, {k}) = {splits * m * n}"
            )
    elif splits > 1:
        grid, splits, kchunk = (grid[0], grid[1], 1), 1, k
    dt = out.dtype.type
    use_beta = beta != 0
    if splits == 1:
        gemm_tile_kernel[grid, GEMM_THREADS, stream()](
            a, b, trans_a, trans_b, kchunk, dt(alpha), dt(beta), use_beta, dt(0),
            out.reshape(1, m, n),
        )  # fmt: skip
        return out
    parts = workspace[: splits * m * n].reshape(splits, m, n)
    gemm_tile_kernel[grid, GEMM_THREADS, stream()](
        a, b, trans_a, trans_b, kchunk, dt(1), dt(0), False, dt(0), parts
    )
    gemm_reduce_kernel[config(m * n)](parts, dt(alpha), dt(beta), use_beta, dt(0), out)
    return out


def matmul(a: Any, b: Any) -> Any:
    """Shape: a (M, K), b (K, N) -> a @ b (M, N), a new array.

    cuBLAS (CuPy's ``@``) normally; while a step is captured (launch.capturing()) the GEMM
    kernels above, which a CUDA graph may hold: 2-D operands of one float dtype, each
    C-contiguous or the transpose of one (any other layout is copied first). The kernels are
    checked against cuBLAS on each shape's first use (selfcheck.py); where they disagreed
    on this device, cuBLAS computes the product outside a capture, and a capture fails with
    selfcheck.KernelPathOff (the fit then trains eagerly, saying why).
    """
    if not capturing():
        return a @ b
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(
            f"matmul: a captured product takes 2-D (M, K) @ (K, N), got {tuple(a.shape)} @ "
            f"{tuple(b.shape)}"
        )
    xp = array_module(a)
    a, b = _gemm_layout(xp, a), _gemm_layout(xp, b)
    (m, k), n = a.shape, b.shape[1]
    if m == 0 or n == 0 or k == 0:  # nothing for a kernel to get wrong
        return _product(xp, a, b, m, n, k)
    # checked against cuBLAS on first use per shape and layout (selfcheck.py): the warm-up
    # step before a capture runs here, so a capture meets only checked shapes
    shape = (m, n, k, _layout(a), _layout(b), np.dtype(a.dtype).str)

    def reference(product: Any) -> tuple:
        return (product(a, b),), lambda: (selfcheck.abs_product_max(a, b),)

    (out,) = selfcheck.run(
        "gemm", shape, lambda: (_product(xp, a, b, m, n, k),), reference, ("the product",)
    )
    return out


def _product(xp: Any, a: Any, b: Any, m: int, n: int, k: int) -> Any:
    out = xp.empty((m, n), dtype=a.dtype)
    size = gemm_workspace_size(m, n, k)
    workspace = xp.empty(size, dtype=a.dtype) if size else None
    return gemm(a, b, out, workspace=workspace)


def _layout(x: Any) -> str:
    return "C" if x.flags.c_contiguous else "F"


def _gemm_layout(xp: Any, x: Any) -> Any:
    """x itself when gemm reads it in place (C-contiguous, or F-contiguous: read as x.T), else
    a C-contiguous copy."""
    if x.flags.c_contiguous or x.flags.f_contiguous:
        return x
    return xp.ascontiguousarray(x)
