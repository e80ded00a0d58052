"""Command-line plumbing shared by the flow entry points; imports no Prefect until a flow runs."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from gpucnn.train.config import TrainConfig, field_types

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


def config_from(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed options describe (validated: a bad value raises here,
    before anything starts)."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a stable order."""
    keys = sorted(grid)
    return [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*(grid[k] for k in keys))
    ]


def prepare_prefect_env() -> None:
    """Telemetry off, gpucnn's log lines in Prefect's logs; the local API is Prefect's
    ephemeral server (SQLite) unless PREFECT_API_URL names a server. The ephemeral server
    gets 90 s to start (Prefect's 20 s is short on a busy 2-core machine)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "gpucnn")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def expected_errors() -> tuple[type[BaseException], ...]:
    """Failures a user can act on: reported in one line, without a traceback."""
    from gpucnn.backend import BackendUnavailableError
    from gpucnn.data import DataError
    from gpucnn.train.errors import CheckpointError, TrainingError

    return (
        DataError,
        TrainingError,
        CheckpointError,
        BackendUnavailableError,
        ValueError,
        KeyError,
        OSError,
    )


class _NoTracebackForExpected(logging.Filter):
    """Prefect logs a failed task or flow with its traceback; for an expected error the
    message already names it, so the traceback is dropped from the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], expected_errors()):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_expected_tracebacks() -> None:
    """Attach the filter to Prefect's console handlers (call after importing prefect)."""
    for name in ("prefect", ""):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_NoTracebackForExpected())


def run_cli(body: Callable[[], Any]) -> int:
    """Run ``body``; expected failures print one line and exit 1, never a traceback."""
    try:
        body()
    except expected_errors() as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: {type(exc).__name__}: {reason}", file=sys.stderr)
        details = str(exc).splitlines()[1:]
        for line in details[:6]:
            print(f"  {line.strip()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "interrupted; re-run the same command to resume from the last checkpoint",
            file=sys.stderr,
        )
        return 130
    return 0
