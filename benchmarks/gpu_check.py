"""One prepared GPU check: correctness, step and kernel timings and epochs, gpucnn vs PyTorch.

    PYTHONPATH=. python benchmarks/gpu_check.py --data-dir .device-data [--out DIR]
        [--parts a,o,g,s,f,c,p,d,k,b,t] [--skip ...] [--budget-s 270] [--quick]

Needs numba (numba-cuda), cupy, torch and numpy only; no network, no prefect. Parts, in the
order they run (each one's failure is reported and the others still run):
  (a) CUDA vs CPU agreement: every window kernel at the seed model's real shapes, then the
      seed model's loss and every parameter gradient for one batch of 64 (the doctor's
      checks, gpucnn.doctor.agreement, at the seed model's shapes);
  (o) ``python -m gpucnn.doctor`` in its own process: its report in this one, its --json in
      --out/doctor.json (versions, devices, traps, its checks, the captured step against the
      eager step, the kernel paths' verdicts, a step timing beside PyTorch's);
  (g) one CUDA graph per step vs the eager step: the seed model trained --graph-steps steps
      (batch 64, Adam AMSGrad, the same batches) both ways through the Trainer; the
      parameters must agree to --graph-tol relative (max |diff| / max |param|); PASS/FAIL;
  (s) the training step at each of --batches (64, 512): wall ms per step and GPU us and
      kernels per step (CUPTI through torch.profiler, which sees every kernel of the process)
      for gpucnn eager (cuda_graph=False), gpucnn graph, PyTorch eager and PyTorch's whole
      step as one CUDA graph (torch.cuda.graphs, Adam(capturable=True));
  (f) the same gpucnn steps with FUSES_CONV_RELU_POOL set on the CUDA kernels module (the
      fused Conv + ReLU + MaxPool2d(2) step), then with DIRECT_CONV_MAX_TAPS = 9 (the first
      conv without columns), each against (s): whether to turn either on;
  (c) epochs of the seed model at batch 64, MNIST resident on the GPU: gpucnn (the Trainer's
      default: graph when it can), PyTorch eager and PyTorch graph; epoch times and the
      training time until 99% test accuracy;
  (p) the fast preset (TrainConfig.preset("fast"): seed model, batch 256, one cycle of 2
      epochs to lr 1.5e-2, 2% held out) with gpucnn's recipe, and the same recipe in PyTorch
      (Adam AMSGrad + OneCycleLR, the same split and initial weights): training time and test
      accuracy per epoch, time to 99%;
  (d) kernel launches per training step: gpucnn's Numba launches, and every kernel on the
      device for gpucnn and for PyTorch (CUPTI);
  (k) per-kernel GPU time, gpucnn vs PyTorch/cuDNN and the GEMM kernel vs cuBLAS
      (benchmarks/kernels.py --device cuda), also written to --out/kernels-cuda.md;
  (b) per-op medians (synchronised wall time) of conv and pool forward+backward, gpucnn vs
      torch.nn.functional with cuDNN;
  (t) the simulator's kernel tests (tests/backend/sim) once more on the real GPU with CuPy
      arrays, when pytest is installed, with what is left of the budget.
The whole run keeps to --budget-s seconds from start (default 270, inside run.sh's 420 s
timeout): a part that cannot start with the time it needs is skipped and says so, a part still
running when the budget and a grace of 20 s are spent is stopped, and parts (s), (f), (c), (k)
skip the rows that no longer fit. --quick shrinks every part (fewer steps and repeats, batch 64
only). Prints a markdown report part by part and rewrites --out/gpu-check.md after each; its
last line is always the summary (n/a for what was not measured):

summary: epoch_s_b64=<gpucnn> torch_eager_epoch_s_b64=<..> torch_graph_epoch_s_b64=<..>
gpu_us_b64=<..> torch_gpu_us_b64=<..> fast_time_to_99_s=<..> torch_fast_time_to_99_s=<..>

(one line: epoch seconds of the steady second epoch at batch 64 from (c); GPU us per step at
batch 64 from (s), gpucnn graph and PyTorch eager; training seconds to 99% test accuracy of
the fast recipe from (p)).
"""

from __future__ import annotations

import time

START = time.perf_counter()  # the budget counts from here

