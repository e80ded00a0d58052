"""Parts (s) and (f) of benchmarks/gpu_check.py: wall and GPU time per training step."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks import kernels as kernel_bench
from benchmarks.gpu_parts.common import (
    MNIST_MEAN,
    MNIST_STD,
    PART_TITLES,
    UNLIMITED,
    Budget,
    PartTimeout,
    StepSizes,
    gpucnn_model,
    synthetic_data,
    torch_model,
)
from benchmarks.torch_seed import TorchTraining


@dataclasses.dataclass
class StepTime:
    """One variant's step at one batch size: wall ms per step (the best timed epoch), GPU us
    and device activities (kernels, copies, sets) per step from CUPTI, and a note."""

    wall_ms: float | None = None
    gpu_us: float | None = None
    kernels: float | None = None
    note: str = ""


class GpucnnSteps:
    """A gpucnn fit's epochs, ``steps`` batches each, through the Trainer's own epoch: eager
    (``Trainer.train_epoch``, what cuda_graph=False runs) or as CUDA graphs
    (``GraphTraining.train_epoch``, what the default runs on CUDA)."""

    def __init__(
        self, model: Any, images: np.ndarray, labels: np.ndarray, batch: int, graph: bool
    ) -> None:
        from gpucnn import data, nn, optim
        from gpucnn.train import Trainer
        from gpucnn.train.graph import GraphTraining

        opt = optim.Adam(model.parameters(), 1e-3, weight_decay=1e-5, amsgrad=True)
        self.trainer = Trainer(
            model, nn.CrossEntropyLoss(), opt, device="cuda", progress=False, cuda_graph=graph
        )
        self.loader = data.DataLoader(
            images, labels, batch, seed=0, mean=MNIST_MEAN, std=MNIST_STD,
            device=self.trainer.backend,
        )  # fmt: skip
        # insist=False: a capture that fails is timed uncaptured and says so (step_time's note)
        self.runner = GraphTraining(self.trainer, self.loader, insist=False) if graph else None
        steps = getattr(model, "run_steps", list)()
        self.fused_steps = sum(type(step).__name__ == "ConvReLUPool" for _, step in steps)
        self.epochs = 0

    def epoch(self) -> dict[str, float]:
        self.loader.set_epoch(self.epochs)
        run = self.runner.train_epoch if self.runner else self.trainer.train_epoch
        logs = run(self.loader, self.epochs, 1 << 30)
        self.epochs += 1
        return logs

    @property
    def fallback(self) -> str | None:
        return self.runner.fallback if self.runner else None

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()


def time_steps(
    epoch: Callable[[], Any], steps: int, sync: Callable[[], None], timed_epochs: int = 2
) -> StepTime:
    """Warm up with one epoch (compilation, capture), time ``timed_epochs`` more (the best),
    then profile one with CUPTI."""
    epoch()
    walls = []
    for _ in range(max(1, timed_epochs)):
        sync()
        t0 = time.perf_counter()
        epoch()
        sync()
        walls.append(time.perf_counter() - t0)
    out = StepTime(wall_ms=1e3 * min(walls) / steps)
    try:
        kernels, us = kernel_bench.cupti_segments([("epoch", epoch)])["epoch"]
        out.kernels, out.gpu_us = kernels / steps, us / steps
    except Exception as exc:  # no CUPTI here: the wall time stands
        out.note = f"no CUPTI ({exc})"
    return out


STEP_VARIANTS = ("gpucnn eager", "gpucnn graph", "PyTorch eager", "PyTorch graph")


def step_time(variant: str, batch: int, sizes: StepSizes) -> StepTime:
    """Time one variant's step (see time_steps) on synthetic data of ``sizes.steps`` batches."""
    images, labels = synthetic_data(sizes.steps * batch, sizes)
    if variant.startswith("gpucnn"):
        run = GpucnnSteps(gpucnn_model(sizes), images, labels, batch, graph="graph" in variant)
        try:
            out = time_steps(run.epoch, sizes.steps, kernel_bench.device_sync, sizes.timed_epochs)
        finally:
            run.close()
        notes = [out.note] if out.note else []
        if run.fallback is not None:
            notes.insert(0, f"capture failed, timed uncaptured: {run.fallback}")
        if run.fused_steps:
            notes.insert(0, f"{run.fused_steps} fused conv blocks")
        out.note = "; ".join(notes)
        return out
    trainer = TorchTraining(
        torch_model(sizes), images, labels, batch, sizes.torch_device, graph="graph" in variant
    )
    return time_steps(trainer.epoch, sizes.steps, trainer.sync, sizes.timed_epochs)


