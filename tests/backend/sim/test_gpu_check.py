"""benchmarks/gpu_check.py's CUDA-vs-CPU part and launch counter, at tiny sizes: the script's
own glue runs here before it meets a GPU (its timing parts need torch on a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import gpu_check
from gpucnn import nn
from gpucnn.backend import cuda as gpu

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


def tiny_model():
    g = np.random.default_rng(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, rng=g),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, 4, rng=g),
    )


TINY = gpu_check.Sizes(
    windows=((2, 1, 6, 6, 3, 1, 1), (1, 2, 5, 5, 2, 2, 0)),
    activations=(2, 3, 4, 5),
    logits=(3, 4),
    fc_weight=(5, 7),
    image=(1, 6, 6),
    batch=2,
    model=tiny_model,
)


def test_agreement_part_passes_and_reports_every_check():
    lines: list[str] = []
    assert gpu_check.check_agreement(lines, TINY) is True
    table = "\n".join(lines)
    for name in ("im2col", "col2im", "maxpool bwd", "relu", "dropout", "softmax cross-entropy",
                 "batchnorm bwd", "adam amsgrad", "model loss", "grad 4.weight"):  # fmt: skip
        assert name in table
    assert "False" not in table


def test_the_launch_counter_sees_every_kernel_of_a_step(monkeypatch):
    modules = gpu.KERNEL_MODULES
    for module in modules:  # restore the real kernels afterwards
        for name in dir(module):
            if name.endswith("_kernel"):
                monkeypatch.setattr(module, name, getattr(module, name))
    launches = gpu_check.count_numba_launches()
    from gpucnn import optim
    from gpucnn.backend import to_device

    model = tiny_model().to("cuda")
    crit = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), 1e-3, amsgrad=True)
    x = to_device(np.zeros((2, 1, 6, 6), np.float32), "cuda")
    crit(model(x), to_device(np.array([0, 1]), "cuda"))
    model.backward(crit.backward())
    opt.step()
    # forward: im2col, max pool, relu, softmax cross-entropy; backward: relu, max pool, col2im
    # (tiny_model's conv computes its input gradient); Adam: one launch per parameter (4)
    assert launches["n"] == 4 + 3 + 4
