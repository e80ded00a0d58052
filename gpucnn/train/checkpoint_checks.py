"""The rules a checkpoint file must meet before gpucnn reads it (gpucnn.train.checkpoint).

The file is treated as hostile: the zip directory and each member's .npy header are checked
before any array is read (uncompressed members only, names gpucnn writes, numeric or unicode
dtypes, sizes that add up), so memory stays bounded by the file's size; then the scalars, the
JSON members and the finiteness of the weights and optimizer state. Every refusal is one
CheckpointError line naming the file and the rule.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npformat

from gpucnn.train.errors import CheckpointError

FORMAT_VERSION = 1

MAX_MEMBERS = 100_000
"""More members than this is not a checkpoint (ResNet-18 with Adam state needs ~500)."""

MAX_JSON_CHARS = 1 << 25
"""Longest JSON member (config, history, signature, generator state), in characters."""

SCALARS = ("format_version", "epoch", "step")
JSON_MEMBERS = ("model_signature", "config", "history")
NUMERIC_KINDS = "biuf"  # bool, int, uint, float: what model, optimizer and callback state hold
MEMBER_NAMES = re.compile(
    r"format_version|epoch|step|model_signature|config|history"
    r"|model/[\w.\-]+|optim/(?:lr|\d+\.[A-Za-z_]\w*)|callback/[\w.\-]+/[\w.\-/]+|rng/[\w.\-]+",
    re.ASCII,
)
WRITTEN = (
    "format_version, epoch, step, model_signature, config, history, model/<name>, "
    "optim/lr, optim/<index>.<name>, callback/<key>/<name>, rng/<module>"
)


def short(value: Any, limit: int = 80) -> str:
    """repr() of something taken from the file, cut short: messages stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Member:
    """A zip member and what its .npy header says; no data read."""

    key: str  # the member name without ".npy"
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype

    def describe(self) -> str:
        return f"{self.dtype} of shape {self.shape}"


