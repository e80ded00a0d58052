"""The flows: train (download -> prepare -> train -> evaluate), evaluate a checkpoint, and a
hyperparameter sweep that fans trials out as tasks (on a Dask cluster when given one).

Deployment entrypoints (flows/prefect.yaml): gpucnn/flows/pipeline.py:train_flow,
:evaluate_flow and :sweep_flow.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from gpucnn.flows.cli import expand_grid
from gpucnn.flows.tasks import download_dataset, evaluate_model, prepare_data, train_model
from gpucnn.train import recipe
from gpucnn.train.checkpoint import load_checkpoint
from gpucnn.train.config import TrainConfig

# settings that change what a run computes (not where data comes from), hashed into its name
_LOCATION_ONLY = ("data_dir", "mirrors", "device")


def default_run_name(cfg: TrainConfig) -> str:
    """dataset-model-<8 hex digits of the config>: the same config finds the same folder, so a
    re-run after a crash resumes instead of starting over."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in _LOCATION_ONLY}
    digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.dataset}-{cfg.model}-{digest}"


@flow(name="gpucnn-train", log_prints=True)
def train_flow(
    config: TrainConfig | None = None, output_dir: str = "runs", run_name: str | None = None
) -> dict[str, Any]:
    """Download and verify the data, record the split, train with early stopping (resuming a
    crashed run), evaluate on the test set, and leave everything in the run folder.

    Args:
        config: the run's TrainConfig (a deployment passes its fields as a JSON object, which
            Prefect validates into one; missing fields take the defaults: the article's
            recipe on MNIST).
        output_dir: where run folders are made.
        run_name: the run folder's name (default: dataset-model-<config hash>).

    Returns:
        The run folder, the training summary and the test metrics.
    """
    cfg = config if config is not None else TrainConfig()
    run_dir = Path(output_dir) / (run_name or default_run_name(cfg))
    run_dir.mkdir(parents=True, exist_ok=True)
    get_run_logger().info("run folder %s", run_dir.resolve())
    download_dataset(cfg.dataset, cfg.data_dir, cfg.mirrors)
    prepare_data(cfg, str(run_dir))
    summary = train_model(cfg, str(run_dir))
    metrics = evaluate_model(cfg, str(run_dir), summary["best_checkpoint"])
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
    cfg = TrainConfig.from_dict(
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
    return evaluate_model(cfg, str(run_dir), str(path))


@task(task_run_name="trial-{run_name}")
def run_trial(
    config: TrainConfig, output_dir: str, run_name: str, swept: list[str]
) -> dict[str, Any]:
    """One sweep trial: train and evaluate in its own run folder; returns its table row."""
    run_dir = Path(output_dir) / run_name
    summary = recipe.train(config, run_dir, resume=True, progress=False)
    metrics = recipe.evaluate_run(config, run_dir, summary["best_checkpoint"], draw=False)
    return {
        "run": run_name,
        **{k: getattr(config, k) for k in swept},
        "best_val_accuracy": summary["best_val_accuracy"],
        "test_accuracy": metrics["accuracy"],
        "epochs": summary["epochs"],
    }


@flow(name="gpucnn-sweep")
def sweep_flow(
    grid: dict[str, list[Any]],
    base: TrainConfig | None = None,
    output_dir: str = "runs/sweep",
) -> list[dict[str, Any]]:
    """Train one trial per combination of ``grid`` values (over ``base``), as concurrent
    tasks; the flow's task runner decides where they run (threads by default, a Dask cluster
    with ``sweep_flow.with_options(task_runner=DaskTaskRunner(address=...))``).

    Returns:
        One row per trial: the swept values, validation and test accuracy; also written to
        ``output_dir/sweep.json`` and a table artifact.
    """
    base = base if base is not None else TrainConfig()
    trials = expand_grid(grid)
    futures = []
    for values in trials:
        cfg = base.replace(**values)
        name = "-".join(f"{k}={v}" for k, v in values.items()) or "base"
        futures.append(run_trial.submit(cfg, output_dir, name, sorted(values)))
    rows = [f.result() for f in futures]
    rows.sort(key=lambda r: -(r["test_accuracy"] or 0))
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    recipe.write_json(Path(output_dir) / "sweep.json", rows)
    create_table_artifact(table=rows, description="sweep: one row per trial, best first")
    return rows
