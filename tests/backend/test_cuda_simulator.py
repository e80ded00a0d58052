"""Run the CUDA kernel tests in Numba's simulator (a subprocess: the variable must be set
before numba is imported).

The simulator runs every GPU thread as a Python thread, so this folder is the suite's longest
part (about 7 minutes on 2 cores). tests/conftest.py starts it in the background as soon as
the suite is collected (at a lower CPU priority, so the timed tests beside it keep their
core) and runs this test last, where it waits for the result: the two halves of the suite
overlap instead of adding up. Run on its own, the test starts the subprocess itself. It is
marked slow: ``pytest -m "not slow"`` leaves it out, CI runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 1500  # from its start; it takes ~7 minutes alone, more beside the rest of the suite
IN_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

_run: subprocess.Popen | None = None
_log = None
_started = 0.0


# The child lowers its own priority and asks to die with this process (Linux prctl
# PR_SET_PDEATHSIG) before it runs pytest: done in the child itself, not in a preexec_fn,
# which is unsafe in a process that may have threads by now.
CHILD = """
import ctypes, os, signal, sys
try:
    os.nice(10)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
except (OSError, AttributeError, TypeError):  # not Linux: neither is needed for the result
    pass
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "tests/backend/sim"]))
"""


def start() -> None:
    """Start the simulator's run of tests/backend/sim in the background (once)."""
    global _run, _log, _started
    if _run is not None or IN_SIMULATOR:
        return
    _log, _started = tempfile.TemporaryFile(mode="w+"), time.monotonic()
    _run = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        cwd=ROOT,
        env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": str(ROOT)},
        stdout=_log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop() -> None:
    """End the run if it is still going (the suite was interrupted or deselected it)."""
    if _run is not None and _run.poll() is None:
        _run.kill()
        _run.wait()


@pytest.mark.slow
@pytest.mark.skipif(IN_SIMULATOR, reason="in the simulator: tests/backend/sim runs directly")
def test_cuda_kernels_agree_with_the_cpu_in_the_simulator():
    start()
    try:
        rc = _run.wait(timeout=max(1.0, _started + TIMEOUT_S - time.monotonic()))
    except subprocess.TimeoutExpired:
        stop()
        rc = None
    _log.seek(0)
    out = _log.read()
    assert rc == 0, f"exit status {rc}\n" + out[-7000:]
    assert " passed" in out and " failed" not in out
