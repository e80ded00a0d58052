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

Writes are atomic: a temporary file in the same folder, fsync, then os.replace, so a crash
mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npformat

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


# -- loading: every rule is checked on the zip directory and the .npy headers before any
# array is read, so a hostile file costs at most its own size in memory -----------------------

MAX_MEMBERS = 100_000
"""More members than this is not a checkpoint (ResNet-18 with Adam state needs ~500)."""

MAX_JSON_CHARS = 1 << 25
"""Longest JSON member (config, history, signature, generator state), in characters."""

SCALARS = ("format_version", "epoch", "step")
JSON_MEMBERS = ("model_signature", "config", "history")
_NUMERIC_KINDS = "biuf"  # bool, int, uint, float: what model, optimizer and callback state hold
_MEMBER_NAMES = re.compile(
    r"format_version|epoch|step|model_signature|config|history"
    r"|model/[\w.\-]+|optim/(?:lr|\d+\.[A-Za-z_]\w*)|callback/[\w.\-]+/[\w.\-/]+|rng/[\w.\-]+",
    re.ASCII,
)
_WRITTEN = (
    "format_version, epoch, step, model_signature, config, history, model/<name>, "
    "optim/lr, optim/<index>.<name>, callback/<key>/<name>, rng/<module>"
)


def _short(value: Any, limit: int = 80) -> str:
    """repr() of something taken from the file, cut short: messages stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class _Member:
    """A zip member and what its .npy header says; no data read."""

    key: str  # the member name without ".npy"
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype

    def describe(self) -> str:
        return f"{self.dtype} of shape {self.shape}"


def _scan(path: Path, zf: zipfile.ZipFile) -> dict[str, _Member]:
    """Check the zip directory, then every member's .npy header, reading no array data."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise CheckpointError(f"{path} has {len(infos)} members, more than {MAX_MEMBERS}")
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        if not name.endswith(".npy"):
            raise CheckpointError(
                f"{path} holds member {_short(name)}, which is not a .npy array "
                "(a checkpoint holds .npy members only)"
            )
        if name in seen:
            raise CheckpointError(f"{path} holds member {_short(name)} twice")
        seen.add(name)
        if info.flag_bits & 0x1:
            raise CheckpointError(f"{path}: member {_short(name)} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise CheckpointError(
                f"{path}: member {_short(name)} is compressed (method {info.compress_type}, "
                f"{info.compress_size} bytes unpacking to {info.file_size}); gpucnn writes "
                "stored members only, so it refuses compressed ones (a zip bomb would be one)"
            )
    size = path.stat().st_size
    total = sum(info.file_size for info in infos)
    # local and central headers (with zip64 extras) per member, the end records once
    overhead = 1024 + len(zf.comment)
    overhead += sum(
        256 + 2 * len(i.filename.encode()) + 2 * len(i.extra) + len(i.comment) for i in infos
    )
    if total > size or size - total > overhead:
        raise CheckpointError(
            f"{path}: its members hold {total} bytes but the file has {size}; the sizes in "
            f"its zip directory must account for the file (within {overhead} bytes of headers)"
        )
    return {info.filename[: -len(".npy")]: _header(path, zf, info) for info in infos}


_HEADER_READERS = {
    (1, 0): npformat.read_array_header_1_0,
    (2, 0): npformat.read_array_header_2_0,
}


def _header(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Member:
    """Read one member's .npy header and check dtype, shape and the member's stored size."""
    key = info.filename[: -len(".npy")]
    try:
        with zf.open(info) as f:
            version = npformat.read_magic(f)
            if version not in _HEADER_READERS:
                raise CheckpointError(
                    f"{path}: member {key} has .npy format {version[0]}.{version[1]}; "
                    "checkpoints use .npy formats 1.0 and 2.0 only"
                )
            shape, _, dtype = _HEADER_READERS[version](f)
            offset = f.tell()
    except (ValueError, TypeError, OverflowError, RecursionError, EOFError) as exc:
        raise CheckpointError(
            f"{path}: member {key} has no valid .npy header ({_short(str(exc), 200)})"
        ) from exc
    if dtype.hasobject:
        raise CheckpointError(
            f"{path} is not a readable .npz checkpoint: member {key} holds pickled Python "
            "objects (object dtype), which are never loaded (unpickling runs code from the file)"
        )
    if dtype.kind not in _NUMERIC_KINDS + "U" or dtype.fields is not None or dtype.subdtype:
        raise CheckpointError(
            f"{path}: member {key} has dtype {str(dtype)[:80]}; "
            "a checkpoint holds numbers (bool, int, float) and unicode text only"
        )
    if len(shape) > 32 or any(n < 0 for n in shape):
        raise CheckpointError(f"{path}: member {key} has an impossible shape {_short(shape)}")
    stored = info.file_size - offset
    claimed = math.prod(shape) * dtype.itemsize
    if stored != claimed:
        raise CheckpointError(
            f"{path}: member {key} has a header claiming shape {_short(shape)} of {dtype} "
            f"({claimed} bytes) but stores {stored} bytes of data"
        )
    return _Member(key, info, tuple(shape), dtype)


def _read(zf: zipfile.ZipFile, m: _Member) -> np.ndarray:
    with zf.open(m.info) as f:
        return npformat.read_array(f, allow_pickle=False)


def _check_version(path: Path, zf: zipfile.ZipFile, m: _Member) -> None:
    """Only FORMAT_VERSION, as a 0-d integer, is read; anything else names itself."""
    accepted = f"this gpucnn reads format {FORMAT_VERSION} only (a 0-d integer array)"
    if m.shape != ():
        raise CheckpointError(
            f"{path} has a format_version of {m.describe()}, not one integer; {accepted}"
        )
    value = _read(zf, m).item()
    if m.dtype.kind not in "iu":
        raise CheckpointError(
            f"{path} has checkpoint format {_short(value)} ({m.dtype}), not an integer; {accepted}"
        )
    if value > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {value}, newer than this gpucnn reads "
            f"({FORMAT_VERSION}); upgrade gpucnn"
        )
    if value != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {value}, which this gpucnn does not read; {accepted}"
        )


