"""The Trainer: the loop that ties model, loss, optimizer, data and callbacks together.

Per step: zero_grad, forward, loss, backward, global gradient norm, optimizer step. Per-step
losses and gradient norms are written into device arrays and read by the host only every
``log_every`` steps and at the end of an epoch, so a GPU step does no host sync.

One epoch loop (:meth:`Trainer.run_epoch`) serves every way a step runs: a step runner
(gpucnn.train.steps) supplies the step, eager (serial, or on CPU batch shards) or a captured
CUDA graph (gpucnn.train.graph).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from gpucnn.backend import Backend, get_backend, to_host
from gpucnn.functional.loss import check_labels
from gpucnn.grad_mode import no_grad
from gpucnn.nn import Module
from gpucnn.train.atomic import write_json
from gpucnn.train.callbacks import Callback
from gpucnn.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from gpucnn.train.errors import TrainingError
from gpucnn.train.parallel import DataParallel, data_parallel
from gpucnn.train.progress import Progress
from gpucnn.train.steps import EagerSteps, StepRunner

log = logging.getLogger("gpucnn.train")

HISTORY_KEYS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",  # the lr of the epoch's first batch
    "lr_end",  # of its last batch (a per-batch schedule moves it within the epoch)
    "grad_norm_mean",
    "grad_norm_max",
    "elapsed_s",
    "images_per_s",
)


class Trainer:
    """Fit a model with a criterion and an optimizer, calling callbacks after each epoch (and,
    those that define ``on_batch_end``, after each optimizer step).

    Args:
        model: the network (moved to ``device``).
        criterion: e.g. nn.CrossEntropyLoss().
        optimizer: e.g. optim.Adam(model.parameters()).
        device: "cpu", "cuda", "auto", or a Backend a run resolved once and shares.
        callbacks: EarlyStopping, PlateauScheduler, ModelCheckpoint, ...
        log_every: steps between host reads of the running loss (progress, NaN check on GPU).
        history_path: where the history JSON is written after every epoch, or None.
        config: the run's settings, saved in checkpoints.
        progress: draw a progress bar on a terminal / log epoch lines.
        workers: CPU threads for a training step, each running forward and backward on its
            shard of the batch (gpucnn.train.parallel; the gradients are those of the whole
            batch, BatchNorm statistics and dropout masks included). None: one per core, at
            most 8; 1: serial. The GPU ignores it.
        cuda_graph: on CUDA, run each training step as a captured CUDA graph replayed per
            batch (gpucnn.train.graph), each graph checked against the eager step at its first
            launch (gpucnn.train.graph_check): "auto" when the fit allows it (else, or when a
            capture fails or disagrees with the eager step, it logs why and trains eagerly),
            True to insist (a TrainingError says why not), False never.
    """

    def __init__(
        self,
        model: Module,
        criterion: Any,
        optimizer: Any,
        device: str | Backend = "cpu",
        callbacks: list[Callback] | tuple[Callback, ...] = (),
        log_every: int = 50,
        history_path: str | os.PathLike | None = None,
        config: dict[str, Any] | None = None,
        progress: bool = True,
        workers: int | None = None,
        cuda_graph: bool | str = "auto",
    ) -> None:
        self.progress = Progress(progress)  # first: the lines below may log (device, malloc)
        self.backend = get_backend(device)
        self.backend.prepare()
        if workers is not None and (isinstance(workers, bool) or workers < 1):
            raise ValueError(f"Trainer: workers must be an integer >= 1 or None, got {workers!r}")
        self.workers = workers
        if cuda_graph not in (True, False, "auto"):
            raise ValueError(
                f"Trainer: cuda_graph must be True, False or 'auto', got {cuda_graph!r}"
            )
        self.cuda_graph = cuda_graph
        self._graph: Any = None
        self.model = model.to(self.backend)
        self.criterion, self.optimizer = criterion, optimizer
        self.callbacks = sorted(callbacks, key=lambda c: c.order)
        keys = [c.key for c in self.callbacks]
        if len(set(keys)) != len(keys):
            raise ValueError(f"Trainer: two callbacks share a state key: {keys}")
        self.log_every = max(1, int(log_every))
        self.history_path = Path(history_path) if history_path is not None else None
        self.config = dict(config or {})
        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.stop_training = False
        self.history: dict[str, list] = {k: [] for k in HISTORY_KEYS}
        self.history["step_grad_norm"] = []
        self.history["step_lr"] = []  # the lr each step's update used
        self._parallel: DataParallel | None = None

    # -- messages -------------------------------------------------------------------------
    def log(self, message: str) -> None:
        self.progress.say(message)  # while an epoch ends: after its line

    # -- checkpoints ----------------------------------------------------------------------
    def _callback_states(self) -> dict[str, Callback]:
        return {c.key: c for c in self.callbacks}

    def save_checkpoint(self, path: str | os.PathLike, keep_previous: bool = False) -> Path:
        """Everything needed to continue this run exactly: weights, optimizer, callbacks,
        generators, epoch, step, config and history (``keep_previous``: keep the replaced
        file as ``<name>.prev.npz``)."""
        return save_checkpoint(
            path,
            self.model,
            self.optimizer,
            self._callback_states(),
            self.epoch,
            self.global_step,
            self.config,
            self.history,
            keep_previous=keep_previous,
        )

    def load_checkpoint(self, path: str | os.PathLike) -> Checkpoint:
        """Resume from a checkpoint written by :meth:`save_checkpoint` (same model)."""
        ckpt = load_checkpoint(path, model=self.model)
        ckpt.restore(self.model, self.optimizer, self._callback_states())
        self.epoch, self.global_step = ckpt.epoch, ckpt.step
        if ckpt.history:
            self.history = {k: list(v) for k, v in ckpt.history.items()}
            for k in HISTORY_KEYS:  # a checkpoint of an older gpucnn lacks newer columns
                self.history.setdefault(k, [math.nan] * len(self.history.get("epoch", ())))
            self.history.setdefault("step_lr", [])
        self.stop_training = False
        self.log(f"resumed from {path} after epoch {self.epoch} (step {self.global_step})")
        return ckpt

    # -- checks before any work -----------------------------------------------------------
    def check_loader(self, loader: Any, name: str) -> None:
        """Look at the first batch (and all labels, when the loader exposes them) before the
        first step, so bad data fails fast with the loader's name in the message."""
        try:
            x, y = next(iter(loader))
        except StopIteration:
            raise TrainingError(f"{name} loader yields no batches") from None
        if getattr(x, "ndim", 0) < 2 or getattr(y, "ndim", 0) != 1 or len(x) != len(y):
            raise TrainingError(
                f"{name} loader yields x of shape {getattr(x, 'shape', None)} and labels of "
                f"shape {getattr(y, 'shape', None)}; expected (N, C, H, W) and (N,)"
            )
        try:
            out = self.model.output_shape(tuple(x.shape[1:]))
        except ValueError as exc:
            raise TrainingError(
                f"{name} loader yields batches of shape {tuple(x.shape)} that the model cannot "
                f"take: {exc}"
            ) from exc
        labels = getattr(loader, "labels", y)
        try:
            check_labels(f"{name} loader", to_host(labels), len(labels), out[0])
        except ValueError as exc:
            raise TrainingError(str(exc)) from exc

    # -- the loop -------------------------------------------------------------------------
    def run_epoch(
        self, batches: Iterable[Any], count: int, epoch: int, epochs: int, steps: StepRunner
    ) -> dict[str, float]:
        """One training epoch: the one epoch loop, whoever runs the steps.

        For each of the ``count`` items of ``batches``: the lr the step's update reads (the
        history's step_lr), ``steps.step(index, batch)``, the step count, the per-batch
        callbacks (after the update: e.g. the lr of the next batch) and the progress bar;
        then ``steps.end_epoch`` (the epoch's losses, gradient norms, batch sizes and correct
        count, checked finite) into the history and the epoch's logs.

        Args:
            batches: what ``steps.step`` takes, one item a step (a loader's (x, y) batches).
            count: how many; a loader that yields another number of batches is an error.
            epoch: the epoch's index (from 0); ``epochs``: how many the fit runs (progress).
            steps: the step runner (gpucnn.train.steps): EagerSteps, or a CUDA-graph
                runner (gpucnn.train.graph.GraphTraining).
        """
        self.model.train()
        # only callbacks that override on_batch_end are called per step
        batch_callbacks = [
            c
            for c in self.callbacks
            if getattr(type(c), "on_batch_end", Callback.on_batch_end) is not Callback.on_batch_end
        ]
        lrs = np.zeros(count)
        steps.begin_epoch(epoch, count)
        self.progress.begin(f"epoch {epoch + 1}/{epochs}", count)
        start = time.perf_counter()
        i = -1
        for i, batch in enumerate(batches):
            lrs[i] = self.optimizer.lr  # what this step's update reads
            steps.step(i, batch)
            self.global_step += 1
            for cb in batch_callbacks:
                cb.on_batch_end(self, self.global_step)
            if (i + 1) % self.log_every == 0:
                self.progress.update(i + 1, steps.note(i))
        if i + 1 != count:
            raise TrainingError(f"train loader yielded {i + 1} batches but len() says {count}")
        record = steps.end_epoch(epoch)
        elapsed = time.perf_counter() - start
        seen = int(record.sizes.sum())
        self.history["step_grad_norm"].extend(float(v) for v in record.norms)
        self.history["step_lr"].extend(lrs.tolist())
        return {
            "train_loss": float((record.losses * record.sizes).sum() / seen),
            "train_accuracy": record.correct / seen,
            "grad_norm_mean": float(record.norms.mean()),
            "grad_norm_max": float(record.norms.max()),
            "images_per_s": seen / elapsed,
            "train_time_s": elapsed,
        }

    def train_epoch(self, loader: Any, epoch: int, epochs: int) -> dict[str, float]:
        """One epoch of ``loader`` with steps launched by the host (:meth:`run_epoch` with
        gpucnn.train.steps.EagerSteps; forward and backward on batch shards in threads where
        the fit runs them so). Returns the epoch's logs."""
        # in host memory reading the loss costs nothing, so check every step (before the update)
        check_every = 1 if self.backend.host_memory else self.log_every
        parallel = self._parallel.step if self._parallel is not None else None
        steps = EagerSteps(
            self.model, self.criterion, self.optimizer, self.backend, check_every, parallel
        )
        return self.run_epoch(loader, len(loader), epoch, epochs, steps)

    def evaluate(self, loader: Any) -> dict[str, float]:
        """Loss and accuracy over a loader, in eval mode (dropout off, BatchNorm running stats)."""
        logits, labels = self._forward_all(loader)
        loss = self.criterion(logits, labels)
        return {"loss": float(loss), "accuracy": float((logits.argmax(axis=1) == labels).mean())}

    def predict(self, loader: Any) -> tuple[np.ndarray, np.ndarray]:
        """All logits and labels of a loader as host arrays (one transfer at the end)."""
        logits, labels = self._forward_all(loader)
        return to_host(logits), to_host(labels)

    def _forward_all(self, loader: Any) -> tuple[Any, Any]:
        self.model.eval()
        xp = self.backend.xp
        outs, ys = [], []
        try:
            with no_grad():  # nothing kept for a backward: each layer's temporaries go at once
                for x, y in loader:
                    outs.append(self.model(x))
                    ys.append(y)
        finally:
            self.model.train()
        if not outs:
            raise TrainingError("evaluation loader yields no batches")
        return xp.concatenate(outs), xp.concatenate(ys)

    def fit(self, train_loader: Any, val_loader: Any = None, epochs: int = 1) -> dict[str, list]:
        """Train until ``epochs`` epochs are completed (counting those of a resumed run) or a
        callback stops training.

        Returns:
            The history: one entry per epoch for each of HISTORY_KEYS (``lr`` and ``lr_end``:
            the lr of the epoch's first and last batch), and one per step in step_grad_norm
            and step_lr.
        """
        if epochs < 1:
            raise ValueError(f"Trainer.fit: epochs must be >= 1, got {epochs}")
        self.check_loader(train_loader, "train")
        if val_loader is not None:
            self.check_loader(val_loader, "validation")
        self.stop_training = False
        if self.progress.enabled:  # whatever the device was asked as ("auto" says why too)
            self.log(f"training on {self.backend.name}")
        self._parallel = data_parallel(self.model, self.criterion, self.backend, self.workers)
        try:
            self._fit(train_loader, val_loader, epochs)
        finally:
            if self._parallel is not None:
                self._parallel.close()
                self._parallel = None
            if self._graph is not None:
                self._graph.close()
                self._graph = None
        return self.history

    def _graph_training(self, train_loader: Any) -> Any:
        """The CUDA-graph runner for this fit, or None (see ``cuda_graph``)."""
        if self.cuda_graph is False:
            return None
        from gpucnn.train import graph

        reason = graph.unsupported(self, train_loader)
        if reason is None:
            return graph.GraphTraining(self, train_loader)
        if self.cuda_graph is True:
            raise TrainingError(f"cuda_graph=True, but {reason}")
        if self.backend.name == "cuda":
            self.log(f"training eagerly: {reason}")
        return None

    def _fit(self, train_loader: Any, val_loader: Any, epochs: int) -> None:
        for cb in self.callbacks:
            cb.on_train_begin(self)  # may stop at once: a resumed run that had already stopped
        # after on_train_begin: resuming may have replaced the optimizer's arrays
        self._graph = self._graph_training(train_loader)
        while self.epoch < epochs and not self.stop_training:
            epoch = self.epoch
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            lr = self.optimizer.lr
            t0 = time.perf_counter()
            run_epoch = self._graph.train_epoch if self._graph else self.train_epoch
            logs = run_epoch(train_loader, epoch, epochs)
            if self._graph is not None and self._graph.fallback is not None:
                self.log(f"training eagerly: {self._graph.fallback}")
                self._graph.close()
                self._graph = None
            if val_loader is not None:
                val = self.evaluate(val_loader)
                logs["val_loss"], logs["val_accuracy"] = val["loss"], val["accuracy"]
            logs["lr"] = lr
            logs["lr_end"] = self.history["step_lr"][-1]
            logs["elapsed_s"] = time.perf_counter() - t0
            self.epoch = epoch + 1
            self.history["epoch"].append(self.epoch)
            for k in HISTORY_KEYS[1:]:
                self.history[k].append(logs.get(k, math.nan))
            # the epoch's line once it is committed (checkpoints, history.json)
            with self.progress.epoch_end(self._summary(logs, epochs)):
                for cb in self.callbacks:
                    cb.on_epoch_end(self, epoch, logs)
                self.write_history()
        for cb in self.callbacks:
            cb.on_train_end(self)

    def _summary(self, logs: dict[str, float], epochs: int) -> str:
        parts = [
            f"epoch {self.epoch}/{epochs}",
            f"train_loss {logs['train_loss']:.4f}",
            f"train_acc {logs['train_accuracy']:.4f}",
        ]
        if "val_loss" in logs:
            parts += [f"val_loss {logs['val_loss']:.4f}", f"val_acc {logs['val_accuracy']:.4f}"]
        start, end = logs["lr"], logs.get("lr_end", logs["lr"])
        parts += [
            f"lr {start:.3g}" if f"{start:.3g}" == f"{end:.3g}" else f"lr {start:.3g} -> {end:.3g}",
            f"{logs['elapsed_s']:.1f}s",
            f"{logs['images_per_s']:.0f} img/s",
        ]
        return "  ".join(parts)

    def write_history(self) -> None:
        """history.json, atomically (after every epoch, and on resume)."""
        if self.history_path is not None:
            write_json(self.history_path, self.history)
