"""``python -m gpucnn.doctor`` (or ``gpucnn-doctor``): the command to run first on a new machine.

It says what the machine offers gpucnn and whether gpucnn computes right on it, like
``numba -s`` or PyTorch's ``collect_env``, in sections:

1. versions: Python, NumPy, Numba, numba-cuda, CuPy, the CUDA driver and runtime, the BLAS and
   its threads, Prefect and PyTorch (when installed);
2. devices: the CPU, each CUDA device, and what ``--device auto`` picks and why;
3. known traps, each with its fix: NumPy >= 2.5 beside numba-cuda, a CuPy wheel for the wrong
   CUDA major version (or two), CUPY_TF32 (cuBLAS in TF32), no NVIDIA driver;
4. checks on each device asked for: every kernel family at small shapes against its reference
   (gpucnn.doctor.agreement: the CPU twin for CUDA, float64 NumPy for the CPU), a model's
   loss and gradients, one captured CUDA-graph step against the eager step, and the kernel
   paths' own checks (gpucnn.backend.cuda.selfcheck);
5. a seed-model training step timed for ~2 s, PyTorch's beside it when installed;

and one summary line last. The checks that passed within their tolerances are counted in
one line per device; ``-v`` (``--verbose``) lists each with its error and tolerance. Failed
and skipped checks, the captured step and the kernel paths are always listed. Exit status: 0
all checks passed, 1 a check failed (or, for a CUDA device asked for, a trap was found), 2
nothing to check on the device asked for (no GPU with ``--device cuda``). ``--json`` prints
one JSON object instead, every check in it. Typical time: under 20 s on a CPU, under a
minute on a GPU (Numba compiles each kernel once and caches it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

from gpucnn.doctor.agreement import SMALL, Sizes

DEVICES = ("all", "auto", "cpu", "cuda")

__all__ = ["Check", "Report", "main", "run"]


@dataclasses.dataclass(frozen=True)
class Check:
    """One check on one device: ``ok`` True, False, or None (skipped; ``detail`` says why)."""

    device: str
    family: str
    name: str
    ok: bool | None
    detail: str


@dataclasses.dataclass
class Report:
    """Everything the doctor found; ``summary`` is its last line and ``exit_code`` its status."""

    versions: dict[str, Any]
    devices: list[dict[str, Any]]
    auto: dict[str, str]
    traps: list[dict[str, Any]]
    asked: str
    checked: list[str] = dataclasses.field(default_factory=list)
    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)
    checks: list[Check] = dataclasses.field(default_factory=list)
    timings: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    summary: str = ""
    exit_code: int = 0

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["checks"] = [dataclasses.asdict(c) for c in self.checks]
        return out


def _devices_to_check(asked: str, cuda_why: str | None) -> tuple[list[str], dict[str, str]]:
    unavailable = {} if cuda_why is None else {"cuda": cuda_why}
    if asked == "cpu":
        return ["cpu"], {}
    if asked == "cuda":
        return ([] if cuda_why else ["cuda"]), unavailable
    if asked == "auto":
        return (["cpu"] if cuda_why else ["cuda"]), unavailable
    return ["cpu"] + ([] if cuda_why else ["cuda"]), unavailable


def run(
    device: str = "all",
    seconds: float = 2.0,
    sizes: Sizes = SMALL,
    step_model: Callable[[], Any] | None = None,
    step_batch: int = 64,
    step_image: tuple = (1, 28, 28),
    timing_batches: int | None = None,
    timing: bool = True,
    say: Callable[[str], None] | None = None,
    verbose: bool = False,
) -> Report:
    """Run the doctor's sections for ``device`` ("all" devices found, "auto", "cpu" or
    "cuda") and return the Report (``say`` gets each section's lines as they are ready).

    ``seconds`` is each timing's length (0: one timed epoch); ``sizes`` the kernel checks'
    shapes and model; ``step_model``, ``step_batch`` and ``step_image`` what the captured step
    and the timing train (default: the seed model at batch 64 on 28×28 images), and
    ``timing_batches`` the steps of a timed epoch (default 32 on CUDA, 2 on a CPU);
    ``timing=False`` leaves the timing out; ``verbose`` says a line per check that passed
    (else one line counts them).
    """
    from gpucnn.backend import _cuda_missing, devices, get_backend

    if device not in DEVICES:
        raise ValueError(f"doctor: unknown device {device!r}; expected one of {DEVICES}")
    say = say or (lambda line: None)
    started = time.perf_counter()
    picked, why = devices.auto_choice()
    report = Report(
        versions=devices.versions(),
        devices=[devices.cpu_device(), *devices.cuda_devices()],
        auto={"device": picked, "why": why},
        traps=[{**dataclasses.asdict(t), "status": t.status} for t in devices.traps()],
        asked=device,
    )
    for line in _header_lines(report):
        say(line)
    report.checked, report.unavailable = _devices_to_check(device, _cuda_missing())
    for name in report.checked:
        backend = get_backend(name)
        before = len(report.checks)
        _device_checks(report, backend, sizes, step_model, step_batch, step_image)
        for line in _check_lines(report.checks[before:], name, verbose):
            say(line)
        if not timing:
            continue
        report.timings[name] = dataclasses.asdict(
            _timing(backend, seconds, step_model, step_batch, step_image, timing_batches)
        )
        for line in _timing_lines(name, report.timings[name], step_batch, seconds):
            say(line)
    report.seconds = time.perf_counter() - started
    report.exit_code = _exit_code(report)
    report.summary = _summary(report)
    return report


def _timing(backend, seconds, step_model, step_batch, step_image, batches):
    from gpucnn.doctor import step

    try:
        return step.step_timing(backend, seconds, step_model, step_batch, step_image, batches)
    except Exception as exc:  # a timing that cannot run is reported, never fatal
        return step.Timing(note=f"failed: {type(exc).__name__}: {exc}")


def _device_checks(report, backend, sizes, step_model, step_batch, step_image) -> None:
    from gpucnn.doctor import agreement, step

    name = backend.name
    for part in (agreement.kernel_rows, agreement.model_rows):
        try:
            rows = part(backend, sizes)
        except Exception as exc:  # a crash in a check is that check failing, not the doctor
            report.checks.append(Check(name, part.__name__, "crashed", False, _error(exc)))
            continue
        for r in rows:
            detail = f"{r.diff:.1e} (tolerance {r.tol:.0e})"
            report.checks.append(Check(name, r.family, r.name, r.ok, detail))
        if part is agreement.model_rows and not rows:
            report.checks.append(
                Check(name, "model", "model vs PyTorch", None, "PyTorch is not installed")
            )
    try:
        result = step.captured_step(backend, step_model, step_batch, step_image)
        report.checks.append(
            Check(name, "graph", "captured step vs eager step", result.ok, result.detail)
        )
    except Exception as exc:
        report.checks.append(
            Check(name, "graph", "captured step vs eager step", False, _error(exc))
        )
    if name == "cuda":
        from gpucnn.backend.cuda import selfcheck

        for path in selfcheck.PATHS:
            seen = [v for v in selfcheck.CHECKS.verdicts() if v.path == path]
            off = [v for v in selfcheck.CHECKS.switched_off() if v.path == path]
            if off:
                report.checks.append(Check(name, "paths", f"{path} path", False, off[0].line()))
            elif seen:
                worst = max(v.error for v in seen)
                detail = f"agrees at {len(seen)} shapes (largest error {worst:.1e})"
                report.checks.append(Check(name, "paths", f"{path} path", True, detail))
            else:
                report.checks.append(
                    Check(name, "paths", f"{path} path", None, "not used by these checks")
                )


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _exit_code(report: Report) -> int:
    if not report.checked:
        return 2
    gpu_asked = report.asked in ("all", "cuda", "auto")
    traps_found = gpu_asked and any(t["found"] for t in report.traps)
    return 1 if report.failed() or traps_found else 0


def _summary(report: Report) -> str:
    parts = []
    for name in report.checked:
        mine = [c for c in report.checks if c.device == name]
        bad = [c for c in mine if c.ok is False]
        ran = [c for c in mine if c.ok is not None]
        if bad:
            parts.append(f"{name} FAILED {len(bad)} of {len(ran)} checks ({bad[0].name})")
        else:
            parts.append(f"{name} {len(ran)} checks passed")
        t = report.timings.get(name, {})
        if t.get("gpucnn_ms") is not None:
            torch_part = f", PyTorch {t['torch_ms']:.2f}" if t.get("torch_ms") else ""
            parts[-1] += f", step {t['gpucnn_ms']:.2f} ms{torch_part}"
    for name, why in report.unavailable.items():
        parts.append(f"{name} unavailable ({why})")
    found = [t["name"] for t in report.traps if t["found"]]
    parts.append(f"traps found: {', '.join(found)}" if found else "no known trap found")
    verdict = {0: "ok", 1: "PROBLEMS", 2: "NOTHING CHECKED"}[report.exit_code]
    return (
        f"doctor: {verdict} (exit {report.exit_code}): " + "; ".join(parts)
        + f"; {report.seconds:.1f} s"
    )  # fmt: skip


def _header_lines(report: Report) -> list[str]:
    width = max(len(k) for k in report.versions)
    lines = ["gpucnn doctor", "", "versions"]
    lines += [f"  {k:<{width}}  {v if v is not None else '-'}" for k, v in report.versions.items()]
    lines += ["", "devices"]
    for d in report.devices:
        rest = ", ".join(f"{k} {v}" for k, v in d.items() if k not in ("device", "name"))
        lines.append(f"  {d['device']:<7} {d['name']} ({rest})")
    if not any(d["device"].startswith("cuda") for d in report.devices):
        lines.append("  cuda    none")
    lines.append(f"  --device auto picks {report.auto['device']}: {report.auto['why']}")
    lines += ["", "known traps"]
    for t in report.traps:
        line = f"  {t['status']:<5}  {t['name']}: {t['seen']}"
        if t["found"]:
            line += f"\n         fix: {t['fix']}"
        lines.append(line)
    return lines


_AGAINST = {"cpu": "float64 NumPy and the formulas run as Python", "cuda": "the CPU kernels"}


# families whose checks are each a verdict in words (not an error against a tolerance)
_ALWAYS_SHOWN = ("graph", "paths")


def _check_lines(checks: list[Check], device: str, verbose: bool = False) -> list[str]:
    """The section of one device's checks: a line per check (``verbose``), or one line that
    counts those that passed within their tolerances and a line for each of the others."""
    lines = ["", f"checks on {device} (kernels against {_AGAINST.get(device, '?')})"]
    passed = [c for c in checks if c.ok and c.family not in _ALWAYS_SHOWN]
    if passed and not verbose:
        families: dict[str, int] = {}
        for c in passed:
            families[c.family] = families.get(c.family, 0) + 1
        counts = ", ".join(f"{family} {n}" for family, n in families.items())
        lines.append(f"  ok    {len(passed)} checks agree with their references within tolerance")
        lines += textwrap.wrap(
            f"({counts}; each with its error: -v)", 92, initial_indent=" " * 8,
            subsequent_indent=" " * 9,
        )  # fmt: skip
    for c in checks:
        if verbose or c not in passed:
            mark = {True: "ok", False: "FAIL", None: "--"}[c.ok]
            lines.append(f"  {mark:<4}  {c.family:<11} {c.name}: {c.detail}")
    return lines


def _timing_lines(device: str, t: dict[str, Any], batch: int, seconds: float) -> list[str]:
    lines = ["", f"training step on {device} (batch {batch}, Adam, ~{seconds:g} s each)"]
    if t["gpucnn_ms"] is None:
        return [*lines, f"  gpucnn   not timed: {t['note']}"]
    lines.append(
        f"  gpucnn   {t['gpucnn_ms']:8.2f} ms/step  ({1e3 * batch / t['gpucnn_ms']:.0f} img/s, "
        f"{t['steps']} steps, {t['how']})"
    )
    if t["torch_ms"] is not None:
        ratio = t["gpucnn_ms"] / t["torch_ms"]
        lines.append(
            f"  PyTorch  {t['torch_ms']:8.2f} ms/step  ({1e3 * batch / t['torch_ms']:.0f} img/s, "
            f"{t['torch_steps']} steps, eager; gpucnn takes {ratio:.2f}x its time)"
        )
    else:
        lines.append(f"  PyTorch  not timed: {t['note']}")
    return lines


def parse_args(
    argv: list[str] | None = None, prog: str = "python -m gpucnn.doctor"
) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--device",
        choices=DEVICES,
        default="all",
        help="which devices to check: all found (default), what 'auto' picks, cpu or cuda",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="a line for every check, with its error and tolerance (default: the checks that "
        "passed counted in one line)",
    )
    ap.add_argument("--no-timing", action="store_true", help="leave the step timing out")
    ap.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        help="length of each step timing, gpucnn's and PyTorch's (default 2; 0: one epoch)",
    )
    args = ap.parse_args(argv)
    if args.seconds < 0:
        ap.error(f"--seconds must be >= 0, got {args.seconds}")
    return args


def main(argv: list[str] | None = None, prog: str = "python -m gpucnn.doctor") -> int:
    """The command line (``prog``: the name its usage line shows); returns the exit status
    (see the module docstring)."""
    args = parse_args(argv, prog)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")

    def say(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    report = run(
        args.device, args.seconds, timing=not args.no_timing, say=say, verbose=args.verbose
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=1, default=str))
    else:
        if report.unavailable and args.device == "cuda":
            print(f"\nnothing to check: cuda is unavailable: {report.unavailable['cuda']}")
        print("\n" + report.summary, flush=True)
    return report.exit_code
