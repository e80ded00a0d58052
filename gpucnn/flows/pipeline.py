"""The flows: train (download -> prepare -> train -> evaluate), evaluate a checkpoint, and a
hyperparameter sweep that fans trials out as tasks (on a Dask cluster when given one).

Deployment entrypoints (flows/prefect.yaml): gpucnn/flows/pipeline.py:train_flow,
:evaluate_flow and :sweep_flow.

Every flow runs inside :func:`flow_run_scope`: Prefect's API may stop answering and the
console may go away (a worker killed) without stalling or ending it (its end waits a bounded
time for the API to take what was held), a run folder it holds names it (its flow run's name
and id) to anyone refused, and a refusal's way out names the flow's parameters
(``overwrite=true``) unless the command line calling it names its flags. A refused run (its
folder in use, or holding another config) ends Failed with the refusal as its state's
message, without a crash's traceback. A training run's lines are also kept in its folder's
log.txt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.context import FlowRunContext
from prefect.states import Failed, State

from gpucnn.cli.config import checkpoint_config, expand_grid
from gpucnn.flows import reporting
from gpucnn.flows.tasks import download_dataset, evaluate_model, prepare_data, train_model
from gpucnn.logs import guard_standard_streams, run_log, show_info
from gpucnn.train import recipe
from gpucnn.train.checkpoint import load_checkpoint
from gpucnn.train.config import TrainConfig
from gpucnn.train.runs import (
    RunFolder,
    RunFolderError,
    artifact_key,
    check_run_name,
    config_digest,
    default_run_name,
    evaluation_of,
    held_as,
    plural,
    way_out,
    ways_out,
)

# the loggers a run's log.txt takes: gpucnn's, and the flow's and its tasks' own lines
RUN_LOGGERS = ("gpucnn", "prefect.flow_runs", "prefect.task_runs")


@contextlib.contextmanager
def flow_run_scope() -> Iterator[None]:
    """What a flow's body runs in: standard streams whose going away ends nothing
    (gpucnn.logs.guard_standard_streams), ways out said as the flow's parameters unless the
    command line calling it said its flags, run folders claimed in the flow run's name, and
    a reporting session (gpucnn.flows.reporting: log lines and artifacts sent off the work's
    path, held through an API outage, waited for a bounded time at the end); gpucnn's INFO
    lines let through (a deployment's flow run sets no level)."""
    guard_standard_streams()
    show_info()
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    who = f"flow run {run.name!r} ({run.id})" if run is not None else None
    with ways_out("flow parameters", keep_said=True), held_as(who), reporting.session():
        yield


def refused(exc: RunFolderError) -> State:
    """How a flow run refused its run folder (in use, another config) ends: Failed, with the
    refusal as its message and no crash's traceback in its logs (a Python caller of the flow
    gets ``exc`` raised, as from any failed flow)."""
    return Failed(message=f"{type(exc).__name__}: {exc}", data=exc)


@flow(name="gpucnn-train", log_prints=True)
def train_flow(
    config: TrainConfig | None = None,
    output_dir: str = "runs",
    run_name: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Download and verify the data, record the split, train with early stopping (resuming a
    crashed run), evaluate on the test set, and leave everything in the run folder.

    The run folder is held for the flow's life (a second run on it fails at once); a run that
    already finished is reported, not trained or evaluated again; a folder holding a run of
    another config is refused (``overwrite`` starts it over).

    Args:
        config: the run's TrainConfig (a deployment passes its fields as a JSON object, which
            Prefect validates into one; missing fields take the defaults: the article's
            recipe on MNIST).
        output_dir: where run folders are made.
        run_name: the run folder's name, one path component (default:
            dataset-model-<config digest>).
        overwrite: clear the folder's results and train from scratch.

    Returns:
        The run folder, the training summary, the test metrics, and ``already_finished``.
    """
    with flow_run_scope():
        try:
            return _train(config, output_dir, run_name, overwrite)
        except RunFolderError as exc:
            return refused(exc)


def _train(
    config: TrainConfig | None, output_dir: str, run_name: str | None, overwrite: bool
) -> dict[str, Any]:
    cfg = config if config is not None else TrainConfig()
    name = check_run_name(run_name or default_run_name(cfg))
    folder = RunFolder(Path(output_dir) / name)
    logger = get_run_logger()
    with folder.claim():
        if overwrite:
            folder.clear()
        else:
            folder.check_config(cfg)
        done = folder.finished_result()
        if done is not None:
            logger.info(
                "run %s already finished (%s, test accuracy %.4f); its results are in %s; "
                "%s trains it again",
                name,
                plural(done["epochs"], "epoch"),
                done["test"]["accuracy"],
                folder.path.resolve(),
                way_out("overwrite"),
            )
            return done
        logger.info("run folder %s", folder.path.resolve())
        download_dataset(cfg.dataset, cfg.data_dir, cfg.mirrors, cfg.data_options())
        with run_log(folder.path / "log.txt", RUN_LOGGERS):
            prepare_data(cfg, str(folder.path))
            summary = train_model(cfg, str(folder.path))
            metrics = evaluate_model(cfg, str(folder.path), summary["best_checkpoint"])
            reporting.flush()  # the bounded wait: what stays unsent is said in log.txt
        return {"run_dir": str(folder.path), **summary, "test": metrics, "already_finished": False}


@flow(name="gpucnn-evaluate")
def evaluate_flow(
    checkpoint: str,
    data_dir: str | None = None,
    mirrors: list[str] | None = None,
    output_dir: str | None = None,
    update_run: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint on its dataset's test set (the config saved in it says which).

    Its metrics and plots go to ``output_dir`` (default: the checkpoint's run folder, the
    parent of its checkpoints/ folder), named after the checkpoint (``metrics-best.json``,
    ``plots-best/``: the run's own results stay as they are), or, with ``update_run``, as the
    run's own (``metrics.json``, ``plots/``). The folder is held meanwhile (not while a
    training run writes there).

    Returns:
        The test metrics, and ``files``: every file written.
    """
    cfg = checkpoint_config(load_checkpoint(checkpoint).config, data_dir, mirrors)
    run_dir, name = evaluation_of(checkpoint, output_dir, update_run)
    with flow_run_scope():
        try:
            with RunFolder(run_dir).claim(instead="output_dir"):
                download_dataset(cfg.dataset, cfg.data_dir, cfg.mirrors, cfg.data_options())
                return evaluate_model(cfg, str(run_dir), str(Path(checkpoint).resolve()), name)
        except RunFolderError as exc:
            return refused(exc)


