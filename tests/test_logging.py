"""gpucnn's log lines reach every sink once: a pipe, a terminal, Prefect's run logs."""

from __future__ import annotations

import collections
import errno
import io
import logging
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A tiny fit: early stopping after 2 epochs, a plateau halving the learning rate, then a resume.
FIT = """
import logging, sys
import numpy as np
from gpucnn import nn, optim
from gpucnn.train.callbacks import EarlyStopping, PlateauScheduler
from gpucnn.train.trainer import Trainer

class Loader:
    def __init__(self):
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
        self.y = self.labels = rng.integers(0, 3, 64)
    def __len__(self):
        return 4
    def __iter__(self):
        for i in range(0, 64, 16):
            yield self.x[i : i + 16], self.y[i : i + 16]

def trainer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    callbacks = [
        EarlyStopping("val_loss", patience=1, min_delta=1e9),
        PlateauScheduler("val_loss", factor=0.5, patience=0, threshold=1e9),
    ]
    opt = optim.Adam(model.parameters(), lr=1e-3)
    return Trainer(model, nn.CrossEntropyLoss(), opt, device="cpu", callbacks=callbacks,
                   log_every=1, workers=1, progress=True)

first = trainer()
if "late-config" in sys.argv:  # the user configures logging after gpucnn made its own sink
    logging.basicConfig(level=logging.INFO, format="%(message)s")
first.fit(Loader(), Loader(), epochs=5)
first.save_checkpoint(sys.argv[1])
trainer().load_checkpoint(sys.argv[1])
"""


def fit_script(tmp_path: Path) -> tuple[str, str]:
    script = tmp_path / "fit.py"
    script.write_text(FIT)
    return str(script), str(tmp_path / "last.npz")


def assert_messages_once(text: str) -> None:
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    for pattern in (
        r"^epoch 1/5  train_loss [\d.]+  train_acc [\d.]+  val_loss [\d.]+  val_acc [\d.]+  "
        r"lr 0\.001  [\d.]+s  \d+ img/s$",
        r"^epoch 2/5 .* lr 0\.0005 ",
        r"^early stopping at epoch 2",
        r"plateaued: learning rate 0\.001 -> 0\.0005",
        r"^resumed from .*epoch 2",
    ):
        found = [line for line in lines if re.search(pattern, line)]
        assert len(found) == 1, (pattern, text)
    repeated = [line for line, n in collections.Counter(lines).items() if n > 1]
    assert not repeated, text


def test_fit_outside_a_terminal_logs_plain_lines_once(tmp_path):
    """stderr to a pipe (a file, CI): every message as a line, no bar, no control characters;
    nobody configured logging, so gpucnn prints them itself."""
    script, ckpt = fit_script(tmp_path)
    out = subprocess.run(
        [sys.executable, script, ckpt], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr and "\x1b" not in out.stderr
    assert_messages_once(out.stderr)


def test_fit_on_a_terminal_draws_a_bar_and_logs_each_line_once(tmp_path):
    """On a terminal: the bar, and each message once, also when the user configures logging
    after gpucnn attached its own stderr handler."""
    script, ckpt = fit_script(tmp_path)
    main, tty = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, script, ckpt, "late-config"], cwd=ROOT, stdout=tty, stderr=tty
    )
    os.close(tty)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    assert proc.wait(timeout=120) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert re.search(r"epoch 1/5 \[#+\.*\] \d/4 loss", text), text
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)  # the bar's erase-line sequence
    assert_messages_once(re.sub(r"epoch \d/5 \[[#.]+\][^\r\n]*?(?=\r|$)", "", text))


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """Prefect's own local API (prefect_test_harness) that a command line is pointed at."""
    pytest.importorskip("prefect", reason="the flows need the 'flows' extra (prefect)")
    home = tmp_path_factory.mktemp("prefect-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_HOME", str(home))
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120):
            yield PREFECT_API_URL.value(), home


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


@pytest.mark.slow
def test_train_command_logs_reach_prefect_run_logs(prefect_server, mnist_root, tmp_path):
    """With PREFECT_API_URL set the command starts no server, and the flow run's logs hold
    gpucnn's INFO lines: the device picked and every epoch."""
    api_url, home = prefect_server
    proc = subprocess.Popen(
        [sys.executable, *"-m gpucnn.flows.train --limit 500 --epochs 2".split()]
        + ["--data-dir", str(mnist_root), "--output-dir", str(tmp_path / "runs")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(home)},
    )
    started = set()
    while proc.poll() is None:
        started.update(children(proc.pid))
        time.sleep(0.2)
    output = proc.stdout.read()
    assert proc.returncode == 0, output
    assert not started, f"processes started although PREFECT_API_URL was set: {started}"
    assert re.search(r"gpucnn.train - epoch 2/2  train_loss", output), output

    from prefect import get_client

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs()
        messages = [log.message for log in client.read_logs(limit=200) if log.flow_run_id == run.id]
    assert any(m.startswith("device 'auto' picked") for m in messages), messages
    for epoch in (1, 2):
        assert sum(m.startswith(f"epoch {epoch}/2  train_loss") for m in messages) == 1, messages


