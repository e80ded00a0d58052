"""The command lines: fast --help, every option with its default, one-line failures."""

from __future__ import annotations

import json
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
    assert "exit status: 0 done, 1 a failure at run time" in " ".join(out.stdout.split())
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
    assert out.stderr.count("could not download") == 1, out.stderr  # said once, at the end
    assert out.stderr.count("starting Prefect and its local API server") == 1  # what the wait is
    assert "GPUCNN_DATA_MIRROR" in out.stderr and "--data-dir" in out.stderr  # the way out


def test_evaluate_missing_checkpoint_is_one_line(tmp_path):
    out = run("-m", "gpucnn.flows.evaluate", str(tmp_path / "nope.npz"))
    assert out.returncode == 1
    assert (
        out.stderr.strip()
        == f"error: CheckpointError: checkpoint {tmp_path / 'nope.npz'} does not exist"
    )


def test_every_config_field_is_an_option_parsed_into_one_config():
    import dataclasses

    from gpucnn.cli.config import config_from
    from gpucnn.flows.train import parser
    from gpucnn.train.config import TrainConfig

    ap = parser()
    flags = {a.dest for a in ap._actions}
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= flags
    args = ap.parse_args(
        [
            "--no-amsgrad",
            "--lr-factor",
            "0.3",
            "--limit",
            "100",
            "--mirror",
            "http://a/",
            "--mirror",
            "http://b/",
            "--monitor",
            "val_accuracy",
        ]  # fmt: skip
    )
    config = config_from(args)
    assert isinstance(config, TrainConfig)
    assert config == TrainConfig(
        amsgrad=False, lr_factor=0.3, limit=100, mirrors=["http://a/", "http://b/"],
        monitor="val_accuracy",
    )  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "-1"], "lr must be a finite number > 0, got -1.0"),
        (["--lr", "0"], "lr must be a finite number > 0, got 0.0"),
        (["--val-fraction", "1.5"], "val_fraction must be in (0, 1)"),
        (["--val-fraction", "0"], "val_fraction must be in (0, 1)"),
        (["--limit", "10000000"], "limit must be between 2 and 60000"),
        (["--limit", "2"], "val_fraction 0.2 of 2 training images holds out 0"),
        (["--seed", "-1"], "seed must be >= 0, got -1"),
        (["--device", "cuda"], "BackendUnavailableError: device 'cuda' is unavailable"),
    ],
)
def test_bad_values_fail_at_once_before_anything_starts(tmp_path, args, message):
    if args[0] == "--device":
        from gpucnn.backend import get_backend

        if get_backend("auto").name == "cuda":
            pytest.skip("this machine has a GPU")
    t0 = time.perf_counter()
    out = run("-m", "gpucnn.flows.train", *args, "--output-dir", str(tmp_path / "runs"))
    assert time.perf_counter() - t0 < 15
    # a bad value is a usage error (2); a GPU this machine lacks is a failure at run time (1)
    assert out.returncode == (1 if args[0] == "--device" else 2), out.stderr
    assert message in out.stderr
    assert len([line for line in out.stderr.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "grid, message",
    [("nope=1", "--grid 'nope=1': expected FIELD=V1,V2"), ("lr=-1", "lr must be a finite number")],
)
def test_a_bad_sweep_grid_is_a_usage_error(tmp_path, grid, message):
    out = run("-m", "gpucnn.flows.sweep", "--grid", grid, "--output-dir", str(tmp_path / "s"))
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and out.stderr.count("error:") == 1, out.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/absolute", "two\nlines"])
def test_a_run_name_must_stay_inside_the_output_folder(tmp_path, name):
    out = run("-m", "gpucnn.flows.train", "--run-name", name, "--output-dir", str(tmp_path / "o"))
    assert out.returncode == 2
    assert "is not a folder name" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_run_folder_in_use_fails_at_once_naming_its_holder(tmp_path):
    from tests.processes import folder_held_elsewhere

    with folder_held_elsewhere(tmp_path / "runs" / "r1") as holder:
        t0 = time.perf_counter()
        out = run("-m", "gpucnn.flows.train", "--run-name", "r1", "--output-dir",
                  str(tmp_path / "runs"), env={"PREFECT_HOME": str(tmp_path / "p")})  # fmt: skip
        assert time.perf_counter() - t0 < 15
    assert out.returncode == 1
    assert f"is in use by process {holder.pid} on " in out.stderr
    assert not (tmp_path / "p").exists()  # Prefect never started


def test_a_finished_run_is_reported_at_once_without_starting_prefect(tmp_path):
    from gpucnn.train.atomic import write_json
    from gpucnn.train.config import TrainConfig
    from tests.flows.commands import command

    run_dir = tmp_path / "runs" / "r1"
    write_json(run_dir / "config.json", TrainConfig(limit=2000).to_dict())
    write_json(run_dir / "summary.json", {"epochs": 3, "best_epoch": 2, "best_val_loss": 0.1,
               "best_val_accuracy": 0.97, "best_checkpoint": "b", "train_time_s": 9.0})  # fmt: skip
    write_json(run_dir / "metrics.json", {"accuracy": 0.9712, "loss": 0.09, "samples": 10000,
               "top3_accuracy": 0.99})  # fmt: skip
    before = sorted(p.name for p in run_dir.iterdir())
    out = command("gpucnn.flows.train", "--run-name", "r1", "--limit", "2000", "--epochs", "9",
                  "--output-dir", tmp_path / "runs", tmp_path=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.imported == [], out.imported  # no Prefect: nothing to run
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["already_finished"] and result["test_accuracy"] == 0.9712
    assert result["epochs"] == 3 and result["best_epoch"] == 2
    assert out.stderr.strip() == (
        f"run {run_dir} already finished: 3 epochs, best epoch 2, test accuracy 0.9712; its "
        f"results are in {run_dir} (--overwrite trains it again)"
    )
    assert sorted(p.name for p in run_dir.iterdir()) == before  # untouched, no .lock left
    assert not (tmp_path / "prefect-home").exists()


def test_resuming_a_run_with_another_config_fails_at_once_naming_the_fields(tmp_path):
    from gpucnn.train.atomic import write_json
    from gpucnn.train.config import TrainConfig

    write_json(tmp_path / "runs" / "r1" / "config.json", TrainConfig(limit=2000).to_dict())
    out = run("-m", "gpucnn.flows.train", "--run-name", "r1", "--limit", "2000", "--lr", "0.05",
              "--output-dir", str(tmp_path / "runs"))  # fmt: skip
    assert out.returncode == 1
    assert "lr 0.001 there, 0.05 now" in out.stderr and "--overwrite" in out.stderr
    assert sorted(p.name for p in (tmp_path / "runs" / "r1").iterdir()) == ["config.json"]


def test_a_preset_gives_the_defaults_and_explicit_options_win():
    from gpucnn.cli.config import config_from, parse_args
    from gpucnn.flows.train import parser
    from gpucnn.train.config import TrainConfig

    config = config_from(parse_args(parser(), ["--preset", "fast", "--epochs", "3"]))
    assert config == TrainConfig.preset("fast", epochs=3)
    assert config.schedule == "onecycle" and config.batch_size == 256
    assert config_from(parse_args(parser(), [])) == TrainConfig()


def test_run_names_do_not_change_when_a_field_is_added_at_its_default():
    from gpucnn.train.config import TrainConfig
    from gpucnn.train.runs import config_digest

    # the digest covers the fields that differ from their defaults, so it stays stable
    assert config_digest(TrainConfig()) == config_digest(TrainConfig(device="cpu"))
    assert config_digest(TrainConfig()) != config_digest(TrainConfig(lr=3e-4))


def test_a_finished_run_whose_flow_lost_prefects_api_at_its_end_is_reported_done(tmp_path, capsys):
    """Prefect's API gone past the flow's bounded wait: the flow cannot record its final
    state and raises, but the run folder holds a finished run, so the command reports it
    (exit status 0) with one line saying what Prefect was not told; any other failure, or a
    run that did not finish, is raised as it was."""
    import httpx

    from gpucnn.flows.cli import api_gone_at_the_end
    from gpucnn.train.atomic import write_json
    from gpucnn.train.runs import RunFolder

    gone = httpx.ConnectError("[Errno 111] Connection refused")
    with pytest.raises(httpx.ConnectError):
        api_gone_at_the_end(gone, RunFolder(tmp_path / "unfinished"))
    folder = RunFolder(tmp_path / "done")
    write_json(folder.path / "summary.json", {"epochs": 2, "best_epoch": 2})
    write_json(folder.path / "metrics.json", {"accuracy": 0.98, "loss": 0.05, "samples": 10000})
    with pytest.raises(ValueError, match="a bug"):
        api_gone_at_the_end(ValueError("a bug"), folder)
    result = api_gone_at_the_end(gone, folder)
    assert result["already_finished"] is False and result["test"]["accuracy"] == 0.98
    assert capsys.readouterr().err == (
        "warning: Prefect's API did not answer at the flow run's end (ConnectError: [Errno 111] "
        "Connection refused); its final state was not recorded, but the run is complete: its "
        f"results are in {folder.path} and its lines in {folder.path / 'log.txt'}\n"
    )
