"""TrainConfig: everything that defines a run, as one object from the command line to the loop.

Each field carries its help text (and, where it has them, its choices) in its metadata: the
command lines build their options from these fields (gpucnn.cli.config), the sweep parses its
grid with the same types, and checkpoints and the run folder record the config as JSON.

The defaults are the article's recipe: the seed model, Adam (lr 1e-3, weight decay 1e-5,
amsgrad), batch 64, an 80/20 split, early stopping with patience 7 and learning-rate cuts
(factor 0.5, patience 3, min 1e-6) on the validation loss.

Presets are named sets of field values (:data:`PRESETS`): ``TrainConfig.preset("fast")`` is
the config with the preset's values, and any field given with it overrides the preset. A
preset is a starting point, not a field: the config it makes records every value it set, so
``config.json``, checkpoints and the run name (a digest of the values) are those of the same
config written out field by field.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpucnn import data, models
from gpucnn.backend import DEVICES
from gpucnn.optim.onecycle import check_one_cycle

MONITORS = ("val_loss", "val_accuracy")
SCHEDULES = ("plateau", "onecycle")

# named recipes: field values a preset sets (TrainConfig.preset); see each one's comment
PRESETS: dict[str, dict[str, Any]] = {
    # MNIST to >= 99.0% mean test accuracy in the least training time: the seed model,
    # batch 256, one cycle of 2 epochs with the lr peaking at 1.5e-2 a quarter of the way in
    # (Adam), 2% of the training images held out for the best checkpoint and early stopping
    # (benchmarks/results/accuracy-fast.md: 5 seeds on a 2-core CPU)
    "fast": {
        "model": "seed",
        "epochs": 2,
        "batch_size": 256,
        "lr": 1.5e-2,
        "schedule": "onecycle",
        "pct_start": 0.25,
        "val_fraction": 0.02,
    },
    # CIFAR-10-sized colour images (32×32 RGB) on a CPU: the narrow ResNet (one BasicBlock per
    # stage, widths 16, 32, 64), batch 128, one cycle of 10 epochs peaking at lr 4e-3 a quarter
    # of the way in (Adam), flips and random crops, 10% of the training images held out
    # (benchmarks/results/colour-cpu.md: its epoch on 2 cores beside PyTorch's)
    "cifar": {
        "dataset": "cifar10",
        "model": "resnet",
        "epochs": 10,
        "batch_size": 128,
        "lr": 4e-3,
        "schedule": "onecycle",
        "pct_start": 0.25,
        "augment": "crop-flip",
        "val_fraction": 0.1,
    },
}


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

    dataset: str = _field(
        "mnist",
        f"a dataset's name ({', '.join(data.names())}) or the path of a folder of images: one "
        "subfolder per class, or train/ and test/ (and val/) holding them",
        metavar="NAME|PATH",
    )
    model: str = _field("seed", "network", choices=tuple(models.MODELS))
    epochs: int = _field(
        50, "maximum epochs; early stopping usually ends sooner (onecycle: the cycle's length)"
    )
    batch_size: int = _field(64, "images per training step")
    lr: float = _field(1e-3, "Adam learning rate (with --schedule onecycle: the cycle's peak)")
    weight_decay: float = _field(1e-5, "L2 penalty added to the gradient in Adam")
    amsgrad: bool = _field(True, "Adam's AMSGrad variant")
    patience: int = _field(7, "early-stopping patience in epochs")
    monitor: str = _field(
        "val_loss", "what early stopping and the best checkpoint watch", choices=MONITORS
    )
    schedule: str = _field(
        "plateau",
        "learning-rate schedule: 'plateau' cuts the lr when val_loss stalls (lr-patience, "
        "lr-factor, min-lr); 'onecycle' steps it every batch, up from lr/25 to lr over "
        "pct-start of the run's steps and down to lr/2.5e5 at its end",
        choices=SCHEDULES,
    )
    pct_start: float = _field(0.3, "onecycle: the fraction of the steps spent raising the lr")
    lr_patience: int = _field(3, "plateau: epochs without improvement before the lr is cut")
    lr_factor: float = _field(0.5, "plateau: factor the lr is cut by")
    min_lr: float = _field(1e-6, "plateau: the lr is never cut below this")
    augment: str = _field(
        "none",
        "'none', 'default' (digits: rotate 10, shift 0.1), 'crop-flip' (photos: a horizontal "
        "flip, then a random crop of the padded image) or items like "
        "'rotate=10,shift=0.1,scale=0.9:1.1,flip,crop=4'",
    )
    val_fraction: float = _field(0.2, "fraction of the training images held out for validation")
    test_fraction: float = _field(
        0.2,
        "an image folder without test/: fraction of each class held out for the test set",
    )
    image_size: int | None = _field(
        None,
        "an image folder: the side S images are resized to (shorter side to S, then the centre "
        "SxS crop) (default: the shorter side of the training images' most common size, at "
        "most 64)",
    )
    channels: int | None = _field(
        None,
        "an image folder: 3 (RGB) or 1 (grayscale) (default: 1 when every image is grayscale)",
        choices=(1, 3),
    )
    skip_bad_images: bool = _field(
        False,
        "an image folder: leave out images that cannot be read (listed in the run's data.json) "
        "instead of failing",
    )
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
        "dataset URL prefix to download from instead of the official mirrors, tried in order "
        "after $GPUCNN_DATA_MIRROR; repeatable (default: $GPUCNN_DATA_MIRROR, then the "
        "official mirrors)",
        group="where",
        flag="mirror",
        metavar="URL",
    )

    def __post_init__(self) -> None:
        if self.model not in models.MODELS:
            raise ValueError(
                f"unknown model {self.model!r}; choose one of {', '.join(models.MODELS)}"
            )
        kind = data.kind_of(self.dataset)  # an unknown name: a ValueError naming those there are
        if kind == "folder":
            self.dataset = str(Path(self.dataset).expanduser().absolute())
        elif any(v is not None for v in (self.image_size, self.channels)):
            raise ValueError(
                f"image_size and channels prepare an image folder's images; {self.dataset}'s "
                "are fixed"
            )
        if self.image_size is not None and not 4 <= self.image_size <= 4096:
            raise ValueError(f"image_size must be in [4, 4096], got {self.image_size}")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if not 0 <= self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
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
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if not 0 <= self.pct_start <= 1:
            raise ValueError(f"pct_start must be in [0, 1], got {self.pct_start}")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be 'val_loss' or 'val_accuracy', got {self.monitor!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        available = data.train_count(self.dataset)  # None: a folder, counted when scanned
        if self.limit is not None and not 2 <= self.limit <= (available or self.limit):
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
        n_val = int(round(self.val_fraction * n)) if n else 1
        if n and not 1 <= n_val < n:
            raise ValueError(
                f"val_fraction {self.val_fraction} of {n} training images holds out {n_val} for "
                f"validation; both parts need at least 1 image (raise limit or change "
                f"val_fraction)"
            )
        if self.schedule == "onecycle" and n:
            try:
                check_one_cycle(**self.one_cycle_settings())
            except ValueError as exc:
                raise ValueError(
                    f"schedule onecycle with pct_start {self.pct_start} over {self.epochs} "
                    f"epochs of {self.steps_per_epoch} steps: {exc}"
                ) from None

    @property
    def train_size(self) -> int:
        """Training images after the validation split (gpucnn.data.train_val_split's count) of
        a named dataset. An image folder's is known once it is scanned (len(split["train"]))."""
        n = self.limit or data.train_count(self.dataset)
        if n is None:
            raise ValueError(
                f"the training images of {self.dataset} are counted when the folder is scanned"
            )
        return n - int(round(self.val_fraction * n))

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch: batches of the training split, the last one partial."""
        return -(-self.train_size // self.batch_size)

    def one_cycle_settings(self, train_size: int | None = None) -> dict[str, Any]:
        """The "onecycle" schedule's arguments (gpucnn.optim.OneCycleLR, OneCycleScheduler):
        peak ``lr``, ``pct_start``, one cycle over ``epochs * steps_per_epoch`` steps (of
        ``train_size`` training images, default :attr:`train_size`), and PyTorch's other
        defaults (cosine, from lr / 25 down to lr / 25 / 1e4)."""
        steps = self.steps_per_epoch if train_size is None else -(-train_size // self.batch_size)
        return {
            "max_lr": self.lr,
            "epochs": self.epochs,
            "steps_per_epoch": steps,
            "pct_start": self.pct_start,
        }

    def data_options(self) -> dict[str, Any]:
        """What gpucnn.data.download and open_dataset take besides the name, root and mirrors:
        an image folder's decoding options (none for a named dataset)."""
        if data.kind_of(self.dataset) != "folder":
            return {}
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "skip_bad_images": self.skip_bad_images,
        }

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """The config of preset ``name`` (:data:`PRESETS`), with ``overrides`` on top.

        Raises:
            ValueError: an unknown preset (naming those there are), or a bad value.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

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
