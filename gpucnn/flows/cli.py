"""Command-line plumbing shared by the flow entry points; imports no Prefect until a flow runs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from gpucnn.train.recipe import TrainConfig

DEFAULTS = TrainConfig()


def add_config_options(ap: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, each showing its default."""
    from gpucnn import data, models

    d = DEFAULTS
    g = ap.add_argument_group("run")
    g.add_argument(
        "--dataset",
        default=d.dataset,
        choices=sorted(data.DATASETS),
        help="dataset (default: %(default)s)",
    )
    g.add_argument(
        "--model",
        default=d.model,
        choices=list(models.MODELS),
        help="network (default: %(default)s)",
    )
    g.add_argument(
        "--epochs",
        type=int,
        default=d.epochs,
        help="maximum epochs; early stopping usually ends sooner (default: %(default)s)",
    )
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    g.add_argument(
        "--lr", type=float, default=d.lr, help="Adam learning rate (default: %(default)s)"
    )
    g.add_argument(
        "--weight-decay",
        type=float,
        default=d.weight_decay,
        help="L2 penalty in Adam (default: %(default)s)",
    )
    g.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="early-stopping patience in epochs (default: %(default)s)",
    )
    g.add_argument(
        "--monitor",
        default=d.monitor,
        choices=["val_loss", "val_accuracy"],
        help="what early stopping and the best checkpoint watch (default: %(default)s)",
    )
    g.add_argument(
        "--lr-patience",
        type=int,
        default=d.lr_patience,
        help="epochs without improvement before halving the lr (default: %(default)s)",
    )
    g.add_argument(
        "--augment",
        default=d.augment,
        help="'none', 'default' (rotate 10, shift 0.1) or items like "
        "'rotate=10,shift=0.1,scale=0.9:1.1,flip' (default: %(default)s)",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="held out for validation (default: %(default)s)",
    )
    g.add_argument(
        "--device", default=d.device, choices=["auto", "cpu", "cuda"], help="(default: %(default)s)"
    )
    g.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seeds weights, split, shuffling, dropout (default: %(default)s)",
    )
    g.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use only the first N training images, for a quick run (default: all)",
    )
    w = ap.add_argument_group("where")
    w.add_argument(
        "--data-dir",
        default=None,
        help="dataset cache (default: $GPUCNN_DATA_DIR or ~/.cache/gpucnn)",
    )
    w.add_argument(
        "--mirror",
        action="append",
        default=None,
        metavar="URL",
        help="dataset URL prefix to try first; repeatable "
        "(default: $GPUCNN_DATA_MIRROR, then the official mirrors)",
    )


def config_from(args: argparse.Namespace) -> dict[str, Any]:
    return TrainConfig(
        dataset=args.dataset,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        monitor=args.monitor,
        lr_patience=args.lr_patience,
        augment=args.augment,
        val_fraction=args.val_fraction,
        device=args.device,
        seed=args.seed,
        limit=args.limit,
        data_dir=args.data_dir,
        mirrors=args.mirror,
    ).to_dict()


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
    from gpucnn.backend import BackendUnavailableError
    from gpucnn.data import DataError
    from gpucnn.train.errors import CheckpointError, TrainingError

    try:
        body()
    except (
        DataError,
        TrainingError,
        CheckpointError,
        BackendUnavailableError,
        ValueError,
        KeyError,
        OSError,
    ) as exc:
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
