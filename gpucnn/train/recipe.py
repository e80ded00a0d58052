"""A whole training run from one config: data, model, optimizer, callbacks, evaluation.

The flows' tasks and the benchmarks call these functions; they hold the recipe, the flows
hold only orchestration. The config and its defaults (the article's recipe) are
gpucnn.train.config.TrainConfig.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpucnn import data, models, nn, optim
from gpucnn.backend import Backend, get_backend
from gpucnn.train.atomic import remove_stale_parts, write_json
from gpucnn.train.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    OneCycleScheduler,
    PlateauScheduler,
)
from gpucnn.train.checkpoint import load_checkpoint
from gpucnn.train.config import TrainConfig
from gpucnn.train.loggers import CSVLogger, TensorBoardLogger
from gpucnn.train.metrics import confusion_matrix, per_class_accuracy, topk_accuracy
from gpucnn.train.runs import RunFolder, evaluation_paths
from gpucnn.train.trainer import Trainer

log = logging.getLogger("gpucnn.train")


@dataclass
class RunData:
    """A run's data: the dataset, its train, val and test parts, and the normalisation the
    run applies (the dataset's own, or computed from the training part)."""

    dataset: data.Dataset
    parts: dict[str, data.Part]
    normalization: data.Normalization

    def info(self) -> dict[str, Any]:
        """What a model trained on this data needs (saved as the config's ``data``)."""
        return self.dataset.info(self.normalization)


def load_data(config: TrainConfig) -> RunData:
    """The verified (or decoded) dataset, split into train, val and test.

    ``limit`` keeps the first ``limit`` training images (before the split); the test set is
    always whole, so test metrics of quick runs compare with full ones. The named datasets
    keep the article's seeded 80/20 split; an image folder's split keeps each class's share
    (gpucnn.data.source.Dataset.split).
    """
    ds = data.open_dataset(config.dataset, config.data_dir, config.mirrors, **config.data_options())
    parts = ds.split(config.val_fraction, config.seed, config.limit, config.test_fraction)
    return RunData(ds, parts, ds.normalization_for(parts["train"]))


def load_split(config: TrainConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The parts of :func:`load_data` as (images uint8 (N, C, H, W), labels) in memory."""
    return {k: p.arrays() for k, p in load_data(config).parts.items()}


def _as_part(value: Any) -> data.Part:
    return value if isinstance(value, data.Part) else data.Part(*value)


def make_loaders(
    config: TrainConfig,
    split: dict[str, Any],
    backend: Backend,
    normalization: data.Normalization | None = None,
) -> dict:
    """DataLoaders for the split (Parts, or (images, labels) pairs), their data moved once to
    ``backend``'s device (a memory-mapped part stays on disk on the CPU); ``normalization``
    defaults to the named dataset's."""
    if normalization is None:
        normalization = data.Normalization.from_dict(data.describe(config.dataset)["normalization"])
    common = {"mean": normalization, "device": backend}
    train = _as_part(split["train"])
    loaders = {
        "train": data.DataLoader(
            train.images,
            train.labels,
            config.batch_size,
            shuffle=True,
            seed=config.seed,
            augment=data.parse_recipe(config.augment),
            indices=train.indices,
            **common,
        )
    }
    for name in ("val", "test"):
        part = _as_part(split[name])
        if len(part):
            loaders[name] = data.DataLoader(
                part.images, part.labels, 1000, shuffle=False, indices=part.indices, **common
            )
    return loaders


def build_model(config: TrainConfig, info: dict[str, Any]) -> nn.Module:
    """The config's network for the data ``info`` describes (Dataset.info): its classes,
    channels and image size."""
    c, h, _ = info["shape"]
    return models.build(
        config.model, num_classes=len(info["classes"]), in_channels=c, seed=config.seed,
        input_size=h,
    )  # fmt: skip


def build_trainer(
    config: TrainConfig,
    run_dir: Path,
    backend: Backend,
    progress: bool = True,
    extra_callbacks: tuple = (),
    info: dict[str, Any] | None = None,
    train_size: int | None = None,
) -> Trainer:
    """The Trainer of a run: the model built for the data (``info``, Dataset.info's form;
    default: the named dataset's), Adam, the schedule (one-cycle over ``train_size`` training
    images, default the config's count), early stopping, checkpoints and logs."""
    info = info or data.describe(config.dataset)
    model = build_model(config, info)
    opt = optim.Adam(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, amsgrad=config.amsgrad
    )
    if config.schedule == "onecycle":  # per batch; no plateau cuts on top of the cycle
        scheduler: Callback = OneCycleScheduler(**config.one_cycle_settings(train_size))
    else:
        scheduler = PlateauScheduler(
            "val_loss", factor=config.lr_factor, patience=config.lr_patience, min_lr=config.min_lr
        )
    callbacks = [
        EarlyStopping(config.monitor, patience=config.patience),
        scheduler,
        ModelCheckpoint(run_dir / "checkpoints", monitor=config.monitor),
        CSVLogger(run_dir / "history.csv"),
        *extra_callbacks,
    ]
    if config.tensorboard:
        callbacks.append(TensorBoardLogger(run_dir / "tensorboard"))
    return Trainer(
        model,
        nn.CrossEntropyLoss(),
        opt,
        device=backend,
        callbacks=callbacks,
        history_path=run_dir / "history.json",
        config={**config.to_dict(), "data": info},
        progress=progress,
    )


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    resume: bool = True,
    progress: bool = True,
    extra_callbacks: tuple = (),
) -> dict[str, Any]:
    """Train with early stopping, checkpointing into ``run_dir/checkpoints``.

    The run folder is claimed for the whole call (gpucnn.train.runs: a second process fails at
    once). With ``resume``: a run that finished (``summary.json`` present) is not trained
    again, a run that crashed continues from its last good checkpoint, and a folder holding a
    run of another config is refused; without, the folder's results are cleared first.

    Returns:
        A summary (also written to ``run_dir/summary.json``): epochs run, the best epoch (the
        one ``best.npz`` holds), its validation loss and accuracy, the best checkpoint's path
        and the training time.
    """
    folder = RunFolder(run_dir)
    with folder.claim():
        remove_stale_parts(folder.path)  # what a killed write left (checkpoints/: on resume)
        done = folder.path / "summary.json"
        if resume:
            folder.check_config(config)
            if done.exists():
                return json.loads(done.read_text())
        else:
            folder.clear()
        backend = get_backend(config.device)  # resolved once for the whole run
        run_data = load_data(config)
        info = run_data.info()
        write_json(folder.path / "config.json", {**config.to_dict(), "data": info})
        loaders = make_loaders(config, run_data.parts, backend, run_data.normalization)
        trainer = build_trainer(
            config, folder.path, backend, progress, extra_callbacks, info,
            len(run_data.parts["train"]),
        )  # fmt: skip
        checkpoints = next(c for c in trainer.callbacks if isinstance(c, ModelCheckpoint))
        if resume:
            checkpoints.resume(trainer)
        history = trainer.fit(loaders["train"], loaders.get("val"), config.epochs)
        i = checkpoints.best_epoch - 1  # -1: no epoch was ever best (no validation metric)
        summary = {
            "epochs": len(history["epoch"]),
            "best_epoch": i + 1,
            "best_val_loss": history["val_loss"][i] if i >= 0 else None,
            "best_val_accuracy": history["val_accuracy"][i] if i >= 0 else None,
            "best_checkpoint": str(checkpoints.best_path if i >= 0 else checkpoints.last_path),
            "train_time_s": float(sum(history["elapsed_s"])),
        }
        write_json(done, summary)
        return summary


@dataclass
class Evaluation:
    """A checkpoint evaluated on one split: its metrics, and what pictures of it need.

    Attributes:
        metrics: JSON-ready: split, samples, loss, accuracy, top-3 accuracy, per-class
            accuracy, confusion matrix, classes.
        model: the evaluated model, in eval mode, on the host.
        images: the split's uint8 images (N, C, H, W); labels and predictions (N,).
        classes, mean, std: the class names and the normalisation (one value per channel).
        best_epoch: the epoch whose weights the checkpoint holds, when it says.
    """

    metrics: dict[str, Any]
    model: nn.Module
    images: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    classes: list[str]
    mean: Any
    std: Any
    best_epoch: int | None = None


def split_info(config: TrainConfig) -> dict[str, Any]:
    """What the run's data is: counts per split and per class, the split seed and fractions,
    the augmentation, the normalisation, the classes and image shape, and the dataset's facts
    (digests; an image folder's files per split and the images skipped) (the run folder's
    data.json)."""
    run_data = load_data(config)
    ds, norm = run_data.dataset, run_data.normalization
    parts = run_data.parts
    skipped = ds.facts.get("skipped_images") or []
    if skipped:
        log.warning("%d images of %s skipped (listed in data.json)", len(skipped), ds.name)
    info = {
        "dataset": config.dataset,
        "kind": ds.kind,
        "counts": {k: int(len(v)) for k, v in parts.items()},
        "train_class_counts": np.bincount(
            parts["train"].labels, minlength=len(ds.classes)
        ).tolist(),
        "val_fraction": config.val_fraction,
        "split_seed": config.seed,
        "augmentation": repr(data.parse_recipe(config.augment)),
        "normalisation": (
            {"mean": norm.mean[0], "std": norm.std[0]} if norm.channels == 1 else norm.to_dict()
        ),
        "classes": list(ds.classes),
        "image_shape": list(ds.shape),
    }
    if ds.stratified:
        info["split"] = "per class" + ("" if "test" in ds.parts else ", test held out")
        info["test_fraction"] = config.test_fraction
        paths = ds.facts["paths"]  # the folder's file of each row of the cache
        info["files"] = {n: [paths[r] for r in p.rows().tolist()] for n, p in parts.items()}
    if ds.prepare:
        info["prepare"] = ds.prepare
    info.update({k: v for k, v in ds.facts.items() if k != "paths"})
    return info


def evaluate_checkpoint(
    config: TrainConfig, checkpoint: str | os.PathLike, split: str = "test"
) -> Evaluation:
    """Test metrics of a checkpoint: loss, accuracy, top-3, per-class accuracy, confusion.

    The images are prepared and normalised as the checkpoint's run prepared them (its
    config's ``data``; a checkpoint that predates it: the dataset's)."""
    backend = get_backend(config.device)
    ckpt = load_checkpoint(checkpoint)
    run_data = load_data(config)
    info = ckpt.config.get("data") or run_data.info()
    if list(info["classes"]) != list(run_data.dataset.classes):
        raise data.DataError(
            f"{checkpoint} was trained on classes {info['classes']}, but {config.dataset} "
            f"holds {list(run_data.dataset.classes)}"
        )
    norm = run_data.normalization
    if info.get("normalization"):
        norm = data.Normalization.from_dict(info["normalization"])
    loaders = make_loaders(config, run_data.parts, backend, norm)
    if split not in loaders:
        raise ValueError(f"no {split!r} data to evaluate on")
    classes = list(info["classes"])
    model = build_model(config, info)
    ckpt.restore(model)
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        optim.SGD(model.parameters(), lr=0.0),
        device=backend,
        progress=False,
    )
    logits, labels = trainer.predict(loaders[split])
    loss = float(nn.CrossEntropyLoss()(logits, labels))
    cm = confusion_matrix(logits, labels, len(classes))
    preds = logits.argmax(axis=1)
    metrics = {
        "split": split,
        "samples": int(len(labels)),
        "loss": loss,
        "accuracy": float((preds == labels).mean()),
        "top3_accuracy": topk_accuracy(logits, labels, min(3, len(classes))),
        "per_class_accuracy": {
            c: float(a) for c, a in zip(classes, per_class_accuracy(cm), strict=True)
        },
        "confusion_matrix": cm.tolist(),
        "classes": classes,
    }
    return Evaluation(
        metrics,
        model.to("cpu").eval(),
        run_data.parts[split].arrays()[0],
        labels,
        preds,
        classes,
        norm.mean,
        norm.std,
        best_epoch=ckpt.epoch or None,
    )


