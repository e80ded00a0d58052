"""Data parallelism on the CPU: each thread runs forward and backward on its shard of the
batch with its own replica of the model, and the gradients are combined.

Why: a training step is a chain of GEMMs (which OpenBLAS spreads over the cores) and of
window, pooling and elementwise kernels (serial Numba loops, memory-bound). Parallelising each
op separately costs a fork and a join per op, and OpenBLAS's idle threads spin against
whatever runs between GEMMs. Splitting the batch instead hands each core a whole, independent
step: BLAS runs single-threaded inside each shard (threadpoolctl; with more cores than shards,
the spare cores go to BLAS), the Numba kernels release the GIL, and the only join is the
gradient sum (measured in benchmarks/epoch.py).

The math is the serial step's. With shard sizes n_s summing to n, the batch-mean loss is
L = sum_s (n_s / n) L_s, so its gradient is sum_s (n_s / n) grad L_s. Replicas share the
parameter arrays (the optimizer updates them in place) and keep their own caches and
gradients. Dropout draws one key per step from the model's own generator, exactly as a serial
step does, and shard s masks its elements from their offset in the whole batch: the masks are
the serial step's, bit for bit (gpucnn.backend.formulas.dropout_draw).

BatchNorm normalizes by statistics of the whole batch, which no shard sees alone: its
replicas meet at a barrier (one per BatchNorm layer and pass) to exchange per-channel partial
sums, so every shard normalizes by the batch's mean and variance and the input gradient uses
the batch's sums (gpucnn.backend.cpu.batchnorm). Shard 0 alone updates the running statistics,
which the replicas share with the model. Layers with other buffers cannot be split.
"""

from __future__ import annotations

import copy
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from gpucnn.nn import BatchNorm2d, Dropout, Module

MIN_SHARD = 8  # images; smaller shards cost more in per-layer overhead than they save
MAX_WORKERS = 8


def unsupported(model: Module) -> str | None:
    """Why ``model`` cannot be trained on batch shards, or None when it can."""
    for name, m in model.named_modules():
        if m._buffers and not isinstance(m, BatchNorm2d):
            return f"{name or type(m).__name__} keeps buffers that shards cannot share"
    return None


def cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """One shard per core, at most MAX_WORKERS (a batch of 64 makes 8 shards of 8 at most)."""
    return min(cores(), MAX_WORKERS)


def _dropouts(model: Module) -> list[Dropout]:
    return [m for _, m in model.named_modules() if isinstance(m, Dropout)]


def _batchnorms(model: Module) -> list[BatchNorm2d]:
    return [m for _, m in model.named_modules() if isinstance(m, BatchNorm2d)]


class _Exchange:
    """Where the shards' BatchNorm layers swap per-channel partial results, once per layer
    and pass: each puts its part in a slot, waits at the barrier for the others, and reads
    all of them in shard order (so every shard combines them identically)."""

    def __init__(self, shards: int) -> None:
        self.barrier = threading.Barrier(shards)
        self.slots: dict[tuple, list] = {}

    def start_step(self, shards: int) -> None:
        self.slots = {}
        if self.barrier.broken:  # a shard failed last step and broke it
            self.barrier.reset()
        self.shards = shards

    def bind(self, layer: int, shard: int):
        def exchange(phase: str, values: tuple) -> list:
            slot = self.slots.setdefault((layer, phase), [None] * self.shards)
            slot[shard] = values
            self.barrier.wait()
            return list(slot)

        return exchange


