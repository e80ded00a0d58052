"""A run folder: one owner at a time, one config, and a name that stays inside its parent.

- **Names** are single path components (no separators, "..", control characters or a leading
  dot), so ``--run-name`` can never write outside ``--output-dir``.
- **Ownership**: :meth:`RunFolder.claim` holds an exclusive ``flock`` on ``<run>/.lock`` for
  the run's life; a second process fails at once, naming the holder as the user knows it:
  the flow run (its name and id) when a flow holds the folder (:func:`held_as`, which
  gpucnn.flows sets), with its process and host, else the process and host. The file is
  removed when the claim ends, so it is there only while a process holds it; the kernel
  drops the lock when its holder dies, SIGKILL included, so a file a killed holder left is
  no obstacle (the next claim takes it, and removes it in turn). Claims nest within one
  process (the CLI claims, then the flow and the recipe claim again; a flow's claim inside
  the CLI's names its flow run while it lasts).
- **One config**: ``config.json`` records the run's TrainConfig; resuming with a config that
  differs in anything but the fields a resumed run may change (RESUMABLE) is refused, naming
  the fields, instead of silently mixing two runs in one folder.
- **Ways out** are said as the user gives them (:func:`way_out`): ``--overwrite``,
  ``--run-name`` and ``--output-dir`` on the command line, ``overwrite=true``,
  ``run_name=...`` and ``output_dir=...`` to a flow run (a deployment's parameters).
- **Evaluations** of a checkpoint (:func:`evaluation_of`) go beside the run's own results,
  named after the checkpoint (``metrics-best.json``, ``plots-best/``), unless they are asked
  to update the run (``metrics.json``, ``plots/``).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gpucnn.train.config import TrainConfig
from gpucnn.train.errors import TrainingError

# what a run writes into its folder (cleared by --overwrite); anything else is left alone
RUN_FILES = (
    "config.json",
    "data.json",
    "history.json",
    "history.csv",
    "summary.json",
    "metrics.json",
    "log.txt",
)
RUN_DIRS = ("checkpoints", "plots", "tensorboard")
# evaluations of the run's checkpoints, named after them (cleared by --overwrite too)
EVALUATION_FILES = ("metrics-*.json",)
EVALUATION_DIRS = ("plots-*",)
# fields that say where data and arrays live and what is logged, not what a run computes
LOCATION = ("device", "data_dir", "mirrors", "tensorboard")
# fields a resumed run may change: those, and how many epochs to train for at most
RESUMABLE = (*LOCATION, "epochs")
# The way out of a refusal, as the user says it: flags on the command line (the default), or
# a flow's parameters in a deployment's or a script's flow run (gpucnn.flows says which)
WAYS_OUT = {
    "command line": {
        "overwrite": "--overwrite",
        "run_name": "--run-name",
        "output_dir": "--output-dir",
    },
    "flow parameters": {
        "overwrite": "overwrite=true",
        "run_name": "run_name=...",
        "output_dir": "output_dir=...",
    },
}
_ways_out: contextvars.ContextVar[str | None] = contextvars.ContextVar("ways_out", default=None)
# who holds the folders claimed in this context, as the user knows it (a flow run), if not
# only this process
_holder: contextvars.ContextVar[str | None] = contextvars.ContextVar("holder", default=None)

# run folder -> [open lock file, claims, who it names]: this process's claims
_held: dict[Path, list] = {}
_held_guard = threading.Lock()


def way_out(what: str) -> str:
    """How the user says ``what`` ("overwrite", "run_name", "output_dir") where the run came
    from."""
    return WAYS_OUT[_ways_out.get() or "command line"][what]


@contextlib.contextmanager
def ways_out(where: str, keep_said: bool = False) -> Iterator[None]:
    """Say ways out as ``where`` (a key of WAYS_OUT) in this block; with ``keep_said``, only
    when no caller said already (a flow called by the command line keeps its flags)."""
    if where not in WAYS_OUT:
        raise ValueError(f"ways_out: where must be one of {sorted(WAYS_OUT)}, got {where!r}")
    if keep_said and _ways_out.get() is not None:
        yield
        return
    token = _ways_out.set(where)
    try:
        yield
    finally:
        _ways_out.reset(token)


@contextlib.contextmanager
def held_as(who: str | None) -> Iterator[None]:
    """Name the holder of the folders claimed in this block as ``who`` (a flow run:
    ``"flow run 'name' (id)"``), beside its process and host; a folder this process holds
    already (the command line's claim around its flow) names ``who`` until the block's
    claim of it ends. None changes nothing."""
    if who is None:
        yield
        return
    token = _holder.set(who)
    try:
        yield
    finally:
        _holder.reset(token)


def _holder_now() -> str:
    """This process's description in a lock file: the holder :func:`held_as` names, its
    process and host."""
    where = f"process {os.getpid()} on {socket.gethostname()}"
    who = _holder.get()
    return f"{who} in {where}" if who else where


def start_over() -> str:
    """The way to start a run over, as the user says it (see :func:`way_out`)."""
    return f"to start over, re-run with {way_out('overwrite')} (or delete the folder)"


def config_digest(config: TrainConfig) -> str:
    """8 hex digits of what a config computes: the fields that differ from their defaults
    (LOCATION fields left out). The same recipe finds the same folder, so a re-run after a
    crash resumes instead of starting over, and a field added to TrainConfig later (at its
    default) leaves every earlier run's name as it was."""
    defaults = TrainConfig().to_dict()
    d = {k: v for k, v in config.to_dict().items() if k not in LOCATION and v != defaults.get(k)}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def default_run_name(config: TrainConfig) -> str:
    """dataset-model-<config digest>; a folder of images by its own name."""
    from gpucnn.data import display_name

    return f"{display_name(config.dataset)}-{config.model}-{config_digest(config)}"


def plural(n: int, noun: str) -> str:
    """ "1 epoch", "2 epochs"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def artifact_key(run_name: str, what: str) -> str:
    """A Prefect artifact key for one of a run's artifacts (lowercase letters, digits and
    dashes): stable, so a re-run updates the artifact instead of adding another."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{run_name}-{what}".lower()).strip("-")
    return slug[:200] or "gpucnn"


