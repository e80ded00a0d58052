"""The backend seam: device names, the CPU backend, and honest CUDA errors."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

from gpucnn.backend import (
    CPU,
    BackendUnavailableError,
    backend_of,
    get_backend,
    to_device,
    to_host,
)


def test_cpu_backend():
    be = get_backend("cpu")
    assert be.name == "cpu" and be.xp is np
    assert backend_of(np.zeros(3)) is CPU


def test_auto_picks_cpu_without_a_gpu_and_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="gpucnn"):
        assert get_backend("auto") is CPU
    assert "picked cpu" in caplog.text


def test_cuda_without_a_gpu_names_what_is_missing():
    with pytest.raises(BackendUnavailableError, match=r"device 'cuda' is unavailable: \w+"):
        get_backend("cuda")


def test_unknown_device():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        get_backend("tpu")


def test_to_device_and_to_host_on_the_cpu():
    a = np.arange(4.0)
    assert to_device(a, "cpu") is a
    assert to_host(a) is a
    np.testing.assert_array_equal(to_host([1, 2]), [1, 2])


def test_import_needs_numpy_alone():
    """`import gpucnn` pulls in no GPU library, no Prefect and no torch."""
    code = (
        "import sys, gpucnn, gpucnn.models, gpucnn.optim; "
        "bad = [m for m in ('cupy', 'numba.cuda', 'prefect', 'torch', 'requests') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_numba_cuda_that_needs_an_older_numpy_names_the_fix(monkeypatch):
    from gpucnn.backend import numba_cuda

    def broken():
        raise AttributeError("module 'numpy' has no attribute 'row_stack'")

    monkeypatch.setattr(numba_cuda, "_import_cuda", broken)
    with pytest.raises(BackendUnavailableError, match=r"needs numpy<2.5; pip install 'numpy<2.5'"):
        numba_cuda.load()


def test_every_cuda_kernel_file_takes_numba_cuda_from_one_module():
    from pathlib import Path

    import gpucnn.backend

    folder = Path(gpucnn.backend.__file__).parent
    for path in (folder / "cuda").glob("*.py"):
        text = path.read_text()
        assert "from numba import cuda" not in text and "import numba.cuda" not in text, path


def test_a_run_says_once_what_auto_picked_and_its_memory_setting_only_when_debugging():
    """A run resolves "auto" for its training and again for its evaluation: one line says what
    was picked. The CPU's memory setting is a detail for debugging, not a line of every run."""
    code = (
        "import logging\n"
        "logging.basicConfig(format='%(message)s')\n"
        "logging.getLogger('gpucnn').setLevel(logging.{level})\n"
        "from gpucnn.backend import get_backend\n"
        "for _ in range(2):\n"
        "    get_backend('auto').prepare()\n"
    )
    said = {}
    for level in ("INFO", "DEBUG"):
        out = subprocess.run(
            [sys.executable, "-c", code.format(level=level)], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        said[level] = out.stderr.splitlines()
    assert sum(line.startswith("device 'auto' picked") for line in said["INFO"]) == 1, said
    assert not any("memory" in line or "malloc" in line for line in said["INFO"]), said
    if sys.platform.startswith("linux") and get_backend("auto") is CPU:
        assert any(
            line.startswith("memory: freed blocks up to 32 MiB stay in this process")
            for line in said["DEBUG"]
        ), said