def _check_small(path: Path, m: _Member) -> None:
    """Headers of the members read before the arrays: integer scalars and bounded JSON."""
    if m.key in SCALARS:
        if m.shape != () or m.dtype.kind not in "iu":
            raise CheckpointError(
                f"{path}: {m.key} must be a 0-d integer array, got {m.describe()}"
            )
    elif m.shape != () or m.dtype.kind != "U":
        raise CheckpointError(
            f"{path}: {m.key} must be JSON text (a 0-d unicode array), got {m.describe()}"
        )
    elif m.dtype.itemsize // 4 > MAX_JSON_CHARS:
        raise CheckpointError(
            f"{path}: {m.key} is {m.dtype.itemsize // 4} characters of JSON, more than "
            f"{MAX_JSON_CHARS}"
        )


def _describe(a: np.ndarray) -> str:
    value = f"{_short(a.item())}, " if a.size == 1 else ""
    return f"{value}{a.dtype} of shape {a.shape}"


def _count(path: Path, arrays: dict[str, Any], key: str) -> int:
    a = np.asarray(arrays[key])
    if a.shape != () or a.dtype.kind not in "iu" or int(a) < 0:
        raise CheckpointError(
            f"{path}: {key} must be a non-negative integer (0-d), got {_describe(a)}"
        )
    return int(a)


_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), "number")


def _parse_json(path: Path, arrays: dict[str, Any], key: str, kind: type) -> Any:
    a = np.asarray(arrays[key])
    if a.shape != () or a.dtype.kind != "U":
        raise CheckpointError(
            f"{path}: {key} must be JSON text (a 0-d unicode array), got {_describe(a)}"
        )
    text = str(a)
    if len(text) > MAX_JSON_CHARS:
        raise CheckpointError(f"{path}: {key} is longer than {MAX_JSON_CHARS} characters")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: {key} is not valid JSON ({_short(str(exc))})") from exc
    if not isinstance(value, kind):
        raise CheckpointError(
            f"{path}: {key} must be a JSON {_JSON_TYPES[kind]}, got a JSON {_json_type(value)}"
        )
    return value


def _parse_history(path: Path, arrays: dict[str, Any]) -> dict[str, list]:
    history = _parse_json(path, arrays, "history", dict)
    for name, values in history.items():
        ok = isinstance(values, list) and all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values
        )
        if not ok:
            raise CheckpointError(
                f"{path}: history[{_short(name)}] must be a JSON array of numbers, "
                f"got {_short(values)}"
            )
    return history


def _parse_signature(path: Path, arrays: dict[str, Any]) -> list[list[Any]]:
    sig = _parse_json(path, arrays, "model_signature", list)
    names: set[str] = set()
    for entry in sig:
        ok = (
            isinstance(entry, list)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and entry[0] not in names
            and isinstance(entry[1], list)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in entry[1])
        )
        if not ok:
            raise CheckpointError(
                f"{path}: model_signature must be a list of distinct [name, shape] pairs, "
                f"got the entry {_short(entry)}"
            )
        names.add(entry[0])
    return sig


def _compare(path: Path, theirs: list[list[Any]], ours: list[list[Any]]) -> None:
    """Refuse when names or shapes differ, naming the first few differences."""
    ours_d = {name: list(shape) for name, shape in ours}
    theirs_d = {name: list(shape) for name, shape in theirs}
    if ours_d == theirs_d:
        return
    problems = [
        f"{n} has shape {tuple(theirs_d[n])} there but {tuple(ours_d[n])} here"
        for n in theirs_d
        if n in ours_d and ours_d[n] != theirs_d[n]
    ]
    problems += [f"{n} only in the checkpoint" for n in theirs_d if n not in ours_d]
    problems += [f"{n} only in the model" for n in ours_d if n not in theirs_d]
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise CheckpointError(
        f"{path} is a checkpoint of a different model: " + "; ".join(problems[:5]) + more
    )


