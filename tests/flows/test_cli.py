"""The command lines: fast --help, every option with its default, one-line failures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args, timeout=300, env=None):
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "module",
    ["gpucnn.flows.train", "gpucnn.flows.evaluate", "gpucnn.flows.sweep", "gpucnn.predict"],
)
def test_help_is_fast_and_starts_nothing(module):
    t0 = time.perf_counter()
    out = run("-m", module, "--help")
    assert out.returncode == 0, out.stderr
    assert time.perf_counter() - t0 < 10
    assert "usage:" in out.stdout
    probe = run(
        "-c",
        f"import sys, runpy; sys.argv = ['x', '--help']\n"
        f"try:\n  runpy.run_module('{module}', run_name='__main__')\n"
        f"except SystemExit: pass\n"
        f"print(sorted(m for m in ('prefect', 'cupy', 'torch', 'matplotlib') "
        f"if m in sys.modules))",
    )
    assert probe.stdout.strip().endswith("[]"), probe.stdout + probe.stderr


def test_train_help_lists_every_option_with_its_default():
    text = run("-m", "gpucnn.flows.train", "--help").stdout
    for option, default in [
        ("--dataset", "mnist"),
        ("--model", "seed"),
        ("--epochs", "50"),
        ("--batch-size", "64"),
        ("--lr", "0.001"),
        ("--weight-decay", "1e-05"),
        ("--patience", "7"),
        ("--augment", "none"),
        ("--device", "auto"),
        ("--seed", "0"),
        ("--data-dir", "GPUCNN_DATA_DIR"),
        ("--output-dir", "runs"),
        ("--limit", "all"),
        ("--resume", "on"),
    ]:
        described = text.index(f"\n  {option}")  # the option's own entry, not the usage line
        assert default in text[described : described + 400], (option, default)


def test_bad_option_value_is_a_usage_error():
    out = run("-m", "gpucnn.flows.train", "--model", "alexnet")
    assert out.returncode == 2
    assert "invalid choice: 'alexnet'" in out.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_expected_failure_is_one_line_not_a_traceback(tmp_path):
    pytest.importorskip("prefect")
    out = run(
        "-m",
        "gpucnn.flows.train",
        "--limit",
        "100",
        "--epochs",
        "1",
        "--data-dir",
        str(tmp_path / "data"),
        "--output-dir",
        str(tmp_path / "runs"),
        "--mirror",
        f"http://127.0.0.1:{_closed_port()}/",
        "--dataset",
        "kmnist",
        env={"PREFECT_HOME": str(tmp_path / "prefect"), "GPUCNN_DATA_MIRROR": ""},
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr.split("error:")[-1]
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert lines and lines[0].startswith("error: DownloadError: could not download"), out.stderr


def test_evaluate_missing_checkpoint_is_one_line(tmp_path):
    out = run("-m", "gpucnn.flows.evaluate", str(tmp_path / "nope.npz"))
    assert out.returncode == 1
    assert (
        out.stderr.strip()
        == f"error: CheckpointError: checkpoint {tmp_path / 'nope.npz'} does not exist"
    )
