"""Input validation shared by the functional ops and the layers: one clear ValueError per
broken rule (public: nn and models check their constructor arguments with it too).

Every message names the layer, the shapes involved and the rule, so a user sees
"Conv2d: ..." at the call site instead of an IndexError deep inside a kernel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_cache(layer: str, cache: Any, *kinds: type) -> Any:
    """The cache a forward pass returned, or a clear error where it kept none (no forward has
    run, or it ran under gpucnn.no_grad()) or where it is not one of ``kinds`` (the cache
    types of the op's forward: another op's cache handed to this backward)."""
    if cache is None:
        raise RuntimeError(
            f"{layer}.backward: no forward pass kept what backward needs; run forward first, "
            "and outside gpucnn.no_grad() (which keeps nothing, for inference)"
        )
    if kinds and not isinstance(cache, kinds):
        raise TypeError(
            f"{layer}.backward: expected the cache of {layer}'s forward "
            f"({' or '.join(k.__name__ for k in kinds)}), got {type(cache).__name__}"
        )
    return cache


def check_rank(layer: str, x: Any, ndim: int, layout: str) -> None:
    if getattr(x, "ndim", None) != ndim:
        shape = getattr(x, "shape", type(x).__name__)
        raise ValueError(f"{layer}: expected a {ndim}-D input {layout}, got shape {shape}")


def check_float(layer: str, x: Any, like: Any = None) -> None:
    """Require float32 (float64 is accepted for gradient checks) and, with ``like``, a match."""
    dtype = np.dtype(x.dtype)
    if dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{layer}: expected float32 input, got {dtype} with shape {tuple(x.shape)}; "
            "convert images with .astype(np.float32) (and normalize them) first"
        )
    if like is not None and dtype != like.dtype:
        raise ValueError(
            f"{layer}: input dtype {dtype} does not match the layer's parameters "
            f"({like.dtype}); convert the input with .astype(np.{like.dtype}) "
            f"(input shape {tuple(x.shape)})"
        )


def check_channels(layer: str, x: Any, expected: int, axis: int = 1) -> None:
    if x.shape[axis] != expected:
        raise ValueError(
            f"{layer}: expected {expected} input channels (axis {axis}), "
            f"got input shape {tuple(x.shape)}"
        )


def check_positive(layer: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{layer}: {name} must be an integer >= 1, got {value!r}")
    return int(value)


def window_out_size(layer: str, x_shape: tuple, k: int, stride: int, pad: int) -> tuple[int, int]:
    """Output height and width of a k×k window sliding with ``stride`` over a padded input.

    Rule: OH = floor((H - k + 2P) / S) + 1, defined only when k <= H + 2P (likewise for W).
    """
    h, w = x_shape[-2:]
    if k > h + 2 * pad or k > w + 2 * pad:
        raise ValueError(
            f"{layer}: kernel {k}x{k} is larger than the padded input "
            f"{h + 2 * pad}x{w + 2 * pad} (input {tuple(x_shape)}, padding {pad}); "
            f"the output size floor((W - F + 2P)/S) + 1 needs F <= W + 2P"
        )
    return (h - k + 2 * pad) // stride + 1, (w - k + 2 * pad) // stride + 1