def _cell(v: float | None, digits: int) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


# Part (f)'s settings of the CUDA kernels module, each against (s)'s rows (neither):
# (FUSES_CONV_RELU_POOL, DIRECT_CONV_MAX_TAPS)
STEP_SETTINGS = {
    "fused": (True, 0),  # Conv + ReLU + MaxPool2d(2) blocks as one step (nn/fused.py)
    "direct conv1": (False, 9),  # the first conv (1 channel, 3x3) without columns (direct.py)
}


def step_timings(
    lines: list[str],
    results: dict[str, Any],
    sizes: StepSizes = StepSizes(),  # noqa: B008
    fused: bool = False,
    budget: Budget = UNLIMITED,
) -> None:
    """Part (s) (``fused=False``: the four variants, with neither setting of STEP_SETTINGS) or
    (f) (gpucnn's two variants under each setting of STEP_SETTINGS, compared with (s)'s rows in
    ``results["steps"]``)."""
    from gpucnn.backend import cuda as gpu

    part = "f" if fused else "s"
    settings = list(STEP_SETTINGS.items()) if fused else [("", (False, 0))]
    variants = STEP_VARIANTS[:2] if fused else STEP_VARIANTS
    table = results.setdefault("steps", {})
    lines += [
        f"## ({part}) {PART_TITLES[part]}",
        "",
        f"{sizes.steps} steps per epoch on random images, Adam AMSGrad; wall: the best of "
        f"{sizes.timed_epochs} epochs after a warm-up epoch (compilation, capture), per step; "
        "GPU us and kernels: CUPTI over one more epoch, per step (the epoch's own bookkeeping "
        "included). "
        + (
            "Each setting of the CUDA kernels module in turn: "
            + "; ".join(
                f"{name}: FUSES_CONV_RELU_POOL = {f}, DIRECT_CONV_MAX_TAPS = {d}"
                for name, (f, d) in settings
            )
            + "; the ratio is (s)'s wall time over this one's (> 1: the setting is faster)."
            if fused
            else "FUSES_CONV_RELU_POOL = False and DIRECT_CONV_MAX_TAPS = 0 on the CUDA kernels "
            "module, whatever their defaults."
        ),
        "",
        "| step | batch | wall ms/step | GPU us/step | kernels/step | "
        + ("(s) wall / this | " if fused else "")
        + "note |",
        "|---|---:|---:|---:|---:|" + ("---:|" if fused else "") + "---|",
    ]
    was = gpu.FUSES_CONV_RELU_POOL, gpu.DIRECT_CONV_MAX_TAPS
    try:
        for setting, (fuse, direct) in settings:
            gpu.FUSES_CONV_RELU_POOL, gpu.DIRECT_CONV_MAX_TAPS = fuse, direct
            for batch in sizes.batches:
                for variant in variants:
                    name = f"{variant} {setting}" if setting else variant
                    if budget.left() < 5:
                        lines.append(f"| {name} | {batch} | skipped: out of budget |||")
                        continue
                    try:
                        t = step_time(variant, batch, sizes)
                    except PartTimeout:
                        raise
                    except Exception as exc:  # report and go on
                        t = StepTime(note=f"failed: {type(exc).__name__}: {exc}")
                    table[(name, batch)] = t
                    extra = ""
                    if fused:
                        base = table.get((variant, batch))
                        ratio = (
                            base.wall_ms / t.wall_ms
                            if base and base.wall_ms and t.wall_ms
                            else None
                        )
                        extra = f" {_cell(ratio, 2)} |"
                    lines.append(
                        f"| {name} | {batch} | {_cell(t.wall_ms, 3)} | {_cell(t.gpu_us, 0)} | "
                        f"{_cell(t.kernels, 1)} |{extra} {t.note} |"
                    )
    finally:
        gpu.FUSES_CONV_RELU_POOL, gpu.DIRECT_CONV_MAX_TAPS = was
    if not fused:
        results["gpu_us_b64"] = getattr(table.get(("gpucnn graph", 64)), "gpu_us", None)
        results["torch_gpu_us_b64"] = getattr(table.get(("PyTorch eager", 64)), "gpu_us", None)
    lines.append("")
