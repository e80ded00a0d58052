"""Kill a run with SIGKILL mid-epoch, resume it from its last checkpoint, and get the same
weights, bit for bit, as a run that was never interrupted (CPU, fixed threads)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpucnn.train import load_checkpoint
from tests.processes import DETERMINISTIC_ENV

ROOT = Path(__file__).resolve().parents[2]
ENV = DETERMINISTIC_ENV
EPOCHS = 4


def run(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.train.resume_script", str(out), str(EPOCHS), *extra],
        cwd=ROOT,
        env=ENV,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    straight = tmp_path / "straight"
    p = run(straight)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()

    killed = tmp_path / "killed"
    p = run(killed)
    deadline = time.time() + 300
    while not (killed / "last.npz").exists():
        assert p.poll() is None, p.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.005)
    time.sleep(0.2)  # into the next epoch
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    assert not (killed / "final.npz").exists()
    done = load_checkpoint(killed / "last.npz").epoch
    assert 1 <= done < EPOCHS

    p = run(killed, "--resume")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()

    a, b = np.load(straight / "final.npz"), np.load(killed / "final.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert float(a["lr"]) < 3e-3  # the plateau scheduler did act, and its state was restored
