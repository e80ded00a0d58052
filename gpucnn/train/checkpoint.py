"""Checkpoints: one .npz file per save, read back with allow_pickle=False.

It holds the model's parameters and buffers (``model/<name>``), the optimizer state
(``optim/<key>``), each callback's state (``callback/<key>/<name>``), the state of every
random generator a layer owns (``rng/<module>``, JSON), the epoch and step, the run's config
and history (JSON), the model's signature (parameter names and shapes, to refuse a checkpoint
from another model) and a format version. Strings are stored as NumPy unicode arrays: loading
never executes anything from the file.

Loading treats the file as hostile: the zip directory and each member's .npy header are
checked before any array is read (uncompressed members only, names gpucnn writes, numeric or
unicode dtypes, sizes that add up), so memory stays bounded by the file's size; then the
scalars, the JSON members and the finiteness of the weights and optimizer state. Every refusal
is one CheckpointError line naming the file and the rule.

Writes are atomic (gpucnn.train.atomic): a temporary file in the same folder, fsync, then
os.replace, so a crash mid-save leaves the previous checkpoint intact; with ``keep_previous``
the replaced file is kept as ``<name>.prev.npz``. Nothing non-finite is ever written: a model
or optimizer state holding NaN or infinity is refused before the file is touched.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from gpucnn.nn import Module
from gpucnn.train.atomic import write_atomic
from gpucnn.train.checkpoint_checks import (
    FORMAT_VERSION,
    JSON_MEMBERS,
    MEMBER_NAMES,
    NUMERIC_KINDS,
    SCALARS,
    WRITTEN,
    check_finite,
    check_model_members,
    check_small,
    check_version,
    compare,
    parse_count,
    parse_history,
    parse_json,
    parse_signature,
    read_member,
    scan,
    short,
)
from gpucnn.train.errors import CheckpointError


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


def save_checkpoint(
    path: str | os.PathLike,
    model: Module,
    optimizer: Any = None,
    callbacks: dict[str, Any] | None = None,
    epoch: int = 0,
    step: int = 0,
    config: dict[str, Any] | None = None,
    history: dict[str, Any] | None = None,
    keep_previous: bool = False,
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
        keep_previous: keep the file being replaced as ``<name>.prev.npz``.

    Raises:
        CheckpointError: the model or optimizer state holds NaN or infinity (nothing is
            written: a resumed run must never start from a poisoned state).
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
    for key, value in arrays.items():
        a = np.asarray(value)
        if (
            key.startswith(("model/", "optim/"))
            and a.dtype.kind == "f"
            and not np.isfinite(a).all()
        ):
            raise CheckpointError(
                f"not saving {path}: {key} holds NaN or infinite values (training diverged); "
                "the previous checkpoint is kept"
            )
    return write_atomic(path, lambda f: np.savez(f, **arrays), keep_previous)


def _load(path: Path, zf: zipfile.ZipFile, model: Module | None) -> Checkpoint:
    members = scan(path, zf)
    if "format_version" not in members:
        raise CheckpointError(f"{path} is not a gpucnn checkpoint (no format_version)")
    check_version(path, zf, members["format_version"])
    unknown = [k for k in members if not MEMBER_NAMES.fullmatch(k)]
    if unknown:
        raise CheckpointError(
            f"{path} holds member {short(unknown[0])}, which gpucnn never writes "
            f"(it writes {WRITTEN})"
        )
    missing = [k for k in (*SCALARS, *JSON_MEMBERS) if k not in members]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    small = [k for k in members if k in SCALARS or k in JSON_MEMBERS or k.startswith("rng/")]
    for key in small:
        check_small(path, members[key])
    for key, m in members.items():
        if key not in small and m.dtype.kind not in NUMERIC_KINDS:
            raise CheckpointError(f"{path}: {key} must hold numbers, got {m.describe()}")
    arrays = {key: read_member(zf, members[key]) for key in small}
    sig = parse_signature(path, arrays)
    check_model_members(path, members, sig)
    if model is not None:
        compare(path, sig, signature(model))
    arrays.update({k: read_member(zf, m) for k, m in members.items() if k not in arrays})
    check_finite(path, arrays, [f"model/{n}" for n, _ in sig], "model parameters and buffers")
    optim = [k for k in members if k.startswith("optim/")]
    check_finite(path, arrays, optim, "optimizer state")
    best = [k for k in members if k.startswith("callback/") and "/best_weights/" in k]
    check_finite(path, arrays, best, "saved best weights")
    return Checkpoint(path, {k: arrays[k] for k in members})


class Checkpoint:
    """A loaded checkpoint: ``arrays`` by key, plus epoch, step, config and history.

    Built by :func:`load_checkpoint`; the constructor checks the scalars and JSON members
    itself, so a Checkpoint never holds a config that is not a dict or a negative epoch.
    """

    def __init__(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        self.path, self.arrays = Path(path), arrays
        self.epoch = parse_count(self.path, arrays, "epoch")
        self.step = parse_count(self.path, arrays, "step")
        self.config: dict[str, Any] = parse_json(self.path, arrays, "config", dict)
        self.history: dict[str, Any] = parse_history(self.path, arrays)
        self.signature = parse_signature(self.path, arrays)
        for key in arrays:
            if key.startswith("rng/"):
                parse_json(self.path, arrays, key, dict)

    def section(self, prefix: str) -> dict[str, np.ndarray]:
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.arrays.items() if k.startswith(prefix + "/")}

    def model_state(self) -> dict[str, np.ndarray]:
        return self.section("model")

    def check_model(self, model: Module) -> None:
        """Refuse a model whose parameters differ in names or shapes, naming the first few."""
        compare(self.path, self.signature, signature(model))

    def restore(
        self, model: Module, optimizer: Any = None, callbacks: dict[str, Any] | None = None
    ) -> None:
        """Load everything saved into these objects (the model is checked first).

        Raises:
            CheckpointError: the model differs, or the optimizer, callback or generator
                state saved does not fit the objects given.
        """
        self.check_model(model)
        model.load_state_dict(self.model_state())
        if optimizer is not None:
            self._restore_optimizer(optimizer)
        for key, cb in (callbacks or {}).items():
            state = self.section(f"callback/{key}")
            if state:
                try:
                    cb.load_state_dict(state)
                except (KeyError, TypeError, ValueError, IndexError) as exc:
                    raise CheckpointError(
                        f"{self.path}: the saved state of callback {key} does not fit it "
                        f"({type(exc).__name__}: {short(str(exc))})"
                    ) from exc
        gens = generators(model)
        for name, state in self.section("rng").items():
            if name in gens:
                try:
                    gens[name].bit_generator.state = parse_json(
                        self.path, {f"rng/{name}": state}, f"rng/{name}", dict
                    )
                except (KeyError, TypeError, ValueError) as exc:
                    raise CheckpointError(
                        f"{self.path}: rng/{name} is not a state of the generator of "
                        f"{name} ({type(exc).__name__}: {short(str(exc))})"
                    ) from exc

    def _restore_optimizer(self, optimizer: Any) -> None:
        state = self.section("optim")
        if "lr" not in state:
            raise CheckpointError(
                f"{self.path} holds no optimizer state (optim/lr); it was saved without one"
            )
        params = list(getattr(optimizer, "params", []))
        for key, value in state.items():
            if key == "lr":
                continue
            index = key.split(".", 1)[0]
            if not index.isdigit() or int(index) >= len(params):
                raise CheckpointError(
                    f"{self.path}: optim/{key} belongs to parameter {index}, but the optimizer "
                    f"has {len(params)} parameters"
                )
            shape = tuple(params[int(index)].data.shape)
            if value.ndim and tuple(value.shape) != shape:
                raise CheckpointError(
                    f"{self.path}: optim/{key} has shape {tuple(value.shape)} but its "
                    f"parameter has shape {shape}"
                )
        optimizer.load_state_dict(state)


def load_checkpoint(path: str | os.PathLike, *, model: Module | None = None) -> Checkpoint:
    """Read a checkpoint, checking it before and after reading its arrays.

    Nothing in the file is executed (no pickle) and memory stays bounded by the file's size:
    the zip directory and every member's .npy header are checked before any array is read
    (stored, not compressed, members; names gpucnn writes; numeric or unicode dtypes; sizes
    that match the headers and the file; model arrays that match the stored signature). Then
    the scalars must be non-negative integers, the JSON members JSON of the right type, and
    the model arrays and optimizer state finite.

    Args:
        path: the .npz file.
        model: when given, the checkpoint's signature is checked against this model's
            before any model array is read (as :meth:`Checkpoint.check_model` does later).

    Raises:
        CheckpointError: one line naming the path and the rule broken: missing, unreadable,
            not a gpucnn checkpoint, a format other than FORMAT_VERSION, malformed or
            non-finite contents, or (with ``model``) a different model.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with zipfile.ZipFile(path) as zf:
            return _load(path, zf, model)
    except (
        OSError,
        ValueError,
        TypeError,
        OverflowError,
        RecursionError,
        EOFError,
        NotImplementedError,
        zipfile.BadZipFile,
    ) as exc:
        reason = f"{type(exc).__name__}: {short(str(exc), 200)}"
        raise CheckpointError(f"{path} is not a readable .npz checkpoint ({reason})") from exc
