"""Real processes for the tests: a run folder held by another process, and the environment of
a deterministic training subprocess."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# one thread everywhere: a killed-and-resumed run ends bit-identical to an uninterrupted one
DETERMINISTIC_ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}


@contextlib.contextmanager
def folder_held_elsewhere(path: Path) -> Iterator[subprocess.Popen]:
    """Another process holding the run folder ``path`` (gpucnn.train.runs) until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import time\nfrom gpucnn.train.runs import RunFolder\n"
         f"with RunFolder({str(path)!r}).claim():\n"
         "    print('held', flush=True); time.sleep(120)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
