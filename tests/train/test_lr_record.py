"""What a run records of its learning rate is the lr its batches trained with: the epoch line
shows the epoch's range, history (json, csv) holds the first and last batch's lr of each epoch
and every step's, and a one-cycle fit's record is OneCycleLR's own schedule."""

from __future__ import annotations

import csv
import json
import logging
import math

import numpy as np
import pytest

from gpucnn import nn, optim
from gpucnn.train import CSVLogger, ModelCheckpoint, PlateauScheduler, Trainer
from gpucnn.train.callbacks import OneCycleScheduler
from gpucnn.train.checkpoint import load_checkpoint, save_checkpoint
from tests.train.test_trainer import loaders, small_model

EPOCHS, MAX_LR = 3, 0.02


def fit_one_cycle(tmp_path, epochs=EPOCHS, progress=False):
    train, val = loaders()  # 12 steps of 25 images per epoch
    model = small_model()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    sched = OneCycleScheduler(MAX_LR, epochs=epochs, steps_per_epoch=len(train), pct_start=0.3)
    t = Trainer(
        model,
        nn.CrossEntropyLoss(),
        opt,
        callbacks=[sched, CSVLogger(tmp_path / "history.csv")],
        history_path=tmp_path / "history.json",
        progress=progress,
        workers=1,
    )
    t.fit(train, val, epochs=epochs)
    return t, len(train)


def schedule(steps_per_epoch, epochs=EPOCHS):
    """The lr of every step, from a standalone OneCycleLR: what each batch should train with."""
    opt = optim.SGD([nn.Parameter(np.zeros(1, np.float32))], lr=0.0)
    sched = optim.OneCycleLR(opt, MAX_LR, epochs=epochs, steps_per_epoch=steps_per_epoch)
    return [opt.lr] + [sched.step() for _ in range(epochs * steps_per_epoch - 1)]


def test_a_one_cycle_fit_records_the_schedule_it_trained_with(tmp_path):
    t, spe = fit_one_cycle(tmp_path)
    want = schedule(spe)
    h = t.history
    assert h["step_lr"] == want  # every step: OneCycleLR's values, exactly
    assert h["lr"] == [want[e * spe] for e in range(EPOCHS)]  # each epoch's first batch
    assert h["lr_end"] == [want[(e + 1) * spe - 1] for e in range(EPOCHS)]  # and its last
    # the record shows the cycle: up to max_lr in the first epoch, down to min_lr by the end
    assert h["lr_end"][0] > 10 * h["lr"][0] and max(h["step_lr"]) == pytest.approx(MAX_LR, 1e-3)
    assert h["lr_end"][-1] == pytest.approx(MAX_LR / 25 / 1e4, rel=1e-3)
    on_disk = json.loads((tmp_path / "history.json").read_text())
    assert on_disk["lr_end"] == h["lr_end"] and on_disk["step_lr"] == want
    with open(tmp_path / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["lr"]) for r in rows] == h["lr"]
    assert [float(r["lr_end"]) for r in rows] == h["lr_end"]


def test_the_epoch_line_shows_the_epochs_lr_range(tmp_path, caplog):
    caplog.set_level(logging.INFO, "gpucnn.train")
    t, spe = fit_one_cycle(tmp_path, epochs=2, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    want = schedule(spe, epochs=2)
    assert len(lines) == 2
    for e, line in enumerate(lines):
        start, end = want[e * spe], want[(e + 1) * spe - 1]
        assert f"  lr {start:.3g} -> {end:.3g}  " in line


def test_a_constant_lr_is_shown_once_and_a_plateau_cut_starts_the_next_epoch(caplog):
    caplog.set_level(logging.INFO, "gpucnn.train")
    train, val = loaders()
    model = small_model()
    cut = PlateauScheduler(monitor="val_loss", patience=0, factor=0.5, threshold=10.0)
    t = Trainer(
        model,
        nn.CrossEntropyLoss(),
        optim.Adam(model.parameters(), lr=1e-2),
        callbacks=[cut],
        workers=1,
    )
    h = t.fit(train, val, epochs=3)
    assert h["lr"] == h["lr_end"] == [1e-2, 5e-3, 2.5e-3]
    assert h["step_lr"] == [lr for lr in h["lr"] for _ in range(len(train))]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert ["  lr 0.01  " in line and "->" not in line for line in lines] == [True, False, False]
    assert "  lr 0.005  " in lines[1]


def test_a_checkpoint_without_the_newer_columns_resumes(tmp_path):
    """A checkpoint written before lr_end and step_lr existed: the columns start with NaN."""
    train, val = loaders()
    model = small_model()
    t = Trainer(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters()), progress=False)
    t.fit(train, val, epochs=1)
    old = {k: v for k, v in t.history.items() if k not in ("lr_end", "step_lr")}
    save_checkpoint(tmp_path / "old.npz", model, t.optimizer, {}, 1, t.global_step, {}, old)
    fresh = small_model()
    again = Trainer(
        fresh,
        nn.CrossEntropyLoss(),
        optim.Adam(fresh.parameters()),
        callbacks=[ModelCheckpoint(tmp_path / "ckpt")],
        progress=False,
    )
    again.load_checkpoint(tmp_path / "old.npz")
    h = again.fit(train, val, epochs=2)
    assert math.isnan(h["lr_end"][0]) and h["lr_end"][1] == h["lr"][1]
    assert len(h["step_lr"]) == len(train)
    assert load_checkpoint(tmp_path / "ckpt" / "last.npz").history["lr_end"][1] == h["lr"][1]
