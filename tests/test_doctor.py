"""``python -m gpucnn.doctor`` on this CPU, for real: a subprocess with its sections, the summary
line last and exit status 0; --json; exit 2 for --device cuda without a GPU; a CPU kernel made
wrong is a failed check with exit status 1; the known traps are named with their fixes from
what the machine reports; the console script is declared. (Its CUDA part runs in the simulator:
tests/backend/sim/test_doctor_cuda.py.)"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from gpucnn import doctor, nn
from gpucnn.backend import cpu, devices

ROOT = Path(__file__).resolve().parents[1]


def _cuda_available() -> bool:
    from gpucnn.backend import _cuda_missing

    return _cuda_missing() is None


def _doctor(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "gpucnn.doctor", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return out, time.perf_counter() - t0


def tiny_model():
    g = np.random.default_rng(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, rng=g), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(2 * 3 * 3, 4, rng=g),
    )  # fmt: skip


def test_the_doctor_checks_this_machine_and_exits_0():
    out, seconds = _doctor("--seconds", "0.3")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    text = out.stdout
    for section in ("versions", "devices", "known traps", "checks on cpu", "training step on cpu"):
        assert f"\n{section}" in text, section
    for name in ("numpy", "numba", "numba-cuda", "cupy", "cuda driver", "blas", "prefect"):
        assert f"\n  {name} " in text, name
    assert "--device auto picks " in text
    for trap in ("NumPy >= 2.5 with numba-cuda", "CuPy for the wrong CUDA major", "no NVIDIA"):
        assert trap in text
    assert "FAIL" not in text
    assert "captured step vs eager step" in text
    assert "\n  gpucnn " in text and "ms/step" in text
    if importlib.util.find_spec("torch") is not None:
        assert "\n  PyTorch " in text and "gpucnn takes" in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("doctor: ok (exit 0): cpu ") and " checks passed, step " in last
    assert seconds < 60, f"the doctor took {seconds:.0f} s"


@pytest.fixture(scope="module")
def cpu_report():
    """The doctor's checks of this CPU, in this process (no timing: the CLI test times)."""
    return doctor.run("cpu", step_model=tiny_model, step_batch=4, step_image=(1, 6, 6),
                      timing=False)  # fmt: skip


def test_json_output_is_one_object_with_the_same_findings(cpu_report, monkeypatch, capsys):
    monkeypatch.setattr(doctor, "run", lambda *args, **kw: cpu_report)
    assert doctor.main(["--json", "--device", "cpu", "--no-timing"]) == 0
    report = json.loads(capsys.readouterr().out)  # stdout holds the JSON object and nothing else
    assert report["exit_code"] == 0 and report["checked"] == ["cpu"]
    assert report["versions"]["numpy"] == np.__version__
    assert report["auto"]["device"] in ("cpu", "cuda") and report["auto"]["why"]
    assert {t["name"] for t in report["traps"]} >= {"no NVIDIA driver"}
    families = {c["family"] for c in report["checks"] if c["ok"]}
    assert families >= {"window", "pool", "direct", "gemm", "fused", "elementwise", "batchnorm",
                        "optim", "batch"}  # fmt: skip
    assert not [c for c in report["checks"] if c["ok"] is False]
    assert report["summary"] == cpu_report.summary and report["summary"].startswith("doctor: ok")


@pytest.mark.skipif(_cuda_available(), reason="a GPU is here: --device cuda has work to do")
def test_asking_for_cuda_without_a_gpu_exits_2_saying_why():
    out, _ = _doctor("--device", "cuda", "--no-timing")
    assert out.returncode == 2, out.stdout[-2000:]
    assert "\nnothing to check: cuda is unavailable: " in out.stdout
    assert "checks on" not in out.stdout
    assert out.stdout.strip().splitlines()[-1].startswith("doctor: NOTHING CHECKED (exit 2)")