class DataParallel:
    """Training steps of a CPU model on ``workers`` shards of each batch, in threads.

    Args:
        model: the model (on the CPU); its parameters receive the combined gradients.
        criterion: the loss, e.g. nn.CrossEntropyLoss(); each replica gets its own copy.
        workers: threads, one shard each (a batch smaller than workers * MIN_SHARD uses fewer).

    Raises:
        ValueError: when the model cannot be split (see :func:`unsupported`) or workers < 2.
    """

    def __init__(self, model: Module, criterion: Any, workers: int) -> None:
        why = unsupported(model)
        if why is not None:
            raise ValueError(f"DataParallel: cannot split the batch of this model: {why}")
        if workers < 2:
            raise ValueError(f"DataParallel: needs workers >= 2, got {workers}")
        from threadpoolctl import ThreadpoolController

        self.model, self.criterion, self.workers = model, criterion, workers
        self.replicas = [copy.deepcopy(model) for _ in range(workers)]
        self.criteria = [copy.deepcopy(criterion) for _ in range(workers)]
        self._pool = ThreadPoolExecutor(workers - 1, thread_name_prefix="gpucnn-shard")
        self._exchanges: dict[int, _Exchange] = {}  # by shard count (a barrier's party size)
        self._blas = ThreadpoolController()
        self._blas_threads = max(1, cores() // workers)  # cores left over go to BLAS

    def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> DataParallel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sync(self, shards: int) -> None:
        """Point the replicas at the model's current parameters, buffers and mode, and wire
        their BatchNorm layers to this step's exchange."""
        exchange = self._exchanges.get(shards)
        if exchange is None:
            exchange = self._exchanges[shards] = _Exchange(shards)
        exchange.start_step(shards)
        masters = _batchnorms(self.model)
        for s, replica in enumerate(self.replicas[:shards]):
            for p_rep, p in zip(replica.parameters(), self.model.parameters(), strict=True):
                p_rep.data, p_rep.requires_grad, p_rep.grad = p.data, p.requires_grad, None
            replica.train(self.model.training)
            for j, (bn_rep, bn) in enumerate(zip(_batchnorms(replica), masters, strict=True)):
                bn_rep.running_mean, bn_rep.running_var = bn.running_mean, bn.running_var
                bn_rep.shard = (exchange.bind(j, s), s == 0) if shards > 1 else None
        self._exchange = exchange

    def _run(self, s: int, x: Any, y: Any, weight: float) -> tuple[Any, Any]:
        replica, criterion = self.replicas[s], self.criteria[s]
        try:
            logits = replica(x)
            loss = criterion(logits, y)
            # d(batch loss)/d(shard loss) = n_s / n: the replica's gradients come out weighted
            replica.backward(criterion.backward(weight))
        except BaseException:
            self._exchange.barrier.abort()  # the other shards must not wait for this one
            raise
        return loss, logits

    def step(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, np.ndarray]:
        """Forward and backward of one batch: the model's parameters get the gradient of the
        batch-mean loss (as after a serial zero_grad, forward, backward).

        Returns:
            (loss, logits) of the whole batch, as a serial step would give them.
        """
        n = len(x)
        shards = min(self.workers, max(1, n // MIN_SHARD))
        bounds = [n * s // shards for s in range(shards + 1)]
        self._sync(shards)
        # the model's generators draw this step's dropout keys, as a serial forward would
        for layer, *copies in zip(
            _dropouts(self.model), *(_dropouts(r) for r in self.replicas[:shards]), strict=True
        ):
            key = int(layer.rng.integers(2**63)) if layer.training and layer.p > 0 else 0
            for s, layer_copy in enumerate(copies):
                layer_copy.shard = (key, bounds[s])
        rows = [slice(bounds[s], bounds[s + 1]) for s in range(shards)]
        weights = [(bounds[s + 1] - bounds[s]) / n for s in range(shards)]
        with self._blas.limit(limits=self._blas_threads, user_api="blas"):
            futures = [
                self._pool.submit(self._run, s, x[rows[s]], y[rows[s]], weights[s])
                for s in range(1, shards)
            ]
            first_error: BaseException | None = None
            try:
                first = self._run(0, x[rows[0]], y[rows[0]], weights[0])
            except BaseException as exc:  # re-raised below, once every shard has stopped
                first_error = exc
            errors = [first_error, *(f.exception() for f in futures)]
        # a shard's own error, rather than the broken barrier the others saw because of it
        for err in sorted(
            (e for e in errors if e is not None),
            key=lambda e: isinstance(e, threading.BrokenBarrierError),
        ):
            raise err
        others = [f.result() for f in futures]
        results = [first, *others]
        replica_params = [r.parameters() for r in self.replicas[:shards]]
        for i, p in enumerate(self.model.parameters()):
            grads = [params[i].grad for params in replica_params]
            if grads[0] is None:  # frozen: nothing to add (and nothing to clear)
                continue
            total = grads[0]  # shard 0's array, taken over: the next _sync drops the replica's
            for g in grads[1:]:
                total += g
            p.grad = total if p.grad is None else p.grad + total
        dtype = np.result_type(first[1])  # the logits' (and so the loss's) float type
        loss = sum(dtype.type(r[0]) * dtype.type(w) for r, w in zip(results, weights, strict=True))
        return dtype.type(loss), np.concatenate([r[1] for r in results])