def evaluate(config: TrainConfig, checkpoint: str | os.PathLike, split: str = "test") -> dict:
    """The metrics of :func:`evaluate_checkpoint` (JSON-ready)."""
    return evaluate_checkpoint(config, checkpoint, split).metrics


def evaluate_run(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    checkpoint: str | os.PathLike,
    draw: bool = True,
    name: str | None = None,
) -> dict[str, Any]:
    """Evaluate a run's checkpoint on the test set and record it in the run folder:
    ``metrics.json`` (written once, naming the checkpoint and the plot files) and, with
    ``draw`` and matplotlib installed, ``plots/*.png`` (see gpucnn.plots.run_plots); with a
    ``name`` (an evaluation of one checkpoint, gpucnn.train.runs.evaluation_of),
    ``metrics-<name>.json`` and ``plots-<name>/`` instead, leaving the run's own alone.

    Returns:
        The metrics, as written.
    """
    from gpucnn import plots

    run_dir = Path(run_dir)
    ev = evaluate_checkpoint(config, checkpoint)
    files = []
    why = plots.unavailable() if draw else None
    if why is not None:
        log.warning("no plots: %s", why)
    elif draw:
        history_path = run_dir / "history.json"
        history = json.loads(history_path.read_text()) if history_path.exists() else None
        files = plots.run_plots(
            evaluation_paths(run_dir, name)[1], history, ev, run_name=run_dir.name
        )
    metrics = {**ev.metrics, "checkpoint": str(checkpoint), "plots": [str(f) for f in files]}
    write_json(evaluation_paths(run_dir, name)[0], metrics)
    return metrics


def record_sweep(folder: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge a sweep's rows into ``folder/sweep.json`` (one row per trial folder, this
    sweep's replacing earlier rows of the same trial), ranked by test accuracy, and draw
    ``folder/sweep.png`` comparing the trials' validation curves (when matplotlib is there).

    Returns:
        Every row of sweep.json, best first.
    """
    from gpucnn import plots

    path = Path(folder) / "sweep.json"
    try:
        earlier = json.loads(path.read_text()) if path.exists() else []
    except ValueError:
        log.warning("%s is unreadable; it is rewritten with this sweep's trials", path)
        earlier = []
    if not isinstance(earlier, list):
        earlier = []
    merged = {r["run"]: r for r in earlier if isinstance(r, dict) and "run" in r}
    merged.update({r["run"]: r for r in rows})
    ranked = sorted(merged.values(), key=lambda r: -(r.get("test_accuracy") or 0))
    write_json(path, ranked)
    if plots.unavailable() is None:
        histories = {}
        for r in ranked:
            h = Path(folder) / r["run"] / "history.json"
            if h.exists():
                histories[r["run"]] = json.loads(h.read_text())
        plots.sweep_curves(histories, Path(folder) / "sweep.png")
    return ranked