import argparse  # noqa: E402
import datetime  # noqa: E402
import math  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# the parts, one module each (benchmarks/gpu_parts); their names are re-exported here, where
# tests/backend/sim/test_gpu_check.py finds them
from benchmarks.gpu_parts.agreement import (  # noqa: E402
    check_agreement,
    doctor_on_gpu,
    kernel_tests_on_gpu,
)
from benchmarks.gpu_parts.common import (  # noqa: E402, F401
    PART_ORDER,
    PART_TITLES,
    Budget,
    PartTimeout,
    Sizes,
    StepSizes,
    Terminated,
    load_mnist,
    synthetic_data,
)
from benchmarks.gpu_parts.epochs import EpochRun, epochs_b64, fast_preset  # noqa: E402, F401
from benchmarks.gpu_parts.graph_vs_eager import graph_vs_eager  # noqa: E402
from benchmarks.gpu_parts.launches import (  # noqa: E402, F401
    count_numba_launches,
    kernel_table,
    kernel_timings,
    launches,
    uncount_numba_launches,
)
from benchmarks.gpu_parts.steps import STEP_VARIANTS, StepTime, step_timings  # noqa: E402, F401

# seconds a part needs at least to start (H200 guesses: Numba compiles each kernel once per
# process, ~0.5-1 s each, in whichever part first launches it)
PART_MIN_S = {
    "a": 15,
    "o": 30,
    "g": 10,
    "s": 15,
    "f": 10,
    "c": 15,
    "p": 12,
    "d": 4,
    "k": 10,
    "b": 4,
    "t": 20,
}
GRACE_S = 20  # a running part is stopped this long after the budget ends

SUMMARY_KEYS = (
    "epoch_s_b64",
    "torch_eager_epoch_s_b64",
    "torch_graph_epoch_s_b64",
    "gpu_us_b64",
    "torch_gpu_us_b64",
    "fast_time_to_99_s",
    "torch_fast_time_to_99_s",
)


def summary_line(results: dict[str, Any]) -> str:
    """The report's last line: every SUMMARY_KEYS value (seconds with 2 decimals, us whole),
    n/a for what was not measured."""

    def fmt(key: str) -> str:
        v = results.get(key)
        if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
            return "n/a"
        return f"{v:.0f}" if key.endswith("_us_b64") else f"{v:.2f}"

    return "summary: " + " ".join(f"{k}={fmt(k)}" for k in SUMMARY_KEYS)


def write_report(path: Path, lines: list[str], results: dict[str, Any]) -> str:
    """The report so far, its summary line last; written to ``path`` (when not None)."""
    text = "\n".join([*lines, summary_line(results)]) + "\n"
    if path is not None:
        path.write_text(text)
    return text


# -- (a) CUDA vs CPU agreement, (t) the kernel tests on the GPU ----------------------------


# -- (g) one CUDA graph per step vs the eager step ------------------------------------------


# -- (s), (f) the training step: wall ms and GPU us per step -------------------------------


# -- (c), (p) epochs and time to 99% -------------------------------------------------------


# -- (d) launches per step -----------------------------------------------------------------


# -- (k) per-kernel GPU time, (b) per-op wall medians ---------------------------------------


# -- the run ---------------------------------------------------------------------------------


def _on_alarm(signum: int, frame: Any) -> None:
    raise PartTimeout("the budget ran out while this part was running")


def _on_term(signum: int, frame: Any) -> None:
    raise Terminated()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--data-dir",
        default=".device-data",
        help="a gpucnn data folder holding mnist/ (verified IDX files)",
    )
    ap.add_argument("--out", default=".", help="folder for gpu-check.md and kernels-cuda.md")
    ap.add_argument(
        "--parts", default=",".join(PART_ORDER), help="comma list of the parts to run (any order)"
    )
    ap.add_argument("--skip", default="", help="comma list of parts to skip")
    ap.add_argument("--budget-s", type=float, default=270, help="seconds for the whole run")
    ap.add_argument("--quick", action="store_true", help="every part smaller (batch 64 only)")
    ap.add_argument("--batches", default="64,512", help="(s), (f), (k): batch sizes")
    ap.add_argument("--steps", type=int, default=50, help="(s), (f): steps per timed epoch")
    ap.add_argument("--timed-epochs", type=int, default=2, help="(s), (f): timed epochs")
    ap.add_argument("--graph-steps", type=int, default=50, help="(g): steps each way")
    ap.add_argument("--graph-tol", type=float, default=1e-4, help="(g): relative tolerance")
    ap.add_argument("--max-epochs", type=int, default=3, help="(c): most epochs")
    ap.add_argument("--min-epochs", type=int, default=2, help="(c): fewest epochs")
    ap.add_argument("--kernel-repeat", type=int, default=20, help="(k): calls timed per op")
    ap.add_argument("--test-timeout", type=float, default=240, help="(t): most seconds")
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.steps, args.timed_epochs = "64", 20, 1
        args.graph_steps, args.max_epochs, args.kernel_repeat = 20, 2, 10
    return args


