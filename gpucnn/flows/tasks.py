"""The pipeline's tasks. Each is a short call into gpucnn taking paths and configs (never
arrays: Prefect hashes task inputs). Only the download retries, and only on transient network
failures; typed errors (bad data, a NaN loss, a bad checkpoint) fail at once. Artifacts carry
stable keys per run, so a re-run updates them. No task calls Prefect's API itself: log lines
and artifacts go through the flow's reporting session (gpucnn.flows.reporting), so an API that
stops answering never stalls or fails a task.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from gpucnn import data
from gpucnn.flows import reporting
from gpucnn.train import recipe
from gpucnn.train.config import TrainConfig
from gpucnn.train.runs import artifact_key, evaluation_paths, plural

DOWNLOAD_RETRY_DELAY_S = 10


def retry_transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed download only when every mirror failed for reasons that may pass."""
    try:
        state.result()
    except data.DownloadError as exc:
        if exc.transient:
            logging.getLogger("gpucnn.flows").warning(
                "every mirror failed for reasons that may pass; trying the download once more "
                "in %d s",
                DOWNLOAD_RETRY_DELAY_S,
            )
        return exc.transient
    except Exception:
        return False
    return False


@task(
    retries=1,
    retry_delay_seconds=DOWNLOAD_RETRY_DELAY_S,
    retry_condition_fn=retry_transient_only,
    task_run_name="download-{dataset}",
)
def download_dataset(
    dataset: str,
    data_dir: str | None = None,
    mirrors: list[str] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Fetch and verify the dataset's files (an image folder: decode it into its cache, with
    the config's ``options``: TrainConfig.data_options).

    data.download retries transient failures itself, under one deadline, and counts its
    attempts in its error; Prefect retries the task once more when every mirror failed for
    reasons that may pass (a network that comes back), never after a checksum failure.
    """
    paths = data.download(dataset, data_dir, mirrors, **(options or {}))
    where = Path(next(iter(paths.values()))).parent
    get_run_logger().info("%s verified in %s", dataset, where)
    return {k: str(v) for k, v in paths.items()}


@task(task_run_name="prepare-data")
def prepare_data(config: TrainConfig, run_dir: str) -> dict[str, Any]:
    """The seeded split and the augmentation recipe, recorded in ``run_dir/data.json``."""
    info = recipe.split_info(config)
    recipe.write_json(Path(run_dir) / "data.json", info)
    return info


@task(task_run_name="train-model")
def train_model(config: TrainConfig, run_dir: str) -> dict[str, Any]:
    """Train with early stopping; a re-run after a crash resumes from the last checkpoint.

    Its progress artifact and log lines reach Prefect through the flow's reporting session
    (gpucnn.flows.reporting): an API that stops answering never stalls or fails the fit.
    """
    with reporting.session():  # the flow's, when it has one
        summary = recipe.train(
            config,
            run_dir,
            resume=True,
            progress=True,
            extra_callbacks=(reporting.ProgressArtifact(config.epochs, Path(run_dir).name),),
        )
    get_run_logger().info(
        "trained %s; best val accuracy %.4f (epoch %d)",
        plural(summary["epochs"], "epoch"),
        summary["best_val_accuracy"] or float("nan"),
        summary["best_epoch"],
    )
    return summary


def _epoch_table(history: dict[str, list]) -> str:
    rows = [
        "| epoch | train loss | train acc | val loss | val acc | lr | s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ends = history.get("lr_end") or history["lr"]  # histories before lr_end: the start
    for i, e in enumerate(history["epoch"]):
        start, end = f"{history['lr'][i]:.3g}", f"{ends[i]:.3g}"
        rows.append(
            f"| {e} | {history['train_loss'][i]:.4f} | {history['train_accuracy'][i]:.4f} | "
            f"{history['val_loss'][i]:.4f} | {history['val_accuracy'][i]:.4f} | "
            f"{start if start == end else f'{start} → {end}'} | {history['elapsed_s'][i]:.1f} |"
        )
    return "\n".join(rows)


@task(task_run_name="evaluate-model")
def evaluate_model(
    config: TrainConfig, run_dir: str, checkpoint: str, name: str | None = None
) -> dict[str, Any]:
    """Test metrics, the confusion matrix, plots, and Prefect artifacts for the run: as the
    run's own results, or, with a ``name``, as an evaluation of one checkpoint beside them
    (``metrics-<name>.json``, ``plots-<name>/``, artifacts keyed by the name; see
    gpucnn.train.runs.evaluation_of).

    Returns:
        The test metrics, the plots, and ``files``: every file written.
    """
    run = Path(run_dir)
    metrics = recipe.evaluate_run(config, run, checkpoint, name=name)
    what = "" if name is None else f"{name}-"
    shown = run.name if name is None else f"{run.name} ({Path(checkpoint).name})"
    reporting.table_artifact(
        artifact_key(run.name, f"{what}per-class-accuracy"),
        [{"class": c, "accuracy": round(a, 4)} for c, a in metrics["per_class_accuracy"].items()],
        f"{shown}: per-class test accuracy",
    )
    history_path = run / "history.json"
    curve = _epoch_table(json.loads(history_path.read_text())) if history_path.exists() else ""
    reporting.markdown_artifact(
        artifact_key(run.name, f"{what}summary"),
        f"# {shown}\n\n**test accuracy {metrics['accuracy']:.4f}** "
        f"(loss {metrics['loss']:.4f}, top-3 {metrics['top3_accuracy']:.4f}, "
        f"{metrics['samples']} images)\n\nrun folder: `{run}`\n\n## Per epoch\n\n{curve}\n",
        f"{shown}: summary",
    )
    get_run_logger().info(
        "test accuracy %.4f on %d images", metrics["accuracy"], metrics["samples"]
    )
    written = evaluation_paths(run, name)[0]
    result = {k: metrics[k] for k in ("accuracy", "loss", "top3_accuracy", "samples", "plots")}
    return {**result, "files": [str(written), *metrics["plots"]]}
