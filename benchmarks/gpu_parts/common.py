"""What the parts of benchmarks/gpu_check.py share: shapes, sizes, the budget, models, data."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from benchmarks.torch_seed import copy_weights, torch_seed_cnn

# part (a)'s shapes and checks are the doctor's (gpucnn.doctor.agreement): Sizes() is the seed
# model at batch 64; tests/backend/sim runs the same checks at tiny sizes
from gpucnn.doctor.agreement import SEED_WINDOW_SHAPES, Sizes  # noqa: F401

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


PART_ORDER = ("a", "o", "g", "s", "f", "c", "p", "d", "k", "b", "t")
PART_TITLES = {
    "a": "CUDA vs CPU agreement",
    "o": "python -m gpucnn.doctor on this machine",
    "g": "one CUDA graph per step vs the eager step",
    "s": "the training step, wall and GPU time",
    "f": "the training step with the fused Conv + ReLU + MaxPool2d(2), and with a direct conv1",
    "c": "epochs at batch 64",
    "p": "the fast preset, gpucnn and PyTorch",
    "d": "launches per training step",
    "k": "per-kernel GPU time",
    "b": "kernels, forward + backward, median ms",
    "t": "kernel tests on the GPU",
}


POOL_TIMING_SHAPES = [  # part (b) only: the seed model's pools at batch 512, overlapping windows
    (512, 32, 28, 28, 2, 2, 0),
    (512, 64, 14, 14, 2, 2, 0),
    (64, 64, 56, 56, 3, 2, 1),  # ResNet's stem pool: max-pool backward with atomic adds
]


class Budget:
    """Seconds left of the run's budget (counted from START)."""

    def __init__(self, seconds: float, start: float | None = None) -> None:
        self.end = (time.perf_counter() if start is None else start) + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


UNLIMITED = Budget(1e12)


class PartTimeout(BaseException):
    """The budget (and its grace) ran out while a part was running (a BaseException, so that
    the parts' own ``except Exception`` does not swallow it)."""


class Terminated(BaseException):
    """SIGTERM (run.sh's timeout): write the report and stop."""


@dataclasses.dataclass(frozen=True)
class StepSizes:
    """What parts (g), (s), (f), (c) and (d) train: the seed model on MNIST-sized images, by
    default; the tests shrink it (a tiny model, a few steps, PyTorch on the CPU)."""

    batches: tuple = (64, 512)
    steps: int = 50  # steps per timed epoch in (s) and (f)
    timed_epochs: int = 2  # (s), (f): the best of this many epochs after the warm-up one
    image: tuple = (1, 28, 28)
    classes: int = 10
    model: Callable[[], Any] | None = None  # gpucnn; default models.build("seed", seed=0)
    torch_model: Callable[[], Any] | None = None  # default torch_seed_cnn()
    torch_device: str = "cuda"


def gpucnn_model(sizes: StepSizes) -> Any:
    from gpucnn import models

    return sizes.model() if sizes.model else models.build("seed", seed=0)


def torch_model(sizes: StepSizes) -> Any:
    """The PyTorch model, with gpucnn's initial weights (one init for both libraries)."""
    model = sizes.torch_model() if sizes.torch_model else torch_seed_cnn()
    return copy_weights(model, gpucnn_model(sizes))


def synthetic_data(n: int, sizes: StepSizes, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images (n, H, W) and labels: what timing needs (no data on disk)."""
    g = np.random.default_rng(seed)
    return (
        g.integers(0, 256, (n, *sizes.image[1:]), dtype=np.uint8),
        g.integers(0, sizes.classes, n),
    )


def synced_median_ms(fn, sync, repeat=30, warmup=5) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


@contextlib.contextmanager
def said_by_gpucnn() -> Iterator[list[str]]:
    """The gpucnn.train logger's messages inside the block (e.g. "training eagerly: why")."""
    logger = logging.getLogger("gpucnn.train")
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler, level = Keep(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def eager_reason(trainer: Any, loader: Any, messages: list[str]) -> str | None:
    """Why ``trainer``'s fit on ``loader`` trained eagerly (its cuda_graph setting, a
    requirement unmet, or a capture that failed: its "training eagerly" message); None when it
    ran as CUDA graphs."""
    from gpucnn.train import graph

    if trainer.cuda_graph is False:
        return "cuda_graph=False"
    why = graph.unsupported(trainer, loader)
    if why is not None:
        return why
    return next((m for m in messages if m.startswith("training eagerly")), None)


def load_mnist(data_dir: str) -> tuple[np.ndarray, ...]:
    """(train images, labels, test images, labels), verified, never downloaded."""
    from gpucnn import data

    x, y = data.load("mnist", "train", root=data_dir, download=False)
    xt, yt = data.load("mnist", "test", root=data_dir, download=False)
    return x, y, xt, yt