def main(argv: list[str] | None = None, started: float = START) -> int:
    """Run the chosen parts within the budget (counted from ``started``); 0 when all passed."""
    args = parse_args(argv)
    budget = Budget(args.budget_s, started)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "gpu-check.md"
    batches = tuple(int(b) for b in args.batches.split(","))
    sizes = StepSizes(batches=batches, steps=args.steps, timed_epochs=args.timed_epochs)
    lines = ["# GPU check: gpucnn CUDA backend vs CPU and vs PyTorch/cuDNN", ""]
    try:
        import cupy
        import numba
        import torch

        props = cupy.cuda.runtime.getDeviceProperties(0)
        lines.append(
            f"- device: {props['name'].decode()}, cupy {cupy.__version__}, numba "
            f"{numba.__version__}, torch {torch.__version__} "
            f"(cuDNN {torch.backends.cudnn.version()})"
        )
    except Exception as exc:  # the parts will say what fails
        lines.append(f"- device: unknown ({type(exc).__name__}: {exc})")
    lines += [
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
        f"- command: `PYTHONPATH=. python {' '.join(sys.argv)}`",
        f"- budget: {args.budget_s:.0f} s from start",
        "",
    ]
    print("\n".join(lines), flush=True)
    results: dict[str, Any] = {}
    mnist: dict[str, Any] = {}

    def data() -> tuple[np.ndarray, ...]:
        if "error" in mnist:
            raise mnist["error"]
        if "arrays" not in mnist:
            try:
                mnist["arrays"] = load_mnist(args.data_dir)
            except Exception as exc:
                mnist["error"] = exc
                raise
        return mnist["arrays"]

    def part_g() -> bool:
        try:
            x, y, *_ = data()
            note = "MNIST"
        except Exception as exc:
            x, y = synthetic_data(args.graph_steps * 64, sizes)
            note = f"random images: no MNIST ({type(exc).__name__})"
        return graph_vs_eager(
            lines, x, y, args.graph_steps, 64, args.graph_tol, sizes, data_note=note
        )

    parts: dict[str, Callable[[], Any]] = {
        "a": lambda: check_agreement(lines),
        "o": lambda: doctor_on_gpu(lines, out_dir, timeout=min(120, budget.left())),
        "g": part_g,
        "s": lambda: step_timings(lines, results, sizes, fused=False, budget=budget),
        "f": lambda: step_timings(lines, results, sizes, fused=True, budget=budget),
        "c": lambda: epochs_b64(
            lines, results, data(), sizes, args.max_epochs, args.min_epochs, budget=budget
        ),
        "p": lambda: fast_preset(lines, results, data(), args.data_dir, sizes, budget),
        "d": lambda: launches(lines, results, sizes),
        "k": lambda: kernel_table(lines, out_dir, batches, args.kernel_repeat, budget),
        "b": lambda: kernel_timings(lines),
        "t": lambda: kernel_tests_on_gpu(lines, min(args.test_timeout, budget.left())),
    }
    chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in parts]
    if unknown:
        raise SystemExit(f"unknown parts {unknown}; choose from {','.join(PART_ORDER)}")
    skip = {p.strip() for p in args.skip.split(",")}
    chosen = [p for p in chosen if p not in skip]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGALRM, signal.SIGTERM)}
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_term)
    ok = True
    try:
        for part in chosen:
            start = len(lines)
            left = budget.left()
            if left < PART_MIN_S[part]:
                lines += [
                    f"## ({part}) {PART_TITLES[part]}: skipped, {max(left, 0):.0f} s of the "
                    f"budget left, it needs ~{PART_MIN_S[part]} s",
                    "",
                ]
                ok = False
            else:
                t0 = time.perf_counter()
                signal.setitimer(signal.ITIMER_REAL, left + GRACE_S)
                try:
                    ok &= parts[part]() is not False
                except PartTimeout:
                    ok = False
                    lines += [f"## part ({part}) stopped: the budget ran out", ""]
                except Exception as exc:  # report and go on: every part's evidence counts
                    ok = False
                    tb = traceback.format_exc().strip().splitlines()[-12:]
                    lines += [f"## part ({part}) failed: {type(exc).__name__}", "", "```"]
                    lines += [*tb, "```", ""]
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                lines += [f"_part ({part}): {time.perf_counter() - t0:.1f} s_", ""]
            write_report(report, lines, results)
            print("\n".join(lines[start:]), flush=True)
    except Terminated:
        ok = False
        lines += ["## terminated (SIGTERM: run.sh's timeout?)", ""]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    lines.append(f"_total: {time.perf_counter() - started:.1f} s_")
    lines.append("")
    write_report(report, lines, results)
    print(summary_line(results), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