@task(task_run_name="trial-{run_name}")
def run_trial(
    config: TrainConfig, output_dir: str, run_name: str, swept: list[str]
) -> dict[str, Any]:
    """One sweep trial: train and evaluate in its own run folder; returns its table row."""
    run_dir = Path(output_dir) / run_name
    with RunFolder(run_dir).claim(instead="output_dir"):
        summary = recipe.train(config, run_dir, resume=True, progress=False)
        metrics = recipe.evaluate_run(config, run_dir, summary["best_checkpoint"], draw=False)
    return {
        "run": run_name,
        **{k: getattr(config, k) for k in swept},
        "best_val_accuracy": summary["best_val_accuracy"],
        "test_accuracy": metrics["accuracy"],
        "epochs": summary["epochs"],
        "best_epoch": summary["best_epoch"],
    }


def trial_name(values: dict[str, Any], config: TrainConfig) -> str:
    """The swept values and the config's digest: a sweep re-run with another base option
    trains new trials instead of resuming the old ones."""
    shown = "-".join(f"{k}={v}" for k, v in values.items()) or "base"
    return check_run_name(f"{shown}-{config_digest(config)}".replace("/", "_"))


@flow(name="gpucnn-sweep")
def sweep_flow(
    grid: dict[str, list[Any]],
    base: TrainConfig | None = None,
    output_dir: str = "runs/sweep",
) -> list[dict[str, Any]]:
    """Train one trial per combination of ``grid`` values (over ``base``), as concurrent
    tasks; the flow's task runner decides where they run (threads by default, a Dask cluster
    with ``sweep_flow.with_options(task_runner=DaskTaskRunner(address=...))``).

    Each trial has its own run folder (a finished one is not trained again). Rows are merged
    into ``output_dir/sweep.json`` (a row per trial folder, this sweep's and earlier ones'),
    ranked by test accuracy; ``sweep.png`` compares the trials' validation curves.

    Returns:
        This sweep's rows, best first: the swept values, validation and test accuracy.
    """
    base = base if base is not None else TrainConfig()
    with flow_run_scope():
        futures = []
        for values in expand_grid(grid):
            cfg = base.replace(**values)
            name = trial_name(values, cfg)
            futures.append(run_trial.submit(cfg, output_dir, name, sorted(values)))
        rows = sorted((f.result() for f in futures), key=lambda r: -(r["test_accuracy"] or 0))
        out = Path(output_dir)
        ranked = recipe.record_sweep(out, rows)
        reporting.table_artifact(
            "sweep-" + artifact_key(out.name, "trials"),
            ranked,
            f"sweep {out}: one row per trial, best first",
        )
    return rows
