"""The Trainer: learning, history, guards that fail before work is lost."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpucnn import nn, optim
from gpucnn.data import DataLoader
from gpucnn.train import (
    CheckpointError,
    EarlyStopping,
    ModelCheckpoint,
    NonFiniteLossError,
    PlateauScheduler,
    Trainer,
    TrainingError,
    load_checkpoint,
)


def blobs(n=400, classes=3, seed=0):
    """Images whose brightness pattern encodes the class: learnable in a few epochs."""
    g = np.random.default_rng(seed)
    y = g.integers(0, classes, n)
    x = g.random((n, 8, 8)) * 60
    for c in range(classes):
        x[y == c, :, c * 2 : c * 2 + 3] += 150
    return x.astype(np.uint8), y


def small_model(classes=3, seed=0):
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=seed),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, classes, rng=seed + 1),
    )


def loaders(n=400, classes=3):
    x, y = blobs(n, classes)
    cut = n * 3 // 4
    return (
        DataLoader(x[:cut], y[:cut], 25, seed=0, mean=0.3, std=0.3),
        DataLoader(x[cut:], y[cut:], 50, shuffle=False, mean=0.3, std=0.3),
    )


def trainer_for(model, lr=1e-2, **kw):
    return Trainer(
        model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=lr), progress=False, **kw
    )


def test_fit_learns_and_records_history(tmp_path):
    train, val = loaders()
    t = trainer_for(small_model(), history_path=tmp_path / "history.json")
    hist = t.fit(train, val, epochs=4)
    assert hist["epoch"] == [1, 2, 3, 4]
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    assert hist["val_accuracy"][-1] > 0.9
    assert len(hist["step_grad_norm"]) == 4 * len(train)
    assert all(v > 0 for v in hist["step_grad_norm"])
    assert all(v > 0 for v in hist["images_per_s"])
    on_disk = json.loads((tmp_path / "history.json").read_text())
    assert on_disk["val_loss"] == hist["val_loss"]
    assert t.evaluate(val)["accuracy"] == pytest.approx(hist["val_accuracy"][-1])


def test_early_stopping_restores_the_best_weights():
    train, val = loaders()
    model = small_model()
    stopper = EarlyStopping(monitor="val_loss", patience=2)
    t = trainer_for(model, lr=0.5, callbacks=[stopper])  # a wild lr makes val_loss bounce
    hist = t.fit(train, val, epochs=30)
    assert len(hist["epoch"]) < 30
    best = int(np.nanargmin(hist["val_loss"]))
    assert stopper.best_epoch == best
    assert t.evaluate(val)["loss"] == pytest.approx(hist["val_loss"][best], rel=1e-5)


def test_plateau_scheduler_cuts_the_learning_rate():
    train, val = loaders()
    t = trainer_for(
        small_model(),
        callbacks=[
            PlateauScheduler(
                monitor="train_loss", patience=0, factor=0.5, threshold=100.0, threshold_mode="abs"
            )
        ],
    )
    hist = t.fit(train, val, epochs=3)  # only epoch 1 beats the best by 100: cut after epoch 2
    assert hist["lr"] == [1e-2, 1e-2, 5e-3]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_the_last_checkpoint(tmp_path):
    x, y = blobs(100)
    model = small_model()
    t = trainer_for(model, callbacks=[ModelCheckpoint(tmp_path, monitor="train_loss")])
    t.fit(DataLoader(x, y, 25, seed=0), epochs=1)
    saved = (tmp_path / "last.npz").read_bytes()
    before = {k: v.copy() for k, v in model.state_dict().items()}

    class Poisoned(DataLoader):
        def __iter__(self):
            for i, (xb, yb) in enumerate(super().__iter__()):
                if i == 2:
                    xb = xb.copy()
                    xb[0, 0, 0, 0] = np.inf
                yield xb, yb

    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 2, step 3"):
        t.fit(Poisoned(x, y, 25, seed=0), epochs=2)
    assert (tmp_path / "last.npz").read_bytes() == saved
    # the check runs before the update: the poisoned step changed no weight
    assert np.isfinite(np.concatenate([v.ravel() for v in model.state_dict().values()])).all()
    assert any(not np.array_equal(before[k], v) for k, v in model.state_dict().items())


def test_labels_out_of_range_fail_before_any_step():
    x, y = blobs(60)
    y[-1] = 7
    model = small_model()
    before = model.state_dict()
    with pytest.raises(TrainingError, match=r"train loader: labels must lie in \[0, 3\)"):
        trainer_for(model).fit(DataLoader(x, y, 20), epochs=1)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_wrong_image_shapes_fail_before_any_step():
    x, y = blobs(60)
    with pytest.raises(
        TrainingError,
        match=r"validation loader yields batches of shape "
        r"\(20, 1, 10, 10\) that the model cannot take",
    ):
        big = np.zeros((60, 10, 10), np.uint8)
        trainer_for(small_model()).fit(DataLoader(x, y, 20), DataLoader(big, y, 20), epochs=1)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    t = trainer_for(small_model())
    t.save_checkpoint(tmp_path / "a.npz")
    other = trainer_for(small_model(classes=5))
    with pytest.raises(
        CheckpointError,
        match=r"different model: 4.weight has shape \(3, 64\) "
        r"there but \(5, 64\) here",
    ):
        other.load_checkpoint(tmp_path / "a.npz")


def test_checkpoint_of_a_newer_format_is_refused(tmp_path):
    t = trainer_for(small_model())
    path = t.save_checkpoint(tmp_path / "a.npz")
    arrays = dict(np.load(path))
    arrays["format_version"] = np.int64(99)
    np.savez(tmp_path / "b.npz", **arrays)
    with pytest.raises(CheckpointError, match=r"format 99, newer than this gpucnn reads \(1\)"):
        load_checkpoint(tmp_path / "b.npz")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a zip", "not a readable .npz checkpoint"),
        (None, "does not exist"),
    ],
)
def test_unreadable_checkpoints(tmp_path, content, match):
    path = tmp_path / "c.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_a_checkpoint_holding_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, format_version=np.int64(1), epoch=np.array([object()], dtype=object))
    with pytest.raises(CheckpointError, match="not a readable .npz checkpoint"):
        load_checkpoint(path)


def test_checkpoint_round_trip_restores_everything(tmp_path):
    train, val = loaders()
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=0),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.2, rng=4),
        nn.Linear(256, 3, rng=1),
    )
    stopper, sched = EarlyStopping(patience=5), PlateauScheduler(patience=0)
    t = trainer_for(model, callbacks=[stopper, sched], config={"model": "tiny"})
    t.fit(train, val, epochs=2)
    t.save_checkpoint(tmp_path / "ck.npz")
    ck = load_checkpoint(tmp_path / "ck.npz")
    assert ck.epoch == 2 and ck.step == 2 * len(train) and ck.config == {"model": "tiny"}
    assert ck.history["epoch"] == [1, 2]

    model2 = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=9),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.2, rng=9),
        nn.Linear(256, 3, rng=9),
    )
    stopper2, sched2 = EarlyStopping(patience=5), PlateauScheduler(patience=0)
    t2 = trainer_for(model2, callbacks=[stopper2, sched2])
    t2.load_checkpoint(tmp_path / "ck.npz")
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=k)
    assert stopper2.best == stopper.best and stopper2.wait == stopper.wait
    assert model2[4].rng.random() == model[4].rng.random()
    t.fit(train, val, epochs=3)
    t2.fit(train, val, epochs=3)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert t.optimizer.lr == t2.optimizer.lr


def test_a_run_restored_after_early_stopping_does_not_train_on(tmp_path):
    train, val = loaders()
    model = small_model()
    stopper = EarlyStopping(monitor="val_loss", patience=1)
    t = trainer_for(model, lr=0.5, callbacks=[stopper, ModelCheckpoint(tmp_path)])
    hist = t.fit(train, val, epochs=30)
    stopped_after = len(hist["epoch"])
    assert stopped_after < 30 and stopper.stopped_epoch == stopped_after - 1
    again = trainer_for(small_model(), lr=0.5, callbacks=[EarlyStopping(patience=1)])
    again.load_checkpoint(tmp_path / "last.npz")
    assert len(again.fit(train, val, epochs=30)["epoch"]) == stopped_after
