"""TrainConfig: everything that defines a run, as one object from the command line to the loop.

Each field carries its help text (and, where it has them, its choices) in its metadata: the
command lines build their options from these fields (gpucnn.flows.cli), the sweep parses its
grid with the same types, and checkpoints and the run folder record the config as JSON.

The defaults are the article's recipe: the seed model, Adam (lr 1e-3, weight decay 1e-5,
amsgrad), batch 64, an 80/20 split, early stopping with patience 7 and learning-rate cuts
(factor 0.5, patience 3, min 1e-6) on the validation loss.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from gpucnn import data, models
from gpucnn.backend import DEVICES

MONITORS = ("val_loss", "val_accuracy")


def _field(default: Any, help: str, group: str = "run", **cli: Any) -> Any:
    """A config field with its command-line help (``cli``: choices, flag, metavar)."""
    return field(default=default, metadata={"help": help, "group": group, **cli})


@dataclass
class TrainConfig:
    """Everything that defines a run (saved in every checkpoint and in the run folder).

    Raises:
        ValueError: on construction, for any value a run cannot use, naming the field, the
            value and the rule.
    """

    dataset: str = _field("mnist", "dataset", choices=tuple(sorted(data.DATASETS)))
    model: str = _field("seed", "network", choices=tuple(models.MODELS))
    epochs: int = _field(50, "maximum epochs; early stopping usually ends sooner")
    batch_size: int = _field(64, "images per training step")
    lr: float = _field(1e-3, "Adam learning rate")
    weight_decay: float = _field(1e-5, "L2 penalty added to the gradient in Adam")
    amsgrad: bool = _field(True, "Adam's AMSGrad variant")
    patience: int = _field(7, "early-stopping patience in epochs")
    monitor: str = _field(
        "val_loss", "what early stopping and the best checkpoint watch", choices=MONITORS
    )
    lr_patience: int = _field(3, "epochs without improvement before the lr is cut")
    lr_factor: float = _field(0.5, "factor the lr is cut by on a plateau")
    min_lr: float = _field(1e-6, "the lr is never cut below this")
    augment: str = _field(
        "none",
        "'none', 'default' (rotate 10, shift 0.1) or items like "
        "'rotate=10,shift=0.1,scale=0.9:1.1,flip'",
    )
    val_fraction: float = _field(0.2, "fraction of the training images held out for validation")
    device: str = _field("auto", "where to train", choices=DEVICES)
    seed: int = _field(0, "seeds weights, split, shuffling, dropout")
    limit: int | None = _field(
        None,
        "use only the first N training images, for a quick run; the test set stays whole "
        "(default: all)",
    )
    tensorboard: bool = _field(
        False, "also write TensorBoard event files to <run>/tensorboard (the 'tensorboard' extra)"
    )
    data_dir: str | None = _field(
        None, "dataset cache (default: $GPUCNN_DATA_DIR or ~/.cache/gpucnn)", group="where"
    )
    mirrors: list[str] | None = _field(
        None,
        "dataset URL prefix to try first; repeatable "
        "(default: $GPUCNN_DATA_MIRROR, then the official mirrors)",
        group="where",
        flag="mirror",
        metavar="URL",
    )

    def __post_init__(self) -> None:
        if self.model not in models.MODELS:
            raise ValueError(
                f"unknown model {self.model!r}; choose one of {', '.join(models.MODELS)}"
            )
        spec = data.get_spec(self.dataset)
        data.parse_recipe(self.augment)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("patience", "lr_patience", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"lr_factor must be in (0, 1), got {self.lr_factor}")
        if not (math.isfinite(self.min_lr) and self.min_lr >= 0):
            raise ValueError(f"min_lr must be a finite number >= 0, got {self.min_lr}")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be 'val_loss' or 'val_accuracy', got {self.monitor!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        available = spec.files["train_images"].shape[0]
        if self.limit is not None and not 2 <= self.limit <= available:
            raise ValueError(
                f"limit must be between 2 and {available} (the {self.dataset} training set), "
                f"got {self.limit}"
            )
        if not 0 < self.val_fraction < 1:
            raise ValueError(
                f"val_fraction must be in (0, 1): early stopping and the best checkpoint watch "
                f"the validation set; got {self.val_fraction}"
            )
        n = self.limit or available
        n_val = int(round(self.val_fraction * n))
        if not 1 <= n_val < n:
            raise ValueError(
                f"val_fraction {self.val_fraction} of {n} training images holds out {n_val} for "
                f"validation; both parts need at least 1 image (raise limit or change "
                f"val_fraction)"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from a dict (a checkpoint's, a deployment's parameters); unknown keys are
        ignored, missing ones take their defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)


def field_types() -> dict[str, tuple[type, bool]]:
    """{field: (the type of one value, whether it is a list)}, with None stripped from
    optional fields: what the command line and the sweep grid parse text into."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for f in dataclasses.fields(TrainConfig):
        args = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
        kind = args[0] if args else hints[f.name]
        is_list = typing.get_origin(kind) is list
        out[f.name] = ((typing.get_args(kind) or (str,))[0] if is_list else kind, is_list)
    return out
