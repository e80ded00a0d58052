"""The Trainer cannot use a CUDA graph or a kernel path that disagreed with the eager path.

Two faults are injected into a fit of tiny_model's kind (tests/backend/sim/test_graph_step's
model without dropout or a conv bias: its math is the eager Trainer's, so a fit that fell back
must end where the eager fit ends): a GEMM kernel that adds 1 to its output (caught by the
kernels' own check in the warm-up step, gpucnn.backend.cuda.selfcheck), and a step whose
captured form differs from its eager form (ReLU doubled only while the stream is captured:
caught by the first launch's check against the eager step, gpucnn.train.graph_check). Each
fit goes on eagerly with one line saying why, ends as the eager fit, and under
cuda_graph=True raises instead. A graph launch that fails later (a CUDA error) sends the fit
eager too. Each fit here costs ~15 s in the simulator.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from gpucnn.backend import cuda as gpu
from gpucnn.backend import get_backend
from gpucnn.backend.cuda import gemm_module
from gpucnn.train import TrainingError
from tests.backend.sim.faults import Corrupt
from tests.backend.sim.test_graph_step import _assert_close, _loader, _model, _state, _trainer

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


def _clean():
    return _model(dropout=False, conv_bias=False)


@pytest.fixture(scope="module")
def eager_fit():
    """The plain eager Trainer's one epoch (cuBLAS, host-driven): where a fallback must end."""
    trainer = _trainer(_clean(), cuda_graph=False)
    trainer.fit(_loader(), epochs=1)
    return _state(trainer)


def _messages(caplog, logger):
    return [r.getMessage() for r in caplog.records if r.name == logger]


def test_a_gemm_kernel_mismatch_sends_the_fit_eager_with_the_reason(
    eager_fit, expect_mismatch, monkeypatch, caplog
):
    monkeypatch.setattr(gemm_module, "gemm_tile_kernel", Corrupt(gemm_module.gemm_tile_kernel))
    trainer = _trainer(_clean())
    with caplog.at_level(logging.INFO, logger="gpucnn"):
        trainer.fit(_loader(), epochs=1)
    (switched_off,) = _messages(caplog, "gpucnn.backend")
    assert "the GEMM kernels (cuda/gemm.py) disagree with cuBLAS" in switched_off
    (eagerly,) = [m for m in _messages(caplog, "gpucnn.train") if "training eagerly" in m]
    assert eagerly.startswith(
        "training eagerly: capturing the training step (batch 2) failed: KernelPathOff: "
        "the GEMM kernels (cuda/gemm.py) disagree with cuBLAS"
    )
    # every product was cuBLAS's: the fit is the eager Trainer's, not a wrong one
    _assert_close(_state(trainer), eager_fit, rtol=2e-5, atol=1e-6)
    # insisting on graphs is refused up front, naming the kernels
    with pytest.raises(TrainingError, match="cuda_graph=True, but a captured step needs the GEMM"):
        _trainer(_clean(), cuda_graph=True).fit(_loader(), epochs=1)


def test_a_captured_step_that_disagrees_with_the_eager_step_is_not_used(
    eager_fit, monkeypatch, caplog
):
    relu, stream = gpu.relu_fwd, get_backend("cuda").stream

    def doubled_while_captured(x):  # a step whose graph is not the eager step
        return relu(x * np.float32(2) if stream.is_capturing() else x)

    monkeypatch.setattr(gpu, "relu_fwd", doubled_while_captured)
    trainer = _trainer(_clean())
    with caplog.at_level(logging.INFO, logger="gpucnn.train"):
        trainer.fit(_loader(), epochs=1)
    (eagerly,) = [m for m in _messages(caplog, "gpucnn.train") if "training eagerly" in m]
    assert eagerly.startswith(
        "training eagerly: the captured step (batch 2) disagrees with the eager step: "
    )
    assert " differs by " in eagerly and " is allowed (" in eagerly
    # the eager step's result was kept, the rest ran eagerly: the eager Trainer's fit
    _assert_close(_state(trainer), eager_fit, rtol=2e-5, atol=1e-6)
    with pytest.raises(TrainingError, match=r"the captured step \(batch 2\) disagrees"):
        _trainer(_clean(), cuda_graph=True).fit(_loader(), epochs=1)


def test_a_launch_that_fails_later_sends_the_fit_eager_and_counts_no_step(monkeypatch, caplog):
    """The graph's second launch raises (as a CUDA error would): that step runs eagerly, the
    rest of the fit too, and the host's step counts (which checkpoints save) stay exact."""
    import cupy

    from tests.backend.sim import fakecupy

    if cupy.ndarray is not fakecupy.ndarray:
        pytest.skip("makes the stand-in's graph launch fail")
    launch, launches = fakecupy.Graph.launch, []

    def second_fails(graph, stream=None):
        launches.append(graph)
        if len(launches) == 2:
            raise RuntimeError("cudaErrorLaunchFailure: unspecified launch failure")
        launch(graph, stream)

    monkeypatch.setattr(fakecupy.Graph, "launch", second_fails)
    trainer = _trainer(_clean())
    with caplog.at_level(logging.INFO, logger="gpucnn.train"):
        trainer.fit(_loader(), epochs=2)
    (eagerly,) = [m for m in _messages(caplog, "gpucnn.train") if "training eagerly" in m]
    assert eagerly == (
        "training eagerly: launching the captured step (batch 2) failed: RuntimeError: "
        "cudaErrorLaunchFailure: unspecified launch failure"
    )
    assert len(launches) == 2 and trainer.global_step == 6 and trainer.history["epoch"] == [1, 2]
    assert trainer.optimizer._t == 6 and {s["step"] for s in trainer.optimizer.state.values()} == {
        6
    }