# -- a console that goes away mid-run --------------------------------------------------------


class GoneTerminal(io.StringIO):
    """A terminal whose writes fail as a closed one's do."""

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(self.code, os.strerror(self.code))


@pytest.mark.parametrize("code", [errno.EPIPE, errno.EBADF, errno.EIO], ids=errno.errorcode.get)
def test_a_progress_bar_whose_stream_fails_is_given_up_not_raised(code, caplog):
    from gpucnn.train.progress import Progress

    caplog.set_level(logging.INFO, logger="gpucnn")
    progress = Progress(True, stream=GoneTerminal(code))
    assert progress.tty
    progress.begin("epoch 1/2", 4)
    progress.update(2, "loss 1.0")  # the bar's write fails: the bar is given up
    progress.update(4, "loss 0.9")
    progress.end("epoch 1/2  train_loss 0.9")
    assert not progress.tty and not progress.drawn
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == [
        "epoch 1/2  train_loss 0.9"
    ]


# the FIT above, slowed down (so that the test can close the terminal mid-run)
SLOW_FIT = FIT.replace(
    "        for i in range(0, 64, 16):\n",
    "        import time\n        for i in range(0, 64, 16):\n            time.sleep(0.05)\n",
).replace("epochs=5", "epochs=6")


def test_a_fit_whose_terminal_closes_mid_run_runs_to_its_end(tmp_path):
    """The terminal goes away after the first bar is drawn (EIO on every later write): the
    fit goes on through its epochs and saves its checkpoint."""
    script = tmp_path / "slow_fit.py"
    script.write_text(SLOW_FIT)
    ckpt = tmp_path / "last.npz"
    main, tty = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(ckpt)], cwd=ROOT, stdout=tty, stderr=tty
    )
    os.close(tty)
    seen = b""
    try:
        while b"epoch 1/6 [" not in seen:
            chunk = os.read(main, 65536)
            assert chunk, seen
            seen += chunk
    finally:
        os.close(main)  # the terminal goes away
    assert proc.wait(timeout=120) == 0
    assert ckpt.exists()


def test_a_guarded_stream_whose_reader_went_away_says_so_once(tmp_path):
    """The pipe's reader ends: writes and flushes succeed (dropped), the descriptor then
    points at /dev/null (Python's last flush at exit succeeds too), and one warning in the
    run's log.txt says where its lines went."""
    from gpucnn.logs import GuardedStream, run_log

    rfd, wfd = os.pipe()
    stream = GuardedStream(os.fdopen(wfd, "w"), "stdout")
    os.close(rfd)
    log_file = tmp_path / "log.txt"
    with run_log(log_file):
        for i in range(3):
            print(f"line {i}", file=stream, flush=True)
        stream.write("x" * 100_000)
        stream.flush()
        assert stream.gone
        assert os.readlink(f"/proc/self/fd/{wfd}") == "/dev/null"
        deadline = time.monotonic() + 10
        while "went away" not in (log_file.read_text() if log_file.exists() else ""):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.1)
    lines = log_file.read_text().splitlines()
    (line,) = [x for x in lines if "went away" in x]
    assert re.search(r"WARNING +gpucnn: stdout went away \(BrokenPipeError: Broken pipe\)", line)
    assert line.endswith(f"its lines go on in {log_file}")
    stream.wrapped.close()  # the pipe is /dev/null now: nothing left to fail


def test_a_guarded_stream_passes_other_errors_through():
    from gpucnn.logs import GuardedStream

    class Full(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        GuardedStream(Full(), "stdout").write("x")


GUARDED = """
import logging, pathlib, sys, time
from gpucnn.logs import guard_standard_streams, run_log
handler = logging.StreamHandler(sys.stderr)  # as Prefect's console handler, made before
logging.getLogger().addHandler(handler)
guard_standard_streams()
print("ready", flush=True)
sys.stdin.readline()  # the reader has gone away by now
with run_log(sys.argv[1]):
    for i in range(3):
        logging.getLogger("gpucnn.train").warning("epoch %d", i)
        print("result", i)  # to stdout, buffered until exit
    time.sleep(0.2)
pathlib.Path(sys.argv[2]).write_text("done")
"""


def test_a_process_whose_output_pipe_closes_runs_to_its_end_and_exits_0(tmp_path):
    """stdout and stderr are one pipe whose reader goes away: logging, print and Python's
    last flush at exit all succeed, the lines go on in the run's log file."""
    script = tmp_path / "guarded.py"
    script.write_text(GUARDED)
    log_file, done = tmp_path / "log.txt", tmp_path / "done"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(log_file), str(done)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout.readline().strip() == b"ready"
    proc.stdout.close()
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    assert done.read_text() == "done"
    text = log_file.read_text()
    assert [line.split(": ", 1)[1] for line in text.splitlines() if "epoch" in line] == [
        "epoch 0",
        "epoch 1",
        "epoch 2",
    ], text
    assert "stderr went away (BrokenPipeError" in text, text
