"""The "fast" preset and the onecycle schedule: the config, the per-batch lr in a real run of
the recipe's trainer, and a resumed run that continues the cycle bit for bit (synthetic
MNIST-shaped data, seconds)."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import optim
from gpucnn.backend import get_backend
from gpucnn.data import DataLoader
from gpucnn.train import Callback, ModelCheckpoint, PlateauScheduler
from gpucnn.train.callbacks import OneCycleScheduler
from gpucnn.train.config import PRESETS, TrainConfig
from gpucnn.train.recipe import build_trainer
from gpucnn.train.runs import default_run_name

# 200 images, 4 held out: 196 to train on, 7 steps of batch 32 per epoch
TINY = {"limit": 200, "val_fraction": 0.02, "batch_size": 32, "device": "cpu", "lr": 3e-3}


def tiny_config(**kw) -> TrainConfig:
    return TrainConfig.preset("fast", **{**TINY, **kw})


def tiny_data(config: TrainConfig, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Digit-sized images whose class is a bright column: learnable, and the loader has
    ``config.steps_per_epoch`` batches, as on MNIST."""
    g = np.random.default_rng(seed)
    n = config.train_size
    y = g.integers(0, 10, n + 50)
    x = g.integers(0, 60, (n + 50, 28, 28)).astype(np.uint8)
    for c in range(10):
        x[y == c, :, 2 * c + 4] = 250
    train = DataLoader(x[:n], y[:n], config.batch_size, seed=config.seed, mean=0.13, std=0.31)
    val = DataLoader(x[n:], y[n:], 50, shuffle=False, mean=0.13, std=0.31)
    assert len(train) == config.steps_per_epoch
    return train, val


