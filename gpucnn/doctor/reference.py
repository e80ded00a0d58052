"""The CPU kernels' reference for the doctor: the same functions, in float64 NumPy.

On a CUDA device the doctor checks each kernel against its CPU twin. The CPU kernels have no
twin below them, so here each one is written the plainest way NumPy allows, in float64: the
windows by slicing, the pools by reducing over the window axis, BatchNorm by its equations,
and the per-element rules of gpucnn.backend.formulas (dropout's keyed hash, softmax
cross-entropy, Adam, SGD) run as plain Python, not compiled. What differs from the compiled
float32 kernels is then only what a user's machine could get wrong: Numba's code for this
CPU, the threads, the BLAS. Signatures follow gpucnn.backend.cpu (the arrays returned are
float64; the doctor compares them with the kernels' float32 results).
"""

from __future__ import annotations

import numpy as np

from gpucnn.backend import formulas

F64 = np.float64


def _out(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def _windows(x: np.ndarray, k: int, stride: int, pad: int, fill: float) -> np.ndarray:
    """(N, C, OH, OW, k, k): every window of the padded x."""
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * pad, w + 2 * pad), fill, F64)
    xp[:, :, pad : pad + h, pad : pad + w] = x
    view = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))
    oh, ow = _out(h, k, stride, pad), _out(w, k, stride, pad)
    return view[:, :, ::stride, ::stride][:, :, :oh, :ow]


def im2col(x, k, stride, pad, pad_value=0.0):
    """Shape: (N, C, H, W) -> (C*k*k, N*OH*OW), rows (c, i, j), columns (n, oh, ow)."""
    win = _windows(x, k, stride, pad, pad_value)  # (N, C, OH, OW, k, k)
    n, c, oh, ow = win.shape[:4]
    return win.transpose(1, 4, 5, 0, 2, 3).reshape(c * k * k, n * oh * ow)


def col2im(cols, x_shape, k, stride, pad, overwrite_cols=False):
    """The adjoint of im2col: each column entry added back where it was taken from."""
    n, c, h, w = x_shape
    oh, ow = _out(h, k, stride, pad), _out(w, k, stride, pad)
    blocks = np.asarray(cols, F64).reshape(c, k, k, n, oh, ow)
    out = np.zeros((n, c, h + 2 * pad, w + 2 * pad), F64)
    for i in range(k):
        for j in range(k):
            rows = slice(i, i + stride * (oh - 1) + 1, stride)
            columns = slice(j, j + stride * (ow - 1) + 1, stride)
            out[:, :, rows, columns] += blocks[:, i, j].transpose(1, 0, 2, 3)
    return out[:, :, pad : pad + h, pad : pad + w]


def gemm(a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, workspace=None):
    """out = alpha * op(a) @ op(b) + beta * out (a new float64 array; ``out`` is read only)."""
    a, b = np.asarray(a, F64), np.asarray(b, F64)
    prod = (a.T if trans_a else a) @ (b.T if trans_b else b)
    return alpha * prod + (beta * np.asarray(out, F64) if beta != 0 else 0.0)


def conv2d_direct_fwd(x, w, b, stride, pad):
    """y[n, f] = b[f] + sum_{c, i, j} w[f, c, i, j] x_pad[n, c, oh*S + i, ow*S + j]."""
    win = _windows(x, w.shape[2], stride, pad, 0.0)  # (N, C, OH, OW, k, k)
    y = np.einsum("ncyxij,fcij->nfyx", win, np.asarray(w, F64))
    return y + (0.0 if b is None else np.asarray(b, F64)[None, :, None, None])


def conv2d_direct_bwd(dy, x, k, stride, pad):
    """dw[f, c, i, j] = sum dy[n, f, oh, ow] x_pad[n, c, oh*S + i, ow*S + j]; db[f] = sum dy."""
    win = _windows(x, k, stride, pad, 0.0)
    dy = np.asarray(dy, F64)
    return np.einsum("ncyxij,nfyx->fcij", win, dy), dy.sum(axis=(0, 2, 3))


