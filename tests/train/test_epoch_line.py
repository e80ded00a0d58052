"""A line that says a thing happened comes after it happened: an epoch's line is logged once
the epoch is committed (its checkpoint and history.json written), and what the callbacks said
at its end (early stopping, a learning-rate change) follows it. A real process killed with
SIGKILL the moment a line is logged has its run folder holding what the line says."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpucnn.train.checkpoint import load_checkpoint
from tests.processes import DETERMINISTIC_ENV

ROOT = Path(__file__).resolve().parents[2]

# A tiny fit with checkpoints: early stopping after epoch 2, the lr halved after each epoch;
# the process sends itself SIGKILL as the first line starting with argv[2] is logged
FIT = """
import logging, os, signal, sys
import numpy as np
from gpucnn import nn, optim
from gpucnn.train.callbacks import EarlyStopping, ModelCheckpoint, PlateauScheduler
from gpucnn.train.trainer import Trainer

class KillAtLine(logging.Handler):
    def emit(self, record):
        message = record.getMessage()
        print(message, file=sys.stderr, flush=True)
        if len(sys.argv) > 2 and message.startswith(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

logging.getLogger("gpucnn").addHandler(KillAtLine())
logging.getLogger("gpucnn").setLevel(logging.INFO)

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

run = sys.argv[1]
model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
callbacks = [
    EarlyStopping("val_loss", patience=1, min_delta=1e9),
    PlateauScheduler("val_loss", factor=0.5, patience=0, threshold=1e9),
    ModelCheckpoint(os.path.join(run, "checkpoints")),
]
trainer = Trainer(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=1e-3),
                  device="cpu", callbacks=callbacks, log_every=1, workers=1, progress=True,
                  history_path=os.path.join(run, "history.json"))
trainer.fit(Loader(), Loader(), epochs=5)
"""


def fit(tmp_path: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    script = tmp_path / "fit.py"
    script.write_text(FIT)
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run"), *([kill_at] if kill_at else [])],
        cwd=ROOT,
        env=DETERMINISTIC_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_callback_lines_follow_their_epochs_line(tmp_path):
    done = fit(tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if not line.startswith("training")]
    epoch_2 = next(i for i, line in enumerate(lines) if line.startswith("epoch 2/5 "))
    after = [line.split(":")[0] for line in lines[epoch_2 + 1 :]]
    assert after == [
        "early stopping at epoch 2",
        "val_loss plateaued",
        "restored the weights of epoch 1",
    ], lines
    assert lines[epoch_2 - 1].startswith("val_loss plateaued"), lines  # epoch 1's, after it


@pytest.mark.parametrize(
    ("line", "epoch"),
    [("epoch 1/5 ", 1), ("early stopping at epoch 2", 2)],
    ids=["epoch-1", "early-stopping"],
)
def test_a_kill_as_a_line_is_logged_finds_what_it_says_committed(line, epoch, tmp_path):
    killed = fit(tmp_path, kill_at=line)
    assert killed.returncode == -signal.SIGKILL, f"never logged {line!r}:\n{killed.stderr}"
    assert killed.stderr.splitlines()[-1].startswith(line), killed.stderr
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.npz"
    assert last.exists(), f"{line!r} logged before epoch {epoch}'s checkpoint was written"
    assert load_checkpoint(last).epoch == epoch
    assert json.loads((run / "history.json").read_text())["epoch"] == list(range(1, epoch + 1))


def test_an_epoch_whose_end_fails_has_no_line(caplog):
    """A callback that fails at the epoch's end (a checkpoint that cannot be written): the
    epoch is not committed, so no line says it happened; what was said before is kept."""
    from gpucnn import nn, optim
    from gpucnn.train.callbacks import Callback
    from gpucnn.train.trainer import Trainer

    class Says(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            trainer.log(f"said at the end of epoch {epoch + 1}")

    class DiskFull(Callback):
        order = 100

        def on_epoch_end(self, trainer, epoch, logs):
            raise OSError(28, "No space left on device")

    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((8, 4)).astype(np.float32), rng.integers(0, 2, 8))]
    model = nn.Sequential(nn.Linear(4, 2))
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        optim.SGD(model.parameters(), lr=0.1),
        device="cpu",
        callbacks=[Says(), DiskFull()],
        workers=1,
    )
    caplog.set_level(logging.INFO, logger="gpucnn")
    with pytest.raises(OSError, match="No space left"):
        trainer.fit(batches, epochs=2)
    messages = [r.getMessage() for r in caplog.records if r.name == "gpucnn.train"]
    assert not [m for m in messages if m.startswith("epoch 1/2")], messages
    assert messages[-1] == "said at the end of epoch 1", messages
