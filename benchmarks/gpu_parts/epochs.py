"""Parts (c) and (p) of benchmarks/gpu_check.py: epochs at batch 64 and the fast preset."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu_parts.common import (
    MNIST_MEAN,
    MNIST_STD,
    PART_TITLES,
    UNLIMITED,
    Budget,
    PartTimeout,
    StepSizes,
    eager_reason,
    gpucnn_model,
    said_by_gpucnn,
    torch_model,
)
from benchmarks.gpu_parts.steps import (
    _cell,
)
from benchmarks.torch_seed import TorchTraining, copy_weights, torch_seed_cnn


@dataclasses.dataclass
class EpochRun:
    """Training seconds per epoch and the test accuracy after each, for one library/mode."""

    name: str
    mode: str
    times: list[float] = dataclasses.field(default_factory=list)
    accs: list[float] = dataclasses.field(default_factory=list)
    elapsed: list[float] = dataclasses.field(default_factory=list)  # with validation
    note: str = ""

    def steady(self) -> float | None:
        """The second epoch's time (after compilation, capture, warm-up), else the first's."""
        return self.times[1] if len(self.times) > 1 else (self.times[0] if self.times else None)

    def time_to(self, target: float = 0.99) -> tuple[float, int] | None:
        """(training seconds, epochs) until the test accuracy first reached ``target``."""
        total = 0.0
        for i, (t, acc) in enumerate(zip(self.times, self.accs, strict=False)):
            total += t
            if acc >= target:
                return total, i + 1
        return None


def accuracy_callback(loader: Any, target: float = 0.99, min_epochs: int | None = None):
    """A Trainer callback recording each epoch's training seconds and test accuracy (on
    ``loader``); with ``min_epochs``, it stops training once ``target`` is reached after at
    least that many epochs. It acts only at an epoch's end, so graphs still run."""
    from gpucnn.train import Callback

    class EpochAccuracy(Callback):
        def __init__(self) -> None:
            self.loader, self.run = loader, EpochRun("gpucnn", "")

        def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, float]) -> None:
            self.run.times.append(logs["train_time_s"])
            self.run.elapsed.append(logs["elapsed_s"])
            self.run.accs.append(trainer.evaluate(self.loader)["accuracy"])
            if min_epochs is not None and self.run.accs[-1] >= target:
                trainer.stop_training = len(self.run.accs) >= min_epochs

    return EpochAccuracy()


def gpucnn_epochs(
    x: np.ndarray,
    y: np.ndarray,
    xt: np.ndarray,
    yt: np.ndarray,
    batch: int,
    max_epochs: int,
    min_epochs: int,
    sizes: StepSizes = StepSizes(),  # noqa: B008
    target: float = 0.99,
) -> EpochRun:
    """The gpucnn Trainer with its defaults (graph when it can) until ``target``."""
    from gpucnn import data, nn, optim
    from gpucnn.train import Trainer

    model = gpucnn_model(sizes)
    opt = optim.Adam(model.parameters(), 1e-3, weight_decay=1e-5, amsgrad=True)
    cb = accuracy_callback(None, target, min_epochs)
    trainer = Trainer(
        model, nn.CrossEntropyLoss(), opt, device="cuda", progress=False, callbacks=[cb]
    )
    common = {"mean": MNIST_MEAN, "std": MNIST_STD, "device": trainer.backend}
    train = data.DataLoader(x, y, batch, seed=0, **common)
    cb.loader = data.DataLoader(xt, yt, 1000, shuffle=False, **common)
    with said_by_gpucnn() as said:
        trainer.fit(train, epochs=max_epochs)
    reason = eager_reason(trainer, train, said)
    cb.run.mode = "graph (default)" if reason is None else f"eager: {reason}"
    return cb.run


def torch_epochs(
    name: str,
    trainer: TorchTraining,
    xt: np.ndarray,
    yt: np.ndarray,
    max_epochs: int,
    min_epochs: int,
    budget: Budget = UNLIMITED,
    target: float = 0.99,
) -> EpochRun:
    run = EpochRun(name, "graph" if trainer.graph_mode else "eager")
    for e in range(max_epochs):
        if e and budget.left() < 2 * run.times[-1] + 5:
            run.note = f"stopped after {e} epochs: out of budget"
            break
        trainer.sync()
        t0 = time.perf_counter()
        trainer.epoch()
        trainer.sync()
        run.times.append(time.perf_counter() - t0)
        run.accs.append(trainer.accuracy(xt, yt))
        if run.accs[-1] >= target and e + 1 >= min_epochs:
            break
    return run


