"""Callbacks: early stopping, the plateau and one-cycle schedulers, and checkpointing.

EarlyStopping and PlateauScheduler decide "better" with the same rule
(gpucnn.optim.Improvement), so min_delta / threshold mean the same thing in both.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpucnn.optim import Improvement, OneCycleLR, ReduceLROnPlateau
from gpucnn.optim.onecycle import check_one_cycle
from gpucnn.train.runs import plural

if TYPE_CHECKING:
    from gpucnn.train.checkpoint import Checkpoint

# the Trainer (gpucnn.train.trainer) calls these hooks with itself; that module imports this
# one, so this one does not name it back (no two modules import each other)
Trainer = Any


def infer_mode(monitor: str, mode: str) -> str:
    """ "auto": maximise accuracies, minimise everything else."""
    if mode != "auto":
        return mode
    return "max" if "acc" in monitor else "min"


class Callback:
    """Hooks called by the Trainer. ``key`` names its state in checkpoints; ``order`` sorts
    callbacks (checkpointing runs last, so it saves everyone's updated state)."""

    order = 0
    # Whether on_batch_end may run between the launches of a fit's captured CUDA graphs
    # (gpucnn.train.graph): only where all it changes is what the captured step reads from
    # device state (the optimizer's lr), never a value frozen into the graph, and it reads
    # nothing from the device
    between_graphs = False

    @property
    def key(self) -> str:
        return type(self).__name__

    def on_train_begin(self, trainer: Trainer) -> None:
        pass

    def on_batch_end(self, trainer: Trainer, step: int) -> None:
        """After each optimizer step; ``step`` counts the run's steps so far (from 1). The
        Trainer calls it only on callbacks that override it: a step costs the others nothing."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        pass

    def on_train_end(self, trainer: Trainer) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _metric(logs: dict[str, float], monitor: str, who: str) -> float:
    if monitor not in logs:
        raise KeyError(
            f"{who}: monitored metric {monitor!r} is not in this epoch's logs "
            f"({', '.join(sorted(logs))}); pass a validation loader or monitor another metric"
        )
    return float(logs[monitor])


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs; with restore_best_weights, the model ends with the weights of its best epoch.

    Args:
        monitor: a key of the epoch logs ("val_loss", "val_accuracy", ...).
        patience: epochs without improvement before stopping.
        min_delta: the absolute margin an improvement must clear.
        mode: "min", "max" or "auto" (max for accuracies).
        restore_best_weights: load the best epoch's weights when training ends.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 7,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best_weights: bool = True,
    ) -> None:
        if patience < 0:
            raise ValueError(f"EarlyStopping: patience must be >= 0, got {patience}")
        self.monitor, self.patience = monitor, int(patience)
        self.improved = Improvement(infer_mode(monitor, mode), float(min_delta), "abs")
        self.restore_best_weights = restore_best_weights
        self.best = self.improved.worst
        self.wait = 0
        self.best_epoch = -1
        self.stopped_epoch = -1
        self.best_weights: dict[str, np.ndarray] | None = None

    def on_train_begin(self, trainer: Trainer) -> None:
        if self.stopped_epoch >= 0:  # restored from a checkpoint written after stopping
            trainer.stop_training = True

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        current = _metric(logs, self.monitor, "EarlyStopping")
        if self.improved(current, self.best):
            self.best, self.wait, self.best_epoch = current, 0, epoch
            if self.restore_best_weights:
                self.best_weights = trainer.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            trainer.stop_training = True
            trainer.log(
                f"early stopping at epoch {epoch + 1}: {self.monitor} has not improved on "
                f"{self.best:.5g} (epoch {self.best_epoch + 1}) for {plural(self.wait, 'epoch')}"
            )

    def on_train_end(self, trainer: Trainer) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)
            trainer.log(f"restored the weights of epoch {self.best_epoch + 1}")

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "best": self.best,
            "wait": self.wait,
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
        }
        for name, value in (self.best_weights or {}).items():
            state[f"best_weights/{name}"] = value
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.wait = int(state["wait"])
        self.best_epoch = int(state["best_epoch"])
        self.stopped_epoch = int(state["stopped_epoch"])
        prefix = "best_weights/"
        weights = {k[len(prefix) :]: np.array(v) for k, v in state.items() if k.startswith(prefix)}
        self.best_weights = weights or None


class _ScheduleCallback(Callback):
    """A callback that drives an lr schedule (``self.scheduler``, built when training begins):
    its state is the schedule's; state loaded before then waits in ``self._pending``."""

    scheduler: Any = None
    _pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict() if self.scheduler is not None else (self._pending or {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = {k: (v.item() if hasattr(v, "item") else v) for k, v in state.items()}
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)
        else:
            self._pending = state


class PlateauScheduler(_ScheduleCallback):
    """ReduceLROnPlateau as a callback, stepped with ``monitor`` after each epoch.

    Defaults are the article's: patience 3, factor 0.5, min_lr 1e-6.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.5,
        patience: int = 3,
        min_lr: float = 1e-6,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        mode: str = "auto",
    ) -> None:
        self.monitor = monitor
        self.kwargs = {
            "mode": infer_mode(monitor, mode),
            "factor": factor,
            "patience": patience,
            "min_lr": min_lr,
            "threshold": threshold,
            "threshold_mode": threshold_mode,
            "cooldown": cooldown,
        }
        self.scheduler: ReduceLROnPlateau | None = None
        self._pending: dict[str, Any] | None = None

    def on_train_begin(self, trainer: Trainer) -> None:
        if self.scheduler is None or self.scheduler.optimizer is not trainer.optimizer:
            self.scheduler = ReduceLROnPlateau(trainer.optimizer, **self.kwargs)
        if self._pending is not None:
            self.scheduler.load_state_dict(self._pending)
            self._pending = None

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        assert self.scheduler is not None
        old = trainer.optimizer.lr
        if self.scheduler.step(_metric(logs, self.monitor, "PlateauScheduler")):
            trainer.log(
                f"{self.monitor} plateaued: learning rate {old:.3g} -> {trainer.optimizer.lr:.3g}"
            )


class ModelCheckpoint(Callback):
    """Save ``last.npz`` after every epoch and ``best.npz`` when ``monitor`` improves, in an
    order that leaves the folder consistent after a kill at any moment, and resume from it.

    The commit order: ``best.npz`` first, then ``last.npz``, each keeping the version it
    replaces as ``best.prev.npz`` / ``last.prev.npz``. ``last.npz`` records which epoch
    ``best.npz`` holds, so it never claims a best that is not on disk; a ``best.npz`` written
    ahead of it (a kill between the two writes) is told apart by its epoch and replaced by
    the one ``last.npz`` names when the run resumes (:meth:`resume`).

    Args:
        directory: where the files go.
        monitor: the metric that decides "best" (ignored when save_best is False).
        mode: "min", "max" or "auto".
        save_best: keep best.npz.
        save_last: keep last.npz (what a crashed run resumes from).
    """

    order = 100

    def __init__(
        self,
        directory: str | Path,
        monitor: str = "val_loss",
        mode: str = "auto",
        save_best: bool = True,
        save_last: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.monitor = monitor
        self.improved = Improvement(infer_mode(monitor, mode), 0.0, "abs")
        self.save_best, self.save_last = save_best, save_last
        self.best = self.improved.worst
        self.best_epoch = 0  # epochs completed when best.npz was written; 0: none yet

    @property
    def last_path(self) -> Path:
        return self.directory / "last.npz"

    @property
    def best_path(self) -> Path:
        return self.directory / "best.npz"

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        is_best = False
        if self.save_best:
            current = _metric(logs, self.monitor, "ModelCheckpoint")
            if not math.isnan(current) and self.improved(current, self.best):
                self.best, self.best_epoch, is_best = current, epoch + 1, True
        if is_best:
            trainer.save_checkpoint(self.best_path, keep_previous=True)
        if self.save_last:
            trainer.save_checkpoint(self.last_path, keep_previous=True)

    def resume(self, trainer: Trainer) -> Checkpoint | None:
        """Load the newest usable checkpoint of this folder into ``trainer``.

        ``last.npz``, or ``last.prev.npz`` with a warning when the newest is missing,
        unreadable or poisoned; then ``best.npz`` is made the checkpoint the loaded one names
        (restored from ``best.prev.npz`` when a kill left a newer one). Leftover temporary
        files of a killed write are removed. Without any last checkpoint, a ``best.npz`` left
        by a run killed in its first epoch is removed and None is returned (a fresh start).

        Raises:
            CheckpointError: checkpoints are there but none can be used; the message says
                how to start over.
        """
        from gpucnn.train.atomic import previous, remove_stale_parts
        from gpucnn.train.errors import CheckpointError
        from gpucnn.train.runs import start_over

        remove_stale_parts(self.directory)
        candidates = [p for p in (self.last_path, previous(self.last_path)) if p.exists()]
        if not candidates:
            for stale in (self.best_path, previous(self.best_path)):
                stale.unlink(missing_ok=True)
            return None
        problems = []
        for path in candidates:
            try:
                ckpt = trainer.load_checkpoint(path)
            except CheckpointError as exc:
                problems.append(str(exc))
                continue
            if problems:
                trainer.log(f"warning: {problems[0]}; resumed from the previous checkpoint {path}")
            self._reconcile_best(trainer)
            trainer.write_history()  # history.json agrees with the checkpoint resumed from
            return ckpt
        raise CheckpointError(
            f"no usable checkpoint in {self.directory}: {'; '.join(problems)}; {start_over()}"
        )

    def _reconcile_best(self, trainer: Trainer) -> None:
        from gpucnn.train.atomic import previous
        from gpucnn.train.checkpoint import load_checkpoint
        from gpucnn.train.errors import CheckpointError

        if not self.save_best or self.best_epoch == 0:
            return
        for path in (self.best_path, previous(self.best_path)):
            try:
                held = load_checkpoint(path).epoch if path.exists() else None
            except CheckpointError:
                held = None
            if held == self.best_epoch:
                if path != self.best_path:
                    path.replace(self.best_path)
                    trainer.log(
                        f"best.npz was written after the last checkpoint; restored the best of "
                        f"epoch {self.best_epoch} from {path.name}"
                    )
                return
        trainer.log(
            f"warning: {self.best_path} does not hold epoch {self.best_epoch}, the best the last "
            "checkpoint names; it is rewritten when the monitored metric next improves"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state.get("best_epoch", 0))


class OneCycleScheduler(_ScheduleCallback):
    """OneCycleLR as a callback, stepped after every batch (``on_batch_end``).

    The schedule is built when training begins (setting the optimizer's lr to
    ``max_lr / div_factor``). The Trainer records the lr each batch trained with
    (``history["step_lr"]``: the schedule, step for step) and, per epoch, its first and last
    batch's (``lr``, ``lr_end``: the range the epoch line shows). Its position is saved in
    checkpoints; a resumed run continues the schedule exactly, and the lr of its next batch is
    the one saved.

    In a fit run as CUDA graphs the schedule still steps on the host after every batch: setting
    ``optimizer.lr`` in device-state mode is an asynchronous write of the step state on the
    stream, between one batch's graph launch and the next (``between_graphs``), so the next
    replay's update reads the new lr. No recapture, no sync.

    Args:
        max_lr: the peak learning rate.
        epochs: the epochs the cycle spans (the run's ``epochs``).
        steps_per_epoch: ``len(train_loader)``; checked after each epoch.
        total_steps: instead of epochs and steps_per_epoch (not checked per epoch).
        pct_start, anneal_strategy, div_factor, final_div_factor, three_phase: as
            :class:`gpucnn.optim.OneCycleLR`.
    """

    between_graphs = True  # on_batch_end sets optimizer.lr, nothing else (see above)

    def __init__(
        self,
        max_lr: float,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        total_steps: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
    ) -> None:
        self.kwargs = {
            "max_lr": max_lr,
            "total_steps": total_steps,
            "epochs": epochs,
            "steps_per_epoch": steps_per_epoch,
            "pct_start": pct_start,
            "anneal_strategy": anneal_strategy,
            "div_factor": div_factor,
            "final_div_factor": final_div_factor,
            "three_phase": three_phase,
        }
        self.steps_per_epoch = steps_per_epoch if total_steps is None else None
        self.scheduler: OneCycleLR | None = None
        self._pending: dict[str, Any] | None = None
        check_one_cycle(**self.kwargs)  # now, not when training begins

    def on_train_begin(self, trainer: Trainer) -> None:
        if self.scheduler is None or self.scheduler.optimizer is not trainer.optimizer:
            self.scheduler = OneCycleLR(trainer.optimizer, **self.kwargs)
        if self._pending is not None:
            saved, ours = int(self._pending["total_steps"]), self.scheduler.total_steps
            if saved != ours:
                raise ValueError(
                    f"OneCycleScheduler: the checkpoint's cycle spans {saved} steps, this "
                    f"run's {ours}: a one-cycle run resumes only with the epochs and batches "
                    "it started with"
                )
            self.scheduler.load_state_dict(self._pending)
            trainer.optimizer.lr = self.scheduler.get_last_lr()[0]  # the saved lr, exactly
            self._pending = None

    def on_batch_end(self, trainer: Trainer, step: int) -> None:
        assert self.scheduler is not None
        try:
            self.scheduler.step()
        except ValueError as exc:
            raise ValueError(
                f"OneCycleScheduler: {exc}; the run went on past the cycle it was built for"
            ) from None

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        assert self.scheduler is not None
        if self.steps_per_epoch is None:
            return
        expected = (epoch + 1) * self.steps_per_epoch
        if self.scheduler.last_epoch != expected:
            raise ValueError(
                f"OneCycleScheduler: built for {self.steps_per_epoch} steps per epoch, but "
                f"after epoch {epoch + 1} it has stepped {self.scheduler.last_epoch} times, not "
                f"{expected}; pass steps_per_epoch=len(train_loader)"
            )
