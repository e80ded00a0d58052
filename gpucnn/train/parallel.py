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

BatchNorm normalizes by statistics of the whole batch, which no shard sees alone, and dropout
masks by position in the whole batch: the replicas hold this module's own sharded variants of
those layers (gpucnn.train.sharded), which exchange per-channel partial sums at a barrier.
Shard 0 alone updates the running statistics, which the replicas share with the model. Layers
with other buffers cannot be split.

Which steps run sharded is decided here too (:func:`data_parallel`): CPU arrays, more than one
worker, a model that can be split.
"""

from __future__ import annotations

import copy
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from gpucnn.backend import Backend
from gpucnn.backend.cpu import threads
from gpucnn.backend.cpu.threads import cores
from gpucnn.nn import BatchNorm2d, Module
from gpucnn.train.sharded import Exchange, batchnorms, dropouts, shard_layers

log = logging.getLogger("gpucnn.train")

MIN_SHARD = 8  # images; smaller shards cost more in per-layer overhead than they save
MAX_WORKERS = 8


def unsupported(model: Module) -> str | None:
    """Why ``model`` cannot be trained on batch shards, or None when it can."""
    for name, m in model.named_modules():
        if next(m.named_buffers(recurse=False), None) and not isinstance(m, BatchNorm2d):
            return f"{name or type(m).__name__} keeps buffers that shards cannot share"
    return None


def default_workers() -> int:
    """One shard per core, at most MAX_WORKERS (a batch of 64 makes 8 shards of 8 at most)."""
    return min(cores(), MAX_WORKERS)


def data_parallel(
    model: Module, criterion: Any, backend: Backend, workers: int | None
) -> DataParallel | None:
    """The sharded step for a training run, or None where it does not apply: arrays not in
    host memory (sharding is for CPU threads), one worker, or a model whose batch cannot be
    split (logged, with the reason).

    Args:
        workers: threads; None means one per core, at most MAX_WORKERS.
    """
    if not backend.host_memory:
        return None
    workers = default_workers() if workers is None else workers
    if workers < 2:
        return None
    why = unsupported(model)
    if why is not None:
        log.info("training steps run serially: the batch of this model cannot be split (%s)", why)
        return None
    log.info("training steps run on %d batch shards in parallel threads", workers)
    return DataParallel(model, criterion, workers)


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
        self.replicas = [shard_layers(copy.deepcopy(model)) for _ in range(workers)]
        self.criteria = [copy.deepcopy(criterion) for _ in range(workers)]
        self._pool = ThreadPoolExecutor(workers - 1, thread_name_prefix="gpucnn-shard")
        self._exchanges: dict[int, Exchange] = {}  # by shard count (a barrier's party size)
        self._blas = ThreadpoolController()
        self._blas_threads = max(1, cores() // workers)  # cores left over go to BLAS

    def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> DataParallel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sync(self, shards: int, bounds: list[int]) -> None:
        """Point the replicas at the model's current parameters, buffers and mode, wire their
        BatchNorm layers to this step's exchange and hand their Dropout layers this step's
        keys (drawn from the model's generators, as a serial forward would draw them)."""
        exchange = self._exchanges.get(shards)
        if exchange is None:
            exchange = self._exchanges[shards] = Exchange(shards)
        exchange.start_step()
        self._exchange = exchange
        keys = [
            int(d.rng.integers(2**63)) if d.training and d.p > 0 else 0
            for d in dropouts(self.model)
        ]
        masters = batchnorms(self.model)
        for s, replica in enumerate(self.replicas[:shards]):
            for p_rep, p in zip(replica.parameters(), self.model.parameters(), strict=True):
                p_rep.data, p_rep.requires_grad, p_rep.grad = p.data, p.requires_grad, None
            replica.train(self.model.training)
            for j, (bn_rep, bn) in enumerate(zip(batchnorms(replica), masters, strict=True)):
                bn_rep.running_mean, bn_rep.running_var = bn.running_mean, bn.running_var
                bn_rep.exchange = exchange if shards > 1 else None
                bn_rep.layer, bn_rep.shard = j, s
                bn_rep.updates_running = s == 0
            for d_rep, key in zip(dropouts(replica), keys, strict=True):
                d_rep.key, d_rep.first_row = key, bounds[s]

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
        self._sync(shards, bounds)
        rows = [slice(bounds[s], bounds[s + 1]) for s in range(shards)]
        weights = [(bounds[s + 1] - bounds[s]) / n for s in range(shards)]
        # each shard has its core: BLAS gets what is left over, the kernels split nothing
        with self._blas.limit(limits=self._blas_threads, user_api="blas"), threads.limit(1):
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