class LrSpy(Callback):
    """The lr each batch of the run trained with."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_begin(self, trainer) -> None:
        self.lrs.append(trainer.optimizer.lr)  # the first batch's (after the schedule's start)

    def on_batch_end(self, trainer, step) -> None:
        self.lrs.append(trainer.optimizer.lr)  # the next batch's


def expected_lrs(config: TrainConfig) -> list[float]:
    """The lr of every batch, and the value the last step sets: a standalone OneCycleLR."""
    from gpucnn.nn import Parameter

    opt = optim.SGD([Parameter(np.zeros(1, np.float32))], lr=0.0)
    sched = optim.OneCycleLR(opt, **config.one_cycle_settings())
    return [opt.lr] + [sched.step() for _ in range(sched.total_steps)]


def trainer_for(config: TrainConfig, run_dir, *extra: Callback):
    t = build_trainer(config, run_dir, get_backend("cpu"), progress=False, extra_callbacks=extra)
    t.workers = 1  # one thread: bit-identical runs in one process
    return t


def test_the_preset_is_a_config_with_its_values_and_overrides_win():
    c = TrainConfig.preset("fast")
    for name, value in PRESETS["fast"].items():
        assert getattr(c, name) == value
    assert c.schedule == "onecycle" and 256 <= c.batch_size <= 512
    assert TrainConfig.preset("fast", epochs=2, seed=3).epochs == 2
    # nothing of the preset is left but its values: the same run as the explicit config
    explicit = TrainConfig(**PRESETS["fast"])
    assert c == explicit and default_run_name(c) == default_run_name(explicit)
    assert TrainConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown preset 'slow'; choose one of fast"):
        TrainConfig.preset("slow")


def test_config_checks_the_schedule():
    with pytest.raises(ValueError, match="schedule must be one of plateau, onecycle"):
        TrainConfig(schedule="cosine")
    with pytest.raises(ValueError, match=r"pct_start must be in \[0, 1\]"):
        TrainConfig(pct_start=1.5)
    # 1 epoch of 4 steps with pct_start 0.25: a first phase of no steps
    with pytest.raises(ValueError, match="schedule onecycle with pct_start 0.25 over 1 epochs"):
        tiny_config(epochs=1, batch_size=64, pct_start=0.25)
    assert TrainConfig().steps_per_epoch == 750  # 48000 images, batches of 64
    assert tiny_config().steps_per_epoch == 7


def test_build_trainer_wires_one_scheduler(tmp_path):
    kinds = [type(c) for c in trainer_for(tiny_config(), tmp_path).callbacks]
    assert OneCycleScheduler in kinds and PlateauScheduler not in kinds
    kinds = [type(c) for c in trainer_for(TrainConfig(device="cpu"), tmp_path).callbacks]
    assert PlateauScheduler in kinds and OneCycleScheduler not in kinds


def test_the_lr_steps_every_batch_and_history_holds_each_epochs_first(tmp_path):
    config = tiny_config(epochs=3)
    spy = LrSpy()
    t = trainer_for(config, tmp_path, spy)
    hist = t.fit(*tiny_data(config), epochs=config.epochs)
    want = expected_lrs(config)
    assert spy.lrs == want  # one value per batch, PyTorch's (tests/optim/test_onecycle.py)
    spe = config.steps_per_epoch
    assert hist["lr"] == [want[e * spe] for e in range(3)]
    assert max(want) == pytest.approx(config.lr, rel=0.02)
    assert want[0] == pytest.approx(config.lr / 25) and want[-2] == pytest.approx(config.lr / 25e4)
    assert hist["val_accuracy"][-1] > 0.5  # it learns


def test_a_resumed_run_continues_the_cycle_bit_for_bit(tmp_path):
    config = tiny_config(epochs=3)
    straight = trainer_for(config, tmp_path / "straight")
    straight.fit(*tiny_data(config), epochs=3)

    first = trainer_for(config, tmp_path / "resumed")
    first.fit(*tiny_data(config), epochs=1)  # a run that stops (is killed) after epoch 1
    spy = LrSpy()
    again = trainer_for(config, tmp_path / "resumed", spy)
    ckpt = next(c for c in again.callbacks if isinstance(c, ModelCheckpoint)).resume(again)
    assert ckpt is not None and ckpt.epoch == 1
    hist = again.fit(*tiny_data(config), epochs=3)

    spe = config.steps_per_epoch
    assert spy.lrs == expected_lrs(config)[spe:]
    assert hist["lr"] == straight.history["lr"]
    assert hist["train_loss"] == straight.history["train_loss"]
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), again.model.state_dict().items(), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert again.optimizer.lr == straight.optimizer.lr


def test_a_run_longer_than_its_cycle_fails_clearly(tmp_path):
    config = tiny_config(epochs=2)
    t = trainer_for(config, tmp_path)
    with pytest.raises(ValueError, match="went on past the cycle it was built for"):
        t.fit(*tiny_data(config), epochs=3)


def test_a_resumed_run_with_another_cycle_is_refused(tmp_path):
    config = tiny_config(epochs=2)
    trainer_for(config, tmp_path).fit(*tiny_data(config), epochs=1)
    longer = tiny_config(epochs=3)
    t = trainer_for(longer, tmp_path)
    next(c for c in t.callbacks if isinstance(c, ModelCheckpoint)).resume(t)
    with pytest.raises(ValueError, match="cycle spans 14 steps, this run's 21"):
        t.fit(*tiny_data(longer), epochs=3)


def test_steps_per_epoch_is_checked_after_each_epoch(tmp_path):
    config = tiny_config(epochs=2)
    t = trainer_for(config, tmp_path)
    t.callbacks[[type(c) for c in t.callbacks].index(OneCycleScheduler)] = OneCycleScheduler(
        config.lr, epochs=2, steps_per_epoch=5
    )
    with pytest.raises(ValueError, match="built for 5 steps per epoch, but after epoch 1"):
        t.fit(*tiny_data(config), epochs=2)


def test_callbacks_without_on_batch_end_are_not_called_per_step(tmp_path, monkeypatch):
    def boom(self, trainer, step):
        raise AssertionError("called")

    monkeypatch.setattr(Callback, "on_batch_end", boom)
    config = tiny_config(epochs=1, schedule="plateau")
    trainer_for(config, tmp_path).fit(*tiny_data(config), epochs=1)
