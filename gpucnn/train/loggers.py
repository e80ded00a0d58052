"""Metric logs for other tools: ``history.csv`` and TensorBoard event files.

Both loggers write what ``trainer.history`` holds (the record a checkpoint saves and a resumed
run restores), so a run killed and resumed from its last checkpoint leaves the same log as a
run that was never interrupted. Neither holds state worth checkpointing.

They run after the other callbacks (``order`` 90: the epoch's record is final) and before
ModelCheckpoint (``order`` 100): when a checkpoint of epoch k exists, the logs hold epoch k.

TensorBoard support is optional: ``pip install 'gpucnn[tensorboard]'`` installs tensorboardX,
imported only when a TensorBoardLogger is made.
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpucnn.backend import to_host
from gpucnn.train.callbacks import Callback
from gpucnn.train.trainer import HISTORY_KEYS

if TYPE_CHECKING:
    from gpucnn.train.trainer import Trainer

# history column -> TensorBoard tag
TENSORBOARD_TAGS = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "val_loss": "val/loss",
    "val_accuracy": "val/accuracy",
    "lr": "lr",
    "lr_end": "lr_end",
    "grad_norm_mean": "grad_norm/mean",
    "grad_norm_max": "grad_norm/max",
    "elapsed_s": "time/epoch_s",
    "images_per_s": "images_per_s",
}

INSTALL_HINT = "pip install 'gpucnn[tensorboard]'"


def _cell(value: Any, na_rep: str) -> str:
    """One CSV cell: integers as integers, floats with the shortest repr that reads back
    exactly, NaN (and a missing value) as ``na_rep``."""
    if value is None:
        return na_rep
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int) or (hasattr(value, "dtype") and value.dtype.kind in "iu"):
        return str(int(value))
    number = float(value)
    return na_rep if math.isnan(number) else repr(number)


class CSVLogger(Callback):
    """Write the per-epoch history to a CSV file after every epoch (e.g. ``history.csv``
    beside ``history.json``).

    The header is HISTORY_KEYS (epoch, train_loss, train_accuracy, val_loss, val_accuracy,
    lr, lr_end, grad_norm_mean, grad_norm_max, elapsed_s, images_per_s); one row per epoch
    follows. ``lr`` and ``lr_end`` are the learning rates of the epoch's first and last batch
    (equal unless a per-batch schedule such as one-cycle moves it). The per-step lists
    ``step_grad_norm`` and ``step_lr`` are not columns (they have one value per step; they are
    in history.json).
    Epochs are integers; other numbers are written with ``repr`` precision, so
    ``float(cell)`` gives back the exact value. NaN (the validation columns of a run
    without a validation loader) is written as ``na_rep``: an empty cell by default, which
    pandas, R and spreadsheets read as missing (``na_rep="nan"`` writes what ``float()``
    parses).

    The whole file is rewritten from ``trainer.history`` at the start of training and after
    every epoch, atomically (a temporary file, then ``os.replace``): a reader never sees a
    half-written file, and a run resumed from a checkpoint (whose history holds the epochs
    done) rewrites rows that a killed run wrote past its checkpoint, so the CSV equals the one
    of an uninterrupted run. A fresh run replaces an existing file at ``path``.

    Args:
        path: the CSV file to write; its folder is created when missing.
        na_rep: the text written for NaN.

    Raises:
        IsADirectoryError: ``path`` is an existing folder.
    """

    order = 90

    def __init__(self, path: str | os.PathLike, na_rep: str = "") -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(
                f"CSVLogger: {self.path} is a folder; give the CSV file's path, such as "
                f"{self.path / 'history.csv'}"
            )
        self.na_rep = str(na_rep)

    @property
    def key(self) -> str:
        return "CSVLogger"

    def on_train_begin(self, trainer: Trainer) -> None:
        self.write(trainer.history)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        self.write(trainer.history)

    def write(self, history: Mapping[str, Sequence[Any]]) -> Path:
        """Rewrite the file from a history dict (a Trainer's, or one read from history.json).

        A column the history lacks, or holds fewer values of, is written as ``na_rep``.

        Args:
            history: column name -> one value per epoch; the row count is that of "epoch".

        Returns:
            The path written.
        """
        rows = len(history.get("epoch", ()))
        columns = [list(history.get(k, ())) for k in HISTORY_KEYS]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".part")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(HISTORY_KEYS)
            for i in range(rows):
                writer.writerow(
                    _cell(col[i] if i < len(col) else None, self.na_rep) for col in columns
                )
        os.replace(tmp, self.path)
        return self.path


def summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported on first use.

    Raises:
        ImportError: tensorboardX is not installed (or fails to import), naming the extra.
    """
    try:
        from tensorboardX import SummaryWriter
    except ImportError as exc:
        raise ImportError(
            f"TensorBoardLogger needs the tensorboardX package ({exc}); install it with "
            f"{INSTALL_HINT}"
        ) from exc
    return SummaryWriter


class TensorBoardLogger(Callback):
    """Write TensorBoard scalars after every epoch, at step = the epoch number (1, 2, ...).

    Tags: train/loss, train/accuracy, val/loss, val/accuracy, lr, lr_end, grad_norm/mean,
    grad_norm/max, time/epoch_s and images_per_s: the values of the epoch's row of
    ``trainer.history`` (NaN values, such as val/* without a validation loader, are left
    out). With ``histograms=True`` each parameter's values also go in as a histogram,
    ``params/<name>``: this copies every parameter to the host and bins it each epoch,
    which is cheap for the small models and a noticeable cost for ResNet-sized ones, so it
    is off by default. View with ``tensorboard --logdir LOG_DIR``.

    Each epoch's events go into their own event file, closed before the callback returns
    (tensorboardX's ``flush`` does not wait for its writer thread): a run killed at any
    moment keeps every epoch it logged (N epochs leave N small files; TensorBoard reads a
    folder's files as one stream). Files are named so that they sort in writing order.

    Resuming: the first file a ``fit`` writes starts with a restart marker at the first
    epoch it logs (tensorboardX's ``purge_step``). TensorBoard drops the points at that step
    and later that an earlier, killed run wrote past its checkpoint (its Rust data server
    also drops a tag's points at or after a step written again), so a resumed run shows
    exactly one point per epoch (its own); a fresh run in a folder holding an older run's
    files replaces that run's points the same way. Points before the resumed epoch are
    those written by the killed run, which are what the checkpoint's history holds.

    Args:
        log_dir: the folder of event files (one TensorBoard run); created when missing.
        histograms: also log a histogram of each parameter every epoch.

    Raises:
        ImportError: tensorboardX is missing; the message names the extra to install.
    """

    order = 90

    def __init__(self, log_dir: str | os.PathLike, histograms: bool = False) -> None:
        self._writer_class = summary_writer_class()
        self.log_dir = Path(log_dir)
        self.histograms = bool(histograms)
        self._restart = True  # the next file written marks a restart at its first step

    @property
    def key(self) -> str:
        return "TensorBoardLogger"

    def on_train_begin(self, trainer: Trainer) -> None:
        self._restart = True

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        scalars = {}
        for column, tag in TENSORBOARD_TAGS.items():
            value = float(logs.get(column, math.nan))
            if not math.isnan(value):
                scalars[tag] = value
        params = (
            [(name, to_host(p.data)) for name, p in trainer.model.named_parameters()]
            if self.histograms
            else []
        )
        self.write(epoch + 1, scalars, params)

    def write(
        self, step: int, scalars: Mapping[str, float], histograms: Sequence[tuple[str, Any]] = ()
    ) -> None:
        """Write one step's points into a new event file, and close it.

        Args:
            step: the x coordinate of every point (the epoch number, for on_epoch_end).
            scalars: TensorBoard tag -> value.
            histograms: (parameter name, host array) pairs, tagged ``params/<name>``.
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        writer = self._writer_class(
            logdir=str(self.log_dir),
            purge_step=step if self._restart else None,
            # the name starts events.out.tfevents.<seconds>.<host>: nanoseconds after it keep
            # two files of the same second in writing order
            filename_suffix=f".{time.time_ns():020d}",
        )
        try:
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, step)
            for name, values in histograms:
                writer.add_histogram(f"params/{name}", values, step)
        finally:
            writer.close()
        self._restart = False
