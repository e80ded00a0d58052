"""The flows: train (download -> prepare -> train -> evaluate), evaluate a checkpoint, and a
hyperparameter sweep that fans trials out as tasks (on a Dask cluster when given one).

Deployment entrypoints (flows/prefect.yaml): gpucnn/flows/pipeline.py:train_flow,
:evaluate_flow and :sweep_flow.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from gpucnn.flows.tasks import download_dataset, evaluate_model, prepare_data, train_model
from gpucnn.train import recipe
from gpucnn.train.checkpoint import load_checkpoint

# settings that change what a run computes (not where data comes from), hashed into its name
_LOCATION_ONLY = ("data_dir", "mirrors", "device")


def default_run_name(cfg: recipe.TrainConfig) -> str:
    """dataset-model-<8 hex digits of the config>: the same config finds the same folder, so a
    re-run after a crash resumes instead of starting over."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in _LOCATION_ONLY}
    digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.dataset}-{cfg.model}-{digest}"


@flow(name="gpucnn-train", log_prints=True)
def train_flow(
    config: dict[str, Any] | None = None, output_dir: str = "runs", run_name: str | None = None
) -> dict[str, Any]:
    """Download and verify the data, record the split, train with early stopping (resuming a
    crashed run), evaluate on the test set, and leave everything in the run folder.

    Args:
        config: TrainConfig fields (defaults: the article's recipe on MNIST).
        output_dir: where run folders are made.
        run_name: the run folder's name (default: dataset-model-<config hash>).

    Returns:
        The run folder, the training summary and the test metrics.
    """
    cfg = recipe.TrainConfig.from_dict(config or {})
    run_dir = Path(output_dir) / (run_name or default_run_name(cfg))
    run_dir.mkdir(parents=True, exist_ok=True)
    get_run_logger().info("run folder %s", run_dir.resolve())
    c = cfg.to_dict()
    download_dataset(cfg.dataset, cfg.data_dir, cfg.mirrors)
    prepare_data(c, str(run_dir))
    summary = train_model(c, str(run_dir))
    metrics = evaluate_model(c, str(run_dir), summary["best_checkpoint"])
    return {"run_dir": str(run_dir), **summary, "test": metrics}


@flow(name="gpucnn-evaluate")
def evaluate_flow(
    checkpoint: str,
    data_dir: str | None = None,
    mirrors: list[str] | None = None,
    output_dir: str | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on its dataset's test set (the config saved in it says which).

    metrics.json, plots and artifacts go to ``output_dir`` (default: the checkpoint's run
    folder, the parent of its checkpoints/ folder).
    """
    ckpt = load_checkpoint(checkpoint)
    overrides = {"data_dir": data_dir, "mirrors": mirrors}
    cfg = recipe.TrainConfig.from_dict(
        {**ckpt.config, **{k: v for k, v in overrides.items() if v is not None}}
    )
    path = Path(checkpoint).resolve()
    run_dir = (
        Path(output_dir)
        if output_dir
        else (path.parent.parent if path.parent.name == "checkpoints" else path.parent)
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    download_dataset(cfg.dataset, cfg.data_dir, cfg.mirrors)
    return evaluate_model(cfg.to_dict(), str(run_dir), str(path))


@task(task_run_name="trial-{run_name}")
def run_trial(
    config: dict[str, Any], output_dir: str, run_name: str, swept: list[str]
) -> dict[str, Any]:
    """One sweep trial: train and evaluate in its own run folder; returns its table row."""
    cfg = recipe.TrainConfig.from_dict(config)
    run_dir = Path(output_dir) / run_name
    summary = recipe.train(cfg, run_dir, resume=True, progress=False)
    metrics = recipe.evaluate(cfg, summary["best_checkpoint"])
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return {
        "run": run_name,
        **{k: config[k] for k in swept},
        "best_val_accuracy": summary["best_val_accuracy"],
        "test_accuracy": metrics["accuracy"],
        "epochs": summary["epochs"],
    }


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a stable order."""
    keys = sorted(grid)
    return [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*(grid[k] for k in keys))
    ]


@flow(name="gpucnn-sweep")
def sweep_flow(
    grid: dict[str, list[Any]],
    base: dict[str, Any] | None = None,
    output_dir: str = "runs/sweep",
) -> list[dict[str, Any]]:
    """Train one trial per combination of ``grid`` values (over ``base``), as concurrent
    tasks; the flow's task runner decides where they run (threads by default, a Dask cluster
    with ``sweep_flow.with_options(task_runner=DaskTaskRunner(address=...))``).

    Returns:
        One row per trial: the swept values, validation and test accuracy; also written to
        ``output_dir/sweep.json`` and a table artifact.
    """
    base = base or {}
    trials = expand_grid(grid)
    futures = []
    for values in trials:
        cfg = recipe.TrainConfig.from_dict({**base, **values})
        name = "-".join(f"{k}={v}" for k, v in values.items()) or "base"
        futures.append(run_trial.submit(cfg.to_dict(), output_dir, name, sorted(values)))
    rows = [f.result() for f in futures]
    rows.sort(key=lambda r: -(r["test_accuracy"] or 0))
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "sweep.json").write_text(json.dumps(rows, indent=1))
    create_table_artifact(table=rows, description="sweep: one row per trial, best first")
    return rows