@pytest.mark.parametrize("verbose", [False, True])
def test_passed_checks_are_one_line_and_each_is_listed_with_verbose(verbose):
    lines: list[str] = []
    report = doctor.run(
        "cpu", step_model=tiny_model, step_batch=4, step_image=(1, 6, 6), timing=False,
        say=lines.append, verbose=verbose,
    )  # fmt: skip
    section = lines[lines.index("checks on cpu (kernels against float64 NumPy and the formulas "
                                "run as Python)") + 1 :]  # fmt: skip
    passed = [c for c in report.checks if c.ok and c.family != "graph"]
    listed = [line for line in section if line.startswith("  ok    ") and ": " in line]
    assert "captured step vs eager step" in "\n".join(section)  # a verdict: always its line
    if verbose:
        assert len(listed) == len(passed) and "(tolerance " in listed[0]
    else:
        assert listed == []
        assert (
            section[0]
            == f"  ok    {len(passed)} checks agree with their references within tolerance"
        )
        assert "window 6" in section[1] and "each with its error: -v" in " ".join(section[1:3])
        assert len(section) <= 5


def test_a_cpu_kernel_that_disagrees_is_a_failed_check(monkeypatch, capsys):
    real = cpu.relu_fwd
    monkeypatch.setattr(cpu, "relu_fwd", lambda x: real(x) + np.float32(1e-3))
    report = doctor.run(
        "cpu", step_model=tiny_model, step_batch=4, step_image=(1, 6, 6), timing=False
    )
    failed = report.failed()
    assert failed[0].name.startswith("relu fwd") and failed[0].family == "elementwise"
    assert {c.family for c in failed} <= {"elementwise", "model"}  # ReLU's users, nothing else
    assert report.exit_code == 1 and f"cpu FAILED {len(failed)} of" in report.summary
    monkeypatch.setattr(doctor, "run", lambda *a, **k: report)
    assert doctor.main(["--device", "cpu"]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == report.summary


def test_the_known_traps_are_named_with_their_fixes(monkeypatch):
    monkeypatch.setattr(devices, "cupy_wheels", lambda: {"cupy-cuda13x": "13.6.0"})
    monkeypatch.setattr(devices, "driver_cuda_version", lambda: (12, 4))
    dists = {"numba-cuda": "0.20.0"}
    monkeypatch.setattr(devices, "_dist_version", dists.get)
    monkeypatch.delenv("CUPY_TF32", raising=False)
    monkeypatch.setattr(devices.np, "__version__", "2.5.0")
    traps = {t.name: t for t in devices.traps()}
    numpy_trap = traps["NumPy >= 2.5 with numba-cuda"]
    assert numpy_trap.found and "row_stack" in numpy_trap.seen and "numpy<2.5" in numpy_trap.fix
    wheel = traps["CuPy for the wrong CUDA major version"]
    assert wheel.found and "cupy-cuda13x (CUDA 13), driver supports CUDA 12.4" == wheel.seen
    assert "gpucnn[gpu-cuda12]" in wheel.fix
    assert traps["no NVIDIA driver"].found is False
    monkeypatch.setattr(devices, "driver_cuda_version", lambda: None)
    monkeypatch.setattr(devices.np, "__version__", "2.4.1")
    traps = {t.name: t for t in devices.traps()}
    assert traps["no NVIDIA driver"].found and "nvidia-smi" in traps["no NVIDIA driver"].fix
    assert traps["NumPy >= 2.5 with numba-cuda"].found is False
    monkeypatch.setattr(
        devices, "cupy_wheels", lambda: {"cupy-cuda12x": "13", "cupy-cuda13x": "13"}
    )
    assert "several CuPy wheels" in {t.name: t for t in devices.traps()}[wheel.name].seen
    monkeypatch.setenv("CUPY_TF32", "1")
    assert {t.name: t for t in devices.traps()}["CUPY_TF32 set"].found
    monkeypatch.setattr(devices, "cupy_wheels", dict)
    monkeypatch.setattr(devices, "_dist_version", {}.get)
    assert [t.found for t in devices.traps()] == [None] * 4  # a CPU-only machine


def test_help_explains_and_the_console_script_is_declared():
    out, _ = _doctor("--help")
    text = " ".join(out.stdout.split())
    assert out.returncode == 0 and "Exit status: 0 all checks passed, 1 a check failed" in text
    assert "--device {all,auto,cpu,cuda}" in text and "--json" in text and "--verbose" in text
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts["gpucnn-doctor"].partition(":")
    assert (module, func) == ("gpucnn.doctor", "main")
    assert doctor.main is getattr(__import__(module, fromlist=[func]), func)


def test_importing_the_doctor_imports_no_gpu_stack_torch_or_prefect():
    code = (
        "import sys, gpucnn.doctor; "
        "print([m for m in ('cupy', 'numba.cuda', 'torch', 'prefect') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
