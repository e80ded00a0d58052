"""Checkpoints: one .npz file per save, read back with allow_pickle=False.

It holds the model's parameters and buffers (``model/<name>``), the optimizer state
(``optim/<key>``), each callback's state (``callback/<key>/<name>``), the state of every
random generator a layer owns (``rng/<module>``, JSON), the epoch and step, the run's config
and history (JSON), the model's signature (parameter names and shapes, to refuse a checkpoint
from another model) and a format version. Strings are stored as NumPy unicode arrays: loading
never executes anything from the file.

Writes are atomic: a temporary file in the same folder, fsync, then os.replace, so a crash
mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from gpucnn.nn import Module
from gpucnn.train.errors import CheckpointError

FORMAT_VERSION = 1


def signature(model: Module) -> list[list[Any]]:
    """[name, shape] for every parameter and buffer: what makes two models interchangeable."""
    return [[name, list(a.shape)] for name, a in model.state_dict().items()]


def generators(model: Module) -> dict[str, np.random.Generator]:
    """The random generators layers own (Dropout masks), by module name."""
    return {
        name or "root": m.rng
        for name, m in model.named_modules()
        if isinstance(getattr(m, "rng", None), np.random.Generator)
    }


def _json(value: Any) -> np.ndarray:
    return np.array(json.dumps(value))


def atomic_savez(path: Path, arrays: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.part-")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # make the rename itself durable
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def save_checkpoint(
    path: str | os.PathLike,
    model: Module,
    optimizer: Any = None,
    callbacks: dict[str, Any] | None = None,
    epoch: int = 0,
    step: int = 0,
    config: dict[str, Any] | None = None,
    history: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically; returns its path.

    Args:
        path: the .npz file to write.
        model: whose parameters, buffers and generators are saved.
        optimizer: whose state is saved (``state_dict()``), or None.
        callbacks: {key: object with state_dict()} saved under ``callback/<key>/``.
        epoch: epochs completed.
        step: optimizer steps taken.
        config: the run's settings (JSON-serialisable).
        history: the per-epoch record so far (JSON-serialisable).
    """
    arrays: dict[str, Any] = {
        "format_version": np.int64(FORMAT_VERSION),
        "epoch": np.int64(epoch),
        "step": np.int64(step),
        "model_signature": _json(signature(model)),
        "config": _json(config or {}),
        "history": _json(history or {}),
    }
    arrays.update({f"model/{k}": v for k, v in model.state_dict().items()})
    if optimizer is not None:
        arrays.update({f"optim/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    for key, cb in (callbacks or {}).items():
        arrays.update({f"callback/{key}/{k}": np.asarray(v) for k, v in cb.state_dict().items()})
    for name, rng in generators(model).items():
        arrays[f"rng/{name}"] = _json(rng.bit_generator.state)
    path = Path(path)
    atomic_savez(path, arrays)
    return path


class Checkpoint:
    """A loaded checkpoint: ``arrays`` by key, plus epoch, step, config and history."""

    def __init__(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        self.path, self.arrays = path, arrays
        self.epoch = int(arrays["epoch"])
        self.step = int(arrays["step"])
        self.config: dict[str, Any] = json.loads(str(arrays["config"]))
        self.history: dict[str, Any] = json.loads(str(arrays["history"]))
        self.signature = json.loads(str(arrays["model_signature"]))

    def section(self, prefix: str) -> dict[str, np.ndarray]:
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.arrays.items() if k.startswith(prefix + "/")}

    def model_state(self) -> dict[str, np.ndarray]:
        return self.section("model")

    def check_model(self, model: Module) -> None:
        """Refuse a model whose parameters differ in names or shapes, naming the first few."""
        ours = {name: shape for name, shape in signature(model)}
        theirs = {name: shape for name, shape in self.signature}
        if ours == theirs:
            return
        problems = [
            f"{n} has shape {tuple(theirs[n])} there but {tuple(ours[n])} here"
            for n in theirs
            if n in ours and ours[n] != theirs[n]
        ]
        problems += [f"{n} only in the checkpoint" for n in theirs if n not in ours]
        problems += [f"{n} only in the model" for n in ours if n not in theirs]
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointError(
            f"{self.path} is a checkpoint of a different model: " + "; ".join(problems[:5]) + more
        )

    def restore(
        self, model: Module, optimizer: Any = None, callbacks: dict[str, Any] | None = None
    ) -> None:
        """Load everything saved into these objects (the model is checked first)."""
        self.check_model(model)
        model.load_state_dict(self.model_state())
        if optimizer is not None:
            optimizer.load_state_dict(self.section("optim"))
        for key, cb in (callbacks or {}).items():
            state = self.section(f"callback/{key}")
            if state:
                cb.load_state_dict(state)
        gens = generators(model)
        for name, state in self.section("rng").items():
            if name in gens:
                gens[name].bit_generator.state = json.loads(str(state))


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint (no pickle: nothing in the file is executed).

    Raises:
        CheckpointError: missing, unreadable, not a gpucnn checkpoint, or a newer format.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path} is not a readable .npz checkpoint ({exc})") from exc
    if "format_version" not in arrays:
        raise CheckpointError(f"{path} is not a gpucnn checkpoint (no format_version)")
    version = int(arrays["format_version"])
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, newer than this gpucnn reads "
            f"({FORMAT_VERSION}); upgrade gpucnn"
        )
    missing = [
        k for k in ("epoch", "step", "model_signature", "config", "history") if k not in arrays
    ]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    return Checkpoint(path, arrays)
