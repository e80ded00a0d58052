"""Signals end the command lines quickly and cleanly, and nothing they start outlives them.

Each test runs a real `python -m gpucnn.flows.train` in its own session (as a shell runs a
foreground job), lets it train, then signals it: Ctrl-C to the whole process group (as a
terminal sends it, Prefect's server included), SIGTERM, SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("prefect", reason="the flows need the 'flows' extra (prefect)")

ROOT = Path(__file__).resolve().parents[2]
INTERRUPTED = "interrupted; re-run the same command to resume from the last checkpoint"


def descendants(pid: int) -> set[tuple[int, str]]:
    """(pid, start time) of every process below ``pid`` (the start time tells a PID reused)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            start = started_at(kid)
            if start is not None:
                found |= {(kid, start), *descendants(kid)}
    return found


def started_at(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def running(pid: int, start: str) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return started_at(pid) == start and state != "Z"


class TrainCommand:
    """`python -m gpucnn.flows.train` on real MNIST, long enough to be interrupted mid-run."""

    def __init__(self, tmp_path: Path, mirror: str, data_dir: Path, env: dict | None = None):
        self.stderr_path = tmp_path / "stderr.txt"
        self.run_dir = tmp_path / "runs" / "sig"
        with self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, *"-m gpucnn.flows.train --limit 3000 --epochs 50".split()]
                + ["--data-dir", str(data_dir), "--mirror", mirror, "--run-name", "sig"]
                + ["--output-dir", str(tmp_path / "runs")],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # its own process group, as a shell's foreground job
                env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), **(env or {})},
            )
        self.started: set[tuple[int, str]] = set()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for_training(self, timeout: float = 150) -> None:
        """Until the first checkpoint is written (so the run is mid-training), recording every
        process it starts on the way."""
        deadline = time.monotonic() + timeout
        while not (self.run_dir / "checkpoints" / "last.npz").exists():
            assert self.proc.poll() is None, self.stderr
            assert time.monotonic() < deadline, f"no checkpoint after {timeout} s:\n{self.stderr}"
            self.started |= descendants(self.proc.pid)
            time.sleep(0.2)
        self.started |= descendants(self.proc.pid)
        assert self.started, "expected Prefect's local API server among its children"

    def survivors(self, grace: float) -> set[tuple[int, str]]:
        deadline = time.monotonic() + grace
        while True:
            alive = {(pid, start) for pid, start in self.started if running(pid, start)}
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.1)

    def cleanup(self) -> None:
        for pid, start in self.started:
            if running(pid, start):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def train_command(tmp_path, mnist_mirror, mnist_root):
    commands = []

    def start(data_dir=mnist_root, **env):
        commands.append(TrainCommand(tmp_path, mnist_mirror[0], data_dir, env))
        return commands[-1]

    yield start
    for command in commands:
        command.cleanup()


def assert_interrupted(command: TrainCommand, code: int, sent: float) -> None:
    try:
        command.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running 5 s after the signal:\n{command.stderr[-3000:]}")
    took = time.monotonic() - sent
    assert command.proc.returncode == code, command.stderr
    assert took < 5, took
    assert command.stderr.strip().splitlines()[-1] == INTERRUPTED, command.stderr
    assert "Traceback" not in command.stderr, command.stderr
    assert not command.survivors(grace=1), "outlived the command"
    # gpucnn's one line only: Prefect's crash records go to the run's logs, not the console
    after = command.stderr[command.stderr.rindex("epoch 1/50") :]
    assert after.splitlines()[1:] == [INTERRUPTED], command.stderr
    log = (command.run_dir / "log.txt").read_text()
    for who in ("task run 'train-model'", "flow run "):
        assert f"ERROR   {who}" in log and "Crash detected! Execution was aborted" in log, log
    assert not (command.run_dir / ".lock").exists()  # its holder has gone


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_ends_the_run_within_5s(train_command, tmp_path):
    command = train_command(data_dir=tmp_path / "data")  # downloads: the data comes first
    command.wait_for_training()
    sent = time.monotonic()
    os.killpg(command.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert_interrupted(command, 130, sent)
    # the data was fetched and verified while Prefect's local API started, not after it
    err = command.stderr
    assert err.index("gpucnn.data - fetching ") < err.index("Prefect API: a local server"), err


@pytest.mark.slow
def test_sigterm_ends_the_run_like_ctrl_c(train_command):
    command = train_command()
    command.wait_for_training()
    sent = time.monotonic()
    os.kill(command.proc.pid, signal.SIGTERM)  # what `kill`, systemd or a scheduler sends
    assert_interrupted(command, 143, sent)


@pytest.mark.slow
def test_sigkill_leaves_no_process_behind(train_command):
    command = train_command()
    command.wait_for_training()
    os.kill(command.proc.pid, signal.SIGKILL)
    assert command.proc.wait(timeout=5) == -signal.SIGKILL
    assert not command.survivors(grace=5), "Prefect's server outlived a SIGKILL of the command"


def test_local_api_startup_timeout_is_one_line(tmp_path, mnist_root):
    """PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS still bounds the server's start: one
    line, exit status 1, and the half-started server is gone (the data is there: the command
    waits for the server once it is verified)."""
    env = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1"}
    command = TrainCommand(tmp_path, "http://127.0.0.1:9/", mnist_root, env)
    try:
        deadline = time.monotonic() + 60
        while command.proc.poll() is None and time.monotonic() < deadline:
            command.started |= descendants(command.proc.pid)
            time.sleep(0.1)
        assert command.proc.wait(timeout=5) == 1, command.stderr
        assert command.stderr.strip().splitlines()[-1] == (
            "error: LocalAPIError: Prefect's local API server did not answer within 1 s "
            "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); raise it, or set "
            "PREFECT_API_URL to a running server"
        ), command.stderr
        assert not command.survivors(grace=1)
    finally:
        command.cleanup()
