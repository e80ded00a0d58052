"""The command lines as a user runs them, in real subprocesses, with a record of whether they
imported Prefect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Runs `python -m MODULE ARGS...` and, at its exit, writes the heavy modules it imported to a file
PROBE = (
    "import atexit, runpy, sys\n"
    "record = sys.argv.pop(1)\n"
    "def imported():\n"
    "    with open(record, 'w') as f:\n"
    "        f.write(' '.join(m for m in ('prefect', 'matplotlib', 'torch') if m in sys.modules))\n"
    "atexit.register(imported)\n"
    "sys.argv.pop(0)\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


class Ran(subprocess.CompletedProcess):
    imported: list[str]


def command(module: str, *args, tmp_path: Path, env: dict | None = None, timeout: float = 300):
    """Run ``python -m module args`` (PREFECT_HOME in ``tmp_path``); the result's ``imported``
    lists which of prefect, matplotlib and torch it imported."""
    record = tmp_path / f"imported-{os.getpid()}-{len(list(tmp_path.glob('imported-*')))}"
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(record), module, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), **(env or {})},
    )
    out.imported = record.read_text().split() if record.exists() else ["(no record)"]
    return out
