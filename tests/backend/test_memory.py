"""keep_freed_memory: after it, a loop that allocates and frees the same large arrays stops
faulting its pages in on every round. Each check runs in a fresh process (the setting is
process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import resource, sys
import numpy as np
from gpucnn import functional as F
from gpucnn.backend.cpu.memory import keep_freed_memory

g = np.random.default_rng(0)
x = g.standard_normal((32, 1, 28, 28)).astype(np.float32)  # the seed model's first conv
w = g.standard_normal((32, 1, 3, 3)).astype(np.float32)
b = np.zeros(32, np.float32)

def faults_per_call():
    for _ in range(3):
        F.conv2d_forward(x, w, b, 1, 1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        F.conv2d_forward(x, w, b, 1, 1)  # frees its 3.2 MB output and columns each time
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20

default = faults_per_call()
kept = keep_freed_memory()
print(kept, default, faults_per_call())
"""


def probe(**env: str) -> tuple[bool, float, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    kept, default, after = out.stdout.split()
    return kept == "True", float(default), float(after)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc setting")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    kept, default, after = probe()
    if not kept:
        pytest.skip("this libc has no mallopt (not glibc)")
    assert default > 500  # glibc hands the output's pages back and faults them in again
    assert after < 0.05 * default


def test_it_can_be_turned_off():
    kept, _, _ = probe(GPUCNN_KEEP_FREED_MEMORY="0")
    assert kept is False
