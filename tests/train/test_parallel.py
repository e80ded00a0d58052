"""Data-parallel CPU steps: the gradients, loss and logits of the whole batch, dropout masks
bit for bit, uneven and tiny batches, frozen layers, errors in a shard, and the Trainer."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from gpucnn import nn, optim
from gpucnn.data import DataLoader
from gpucnn.train import Trainer
from gpucnn.train.parallel import MIN_SHARD, DataParallel, unsupported


def model_with_dropout(seed=0):
    g = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, rng=g),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.4, rng=7),
        nn.Linear(3 * 4 * 4, 8, rng=g),
        nn.ReLU(),
        nn.Dropout(0.2, rng=8),
        nn.Linear(8, 3, rng=g),
    ).to(dtype=np.float64)


def serial_step(model, x, y):
    crit = nn.CrossEntropyLoss()
    model.zero_grad()
    logits = model(x)
    loss = crit(logits, y)
    model.backward(crit.backward())
    return loss, logits


@pytest.mark.parametrize("n, workers", [(32, 2), (19, 2), (40, 3), (9, 2)])
def test_a_sharded_step_is_the_serial_step(n, workers):
    g = np.random.default_rng(1)
    x, y = g.standard_normal((n, 1, 8, 8)), g.integers(0, 3, n)
    serial, sharded = model_with_dropout(), model_with_dropout()
    loss_ref, logits_ref = serial_step(serial, x, y)
    with DataParallel(sharded, nn.CrossEntropyLoss(), workers) as dp:
        sharded.zero_grad()
        loss, logits = dp.step(x, y)
    # float64 and the same dropout masks: equal up to the order of the sums
    np.testing.assert_allclose(logits, logits_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-12)
    for p_ref, p in zip(serial.parameters(), sharded.parameters(), strict=True):
        np.testing.assert_allclose(p.grad, p_ref.grad, rtol=1e-10, atol=1e-12)
    # the generators advanced exactly as in the serial step
    for d_ref, d in zip(serial, sharded, strict=True):
        if isinstance(d, nn.Dropout):
            assert d.rng.integers(2**63) == d_ref.rng.integers(2**63)


def test_the_replicas_follow_the_optimizer_and_frozen_layers():
    g = np.random.default_rng(2)
    x, y = g.standard_normal((24, 1, 8, 8)), g.integers(0, 3, 24)
    serial, sharded = model_with_dropout(), model_with_dropout()
    serial[0].weight.requires_grad = sharded[0].weight.requires_grad = False
    opts = [optim.Adam(m.parameters(), 1e-2) for m in (serial, sharded)]
    with DataParallel(sharded, nn.CrossEntropyLoss(), 2) as dp:
        for _ in range(3):
            serial_step(serial, x, y)
            opts[0].step()
            sharded.zero_grad()
            dp.step(x, y)
            opts[1].step()
    assert sharded[0].weight.grad is None
    for p_ref, p in zip(serial.parameters(), sharded.parameters(), strict=True):
        np.testing.assert_allclose(p.data, p_ref.data, rtol=1e-9, atol=1e-12)


def test_an_error_in_a_shard_surfaces_and_the_next_step_works():
    g = np.random.default_rng(3)
    model = model_with_dropout()
    x = g.standard_normal((2 * MIN_SHARD, 1, 8, 8))
    bad = np.zeros(2 * MIN_SHARD, dtype=np.int64)
    bad[-1] = 5  # only the second shard sees it
    with DataParallel(model, nn.CrossEntropyLoss(), 2) as dp:
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
            dp.step(x, bad)
        loss, _ = dp.step(x, np.zeros(2 * MIN_SHARD, dtype=np.int64))
    assert np.isfinite(loss)


def bn_model(seed=0):
    g = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, rng=g),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.3, rng=5),
        nn.Linear(3 * 4 * 4, 3, rng=g),
    ).to(dtype=np.float64)


@pytest.mark.parametrize("n, workers", [(32, 2), (27, 3), (9, 2)])
def test_batchnorm_shards_normalize_by_the_whole_batch(n, workers):
    g = np.random.default_rng(4)
    x, y = g.standard_normal((n, 1, 8, 8)) * 3 + 1, g.integers(0, 3, n)
    serial, sharded = bn_model(), bn_model()
    with DataParallel(sharded, nn.CrossEntropyLoss(), workers) as dp:
        for _ in range(2):  # twice: the running statistics move twice, and only once per step
            loss_ref, logits_ref = serial_step(serial, x, y)
            sharded.zero_grad()
            loss, logits = dp.step(x, y)
            np.testing.assert_allclose(logits, logits_ref, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(loss, loss_ref, rtol=1e-12)
            for p_ref, p in zip(serial.parameters(), sharded.parameters(), strict=True):
                np.testing.assert_allclose(p.grad, p_ref.grad, rtol=1e-9, atol=1e-12)
            for (name, b_ref), (_, b) in zip(
                serial.named_buffers(), sharded.named_buffers(), strict=True
            ):
                np.testing.assert_allclose(b, b_ref, rtol=1e-12, err_msg=name)


def test_a_failing_shard_does_not_leave_the_others_waiting_at_a_barrier():
    g = np.random.default_rng(5)
    model = bn_model()
    x = g.standard_normal((3 * MIN_SHARD, 1, 8, 8))
    bad = np.zeros(3 * MIN_SHARD, dtype=np.int64)
    bad[-1] = 7  # the last shard fails in its loss, after the forward barriers
    with DataParallel(model, nn.CrossEntropyLoss(), 3) as dp:
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
            dp.step(x, bad)
        loss, _ = dp.step(x, np.zeros(3 * MIN_SHARD, dtype=np.int64))  # the barrier was reset
    assert np.isfinite(loss)


class Counter(nn.Module):
    """A layer with a buffer that is not BatchNorm's: shards could not share it."""

    def __init__(self):
        super().__init__()
        self.register_buffer("seen", np.zeros(1))

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy


def test_layers_with_other_buffers_are_not_split():
    model = nn.Sequential(nn.Flatten(), Counter())
    assert "keeps buffers" in unsupported(model)
    with pytest.raises(ValueError, match="keeps buffers"):
        DataParallel(model, nn.CrossEntropyLoss(), 2)
    assert unsupported(bn_model()) is None
    with pytest.raises(ValueError, match="workers >= 2"):
        DataParallel(model_with_dropout(), nn.CrossEntropyLoss(), 1)


def blob_loaders():
    g = np.random.default_rng(0)
    y = g.integers(0, 3, 96)
    x = (g.random((96, 8, 8)) * 60).astype(np.uint8)
    for c in range(3):
        x[y == c, :, c * 2 : c * 2 + 3] += 150
    return DataLoader(x, y, 32, seed=0, std=0.5), DataLoader(x, y, 48, shuffle=False, std=0.5)


@pytest.mark.parametrize("build", [model_with_dropout, bn_model])
def test_trainer_runs_sharded_steps_like_serial_ones(build, caplog):
    histories = {}
    for workers in (1, 2):
        model = build().to(dtype=np.float32)
        # SGD, not Adam: Adam turns the rounding noise of a gradient that is exactly 0 in exact
        # arithmetic (the conv bias ahead of BatchNorm) into full-size steps of either sign
        trainer = Trainer(
            model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.1, momentum=0.9),
            progress=False, workers=workers,
        )  # fmt: skip
        with caplog.at_level(logging.INFO, logger="gpucnn.train"):
            histories[workers] = trainer.fit(*blob_loaders(), epochs=2)
    assert "2 batch shards" in caplog.text
    for key in ("train_loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(histories[2][key], histories[1][key], rtol=1e-4, atol=1e-6)


def test_trainer_says_why_a_model_runs_serially(caplog):
    model = nn.Sequential(nn.Flatten(), Counter(), nn.Linear(64, 3, rng=1))
    trainer = Trainer(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.1),
                      progress=False, workers=2)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="gpucnn.train"):
        trainer.fit(blob_loaders()[0], epochs=1)
    assert "run serially" in caplog.text and "keeps buffers" in caplog.text


def test_trainer_rejects_bad_workers():
    model = model_with_dropout()
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        Trainer(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.1), workers=0)