def _first_max(win: np.ndarray) -> np.ndarray:
    """Index in the flattened window of its first maximum (a NaN wins)."""
    flat = win.reshape(*win.shape[:4], -1)
    return np.where(np.isnan(flat).any(-1), np.isnan(flat).argmax(-1), flat.argmax(-1))


def maxpool2d_fwd(x, k, stride, pad):
    """Max over each window (padding never wins); the argmax as k*k offsets."""
    win = _windows(x, k, stride, pad, -np.inf)
    arg = _first_max(win)
    y = np.take_along_axis(win.reshape(*win.shape[:4], -1), arg[..., None], -1)[..., 0]
    return y, arg.astype(np.int32)


def maxpool2d_bwd(dy, arg, x_shape, k, stride, pad):
    """Each output gradient added to the input element that won its window."""
    n, c, h, w = x_shape
    out = np.zeros((n, c, h + 2 * pad, w + 2 * pad), F64)
    dy = np.asarray(dy, F64)
    oh, ow = dy.shape[2:]
    for i in range(k):
        for j in range(k):
            rows = slice(i, i + stride * (oh - 1) + 1, stride)
            columns = slice(j, j + stride * (ow - 1) + 1, stride)
            out[:, :, rows, columns] += np.where(arg == i * k + j, dy, 0.0)
    return out[:, :, pad : pad + h, pad : pad + w]


def avgpool2d_fwd(x, k, stride, pad):
    """Mean over each window, padding counted as zeros."""
    return _windows(x, k, stride, pad, 0.0).mean(axis=(4, 5))


def avgpool2d_bwd(dy, x_shape, k, stride, pad):
    """Each output gradient spread evenly over its window (padding taps dropped)."""
    n, c, h, w = x_shape
    out = np.zeros((n, c, h + 2 * pad, w + 2 * pad), F64)
    share = np.asarray(dy, F64) / (k * k)
    oh, ow = share.shape[2:]
    for i in range(k):
        for j in range(k):
            rows = slice(i, i + stride * (oh - 1) + 1, stride)
            columns = slice(j, j + stride * (ow - 1) + 1, stride)
            out[:, :, rows, columns] += share
    return out[:, :, pad : pad + h, pad : pad + w]


def global_avgpool2d_fwd(x):
    return np.asarray(x, F64).mean(axis=(2, 3))


def global_avgpool2d_bwd(dy, x_shape):
    h, w = x_shape[2:]
    return np.broadcast_to(np.asarray(dy, F64)[:, :, None, None] / (h * w), x_shape).copy()


def global_maxpool2d_fwd(x):
    flat = np.asarray(x, F64).reshape(*x.shape[:2], -1)
    arg = flat.argmax(axis=2)
    return np.take_along_axis(flat, arg[..., None], 2)[..., 0], arg.astype(np.int32)


def global_maxpool2d_bwd(dy, arg, x_shape):
    n, c = x_shape[:2]
    dx = np.zeros((n, c, x_shape[2] * x_shape[3]), F64)
    np.put_along_axis(dx, arg[:, :, None].astype(np.intp), np.asarray(dy, F64)[:, :, None], 2)
    return dx.reshape(x_shape)


def conv_relu_pool2x2_fwd(yt, b):
    """relu(maxpool2x2(yt + b)) transposed to (N, F, PH, PW), and the argmax in [0, 4)."""
    z = np.asarray(yt, F64).transpose(1, 0, 2, 3)
    z = z + (0.0 if b is None else np.asarray(b, F64)[None, :, None, None])
    y, arg = maxpool2d_fwd(z, 2, 2, 0)
    return np.maximum(y, 0.0), arg


def conv_relu_pool2x2_bwd(dy, arg, y, out_hw):
    """The gradient at yt, (F, N*OH*OW): dy where y > 0 at each window's argmax; db."""
    n, nf = dy.shape[:2]
    g = np.where(np.asarray(y) > 0, np.asarray(dy, F64), 0.0)
    dz = maxpool2d_bwd(g, arg, (n, nf, *out_hw), 2, 2, 0)
    return dz.transpose(1, 0, 2, 3).reshape(nf, -1), g.sum(axis=(0, 2, 3))


def relu_fwd(x):
    return np.where(np.isnan(x), x, np.maximum(np.asarray(x, F64), 0.0))


