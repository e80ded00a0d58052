"""The doctor's training-step checks: one captured CUDA graph step against the eager step, and a
short seed-model step timing beside PyTorch's.

The captured step is the Trainer's own check (gpucnn.train.graph_check), run on a tiny fit of
synthetic data: a warm-up step (which checks every GEMM shape against cuBLAS), then the
capture, checked against one eager step. The timing runs the Trainer's epoch (as graphs on
CUDA, the CPU's batch shards on a CPU) on synthetic data for about ``seconds`` after a
warm-up epoch, and PyTorch's eager loop on the same device, model and batch for as long.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gpucnn.backend import Backend


@dataclasses.dataclass(frozen=True)
class StepResult:
    """The captured step's verdict: ``ok`` None when graphs cannot run here (``detail`` says
    why), else whether the captured step was used (``detail``: the check's line, or why not)."""

    ok: bool | None
    detail: str


def _seed(model: Callable[[], Any] | None) -> Any:
    from gpucnn import models

    return model() if model else models.build("seed", seed=0)


def _fit_parts(backend: Backend, model: Any, batch: int, batches: int, image: tuple) -> tuple:
    from gpucnn import data, nn, optim
    from gpucnn.train import Trainer

    g = np.random.default_rng(0)
    n = batch * batches
    classes = model.output_shape(tuple(image))[0]
    images = g.integers(0, 256, (n, *image), dtype=np.uint8)
    labels = g.integers(0, classes, n)
    opt = optim.Adam(model.parameters(), 1e-3, weight_decay=1e-5, amsgrad=True)
    trainer = Trainer(model, nn.CrossEntropyLoss(), opt, device=backend, progress=False)
    loader = data.DataLoader(images, labels, batch, seed=0, mean=0.13, std=0.31, device=backend)
    return trainer, loader


def captured_step(
    backend: Backend, model: Callable[[], Any] | None = None, batch: int = 64, image=(1, 28, 28)
) -> StepResult:
    """A fit's first captured step against the eager one (gpucnn.train.graph_check)."""
    from gpucnn.train import graph

    trainer, loader = _fit_parts(backend, _seed(model), batch, 2, image)
    why = graph.unsupported(trainer, loader)
    if why is not None:
        return StepResult(None if backend.name != "cuda" else False, why)
    runner = graph.GraphTraining(trainer, loader, insist=False)
    try:
        loader.set_epoch(0)
        runner.train_epoch(loader, 0, 1)
    finally:
        runner.close()
    if runner.fallback is not None:
        return StepResult(False, f"the fit trained eagerly: {runner.fallback}")
    if not runner.checks:
        return StepResult(False, "no step was captured")
    return StepResult(True, runner.checks[0].line())


@dataclasses.dataclass
class Timing:
    """Milliseconds per training step (None: not measured, ``note`` says why)."""

    gpucnn_ms: float | None = None
    torch_ms: float | None = None
    steps: int = 0
    torch_steps: int = 0
    how: str = ""
    note: str = ""


def _timed(epoch: Callable[[], None], seconds: float) -> list[float]:
    """Seconds of each call of ``epoch`` after a warm-up call, until ``seconds`` have passed
    (at least one timed call)."""
    epoch()  # compilation, capture
    times: list[float] = []
    while not times or sum(times) < seconds:
        t0 = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - t0)
    return times


def step_timing(
    backend: Backend,
    seconds: float = 2.0,
    model: Callable[[], Any] | None = None,
    batch: int = 64,
    image: tuple = (1, 28, 28),
    batches: int | None = None,
) -> Timing:
    """gpucnn's training step on ``backend``: epochs of ``batches`` steps (default 32 on
    CUDA, 2 on a CPU) for about ``seconds`` after a warm-up epoch, and PyTorch's eager step on
    the same device, model and batch (when PyTorch is installed and has that device) in runs
    of as many steps for as long. Each is the median epoch over its steps: a busy machine's
    slow moments do not decide it."""
    from gpucnn.train import graph

    batches = batches or (32 if backend.name == "cuda" else 2)
    trainer, loader = _fit_parts(backend, _seed(model), batch, batches, image)
    runner = (
        graph.GraphTraining(trainer, loader) if graph.unsupported(trainer, loader) is None else None
    )
    run = runner.train_epoch if runner is not None else trainer.train_epoch
    out = Timing(how="CUDA graphs" if runner is not None else "eager")
    count = [0]

    def epoch() -> None:  # each epoch ends reading its metrics: a device sync
        loader.set_epoch(count[0])
        run(loader, count[0], 1 << 30)
        count[0] += 1

    try:
        times = _timed(epoch, seconds)
        out.steps = len(times) * batches
        out.gpucnn_ms = 1e3 * statistics.median(times) / batches
        if runner is not None and runner.fallback is not None:
            out.how = f"eager (the graph fell back: {runner.fallback})"
    finally:
        if runner is not None:
            runner.close()
    _torch_timing(out, backend, model, batch, image, seconds, batches)
    return out


def _torch_timing(out: Timing, backend: Backend, model, batch, image, seconds, batches) -> None:
    from gpucnn.doctor import torch_twin

    if not torch_twin.installed():
        out.note = "PyTorch is not installed"
        return
    import torch

    device = "cuda" if backend.name == "cuda" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        out.note = "this PyTorch has no CUDA"
        return
    try:
        net = torch_twin.twin(_seed(model), device)
    except ValueError as exc:
        out.note = str(exc)
        return
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-5, amsgrad=True)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn((batch, *image), generator=g).to(device)
    classes = int(net(x[:1]).shape[1])
    y = torch.randint(0, classes, (batch,), generator=g).to(device)

    def epoch() -> None:
        for _ in range(batches):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    times = _timed(epoch, seconds)
    out.torch_steps = len(times) * batches
    out.torch_ms = 1e3 * statistics.median(times) / batches
