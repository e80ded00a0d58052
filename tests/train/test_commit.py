"""A run folder is never wrong after a kill: the commit sequence (best.npz, then last.npz, each
keeping its previous version, then history.json; summary.json at the end) is killed at each of
its steps in a real process, and the resumed run ends identical to one never interrupted.
Corrupt or poisoned checkpoints fall back to the previous good one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpucnn.train.checkpoint import load_checkpoint
from tests.processes import DETERMINISTIC_ENV

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    **DETERMINISTIC_ENV,
    "GPUCNN_DATA_MIRROR": "",
}
TIMING = ("elapsed_s", "images_per_s", "train_time_s")

# every step of epoch 2's commit (the first with previous versions to rotate), and the summary
KILL_POINTS = [
    *(f"{f}:{step}#2" for f in ("best.npz", "last.npz") for step in ("written", "rotated")),
    "best.npz:replaced#2",
    "last.npz:replaced#2",
    "history.json:written#2",
    "history.json:replaced#2",
    "summary.json:written#1",
    "summary.json:replaced#1",
]


def run(run_dir: Path, data_dir: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**ENV, "GPUCNN_KILL_AT": kill_at} if kill_at else ENV
    return subprocess.run(
        [sys.executable, "-m", "tests.train.commit_script", str(run_dir), str(data_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def outcome(run_dir: Path) -> dict:
    """What a finished run folder says, timing left out."""
    summary = json.loads((run_dir / "summary.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    out = {
        "summary": {
            k: Path(v).relative_to(run_dir).as_posix() if k == "best_checkpoint" else v
            for k, v in summary.items()
            if k not in TIMING
        },
        "history": {k: v for k, v in history.items() if k not in TIMING},
    }
    for name in ("best", "last"):
        ckpt = load_checkpoint(run_dir / "checkpoints" / f"{name}.npz")
        out[f"{name}.epoch"] = ckpt.epoch
        out[f"{name}.model"] = ckpt.model_state()
    return out


def same(a: dict, b: dict) -> None:
    assert a["summary"] == b["summary"]
    assert a["history"] == b["history"]
    for name in ("best", "last"):
        assert a[f"{name}.epoch"] == b[f"{name}.epoch"], name
        for key, value in a[f"{name}.model"].items():
            np.testing.assert_array_equal(value, b[f"{name}.model"][key], err_msg=f"{name} {key}")


@pytest.fixture(scope="module")
def straight(mnist_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    done = run(run_dir, mnist_root)
    assert done.returncode == 0, done.stderr
    return outcome(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_a_kill_at_any_step_of_the_commit_resumes_to_the_same_run(
    kill_at, straight, mnist_root, tmp_path
):
    run_dir = tmp_path / "run"
    killed = run(run_dir, mnist_root, kill_at)
    assert killed.returncode == -signal.SIGKILL, f"never reached {kill_at}: {killed.stderr}"
    resumed = run(run_dir, mnist_root)
    assert resumed.returncode == 0, resumed.stderr
    same(outcome(run_dir), straight)
    assert not list(run_dir.rglob(".*.part-*")), "a killed write's temporary file was left"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert load_checkpoint(summary["best_checkpoint"]).epoch == summary["best_epoch"]
