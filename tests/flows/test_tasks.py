"""The tasks' artifacts say what happened: the epoch table shows each epoch's lr range."""

from __future__ import annotations


def test_the_epoch_table_shows_each_epochs_lr_from_start_to_end():
    from gpucnn.flows.tasks import _epoch_table

    history = {
        "epoch": [1, 2, 3],
        "train_loss": [0.5, 0.2, 0.1],
        "train_accuracy": [0.8, 0.9, 0.95],
        "val_loss": [0.4, 0.3, 0.2],
        "val_accuracy": [0.85, 0.9, 0.93],
        "lr": [6e-4, 1.5e-2, 1e-3],  # a one-cycle rise and fall, then a constant epoch
        "lr_end": [1.5e-2, 6e-8, 1e-3],
        "elapsed_s": [1.0, 1.0, 1.0],
    }
    rows = _epoch_table(history).splitlines()
    assert rows[0].split("|")[6].strip() == "lr"
    assert [r.split("|")[6].strip() for r in rows[2:]] == [
        "0.0006 → 0.015",
        "0.015 → 6e-08",
        "0.001",
    ]
    del history["lr_end"]  # a history written before lr_end was recorded: the start lr
    assert [r.split("|")[6].strip() for r in _epoch_table(history).splitlines()[2:]] == [
        "0.0006", "0.015", "0.001"
    ]  # fmt: skip