def relu_bwd(dy, y):
    return np.where(np.asarray(y) > 0, np.asarray(dy, F64), 0.0)


def dropout_fwd(x, p, key, start=0):
    """formulas.dropout_draw for every element index, vectorised (uint64 arithmetic)."""
    threshold, scale = formulas.dropout_constants(p)
    index = np.arange(start, start + x.size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        draw = formulas.dropout_draw(np.uint64(key), index).reshape(x.shape)
    return np.where(draw >= threshold, np.asarray(x, F64) * scale, 0.0)


def softmax_xent_fwd(logits, labels):
    """formulas.softmax_xent_row per row in plain Python float64: (mean loss, dlogits / N)."""
    z = np.asarray(logits, F64)
    grad = np.empty_like(z)
    rows = z.shape[0]
    losses = [
        formulas.softmax_xent_row(z[r], int(labels[r]), 1.0 / rows, 1.0, np.nan, grad[r])
        for r in range(rows)
    ]
    return np.float64(np.mean(losses)), grad


def batchnorm2d_fwd(x, gamma, beta, running_mean, running_var, training, momentum, eps):
    """The BatchNorm equations in float64 (running statistics updated in place)."""
    x = np.asarray(x, F64)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    if training:
        mu, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
        running_mean[...] = (1 - momentum) * running_mean + momentum * mu
        running_var[...] = (1 - momentum) * running_var + momentum * var * m / (m - 1)
    else:
        mu, var = np.asarray(running_mean, F64), np.asarray(running_var, F64)
    invstd = 1 / np.sqrt(var + eps)
    xhat = (x - mu[None, :, None, None]) * invstd[None, :, None, None]
    shift = np.asarray(beta, F64)[None, :, None, None]
    return np.asarray(gamma, F64)[None, :, None, None] * xhat + shift, (xhat, invstd, m)


def batchnorm2d_bwd(dy, saved, gamma, training):
    xhat, invstd, m = saved
    dy = np.asarray(dy, F64)
    dbeta, dgamma = dy.sum(axis=(0, 2, 3)), (dy * xhat).sum(axis=(0, 2, 3))
    scale = (np.asarray(gamma, F64) * invstd)[None, :, None, None]
    if not training:
        return dy * scale, dgamma, dbeta
    dx = scale / m * (m * dy - dbeta[None, :, None, None] - xhat * dgamma[None, :, None, None])
    return dx, dgamma, dbeta


def adam_update(w, g, m, v, vmax, *, step_size, beta1, beta2, bias_correction2, eps, weight_decay):
    """formulas.adam_element for every element, in plain Python float64 (arrays in place)."""
    consts = (step_size, 1 - beta1, beta2, 1 - beta2, float(np.sqrt(bias_correction2)), eps)
    for e in np.ndindex(w.shape):
        vm = vmax[e] if vmax is not None else 0.0
        w[e], m[e], v[e], vm = formulas.adam_element(
            float(w[e]), float(g[e]), float(m[e]), float(v[e]), float(vm), vmax is not None,
            *consts, weight_decay,
        )  # fmt: skip
        if vmax is not None:
            vmax[e] = vm


def sgd_update(w, g, buf, *, first, lr, momentum, dampening, weight_decay, nesterov):
    """formulas.sgd_element for every element, in plain Python float64 (arrays in place)."""
    for e in np.ndindex(w.shape):
        b = float(buf[e]) if buf is not None else 0.0
        w[e], b = formulas.sgd_element(
            float(w[e]), float(g[e]), b, first, lr, momentum, 1 - dampening, weight_decay,
            nesterov,
        )  # fmt: skip
        if buf is not None:
            buf[e] = b


def gather_batch(images, labels, perm, state, batch_size, mean, std, out_x, out_y):
    """Rows perm[s*B : s*B + R] of the images, (pixel / 255 - mean) / std, into the buffers."""
    s = int(state[formulas.BATCH_STEP])
    rows = perm[s * batch_size : s * batch_size + len(out_x)]
    out_x[...] = (np.asarray(images[rows], F64) / 255.0 - mean) / std
    out_y[...] = labels[rows]