class RunFolderError(TrainingError):
    """A run folder cannot be used as asked: in use, another config, or a bad name."""


def check_run_name(name: str) -> str:
    """``name`` when it is a single, visible path component; else a clear ValueError."""
    bad = (
        not name
        or name in (".", "..")
        or name.startswith(".")
        or any(sep in name for sep in ("/", "\\", os.sep))
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or len(name.encode()) > 255
    )
    if bad:
        raise ValueError(
            f"run name {name!r} is not a folder name: use one path component of at most 255 "
            "bytes, without '/', control characters or a leading '.'"
        )
    return name


def _write_holder(f: Any, who: str) -> None:
    """Say in the held lock file ``f`` who holds it, and since when."""
    f.seek(0)
    f.truncate()
    f.write(f"{who} since {time.ctime()}\n")
    f.flush()


class RunFolder:
    """The folder of one training run (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.lock_path = self.path / ".lock"

    # -- ownership -----------------------------------------------------------------------
    def holder(self) -> str:
        """Who holds the lock, as its lock file says ("[flow run 'NAME' (ID) in] process PID
        on HOST since TIME")."""
        try:
            return self.lock_path.read_text().strip() or "an unknown process"
        except OSError:
            return "an unknown process"

    @contextlib.contextmanager
    def claim(self, instead: str = "run_name") -> Iterator[RunFolder]:
        """Hold the folder for this process (made if missing) until the block ends; the lock
        file goes with the claim.

        Args:
            instead: what a refusal offers to choose instead (a key of WAYS_OUT's entries:
                "run_name" for a training run, "output_dir" for an evaluation or a sweep).

        Raises:
            RunFolderError: another process holds it (the message names the holder: its flow
                run, process and host).
        """
        key = self.path.resolve()
        who = _holder_now()
        restore = None
        with _held_guard:
            if key in _held:
                held = _held[key]
                held[1] += 1
                entry = None
                if _holder.get() is not None and held[2] != who:  # a flow run in a CLI claim
                    restore, held[2] = held[2], who
                    _write_holder(held[0], who)
            else:
                entry = self._lock(instead, who)
                _held[key] = [entry[0], 1, who]
        try:
            yield self
        finally:
            with _held_guard:
                held = _held[key]
                held[1] -= 1
                if held[1] == 0:
                    _held.pop(key)
                    self._unlock(held[0], made=entry[1] if entry else False)
                elif restore is not None:
                    held[2] = restore
                    _write_holder(held[0], restore)

    def _lock(self, instead: str = "run_name", who: str | None = None) -> tuple[Any, bool]:
        made = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        while True:
            f = open(self.lock_path, "a+")  # noqa: SIM115 - held open for the run's life
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                f.close()
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise RunFolderError(
                    f"run folder {self.path} is in use by {self.holder()}; wait for that run "
                    f"to end, or choose another {way_out(instead)}"
                ) from None
            # the holder before us may have removed the file between our open and our lock:
            # a lock on a removed file holds nothing (a third process locks the new one)
            try:
                same = os.path.samestat(os.fstat(f.fileno()), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()
        _write_holder(f, who or _holder_now())
        return f, made

    def _unlock(self, f: Any, made: bool) -> None:
        # removed while still locked: a process that opens it later makes a new one
        with contextlib.suppress(OSError):
            self.lock_path.unlink()
        f.close()
        # a folder this claim made and nothing else used (a download failed, say) goes again
        if made:
            with contextlib.suppress(OSError):
                self.path.rmdir()

    # -- config --------------------------------------------------------------------------
    def recorded_config(self) -> dict[str, Any] | None:
        path = self.path / "config.json"
        if not path.exists():
            return None
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RunFolderError(f"{path} is unreadable ({exc}); {start_over()}") from exc
        if not isinstance(value, dict):
            raise RunFolderError(f"{path} does not hold a config object; {start_over()}")
        return value

    def check_config(self, config: TrainConfig) -> None:
        """Refuse to resume this folder's run with a different config.

        Raises:
            RunFolderError: naming each differing field with its recorded and new value.
        """
        recorded = self.recorded_config()
        if recorded is None:
            return
        ours = config.to_dict()
        theirs = TrainConfig().to_dict() | recorded  # fields added since take their defaults
        diffs = [
            f"{k} {theirs.get(k)!r} there, {v!r} now"
            for k, v in ours.items()
            if k not in RESUMABLE and theirs.get(k) != v
        ]
        if diffs:
            raise RunFolderError(
                f"run folder {self.path} holds a run with another config ({'; '.join(diffs)}); "
                f"a run resumes only with its own config: {start_over()}, or choose another "
                f"{way_out('run_name')}"
            )

    # -- results -------------------------------------------------------------------------
    def finished(self) -> dict[str, Any] | None:
        """The summary and test metrics of a run that trained and was evaluated, else None."""
        try:
            summary = json.loads((self.path / "summary.json").read_text())
            metrics = json.loads((self.path / "metrics.json").read_text())
        except (OSError, ValueError):
            return None
        return {"summary": summary, "metrics": metrics}

    def finished_result(self) -> dict[str, Any] | None:
        """What training a finished run returns (the train flow's result, without training
        or evaluating it again): the run folder, its summary, its test metrics and
        ``already_finished``; None when the run has not finished."""
        done = self.finished()
        if done is None:
            return None
        metrics = done["metrics"]
        test = {k: metrics.get(k) for k in ("accuracy", "loss", "top3_accuracy", "samples")}
        return {
            "run_dir": str(self.path),
            **done["summary"],
            "test": test,
            "already_finished": True,
        }

    def clear(self) -> None:
        """Remove what a run wrote here (RUN_FILES, RUN_DIRS, and the evaluations of its
        checkpoints), keeping anything else."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for name in RUN_DIRS:
            shutil.rmtree(self.path / name, ignore_errors=True)
        for pattern in EVALUATION_FILES:
            for p in self.path.glob(pattern):
                p.unlink(missing_ok=True)
        for pattern in EVALUATION_DIRS:
            for p in self.path.glob(pattern):
                shutil.rmtree(p, ignore_errors=True)


def evaluation_paths(folder: str | os.PathLike, name: str | None = None) -> tuple[Path, Path]:
    """(metrics file, plots folder) of an evaluation named ``name`` in ``folder``: the run's
    own ``metrics.json`` and ``plots/`` when ``name`` is None, else ``metrics-<name>.json``
    and ``plots-<name>/``."""
    folder = Path(folder)
    if name is None:
        return folder / "metrics.json", folder / "plots"
    return folder / f"metrics-{name}.json", folder / f"plots-{name}"


def evaluation_of(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    update_run: bool = False,
) -> tuple[Path, str | None]:
    """Where an evaluation of ``checkpoint`` goes: its folder, and the name its files carry.

    The folder is ``output_dir``, else the checkpoint's run folder (the parent of its
    checkpoints/ folder), else the checkpoint's own folder. The name is the checkpoint's
    (``best`` for best.npz: ``metrics-best.json`` and ``plots-best/``), so evaluating a
    checkpoint leaves the run's own results alone; with ``update_run`` it is None: the run's
    ``metrics.json`` and ``plots/`` are rewritten.
    """
    path = Path(checkpoint).resolve()
    if output_dir is not None:
        folder = Path(output_dir)
    else:
        folder = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return folder, None if update_run else path.name.removesuffix(".npz")
