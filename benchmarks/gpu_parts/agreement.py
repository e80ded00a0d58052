"""Parts (a) and (t) of benchmarks/gpu_check.py: CUDA vs CPU agreement, kernel tests on a GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from benchmarks.gpu_parts.common import (
    Sizes,
)


def check_agreement(lines: list[str], sizes: Sizes = Sizes()) -> bool:  # noqa: B008
    import cupy

    from gpucnn import models, nn
    from gpucnn.backend import cpu
    from gpucnn.backend import cuda as gpu

    ok_all = True
    lines += ["## (a) CUDA vs CPU agreement", "", "| check | max abs diff | ok |", "|---|---:|---|"]
    g = np.random.default_rng(0)
    for n, c, h, w, k, s, p in sizes.windows:
        x = g.standard_normal((n, c, h, w)).astype(np.float32)
        xd = cupy.asarray(x)
        checks = {}
        cols = gpu.im2col(xd, k, s, p)
        checks["im2col"] = float(abs(cupy.asnumpy(cols) - cpu.im2col(x, k, s, p)).max())
        dc = g.standard_normal(cols.shape).astype(np.float32)
        checks["col2im"] = float(
            abs(
                cupy.asnumpy(gpu.col2im(cupy.asarray(dc), x.shape, k, s, p))
                - cpu.col2im(dc, x.shape, k, s, p)
            ).max()
        )
        if 2 * p <= k:
            y, arg = gpu.maxpool2d_fwd(xd, k, s, p)
            yr, argr = cpu.maxpool2d_fwd(x, k, s, p)
            checks["maxpool fwd"] = float(abs(cupy.asnumpy(y) - yr).max())
            dy = g.standard_normal(yr.shape).astype(np.float32)
            checks["maxpool bwd"] = float(
                abs(
                    cupy.asnumpy(gpu.maxpool2d_bwd(cupy.asarray(dy), arg, x.shape, k, s, p))
                    - cpu.maxpool2d_bwd(dy, argr, x.shape, k, s, p)
                ).max()
            )
        for name, diff in checks.items():
            ok = diff < 1e-3
            ok_all &= ok
            lines.append(f"| {name} {(n, c, h, w)} k{k} s{s} p{p} | {diff:.2e} | {ok} |")
    dev, host = cupy.asarray, cupy.asnumpy
    n, c, h, w = sizes.windows[0][:4]  # the first conv's input: direct, 3x3 pad 1, 32 filters
    x, wt = g.standard_normal((n, c, h, w)), g.standard_normal((32, c, 3, 3))
    x, wt, b = x.astype(np.float32), wt.astype(np.float32), np.ones(32, np.float32)
    yd, yc = (
        gpu.conv2d_direct_fwd(dev(x), dev(wt), dev(b), 1, 1),
        cpu.conv2d_direct_fwd(x, wt, b, 1, 1),
    )
    dy = g.standard_normal(yc.shape).astype(np.float32)
    (dwd, dbd), (dwc, dbc) = (
        gpu.conv2d_direct_bwd(dev(dy), dev(x), 3, 1, 1),
        cpu.conv2d_direct_bwd(dy, x, 3, 1, 1),
    )
    for name, got, want in (("fwd", yd, yc), ("dw", dwd, dwc), ("db", dbd, dbc)):
        diff = float(abs(host(got) - want).max() / max(1.0, float(abs(want).max())))
        ok_all &= diff < 1e-4
        lines.append(
            f"| direct conv {name} {(n, c, h, w)} 3x3 p1, relative | {diff:.2e} | {diff < 1e-4} |"
        )
    a = g.standard_normal(sizes.activations).astype(np.float32)
    checks = {
        f"relu {sizes.activations}": abs(host(gpu.relu_fwd(dev(a))) - cpu.relu_fwd(a)).max(),
        f"dropout p=0.5 mask {sizes.activations}": abs(
            host(gpu.dropout_fwd(dev(a), 0.5, 12345)) - cpu.dropout_fwd(a, 0.5, 12345)
        ).max(),
    }
    rows, classes = sizes.logits
    z, labels = g.standard_normal(sizes.logits).astype(np.float32), g.integers(0, classes, rows)
    (lg, gg), (lc, gc) = gpu.softmax_xent_fwd(dev(z), dev(labels)), cpu.softmax_xent_fwd(z, labels)
    checks[f"softmax cross-entropy loss {sizes.logits}"] = abs(float(lg) - float(lc))
    checks[f"softmax cross-entropy grad {sizes.logits}"] = abs(host(gg) - gc).max()
    ones, zeros = np.ones(a.shape[1], np.float32), np.zeros(a.shape[1], np.float32)
    yg, saved_g = gpu.batchnorm2d_fwd(
        dev(a), dev(ones), dev(zeros), dev(zeros), dev(ones), True, 0.1, 1e-5
    )
    yc, saved_c = cpu.batchnorm2d_fwd(a, ones, zeros, zeros.copy(), ones.copy(), True, 0.1, 1e-5)
    checks[f"batchnorm fwd {sizes.activations}"] = abs(host(yg) - yc).max()
    dxg = gpu.batchnorm2d_bwd(dev(a), saved_g, dev(ones), True)[0]
    checks[f"batchnorm bwd {sizes.activations}"] = abs(
        host(dxg) - cpu.batchnorm2d_bwd(a, saved_c, ones, True)[0]
    ).max()
    w, grad = (
        g.standard_normal(sizes.fc_weight).astype(np.float32),
        g.standard_normal(sizes.fc_weight).astype(np.float32),
    )
    state = [np.zeros_like(w) for _ in range(3)]
    kw = dict(
        step_size=1e-3, beta1=0.9, beta2=0.999, bias_correction2=1e-3, eps=1e-8, weight_decay=1e-5
    )
    wd, sd = dev(w), [dev(t) for t in state]
    gpu.adam_update(wd, dev(grad), *sd, **kw)
    cpu.adam_update(w, grad, *state, **kw)
    checks[f"adam amsgrad step {sizes.fc_weight}"] = abs(host(wd) - w).max()
    for name, diff in checks.items():
        ok = float(diff) < 1e-3
        ok_all &= ok
        lines.append(f"| {name} | {float(diff):.2e} | {ok} |")
    build = sizes.model or (lambda: models.build("seed", seed=0))
    cpu_model, gpu_model = build(), build().to("cuda")
    x = g.standard_normal((sizes.batch, *sizes.image)).astype(np.float32)
    y = g.integers(0, classes, sizes.batch)
    losses = []
    for model, xx, yy in ((cpu_model, x, y), (gpu_model, cupy.asarray(x), cupy.asarray(y))):
        crit = nn.CrossEntropyLoss()
        losses.append(float(crit(model(xx), yy)))
        model.backward(crit.backward())
    diff = abs(losses[0] - losses[1])
    lines.append(f"| model loss, batch {sizes.batch} | {diff:.2e} | {diff < 1e-4} |")
    ok_all &= diff < 1e-4
    for (name, pc), pg in zip(cpu_model.named_parameters(), gpu_model.parameters(), strict=True):
        d = float(abs(pc.grad - cupy.asnumpy(pg.grad)).max() / (abs(pc.grad).max() + 1e-12))
        lines.append(f"| grad {name} (relative) | {d:.2e} | {d < 1e-3} |")
        ok_all &= d < 1e-3
    lines.append("")
    return ok_all


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
