"""Whether forward passes keep what a backward pass needs: ``with gpucnn.no_grad():``.

Each forward op of gpucnn.functional returns (y, cache): the cache is what its backward needs
(a convolution's im2col columns or Winograd tiles, a max pool's argmax, a linear layer's
input, BatchNorm's normalized input). Inference never runs a backward, so there the caches
only hold memory: a forward of 256 images through the seed model kept ~80 MiB alive after it
returned. Under :func:`no_grad` every op returns ``cache = None`` and lets go of its
temporaries as soon as it has used them (a convolution's columns right after their GEMM), so a
network's activations are freed layer by layer. Predictor and Trainer.evaluate run under it;
calling ``backward`` after such a forward is an error that says so.

The mode is per thread, as PyTorch's ``torch.no_grad`` is: training threads (the sharded
step's shards) are not affected by an inference running in another thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_state = threading.local()


def is_grad_enabled() -> bool:
    """True unless inside :func:`no_grad` in this thread."""
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Forward passes inside the block keep nothing for a backward pass (nested blocks are
    fine; the previous mode comes back on exit, also on an error)."""
    was = is_grad_enabled()
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = was


def kept(cache: object) -> object:
    """``cache`` when forward passes keep theirs, else None: what an op's forward returns."""
    return cache if is_grad_enabled() else None