def epoch_table(runs: list[EpochRun], target: float = 0.99) -> list[str]:
    rows = [
        f"| | mode | epoch s (each) | steady epoch s | training s to {target:.0%} test acc "
        "(epochs) | test acc (each) | note |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for r in runs:
        reached = r.time_to(target)
        to = f"{reached[0]:.2f} ({reached[1]})" if reached else f"not in {len(r.times)}"
        rows.append(
            f"| {r.name} | {r.mode} | {', '.join(f'{t:.2f}' for t in r.times)} | "
            f"{_cell(r.steady(), 2)} | {to} | {', '.join(f'{a:.4f}' for a in r.accs)} | "
            f"{r.note} |"
        )
    return rows


def _guarded(name: str, mode: str, fn: Callable[[], EpochRun]) -> EpochRun:
    try:
        return fn()
    except PartTimeout:
        raise
    except Exception as exc:  # report and go on
        return EpochRun(name, mode, note=f"failed: {type(exc).__name__}: {exc}")


def epochs_b64(
    lines: list[str],
    results: dict[str, Any],
    data: tuple[np.ndarray, ...],
    sizes: StepSizes = StepSizes(),  # noqa: B008
    max_epochs: int = 3,
    min_epochs: int = 2,
    batch: int = 64,
    budget: Budget = UNLIMITED,
    target: float = 0.99,
) -> None:
    """Part (c): gpucnn (Trainer defaults), PyTorch eager and PyTorch graph, from the same
    initial weights, epoch by epoch until ``target`` test accuracy (after ``min_epochs``)."""
    x, y, xt, yt = data
    runs = [
        _guarded(
            "gpucnn", "?",
            lambda: gpucnn_epochs(x, y, xt, yt, batch, max_epochs, min_epochs, sizes, target),
        )
    ]  # fmt: skip
    for graph in (False, True):
        name = f"PyTorch {'graph' if graph else 'eager'}"
        if budget.left() < 10:
            runs.append(EpochRun(name, "", note="skipped: out of budget"))
            continue

        def run(graph=graph, name=name):
            trainer = TorchTraining(
                torch_model(sizes), x, y, batch, sizes.torch_device, graph=graph
            )
            return torch_epochs(name, trainer, xt, yt, max_epochs, min_epochs, budget, target)

        runs.append(_guarded(name, "graph" if graph else "eager", run))
    ours, eager, graph = (r.steady() for r in runs)
    results["epoch_s_b64"] = ours
    results["torch_eager_epoch_s_b64"] = eager
    results["torch_graph_epoch_s_b64"] = graph
    lines += [
        f"## (c) {PART_TITLES['c'].replace('64', str(batch))}: the seed model on MNIST "
        f"({len(y)} training images resident on the GPU), Adam AMSGrad lr 1e-3",
        "",
        "Training seconds per epoch (synchronised; evaluation not included); the steady epoch "
        "is the second (the first compiles kernels not compiled yet and captures graphs).",
        "",
        *epoch_table(runs, target),
        "",
    ]
    if ours and eager and graph:
        lines += [
            f"steady epoch gpucnn / PyTorch eager: **{ours / eager:.2f}**, "
            f"gpucnn / PyTorch graph: **{ours / graph:.2f}**",
            "",
        ]


def fast_runs(
    config: Any,
    data: tuple[np.ndarray, ...],
    sizes: StepSizes = StepSizes(),  # noqa: B008
    target: float = 0.99,
) -> tuple[Callable[[], EpochRun], Callable[[], EpochRun], int]:
    """(gpucnn, PyTorch, training images) for the fast preset ``config`` on ``data`` (train
    images and labels, test images and labels): gpucnn through its recipe (build_trainer: its
    callbacks, the one-cycle schedule, validation and checkpoints each epoch), and the same
    recipe in PyTorch: seed model from the same initial weights, Adam AMSGrad, OneCycleLR
    (max_lr, pct_start, cycle over the preset's epochs; no momentum cycling, as gpucnn's), the
    same training split. Each callable trains once and returns its epochs' times and test
    accuracies (part (p) here, benchmarks/fast_cpu.py on the CPU)."""
    import tempfile

    from gpucnn import data as gdata
    from gpucnn import models
    from gpucnn.backend import get_backend
    from gpucnn.train import recipe

    x, y, xt, yt = data
    if config.limit is not None:
        x, y = x[: config.limit], y[: config.limit]
    train, val = gdata.train_val_split(x, y, config.val_fraction, seed=config.seed)
    split = {"train": train, "val": val, "test": (xt, yt)}  # recipe.load_split's, from memory

    def ours() -> EpochRun:
        with tempfile.TemporaryDirectory() as run_dir:
            backend = get_backend(config.device)
            loaders = recipe.make_loaders(config, split, backend)
            cb = accuracy_callback(loaders["test"], target)
            trainer = recipe.build_trainer(
                config, Path(run_dir), backend, progress=False, extra_callbacks=(cb,)
            )
            with said_by_gpucnn() as said:
                trainer.fit(loaders["train"], loaders.get("val"), config.epochs)
            reason = eager_reason(trainer, loaders["train"], said)
        cb.run.name = "gpucnn (recipe)"
        cb.run.mode = "graph" if reason is None else f"eager: {reason}"
        return cb.run

    def theirs() -> EpochRun:
        from torch.optim.lr_scheduler import OneCycleLR

        settings = config.one_cycle_settings()
        model = copy_weights(
            sizes.torch_model() if sizes.torch_model else torch_seed_cnn(),
            models.build(config.model, seed=config.seed) if sizes.model is None else sizes.model(),
        )

        def schedule(opt: Any) -> Any:
            return OneCycleLR(opt, **settings, cycle_momentum=False)

        trainer = TorchTraining(
            model, *train, config.batch_size, sizes.torch_device, lr=config.lr,
            weight_decay=config.weight_decay, amsgrad=config.amsgrad, seed=config.seed,
            scheduler=schedule,
        )  # fmt: skip
        return torch_epochs("PyTorch eager", trainer, xt, yt, config.epochs, config.epochs)

    return ours, theirs, len(train[1])


def fast_preset(
    lines: list[str],
    results: dict[str, Any],
    data: tuple[np.ndarray, ...],
    data_dir: str | None = None,
    sizes: StepSizes = StepSizes(),  # noqa: B008
    budget: Budget = UNLIMITED,
    config: Any = None,
    target: float = 0.99,
) -> None:
    """Part (p): the fast preset in gpucnn and in PyTorch (fast_runs says how), side by side."""
    from gpucnn.train.config import TrainConfig

    config = config or TrainConfig.preset("fast", device="cuda", data_dir=data_dir)
    ours, theirs, n_train = fast_runs(config, data, sizes, target)
    runs = [_guarded("gpucnn (recipe)", "?", ours)]
    if budget.left() < 10:
        runs.append(EpochRun("PyTorch eager", "", note="skipped: out of budget"))
    else:
        runs.append(_guarded("PyTorch eager", "eager", theirs))
    for key, r in zip(("fast_time_to_99_s", "torch_fast_time_to_99_s"), runs, strict=True):
        reached = r.time_to(target)
        results[key] = reached[0] if reached else None
    ours_run = runs[0]
    lines += [
        f"## (p) {PART_TITLES['p']}",
        "",
        f"TrainConfig.preset('fast'): {config.model} model, batch {config.batch_size}, "
        f"{config.epochs} epochs of {config.steps_per_epoch} steps, one cycle to lr {config.lr:g} "
        f"(pct_start {config.pct_start}), Adam AMSGrad weight decay {config.weight_decay:g}, "
        f"{n_train} training images ({config.val_fraction:.0%} held out). Training "
        "seconds per epoch (validation, checkpoints and test evaluation not included; kernels "
        "compiled by the earlier parts).",
        "",
        *epoch_table(runs, target),
        "",
    ]
    if ours_run.elapsed:
        lines += [
            f"gpucnn epochs with validation: {', '.join(f'{t:.2f}' for t in ours_run.elapsed)} s",
            "",
        ]
