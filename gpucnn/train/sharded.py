"""The layers of a batch shard: what DataParallel puts in its replicas where a layer needs to
see the whole batch, not just its shard.

BatchNorm2d normalizes by statistics of the whole batch, which no shard sees alone. The
replicas' ShardedBatchNorm2d layers meet at a barrier (one exchange per layer and pass) and
swap per-channel partial results. Forward combines (count, mean, sum of squared deviations)
with Chan's parallel formula in float64:

    n = sum n_s,  mean = sum n_s mean_s / n,  M2 = sum [M2_s + n_s (mean_s - mean)^2],  var = M2 / n

and normalizes with the batch's mean and variance (equations in gpucnn.functional.batchnorm).
Backward sums dbeta and dgamma over the shards for the input gradient,

    dx = gamma / (M sqrt(var + eps)) (M dy - dbeta_batch - xhat dgamma_batch),  M = n,

and accumulates the shard's own dgamma and dbeta into the parameter gradients (the shards'
sum is the batch's). One shard alone updates the running statistics, which all share.

Dropout draws one key per step from the model's own generator, as a serial step does; a
ShardedDropout masks its elements by their offset in the whole batch, so the masks are the
serial step's, bit for bit (gpucnn.backend.formulas.dropout_draw).

These are CPU layers (NumPy): sharding exists for CPU threads only.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from gpucnn.nn import BatchNorm2d, Dropout, Module

_AXES = (0, 2, 3)


def _c(v: np.ndarray) -> np.ndarray:
    return v[None, :, None, None]


class Exchange:
    """Where the shards' layers swap per-channel partial results, once per layer and phase:
    each puts its part in a slot, waits at the barrier for the others, and reads all of them
    in shard order (so every shard combines them identically)."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.barrier = threading.Barrier(shards)
        self.slots: dict[tuple, list] = {}

    def start_step(self) -> None:
        self.slots = {}
        if self.barrier.broken:  # a shard failed last step and broke it
            self.barrier.reset()

    def swap(self, layer: int, shard: int, phase: str, values: tuple) -> list:
        """Hand over this shard's ``values``; returns every shard's, in shard order."""
        slot = self.slots.setdefault((layer, phase), [None] * self.shards)
        slot[shard] = values
        self.barrier.wait()
        return list(slot)


class ShardedBatchNorm2d(BatchNorm2d):
    """BatchNorm2d for one shard of a batch: training statistics are the whole batch's.

    DataParallel sets ``exchange``, ``layer`` (this layer's index among the model's
    BatchNorm layers), ``shard`` and ``updates_running`` before each step. Without an exchange
    (a batch too small to split) and in eval mode it is a plain BatchNorm2d.
    """

    def __init__(self, like: BatchNorm2d) -> None:
        super().__init__(like.num_features, like.eps, like.momentum)
        self.weight, self.bias = like.weight, like.bias
        self.running_mean, self.running_var = like.running_mean, like.running_var
        self.exchange: Exchange | None = None
        self.layer, self.shard, self.updates_running = 0, 0, True

    def forward(self, x: Any) -> Any:
        self._alone = not self.training or self.exchange is None
        if self._alone:  # eval mode, or a batch left whole: nothing to exchange
            return super().forward(x)
        # (N_s, C, H, W) -> (N_s, C, H, W), normalized by the whole batch's statistics
        m = x.shape[0] * x.shape[2] * x.shape[3]
        mu = x.mean(axis=_AXES)
        m2 = ((x - _c(mu)) ** 2).sum(axis=_AXES, dtype=np.float64)
        parts = self.exchange.swap(
            self.layer, self.shard, "forward", (m, mu.astype(np.float64), m2)
        )
        n = sum(p[0] for p in parts)
        mean = sum(p[0] * p[1] for p in parts) / n
        total_m2 = sum(p[2] + p[0] * (p[1] - mean) ** 2 for p in parts)
        dt = x.dtype.type
        mu, var = mean.astype(x.dtype), (total_m2 / n).astype(x.dtype)
        if self.updates_running:  # as the serial kernel does, with the batch's count
            momentum = dt(self.momentum)
            self.running_mean *= 1 - momentum
            self.running_mean += momentum * mu
            self.running_var *= 1 - momentum
            self.running_var += momentum * var * dt(n / (n - 1))
        invstd = 1 / np.sqrt(var + dt(self.eps))
        xhat = (x - _c(mu)) * _c(invstd)
        self._sharded = (xhat, invstd, n)
        return _c(self.weight.data) * xhat + _c(self.bias.data)

    def backward(self, dy: Any) -> Any:
        if self._alone:
            return super().backward(dy)
        xhat, invstd, n = self._sharded
        dbeta = dy.sum(axis=_AXES)
        dgamma = (dy * xhat).sum(axis=_AXES)
        parts = self.exchange.swap(self.layer, self.shard, "backward", (dbeta, dgamma))
        dbeta_all = sum(p[0] for p in parts[1:]) + parts[0][0]
        dgamma_all = sum(p[1] for p in parts[1:]) + parts[0][1]
        gamma = self.weight.data
        dx = _c(gamma * invstd / n) * (n * dy - _c(dbeta_all) - xhat * _c(dgamma_all))
        self.weight.accumulate(dgamma)
        self.bias.accumulate(dbeta)
        return dx


class ShardedDropout(Dropout):
    """Dropout for one shard of a batch: DataParallel sets this step's ``key`` (drawn from the
    model's generator) and the shard's ``first_row`` in the batch before each step."""

    def __init__(self, like: Dropout) -> None:
        super().__init__(like.p, rng=0)  # its own generator is never drawn from
        self.key, self.first_row = 0, 0

    def mask_key(self, x: Any) -> tuple[int, int]:
        per_row = x.size // x.shape[0] if x.ndim and x.shape[0] else 0
        return self.key, self.first_row * per_row


def shard_layers(model: Module) -> Module:
    """Swap ``model``'s BatchNorm2d and Dropout layers for their sharded variants, in place
    (each keeps its place and its parameters); returns the model."""
    swaps = {BatchNorm2d: ShardedBatchNorm2d, Dropout: ShardedDropout}
    for _, parent in list(model.named_modules()):
        for name, child in parent.named_children():
            variant = swaps.get(type(child))
            if variant is not None:
                setattr(parent, name, variant(child))
    return model


def batchnorms(model: Module) -> list[BatchNorm2d]:
    return [m for _, m in model.named_modules() if isinstance(m, BatchNorm2d)]


def dropouts(model: Module) -> list[Dropout]:
    return [m for _, m in model.named_modules() if isinstance(m, Dropout)]