def _check_model_members(path: Path, members: dict[str, _Member], sig: list[list[Any]]) -> None:
    """The model/ members are exactly the signature's arrays, with its shapes, as numbers."""
    stored = {k[len("model/") :]: m for k, m in members.items() if k.startswith("model/")}
    problems = [f"model/{n} is missing" for n, _ in sig if n not in stored]
    problems += [
        f"model/{n} has shape {stored[n].shape} but the signature says {tuple(shape)}"
        for n, shape in sig
        if n in stored and stored[n].shape != tuple(shape)
    ]
    names = {n for n, _ in sig}
    problems += [f"model/{n} is not in the signature" for n in stored if n not in names]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(
            f"{path}: its model arrays do not match its model_signature: "
            + "; ".join(problems[:3])
            + more
        )


def _check_finite(path: Path, arrays: dict[str, np.ndarray], keys: list[str], what: str) -> None:
    for key in keys:
        a = arrays[key]
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            nan = int(np.isnan(a).sum())
            raise CheckpointError(
                f"{path}: {key} holds {nan} NaN and {a.size - nan - int(np.isfinite(a).sum())} "
                f"infinite values out of {a.size}; {what} must be finite "
                "(was it saved after training diverged?)"
            )


def _load(path: Path, zf: zipfile.ZipFile, model: Module | None) -> Checkpoint:
    members = _scan(path, zf)
    if "format_version" not in members:
        raise CheckpointError(f"{path} is not a gpucnn checkpoint (no format_version)")
    _check_version(path, zf, members["format_version"])
    unknown = [k for k in members if not _MEMBER_NAMES.fullmatch(k)]
    if unknown:
        raise CheckpointError(
            f"{path} holds member {_short(unknown[0])}, which gpucnn never writes "
            f"(it writes {_WRITTEN})"
        )
    missing = [k for k in (*SCALARS, *JSON_MEMBERS) if k not in members]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    small = [k for k in members if k in SCALARS or k in JSON_MEMBERS or k.startswith("rng/")]
    for key in small:
        _check_small(path, members[key])
    for key, m in members.items():
        if key not in small and m.dtype.kind not in _NUMERIC_KINDS:
            raise CheckpointError(f"{path}: {key} must hold numbers, got {m.describe()}")
    arrays = {key: _read(zf, members[key]) for key in small}
    sig = _parse_signature(path, arrays)
    _check_model_members(path, members, sig)
    if model is not None:
        _compare(path, sig, signature(model))
    arrays.update({k: _read(zf, m) for k, m in members.items() if k not in arrays})
    _check_finite(path, arrays, [f"model/{n}" for n, _ in sig], "model parameters and buffers")
    optim = [k for k in members if k.startswith("optim/")]
    _check_finite(path, arrays, optim, "optimizer state")
    best = [k for k in members if k.startswith("callback/") and "/best_weights/" in k]
    _check_finite(path, arrays, best, "saved best weights")
    return Checkpoint(path, {k: arrays[k] for k in members})


class Checkpoint:
    """A loaded checkpoint: ``arrays`` by key, plus epoch, step, config and history.

    Built by :func:`load_checkpoint`; the constructor checks the scalars and JSON members
    itself, so a Checkpoint never holds a config that is not a dict or a negative epoch.
    """

    def __init__(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        self.path, self.arrays = Path(path), arrays
        self.epoch = _count(self.path, arrays, "epoch")
        self.step = _count(self.path, arrays, "step")
        self.config: dict[str, Any] = _parse_json(self.path, arrays, "config", dict)
        self.history: dict[str, Any] = _parse_history(self.path, arrays)
        self.signature = _parse_signature(self.path, arrays)
        for key in arrays:
            if key.startswith("rng/"):
                _parse_json(self.path, arrays, key, dict)

    def section(self, prefix: str) -> dict[str, np.ndarray]:
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.arrays.items() if k.startswith(prefix + "/")}

    def model_state(self) -> dict[str, np.ndarray]:
        return self.section("model")

    def check_model(self, model: Module) -> None:
        """Refuse a model whose parameters differ in names or shapes, naming the first few."""
        _compare(self.path, self.signature, signature(model))

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
                        f"({type(exc).__name__}: {_short(str(exc))})"
                    ) from exc
        gens = generators(model)
        for name, state in self.section("rng").items():
            if name in gens:
                try:
                    gens[name].bit_generator.state = _parse_json(
                        self.path, {f"rng/{name}": state}, f"rng/{name}", dict
                    )
                except (KeyError, TypeError, ValueError) as exc:
                    raise CheckpointError(
                        f"{self.path}: rng/{name} is not a state of the generator of "
                        f"{name} ({type(exc).__name__}: {_short(str(exc))})"
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
        reason = f"{type(exc).__name__}: {_short(str(exc), 200)}"
        raise CheckpointError(f"{path} is not a readable .npz checkpoint ({reason})") from exc
