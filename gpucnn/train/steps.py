"""How a training epoch's steps run, for the Trainer's one epoch loop (Trainer.run_epoch).

The loop itself (the learning rate each step reads, the step count, per-batch callbacks,
progress, the history and the epoch's logs) is the Trainer's, written once. What runs at each
step, and how the epoch's per-step losses and gradient norms are recorded and read back, is
a step runner's:

- :class:`EagerSteps`: each step launched by the host, forward and backward by the model
  itself or, on a CPU with several cores, on batch shards in threads
  (gpucnn.train.parallel.DataParallel.step); losses checked as they come, on the host;
- gpucnn.train.graph.GraphTraining: each step one launch of a captured CUDA graph, the
  records in device memory, read once at the epoch's end.

A runner has ``begin_epoch(epoch, batches)``, ``step(index, batch)``, ``note(index)`` (the
progress bar's text after that step: a running loss where reading it costs nothing) and
``end_epoch(epoch) -> EpochRecord`` (which raises where a loss or a parameter is not finite).
The functions below are what both runners compute the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import numpy as np

from gpucnn.backend import Backend, to_host
from gpucnn.nn import Module
from gpucnn.train.errors import NonFiniteLossError, NonFiniteParametersError


class EpochRecord(NamedTuple):
    """An epoch's steps as host values, for its logs and the history."""

    losses: np.ndarray  # (steps,) the loss of each step's batch
    norms: np.ndarray  # (steps,) the global gradient norm of each step
    sizes: np.ndarray  # (steps,) the images in each step's batch
    correct: int  # images classified right, over the epoch (before each step's update)


class StepRunner(Protocol):
    """What the Trainer's epoch loop asks of a step runner (see the module docstring)."""

    def begin_epoch(self, epoch: int, batches: int) -> None: ...

    def step(self, index: int, batch: Any) -> None: ...

    def note(self, index: int) -> str: ...

    def end_epoch(self, epoch: int) -> EpochRecord: ...


def grad_norm(model: Module, xp: Any) -> Any:
    """sqrt of the sum of the squared gradients of ``model``'s parameters: a 0-d device array
    (no host read)."""
    total = xp.zeros((), dtype=np.float32)
    for p in model.parameters():
        if p.grad is not None:
            total += (p.grad * p.grad).sum()
    return xp.sqrt(total)


def parameters_finite(model: Module, xp: Any) -> Any:
    """Whether every parameter of ``model`` is finite: a 0-d device bool (no host read)."""
    finite = xp.ones((), dtype=bool)
    for p in model.parameters():
        finite &= xp.isfinite(p.data).all()
    return finite


def check_parameters(model: Module, xp: Any, epoch: int) -> None:
    """Every parameter finite after the epoch's last update (one device reduction, one host
    read); else NonFiniteParametersError naming the first bad one. The losses are checked
    before each update, so this catches the last update before a checkpoint is written."""
    if not bool(parameters_finite(model, xp)):
        bad = next(n for n, p in model.named_parameters() if not xp.isfinite(p.data).all())
        raise NonFiniteParametersError(epoch + 1, bad)


def check_losses(losses: np.ndarray, epoch: int, first: int = 0) -> None:
    """NonFiniteLossError for the first non-finite entry of the host array ``losses``, whose
    entry i is the loss of step ``first + i`` of the epoch (counted from 0)."""
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        raise NonFiniteLossError(epoch + 1, first + int(bad[0]) + 1, float(losses[bad[0]]))


class EagerSteps:
    """Steps launched by the host: zero_grad, forward and backward (``forward_backward``),
    the gradient norm, the optimizer's update.

    The losses are checked before the update every ``check_every`` steps (every step where
    reading a loss costs nothing, i.e. in host memory) and at the epoch's end.

    Args:
        model, criterion, optimizer, backend: the Trainer's.
        check_every: steps between host reads of the losses.
        forward_backward: ``(x, y) -> (loss, logits)`` that leaves the batch-mean loss's
            gradients in the parameters; default: the model's own forward and backward (a
            DataParallel's ``step`` runs them on shards instead).
    """

    def __init__(
        self,
        model: Module,
        criterion: Any,
        optimizer: Any,
        backend: Backend,
        check_every: int,
        forward_backward: Callable[[Any, Any], tuple[Any, Any]] | None = None,
    ) -> None:
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.xp = backend.xp
        self.check_every = check_every
        self.forward_backward = forward_backward or self.serial

    def serial(self, x: Any, y: Any) -> tuple[Any, Any]:
        """Forward and backward of the whole batch by the model itself."""
        logits = self.model(x)
        loss = self.criterion(logits, y)
        self.model.backward(self.criterion.backward())
        return loss, logits

    def begin_epoch(self, epoch: int, batches: int) -> None:
        xp = self.xp
        self.epoch = epoch
        self.losses = xp.zeros(batches, dtype=np.float32)
        self.norms = xp.zeros(batches, dtype=np.float32)
        self.sizes = np.zeros(batches, dtype=np.int64)
        self.correct = xp.zeros((), dtype=np.int64)
        self.checked = 0  # steps whose losses the host has checked

    def step(self, index: int, batch: Any) -> None:
        x, y = batch
        self.model.zero_grad()
        loss, logits = self.forward_backward(x, y)
        self.losses[index] = loss
        if (index + 1) % self.check_every == 0:  # before the update
            self.check(index + 1)
        self.norms[index] = grad_norm(self.model, self.xp)
        self.optimizer.step()
        self.correct += (logits.argmax(axis=1) == y).sum()
        self.sizes[index] = len(y)

    def check(self, upto: int) -> None:
        """Check the losses of the steps not checked yet, up to step ``upto`` (one read)."""
        check_losses(to_host(self.losses[self.checked : upto]), self.epoch, self.checked)
        self.checked = upto

    def note(self, index: int) -> str:
        return f"loss {float(self.losses[index]):.4f}"

    def end_epoch(self, epoch: int) -> EpochRecord:
        self.check(len(self.sizes))
        check_parameters(self.model, self.xp, epoch)
        return EpochRecord(to_host(self.losses), to_host(self.norms), self.sizes, int(self.correct))
