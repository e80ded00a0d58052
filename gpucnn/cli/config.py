"""A TrainConfig from a command line: one option per config field, presets, sweep grids.

The options are generated from TrainConfig's fields (type, default, help, choices:
gpucnn.train.config), so the command line and the config cannot drift; :func:`config_from`
builds the TrainConfig, which validates every value before anything starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from typing import Any

from gpucnn.train.config import PRESETS, TrainConfig, field_types

GROUPS = {"run": "run", "where": "where the data comes from"}


def parse_value(name: str, text: str) -> Any:
    """Text from a command line (an option, a sweep grid) as the value of config field
    ``name``: its field's type, with bools as yes/no words."""
    kind, _ = field_types()[name]
    if kind is bool:
        words = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
        if text.strip().lower() not in words:
            raise ValueError(f"{name}: expected true or false, got {text!r}")
        return words[text.strip().lower()]
    try:
        return kind(text.strip())
    except ValueError:
        raise ValueError(f"{name}: expected {kind.__name__}, got {text!r}") from None


def add_config_options(ap: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field: its type, default, choices and help come from the
    field itself (gpucnn.train.config), so the command line and the config cannot drift."""
    groups = {key: ap.add_argument_group(title) for key, title in GROUPS.items()}
    types = field_types()
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        flag = "--" + meta.get("flag", f.name).replace("_", "-")
        kind, is_list = types[f.name]
        default = f.default
        shown = "" if default is None else " (default: %(default)s)"
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": meta["help"] + shown}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif is_list:
            kwargs.update(action="append", type=kind, metavar=meta.get("metavar"))
        else:
            kwargs.update(type=kind, choices=meta.get("choices"), metavar=meta.get("metavar"))
        groups[meta.get("group", "run")].add_argument(flag, **kwargs)


def add_preset_option(ap: argparse.ArgumentParser) -> None:
    """``--preset NAME``: a named recipe (gpucnn.train.config.PRESETS) whose values become the
    options' defaults; options given on the command line win (see :func:`parse_args`)."""
    ap.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="start from a named recipe; options given explicitly override it (fast: the seed "
        "model, batch 256, one cycle of 2 epochs: MNIST to 99%% test accuracy; cifar: CIFAR-10 "
        "in colour, the narrow ResNet, one cycle of 10 epochs, flips and crops)",
    )


def parse_args(ap: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with ``ap``; a ``--preset``'s values are the defaults, so options given
    explicitly win (two passes: the preset first, then everything)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default=None)
    known, _ = pre.parse_known_args(argv)
    if known.preset:
        ap.set_defaults(**PRESETS[known.preset])
    return ap.parse_args(argv)


def config_from(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed options describe (validated: a bad value raises here,
    before anything starts)."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def checkpoint_config(
    saved: dict[str, Any], data_dir: str | None = None, mirrors: list[str] | None = None
) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with (``saved``: its config), its data found
    in ``data_dir`` and ``mirrors`` when they are given (an evaluation elsewhere)."""
    overrides = {"data_dir": data_dir, "mirrors": mirrors}
    return TrainConfig.from_dict({**saved, **{k: v for k, v in overrides.items() if v is not None}})


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a stable order."""
    keys = sorted(grid)
    return [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*(grid[k] for k in keys))
    ]


def verify_data(configs: list[TrainConfig]) -> None:
    """Fetch what is missing and verify the datasets ``configs`` name, each once (a command
    does it while Prefect's local API starts; the flow's own check then finds them whole)."""
    from gpucnn import data

    seen = set()
    for c in configs:
        key = (c.dataset, c.data_dir, tuple(c.mirrors or ()), tuple(c.data_options().items()))
        if key not in seen:
            seen.add(key)
            data.download(c.dataset, c.data_dir, c.mirrors, **c.data_options())
