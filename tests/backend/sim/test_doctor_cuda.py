"""``python -m gpucnn.doctor``'s CUDA part in the simulator, with the CuPy stand-in: every kernel
family against the CPU at tiny sizes, a tiny model's loss and gradients, the captured step
against the eager step and the kernel paths' verdicts; then the same with a GEMM
kernel made wrong, which the doctor reports (the kernel's row, the GEMM path switched off,
the captured step's fall-back with its reason) with exit status 1. The timing is left out
here (tests/test_doctor.py runs it on the CPU; the simulator's times mean nothing)."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import doctor, nn
from gpucnn.backend.cuda import gemm_module
from gpucnn.doctor.agreement import Sizes
from tests.backend.sim.faults import Corrupt

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


TINY = Sizes(
    windows=((2, 1, 6, 6, 3, 1, 1), (1, 2, 5, 5, 2, 2, 0)),
    activations=(2, 3, 4, 4),
    logits=(3, 4),
    fc_weight=(5, 7),
    image=(1, 6, 6),
    batch=2,
    model=tiny_model,
)


def _doctor(lines):
    """The doctor on the simulated device (its timing is tested on the CPU: the simulator's
    times mean nothing and cost minutes)."""
    return doctor.run(
        "cuda", sizes=TINY, step_model=tiny_model, step_batch=2, step_image=(1, 6, 6),
        timing=False, say=lines.append,
    )  # fmt: skip


def test_the_doctor_checks_the_cuda_device():
    lines: list[str] = []
    report = _doctor(lines)
    assert report.checked == ["cuda"] and report.exit_code == 0, report.failed()
    by_name = {c.name: c for c in report.checks}
    for family in ("window", "pool", "direct", "gemm", "fused", "elementwise", "batchnorm",
                   "optim", "batch", "warp", "model", "graph", "paths"):  # fmt: skip
        assert any(c.family == family and c.ok for c in report.checks), family
    step = by_name["captured step vs eager step"]
    assert step.ok and step.detail.startswith("the captured step (batch 2) agrees with the eager")
    assert by_name["gemm path"].ok and "agrees at" in by_name["gemm path"].detail
    assert report.timings == {}  # left out (timing=False)
    text = "\n".join(lines)
    assert "checks on cuda (kernels against the CPU kernels)" in text
    assert "--device auto picks cuda" in text
    assert report.summary.startswith("doctor: ok (exit 0): cuda ")


def test_the_doctor_reports_an_injected_kernel_mismatch(expect_mismatch, monkeypatch):
    monkeypatch.setattr(gemm_module, "gemm_tile_kernel", Corrupt(gemm_module.gemm_tile_kernel))
    report = _doctor([])
    assert report.exit_code == 1
    failed = {c.name: c.detail for c in report.failed()}
    assert any(name.startswith("gemm fc forward") for name in failed)  # the kernel's own row
    assert "disagree with cuBLAS" in failed["gemm path"]
    assert failed["captured step vs eager step"].startswith(
        "the fit trained eagerly: capturing the training step (batch 2) failed: KernelPathOff:"
    )
    assert report.summary.startswith("doctor: PROBLEMS (exit 1): cuda FAILED")
