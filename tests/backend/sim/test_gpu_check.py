"""benchmarks/gpu_check.py and the GPU path of benchmarks/kernels.py at tiny sizes: the scripts'
own glue (the CUDA-vs-CPU part, the launch counter, the graph-vs-eager comparison, the step
timing harness, the epoch table, the per-kernel table, the budget and the report with its
summary line) runs here before it meets a GPU. Timings in the simulator mean nothing; PyTorch
runs on the CPU, where its whole-step CUDA graph and CUPTI are unavailable and say so."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from benchmarks import gpu_check
from benchmarks import kernels as kernel_bench
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


def tiny_torch_model():
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    return tnn.Sequential(
        tnn.Conv2d(1, 2, 3, padding=1),
        tnn.ReLU(),
        tnn.MaxPool2d(2),
        tnn.Flatten(),
        tnn.Linear(2 * 3 * 3, 4),
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


def _torch_device() -> str:
    """PyTorch on the GPU where there is one (tests/backend/sim also runs on a real GPU, in
    gpu_check's part (t)), else on the CPU, where its CUDA graph and CUPTI say why not."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


TORCH_DEVICE = _torch_device()

TINY_STEPS = gpu_check.StepSizes(
    batches=(2,),
    steps=1,
    timed_epochs=1,
    image=(1, 6, 6),
    classes=4,
    model=tiny_model,
    torch_model=tiny_torch_model,
    torch_device=TORCH_DEVICE,
)

NUMBER = r"\d+(\.\d+)?"


def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_agreement_part_passes_and_reports_every_check():
    lines: list[str] = []
    assert gpu_check.check_agreement(lines, TINY) is True
    table = "\n".join(lines)
    for name in ("im2col", "col2im", "maxpool bwd", "direct conv fwd", "direct conv dw",
                 "direct conv db", "relu", "dropout", "softmax cross-entropy",
                 "batchnorm bwd", "adam amsgrad", "model loss", "grad 4.weight"):  # fmt: skip
        assert name in table
    assert "False" not in table


def test_the_launch_counter_sees_every_kernel_of_a_step(monkeypatch):
    modules = gpu.KERNEL_MODULES
    for module in modules:  # restore the real kernels afterwards
        for name in dir(module):
            if name.endswith("_kernel"):
                monkeypatch.setattr(module, name, getattr(module, name))
    real = gpu.window.im2col_fwd_kernel
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
    gpu_check.uncount_numba_launches()
    assert gpu.window.im2col_fwd_kernel is real


# -- (g) graph vs eager ----------------------------------------------------------------------


def test_graph_vs_eager_passes_and_reports_every_parameter():
    images, labels = gpu_check.synthetic_data(4, TINY_STEPS)
    lines: list[str] = []
    assert gpu_check.graph_vs_eager(lines, images, labels, 2, 2, 1e-4, TINY_STEPS) is True
    text = "\n".join(lines)
    for name in ("0.weight", "0.bias", "4.weight", "4.bias", "epoch train loss"):
        assert name in text
    assert lines[-2].startswith("graph vs eager: PASS")


def test_graph_vs_eager_fails_when_the_step_was_not_captured(monkeypatch):
    from gpucnn.train import graph as graph_mod

    norm = graph_mod._grad_norm

    def reads_the_norm(model, xp):  # a host read in the step: the capture fails
        total = norm(model, xp)
        float(total)
        return total

    monkeypatch.setattr(graph_mod, "_grad_norm", reads_the_norm)
    images, labels = gpu_check.synthetic_data(4, TINY_STEPS)
    lines: list[str] = []
    assert gpu_check.graph_vs_eager(lines, images, labels, 2, 2, 1e-4, TINY_STEPS) is False
    assert lines[-2].startswith("graph vs eager: FAIL")
    assert "did not run as graphs: training eagerly: capturing the training step" in lines[-2]


def test_graph_vs_eager_fails_when_the_fit_cannot_run_as_graphs(monkeypatch):
    from gpucnn.train import graph as graph_mod

    monkeypatch.setattr(graph_mod, "unsupported", lambda trainer, loader: "a reason")
    images, labels = gpu_check.synthetic_data(2, TINY_STEPS)
    lines: list[str] = []
    assert gpu_check.graph_vs_eager(lines, images, labels, 1, 2, 1e-4, TINY_STEPS) is False
    assert lines[-2].startswith("graph vs eager: FAIL")
    assert lines[-2].endswith("but the graph fit did not run as graphs: a reason)")


# -- (s), (f) the step timing harness --------------------------------------------------------


def test_the_step_harness_times_every_variant_or_says_why_not():
    lines: list[str] = []
    results: dict = {}
    gpu_check.step_timings(lines, results, TINY_STEPS)
    rows = {cells(line)[0]: cells(line) for line in lines if line.startswith("| ")}
    timed = ["gpucnn eager", "gpucnn graph", "PyTorch eager"]
    if TORCH_DEVICE == "cuda":
        timed.append("PyTorch graph")
    else:
        why = "failed: RuntimeError: a whole-step CUDA graph needs torch on CUDA"
        assert why in rows["PyTorch graph"][-1]
    for variant in timed:
        name, batch, wall, *_ = rows[variant]
        assert batch == "2" and re.fullmatch(NUMBER, wall), rows[variant]
        assert results["steps"][(variant, 2)].wall_ms > 0
    assert "capture failed" not in rows["gpucnn graph"][-1]  # it ran as a graph
    assert results["gpu_us_b64"] is None  # no batch 64 here


def test_the_fused_part_sets_each_setting_only_while_it_runs_and_compares_with_the_step_part(
    monkeypatch,
):
    seen = []

    def fake_step_time(variant, batch, sizes):
        seen.append((variant, gpu.FUSES_CONV_RELU_POOL, gpu.DIRECT_CONV_MAX_TAPS))
        wall = 2.0 if gpu.FUSES_CONV_RELU_POOL else (1.5 if gpu.DIRECT_CONV_MAX_TAPS else 3.0)
        return gpu_check.StepTime(wall_ms=wall, gpu_us=100.0, kernels=10.0)

    from benchmarks.gpu_parts import steps

    monkeypatch.setattr(steps, "step_time", fake_step_time)
    monkeypatch.setattr(gpu, "FUSES_CONV_RELU_POOL", True)  # whatever the defaults become
    monkeypatch.setattr(gpu, "DIRECT_CONV_MAX_TAPS", 27)
    lines: list[str] = []
    results: dict = {}
    sizes = gpu_check.StepSizes(batches=(64,))
    gpu_check.step_timings(lines, results, sizes)
    gpu_check.step_timings(lines, results, sizes, fused=True)
    assert seen == [(v, False, 0) for v in gpu_check.STEP_VARIANTS] + [
        ("gpucnn eager", True, 0),
        ("gpucnn graph", True, 0),
        ("gpucnn eager", False, 9),
        ("gpucnn graph", False, 9),
    ]
    assert (gpu.FUSES_CONV_RELU_POOL, gpu.DIRECT_CONV_MAX_TAPS) == (True, 27)  # put back
    rows = [
        cells(line) for line in lines if line.startswith(("| gpucnn graph f", "| gpucnn graph d"))
    ]
    assert rows == [
        ["gpucnn graph fused", "64", "2.000", "100", "10.0", "1.50", ""],
        ["gpucnn graph direct conv1", "64", "1.500", "100", "10.0", "2.00", ""],
    ]
    assert results["gpu_us_b64"] == 100.0 and results["torch_gpu_us_b64"] == 100.0


def test_profile_segments_are_split_at_the_marker_kernels():
    m = kernel_bench.MARKER
    events = [  # (name, start, duration us), out of order as a profile may list them
        ("gemm_tile_kernel", 5.0, 3.0),
        (f"cudapy::{m}(Array<int, 1>)", 0.0, 1.0),
        ("Memset (Device)", 2.0, 0.5),
        (f"_ZN6cudapy{m}E", 10.0, 1.0),
        ("sgemm", 11.0, 4.0),
    ]
    assert kernel_bench.split_segments(events, 2) == [(2, 3.5), (1, 4.0)]
    with pytest.raises(ValueError, match="2 markers for 3 segments"):
        kernel_bench.split_segments(events, 3)


def test_cupti_says_why_it_cannot_profile_here():
    if kernel_bench.cupti_available() is None:
        pytest.skip("CUPTI works here")
    with pytest.raises(RuntimeError):
        kernel_bench.cupti_segments([("x", lambda: None)])


# -- (c) epochs, the summary line and the run ------------------------------------------------


def test_the_epoch_part_reports_each_library_and_fills_the_summary():
    x, y = gpu_check.synthetic_data(2, TINY_STEPS)
    xt, yt = gpu_check.synthetic_data(4, TINY_STEPS, seed=1)
    lines: list[str] = []
    results: dict = {}
    gpu_check.epochs_b64(lines, results, (x, y, xt, yt), TINY_STEPS, 1, 1, batch=2)
    rows = {cells(line)[0]: cells(line) for line in lines if line.startswith("| ")}
    assert rows["gpucnn"][1] == "graph (default)"
    assert re.fullmatch(NUMBER, rows["PyTorch eager"][3])
    assert results["epoch_s_b64"] > 0 and results["torch_eager_epoch_s_b64"] > 0
    if TORCH_DEVICE == "cpu":
        assert rows["PyTorch graph"][-1].startswith("failed: RuntimeError")
        assert results["torch_graph_epoch_s_b64"] is None
    else:
        assert results["torch_graph_epoch_s_b64"] > 0


def test_the_fast_preset_part_runs_the_recipe_in_both_libraries():
    """On the CPU backend (the simulator would take minutes over the seed model): the same
    glue as on a GPU, the preset's config with a small limit."""
    pytest.importorskip("torch")
    from gpucnn.train.config import TrainConfig

    config = TrainConfig.preset("fast", device="cpu", limit=600)
    sizes = gpu_check.StepSizes(torch_device="cpu")
    x, y = gpu_check.synthetic_data(600, sizes)
    xt, yt = gpu_check.synthetic_data(100, sizes, seed=1)
    lines: list[str] = []
    results: dict = {}
    gpu_check.fast_preset(lines, results, (x, y, xt, yt), sizes=sizes, config=config)
    rows = {cells(line)[0]: cells(line) for line in lines if line.startswith("| ")}
    ours, theirs = rows["gpucnn (recipe)"], rows["PyTorch eager"]
    assert ours[1] == "eager: CUDA graphs need the cuda device, not cpu"
    for row in (ours, theirs):
        assert len(row[2].split(", ")) == 2 and len(row[5].split(", ")) == 2, row  # 2 epochs
        assert row[4] == "not in 2"  # random labels: 99% is out of reach
    assert "588 training images (2% held out)" in "\n".join(lines)
    assert results["fast_time_to_99_s"] is None and results["torch_fast_time_to_99_s"] is None


def test_an_epoch_run_knows_its_steady_epoch_and_its_time_to_a_target():
    run = gpu_check.EpochRun("x", "eager", times=[3.0, 1.0, 1.5], accs=[0.98, 0.991, 0.995])
    assert run.steady() == 1.0
    assert run.time_to(0.99) == (4.0, 2)
    assert run.time_to(0.999) is None
    assert gpu_check.EpochRun("y", "").steady() is None


SUMMARY = re.compile(
    r"summary: epoch_s_b64=(\S+) torch_eager_epoch_s_b64=(\S+) torch_graph_epoch_s_b64=(\S+) "
    r"gpu_us_b64=(\S+) torch_gpu_us_b64=(\S+) fast_time_to_99_s=(\S+) "
    r"torch_fast_time_to_99_s=(\S+)"
)


def test_the_summary_line_has_every_key_and_n_a_for_what_is_missing():
    assert SUMMARY.fullmatch(gpu_check.summary_line({}))
    assert set(SUMMARY.fullmatch(gpu_check.summary_line({})).groups()) == {"n/a"}
    line = gpu_check.summary_line(
        {
            "epoch_s_b64": 1.234,
            "gpu_us_b64": 512.6,
            "torch_gpu_us_b64": float("nan"),
            "fast_time_to_99_s": 7.0,
            "torch_eager_epoch_s_b64": None,
        }  # fmt: skip
    )
    assert SUMMARY.fullmatch(line).groups() == (
        "1.23", "n/a", "n/a", "513", "n/a", "7.00", "n/a"
    )  # fmt: skip


def test_the_report_ends_with_the_summary_when_parts_are_skipped_or_fail(tmp_path):
    run = ["--out", str(tmp_path), "--parts", "a,t", "--budget-s", "0"]
    assert gpu_check.main(run, started=time.perf_counter()) == 1
    text = (tmp_path / "gpu-check.md").read_text()
    assert "## (a) CUDA vs CPU agreement: skipped" in text and "## (t) kernel tests" in text
    assert SUMMARY.fullmatch(text.splitlines()[-1])
    out = tmp_path / "failing"
    args = ["--out", str(out), "--parts", "c,p", "--data-dir", str(tmp_path / "none")]
    assert gpu_check.main([*args, "--budget-s", "1000"], started=time.perf_counter()) == 1
    text = (out / "gpu-check.md").read_text()
    assert "## part (c) failed" in text and "## part (p) failed" in text
    assert "_part (c):" in text
    assert SUMMARY.fullmatch(text.splitlines()[-1])


# -- kernels.py --device cuda ----------------------------------------------------------------


def test_the_kernel_table_times_every_op_of_the_step_against_its_reference():
    pytest.importorskip("torch")
    shapes = kernel_bench.SeedShapes(image=4, c1=2, c2=2, hidden=3, classes=3)
    rows = kernel_bench.cuda_rows(
        (2,), repeat=1, warmup=0, shapes=shapes, torch_device=TORCH_DEVICE, echo=False
    )
    assert rows[:2] == kernel_bench.CUDA_HEADER
    body = [cells(r) for r in rows[2:] if not r.startswith("| (")]
    names = [c[0] for c in body]
    for what in ("conv1 1→2", "conv1 1→2 3x3 p1 (4x4) direct fwd", "conv2 2→2",
                 "bwd (dx, dw, db)", "bwd (dw, db; no dx)",
                 "maxpool 2x2/2 (2x4x4) fwd", "maxpool 3x3/2 pad 1", "ReLU", "softmax",
                 "BatchNorm2d train", "block 1:", "block 2:", "fused", "unfused"):  # fmt: skip
        assert any(what in n for n in names), what
    gemms = [c for c in body if c[-1] == "cuBLAS (CuPy)"]
    assert len(gemms) == 11  # every GEMM of the seed step
    assert len(body) == 3 * 2 + 3 * 2 + 2 + 1 + 2 + 8 + 11
    for c in body:  # batch, ratio (n/a where a reference took no time), event us
        assert c[1] == "2" and re.fullmatch(NUMBER + "|n/a", c[4]), c
        assert re.fullmatch(NUMBER, c[6]) and re.fullmatch(NUMBER, c[7]), c


def test_the_doctor_part_reports_the_doctor_and_writes_its_json(tmp_path):
    """Part (o) runs the doctor in its own process (here on the CPU only: a subprocess has no
    stand-in CuPy), its report in the lines and its JSON beside the report."""
    import json

    lines: list[str] = []
    ok = gpu_check.doctor_on_gpu(lines, tmp_path, ("--device", "cpu", "--no-timing"))
    assert ok, "\n".join(lines)
    text = "\n".join(lines)
    assert lines[0] == "## (o) python -m gpucnn.doctor --device cpu --no-timing"
    assert "\ndoctor: ok (exit 0): cpu " in text and "exit status 0 in " in text
    assert json.loads((tmp_path / "doctor.json").read_text())["exit_code"] == 0
