"""Part (g) of benchmarks/gpu_check.py: the seed model trained as CUDA graphs and eagerly."""

from __future__ import annotations

import time

import numpy as np

from benchmarks.gpu_parts.common import (
    MNIST_MEAN,
    MNIST_STD,
    PART_TITLES,
    StepSizes,
    eager_reason,
    gpucnn_model,
    said_by_gpucnn,
)


def graph_vs_eager(
    lines: list[str],
    images: np.ndarray,
    labels: np.ndarray,
    steps: int = 50,
    batch: int = 64,
    tol: float = 1e-4,
    sizes: StepSizes = StepSizes(),  # noqa: B008
    data_note: str = "MNIST",
) -> bool:
    """Train ``steps`` steps of ``batch`` eagerly (cuda_graph=False) and as CUDA graphs (the
    default cuda_graph="auto", which must not fall back) from the same weights on the same
    batches; compare the parameters. (cuda_graph=True would raise where a capture fails or
    disagrees with the eager step; "auto" trains on eagerly and says why, which is reported.)

    The model must have no dropout (its masks differ between the two by design). The products
    differ in rounding (cuBLAS eagerly, the GEMM kernels in a graph), so the parameters agree
    to float32 rounding amplified by Adam over the steps, not bit for bit.
    """
    from gpucnn import data, nn, optim
    from gpucnn.backend import to_host
    from gpucnn.train import Trainer

    n = steps * batch
    if len(labels) < n:
        raise ValueError(f"{steps} steps of {batch} need {n} images, got {len(labels)}")
    init = {k: to_host(p.data).copy() for k, p in gpucnn_model(sizes).named_parameters()}
    runs = {}
    for graph in (False, True):
        model = gpucnn_model(sizes)
        opt = optim.Adam(model.parameters(), 1e-3, weight_decay=1e-5, amsgrad=True)
        trainer = Trainer(
            model,
            nn.CrossEntropyLoss(),
            opt,
            device="cuda",
            progress=False,
            cuda_graph="auto" if graph else False,
        )
        loader = data.DataLoader(
            images[:n], labels[:n], batch, seed=0, mean=MNIST_MEAN, std=MNIST_STD,
            device=trainer.backend,
        )  # fmt: skip
        with said_by_gpucnn() as said:
            t0 = time.perf_counter()
            trainer.fit(loader, epochs=1)
            wall = time.perf_counter() - t0
        runs[graph] = {
            "params": {k: to_host(p.data).copy() for k, p in model.named_parameters()},
            "loss": trainer.history["train_loss"][0],
            "norms": np.array(trainer.history["step_grad_norm"]),
            "eager_reason": eager_reason(trainer, loader, said),
            "wall": wall,
        }
    eager, graph = runs[False], runs[True]
    lines += [
        f"## (g) {PART_TITLES['g']}",
        "",
        f"The {'seed' if sizes.model is None else 'given'} model, {steps} steps of batch "
        f"{batch} ({data_note}), Adam AMSGrad lr 1e-3, "
        "through Trainer.fit with cuda_graph=False and 'auto' (graphs) from the same weights.",
        "",
        "| parameter | max abs diff | max diff / max abs param | elements over tol | "
        "diff / param (norms) | diff / update (norms) | ok |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    worst = 0.0
    for name, want in eager["params"].items():
        got = graph["params"][name]
        scale = float(np.abs(want).max()) + 1e-30
        diff = np.abs(got - want)
        rel = float(diff.max()) / scale
        over = int((diff > tol * scale).sum())
        norm = float(np.linalg.norm(got - want))
        vs_param = norm / (float(np.linalg.norm(want)) + 1e-30)
        update = float(np.linalg.norm(want - init[name]))
        vs_update = norm / update if update else float("nan")
        worst = max(worst, rel)
        lines.append(
            f"| {name} | {float(diff.max()):.2e} | {rel:.2e} | {over} of {diff.size} | "
            f"{vs_param:.2e} | {vs_update:.2e} | {rel <= tol} |"
        )
    loss_rel = abs(graph["loss"] - eager["loss"]) / max(abs(eager["loss"]), 1e-30)
    norms_rel = float(
        (np.abs(graph["norms"] - eager["norms"]) / np.maximum(np.abs(eager["norms"]), 1e-30)).max()
    )
    lines += [
        "",
        f"- epoch train loss: eager {eager['loss']:.6f}, graph {graph['loss']:.6f} "
        f"(relative difference {loss_rel:.1e}); step gradient norms: largest relative "
        f"difference {norms_rel:.1e}",
        f"- fit wall time (compilation and capture included): eager {eager['wall']:.2f} s, "
        f"graph {graph['wall']:.2f} s",
    ]
    ok = worst <= tol and graph["eager_reason"] is None
    why = f"largest relative parameter difference {worst:.1e} (tolerance {tol:.0e})"
    if graph["eager_reason"] is not None:
        why += f"; but the graph fit did not run as graphs: {graph['eager_reason']}"
    lines += ["", f"graph vs eager: {'PASS' if ok else 'FAIL'} ({why})", ""]
    return ok
