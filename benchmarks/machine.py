"""What a benchmark ran on: printed at the top of every results file."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe() -> str:
    import numba
    import numpy

    parts = [
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} "
        f"{platform.machine()}",
        f"- python {platform.python_version()}, numpy {numpy.__version__}, "
        f"numba {numba.__version__}",
    ]
    try:
        import torch

        parts.append(f"- torch {torch.__version__} ({torch.get_num_threads()} threads)")
    except ImportError:
        pass
    threads = {
        k: os.environ[k]
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
        if k in os.environ
    }
    if threads:
        parts.append(f"- thread settings: {threads}")
    argv = ["python", *sys.argv]
    parts.append(f"- command: `{' '.join(shlex.quote(a) for a in argv)}`")
    return "\n".join(parts)
