"""Parts (a), (o) and (t) of benchmarks/gpu_check.py: CUDA vs CPU agreement, the doctor, and the
kernel tests on a GPU."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.gpu_parts.common import Sizes


def check_agreement(lines: list[str], sizes: Sizes = Sizes()) -> bool:  # noqa: B008
    """Every CUDA kernel family against its CPU twin, and the model's loss and gradients (the
    checks of ``python -m gpucnn.doctor``, gpucnn.doctor.agreement) at ``sizes``: the seed
    model's shapes at batch 64 by default. Appends the table to ``lines``; True when all pass."""
    from gpucnn.backend import get_backend
    from gpucnn.doctor import agreement

    backend = get_backend("cuda")
    rows = agreement.kernel_rows(backend, sizes) + agreement.model_rows(backend, sizes)
    lines += [
        "## (a) CUDA vs CPU agreement",
        "",
        "max |CUDA - CPU| / max(1, max |CPU|) per kernel (tolerance "
        f"{agreement.KERNEL_TOL:.0e}); the model's loss (absolute) and gradients (relative to "
        "their largest entry)",
        "",
        "| family | check | diff | tolerance | ok |",
        "|---|---|---:|---:|---|",
    ]
    lines += [f"| {r.family} | {r.name} | {r.diff:.2e} | {r.tol:.0e} | {r.ok} |" for r in rows]
    lines.append("")
    return all(r.ok for r in rows)


def doctor_on_gpu(
    lines: list[str], out_dir: Path, args: tuple[str, ...] = (), timeout: float = 120
) -> bool:
    """``python -m gpucnn.doctor`` in its own process (a fresh self-check state, its own exit
    status and time): its text report in the lines, then ``--json --no-timing`` into
    ``out_dir/doctor.json``. True when both exit 0."""
    import json
    import os
    import subprocess
    import time

    root = Path(__file__).resolve().parents[2]
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "gpucnn.doctor", *args]

    def run(*extra: str) -> tuple[subprocess.CompletedProcess, float]:
        t0 = time.perf_counter()
        out = subprocess.run(
            [*cmd, *extra], cwd=root, env=env, capture_output=True, text=True,
            timeout=max(1.0, timeout),
        )  # fmt: skip
        return out, time.perf_counter() - t0

    lines += [f"## (o) python -m gpucnn.doctor {' '.join(args)}".rstrip(), ""]
    try:
        text, seconds = run()
        found, _ = run("--json", "--no-timing")
    except subprocess.TimeoutExpired as exc:
        lines += [f"stopped after {exc.timeout:.0f} s", ""]
        return False
    lines += ["```", *text.stdout.strip().splitlines()[-120:], "```", ""]
    if not text.stdout.strip():
        lines += [f"exit {text.returncode}, no report:", "```", text.stderr[-2000:], "```", ""]
    try:
        (out_dir / "doctor.json").write_text(json.dumps(json.loads(found.stdout), indent=1))
    except ValueError:
        lines += ["--json gave no JSON object:", "```", found.stderr[-1500:], "```", ""]
        return False
    lines += [
        f"exit status {text.returncode} in {seconds:.1f} s (--json --no-timing: exit "
        f"{found.returncode}, in doctor.json)",
        "",
    ]
    return text.returncode == 0 and found.returncode == 0


def kernel_tests_on_gpu(lines: list[str], timeout: float = 300) -> bool:
    """tests/backend/sim once more, on the real GPU with CuPy arrays (no simulator)."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1"}
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    lines += ["## (t) kernel tests on the GPU", ""]
    # one line of dots per file: what a run stopped at the budget got through shows
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--durations=5"]
    try:
        out = subprocess.run(
            [*cmd, "tests/backend/sim"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=max(1.0, timeout),
        )
    except subprocess.TimeoutExpired as exc:  # what it had printed, then the rest still runs
        text = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        lines += [f"stopped after {timeout:.0f} s (the budget); its output so far:", "```"]
        lines += [text[-2000:], "```", ""]
        return False
    except Exception as exc:  # no pytest: report it, the other parts still run
        lines += [f"not run: {exc}", ""]
        return False
    tail = (out.stdout.strip().splitlines() or ["(no output)"])[-1]
    lines += [f"`pytest tests/backend/sim` with CuPy arrays, no simulator: {tail}", ""]
    if out.returncode != 0:
        lines += ["```", out.stdout[-3000:], out.stderr[-1000:], "```", ""]
    else:  # the slowest tests
        lines += ["```", *out.stdout.strip().splitlines()[-9:], "```", ""]
    return out.returncode == 0
