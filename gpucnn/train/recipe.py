"""A whole training run from one config: data, model, optimizer, callbacks, evaluation.

The flows' tasks and the benchmarks call these functions; they hold the recipe, the flows
hold only orchestration. The defaults are the article's recipe: the seed model, Adam
(lr 1e-3, weight decay 1e-5, amsgrad), batch 64, an 80/20 split, early stopping with
patience 7 and learning-rate cuts (factor 0.5, patience 3, min 1e-6) on the validation loss.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpucnn import data, models, nn, optim
from gpucnn.backend import Backend, get_backend
from gpucnn.train.callbacks import EarlyStopping, ModelCheckpoint, PlateauScheduler
from gpucnn.train.metrics import confusion_matrix, per_class_accuracy, topk_accuracy
from gpucnn.train.trainer import Trainer
from gpucnn.train.transfer import load_weights


@dataclass
class TrainConfig:
    """Everything that defines a run (saved in every checkpoint and in the run folder)."""

    dataset: str = "mnist"
    model: str = "seed"
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    amsgrad: bool = True
    patience: int = 7
    monitor: str = "val_loss"  # what early stopping and the best checkpoint watch
    lr_patience: int = 3
    lr_factor: float = 0.5
    min_lr: float = 1e-6
    augment: str = "none"
    val_fraction: float = 0.2
    device: str = "auto"
    seed: int = 0
    limit: int | None = None
    data_dir: str | None = None
    mirrors: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.model not in models.MODELS:
            raise ValueError(
                f"unknown model {self.model!r}; choose one of {', '.join(models.MODELS)}"
            )
        data.get_spec(self.dataset)
        data.parse_recipe(self.augment)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.monitor not in ("val_loss", "val_accuracy"):
            raise ValueError(f"monitor must be 'val_loss' or 'val_accuracy', got {self.monitor!r}")
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"limit must be >= 2, got {self.limit}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def load_split(config: TrainConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The verified data, split 80/20 (seeded) into train and validation, plus test.

    ``limit`` keeps the first ``limit`` training images (and a proportional test subset).
    """
    x, y = data.load(config.dataset, "train", root=config.data_dir, mirrors=config.mirrors)
    xt, yt = data.load(config.dataset, "test", root=config.data_dir, mirrors=config.mirrors)
    if config.limit is not None:
        x, y = x[: config.limit], y[: config.limit]
        keep = max(1, config.limit * len(yt) // 60000)
        xt, yt = xt[:keep], yt[:keep]
    train, val = data.train_val_split(x, y, config.val_fraction, seed=config.seed)
    return {"train": train, "val": val, "test": (xt, yt)}


def make_loaders(
    config: TrainConfig, split: dict[str, tuple[np.ndarray, np.ndarray]], backend: Backend
) -> dict:
    """DataLoaders for the split, their data moved once to ``backend``'s device."""
    spec = data.get_spec(config.dataset)
    common = {"mean": spec.mean, "std": spec.std, "device": backend}
    loaders = {
        "train": data.DataLoader(
            *split["train"],
            config.batch_size,
            shuffle=True,
            seed=config.seed,
            augment=data.parse_recipe(config.augment),
            **common,
        )
    }
    for name in ("val", "test"):
        if len(split[name][1]):
            loaders[name] = data.DataLoader(*split[name], 1000, shuffle=False, **common)
    return loaders


def build_trainer(
    config: TrainConfig,
    run_dir: Path,
    backend: Backend,
    progress: bool = True,
    extra_callbacks: tuple = (),
) -> Trainer:
    spec = data.get_spec(config.dataset)
    model = models.build(config.model, num_classes=len(spec.classes), seed=config.seed)
    opt = optim.Adam(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, amsgrad=config.amsgrad
    )
    callbacks = [
        EarlyStopping(config.monitor, patience=config.patience),
        PlateauScheduler(
            "val_loss", factor=config.lr_factor, patience=config.lr_patience, min_lr=config.min_lr
        ),
        ModelCheckpoint(run_dir / "checkpoints", monitor=config.monitor),
        *extra_callbacks,
    ]
    return Trainer(
        model,
        nn.CrossEntropyLoss(),
        opt,
        device=backend,
        callbacks=callbacks,
        history_path=run_dir / "history.json",
        config=config.to_dict(),
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

    With ``resume``: a run that finished (``summary.json`` present) is not trained again, and
    a run that crashed continues from its ``last.npz``. Returns a summary: epochs run, best
    validation loss and accuracy, and the path of the best checkpoint (also written to
    ``run_dir/summary.json``).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    done = run_dir / "summary.json"
    if resume and done.exists():
        return json.loads(done.read_text())
    done.unlink(missing_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    backend = get_backend(config.device)  # resolved once for the whole run
    loaders = make_loaders(config, load_split(config), backend)
    trainer = build_trainer(config, run_dir, backend, progress, extra_callbacks)
    last = run_dir / "checkpoints" / "last.npz"
    if resume and last.exists():
        trainer.load_checkpoint(last)
    elif last.exists():
        last.unlink()  # a fresh start must not leave an older run's checkpoint to resume from
    history = trainer.fit(loaders["train"], loaders.get("val"), config.epochs)
    best = run_dir / "checkpoints" / "best.npz"
    watched = np.array(history[config.monitor], dtype=float)  # NaN where there was no val set
    has_val = bool(np.isfinite(watched).any())
    if has_val:
        i = int(
            np.nanargmax(watched) if config.monitor == "val_accuracy" else np.nanargmin(watched)
        )
    else:
        i = -1
    summary = {
        "epochs": len(history["epoch"]),
        "best_epoch": i + 1,
        "best_val_loss": history["val_loss"][i] if has_val else None,
        "best_val_accuracy": history["val_accuracy"][i] if has_val else None,
        "best_checkpoint": str(best if best.exists() else last),
        "train_time_s": float(sum(history["elapsed_s"])),
    }
    done.write_text(json.dumps(summary, indent=1))
    return summary


def evaluate(config: TrainConfig, checkpoint: str | os.PathLike, split: str = "test") -> dict:
    """Test metrics of a checkpoint: loss, accuracy, top-3, per-class accuracy, confusion."""
    spec = data.get_spec(config.dataset)
    backend = get_backend(config.device)
    loaders = make_loaders(config, load_split(config), backend)
    if split not in loaders:
        raise ValueError(f"no {split!r} data to evaluate on")
    model = models.build(config.model, num_classes=len(spec.classes), seed=config.seed)
    load_weights(model, checkpoint)
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        optim.SGD(model.parameters(), lr=0.0),
        device=backend,
        progress=False,
    )
    logits, labels = trainer.predict(loaders[split])
    loss = float(nn.CrossEntropyLoss()(logits, labels))
    cm = confusion_matrix(logits, labels, len(spec.classes))
    return {
        "split": split,
        "samples": int(len(labels)),
        "loss": loss,
        "accuracy": float((logits.argmax(axis=1) == labels).mean()),
        "top3_accuracy": topk_accuracy(logits, labels, 3),
        "per_class_accuracy": {
            c: float(a) for c, a in zip(spec.classes, per_class_accuracy(cm), strict=True)
        },
        "confusion_matrix": cm.tolist(),
        "classes": list(spec.classes),
    }