def scan(path: Path, zf: zipfile.ZipFile) -> dict[str, Member]:
    """Check the zip directory, then every member's .npy header, reading no array data."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise CheckpointError(f"{path} has {len(infos)} members, more than {MAX_MEMBERS}")
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        if not name.endswith(".npy"):
            raise CheckpointError(
                f"{path} holds member {short(name)}, which is not a .npy array "
                "(a checkpoint holds .npy members only)"
            )
        if name in seen:
            raise CheckpointError(f"{path} holds member {short(name)} twice")
        seen.add(name)
        if info.flag_bits & 0x1:
            raise CheckpointError(f"{path}: member {short(name)} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise CheckpointError(
                f"{path}: member {short(name)} is compressed (method {info.compress_type}, "
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
    return {info.filename[: -len(".npy")]: header(path, zf, info) for info in infos}


HEADER_READERS = {
    (1, 0): npformat.read_array_header_1_0,
    (2, 0): npformat.read_array_header_2_0,
}


def header(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Member:
    """Read one member's .npy header and check dtype, shape and the member's stored size."""
    key = info.filename[: -len(".npy")]
    try:
        with zf.open(info) as f:
            version = npformat.read_magic(f)
            if version not in HEADER_READERS:
                raise CheckpointError(
                    f"{path}: member {key} has .npy format {version[0]}.{version[1]}; "
                    "checkpoints use .npy formats 1.0 and 2.0 only"
                )
            shape, _, dtype = HEADER_READERS[version](f)
            offset = f.tell()
    except (ValueError, TypeError, OverflowError, RecursionError, EOFError) as exc:
        raise CheckpointError(
            f"{path}: member {key} has no valid .npy header ({short(str(exc), 200)})"
        ) from exc
    if dtype.hasobject:
        raise CheckpointError(
            f"{path} is not a readable .npz checkpoint: member {key} holds pickled Python "
            "objects (object dtype), which are never loaded (unpickling runs code from the file)"
        )
    if dtype.kind not in NUMERIC_KINDS + "U" or dtype.fields is not None or dtype.subdtype:
        raise CheckpointError(
            f"{path}: member {key} has dtype {str(dtype)[:80]}; "
            "a checkpoint holds numbers (bool, int, float) and unicode text only"
        )
    if len(shape) > 32 or any(n < 0 for n in shape):
        raise CheckpointError(f"{path}: member {key} has an impossible shape {short(shape)}")
    stored = info.file_size - offset
    claimed = math.prod(shape) * dtype.itemsize
    if stored != claimed:
        raise CheckpointError(
            f"{path}: member {key} has a header claiming shape {short(shape)} of {dtype} "
            f"({claimed} bytes) but stores {stored} bytes of data"
        )
    return Member(key, info, tuple(shape), dtype)


def read_member(zf: zipfile.ZipFile, m: Member) -> np.ndarray:
    with zf.open(m.info) as f:
        return npformat.read_array(f, allow_pickle=False)


def check_version(path: Path, zf: zipfile.ZipFile, m: Member) -> None:
    """Only FORMAT_VERSION, as a 0-d integer, is read; anything else names itself."""
    accepted = f"this gpucnn reads format {FORMAT_VERSION} only (a 0-d integer array)"
    if m.shape != ():
        raise CheckpointError(
            f"{path} has a format_version of {m.describe()}, not one integer; {accepted}"
        )
    value = read_member(zf, m).item()
    if m.dtype.kind not in "iu":
        raise CheckpointError(
            f"{path} has checkpoint format {short(value)} ({m.dtype}), not an integer; {accepted}"
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


def check_small(path: Path, m: Member) -> None:
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


def describe(a: np.ndarray) -> str:
    value = f"{short(a.item())}, " if a.size == 1 else ""
    return f"{value}{a.dtype} of shape {a.shape}"


def parse_count(path: Path, arrays: dict[str, Any], key: str) -> int:
    a = np.asarray(arrays[key])
    if a.shape != () or a.dtype.kind not in "iu" or int(a) < 0:
        raise CheckpointError(
            f"{path}: {key} must be a non-negative integer (0-d), got {describe(a)}"
        )
    return int(a)


JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def json_type(value: Any) -> str:
    return JSON_TYPES.get(type(value), "number")


def parse_json(path: Path, arrays: dict[str, Any], key: str, kind: type) -> Any:
    a = np.asarray(arrays[key])
    if a.shape != () or a.dtype.kind != "U":
        raise CheckpointError(
            f"{path}: {key} must be JSON text (a 0-d unicode array), got {describe(a)}"
        )
    text = str(a)
    if len(text) > MAX_JSON_CHARS:
        raise CheckpointError(f"{path}: {key} is longer than {MAX_JSON_CHARS} characters")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: {key} is not valid JSON ({short(str(exc))})") from exc
    if not isinstance(value, kind):
        raise CheckpointError(
            f"{path}: {key} must be a JSON {JSON_TYPES[kind]}, got a JSON {json_type(value)}"
        )
    return value


def parse_history(path: Path, arrays: dict[str, Any]) -> dict[str, list]:
    history = parse_json(path, arrays, "history", dict)
    for name, values in history.items():
        ok = isinstance(values, list) and all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values
        )
        if not ok:
            raise CheckpointError(
                f"{path}: history[{short(name)}] must be a JSON array of numbers, "
                f"got {short(values)}"
            )
    return history


def parse_signature(path: Path, arrays: dict[str, Any]) -> list[list[Any]]:
    sig = parse_json(path, arrays, "model_signature", list)
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
                f"got the entry {short(entry)}"
            )
        names.add(entry[0])
    return sig


def compare(path: Path, theirs: list[list[Any]], ours: list[list[Any]]) -> None:
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


def check_model_members(path: Path, members: dict[str, Member], sig: list[list[Any]]) -> None:
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


def check_finite(path: Path, arrays: dict[str, np.ndarray], keys: list[str], what: str) -> None:
    for key in keys:
        a = arrays[key]
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            nan = int(np.isnan(a).sum())
            raise CheckpointError(
                f"{path}: {key} holds {nan} NaN and {a.size - nan - int(np.isfinite(a).sum())} "
                f"infinite values out of {a.size}; {what} must be finite "
                "(was it saved after training diverged?)"
            )
