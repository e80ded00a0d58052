"""CSVLogger and TensorBoardLogger: what they write, read back; and a resumed run's logs equal
those of an uninterrupted run."""

from __future__ import annotations

import csv
import math
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from gpucnn import nn, optim
from gpucnn.data import DataLoader
from gpucnn.train import Callback, ModelCheckpoint, PlateauScheduler, Trainer
from gpucnn.train.loggers import TENSORBOARD_TAGS, CSVLogger, TensorBoardLogger
from gpucnn.train.trainer import HISTORY_KEYS

# columns that a rerun computes bit for bit (timing columns differ)
DETERMINISTIC = [k for k in HISTORY_KEYS if k not in ("elapsed_s", "images_per_s")]
DETERMINISTIC_TAGS = [TENSORBOARD_TAGS[k] for k in DETERMINISTIC if k != "epoch"]


def model():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=0),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.2, rng=1),
        nn.Linear(4 * 4 * 4, 3, rng=2),
    )


def loaders(validation=True):
    g = np.random.default_rng(0)
    labels = g.integers(0, 3, 240)
    images = (g.random((240, 8, 8)) * 80 + labels[:, None, None] * 50).astype(np.uint8)
    train = DataLoader(images[:180], labels[:180], 30, seed=3, mean=0.4, std=0.3)
    val = DataLoader(images[180:], labels[180:], 60, shuffle=False, mean=0.4, std=0.3)
    return train, (val if validation else None)


def trainer(*callbacks, validation=True):
    m = model()
    opt = optim.Adam(m.parameters(), lr=3e-3)
    # the plateau scheduler cuts the lr within the run, so the lr column varies
    cbs = [*callbacks]
    if validation:
        cbs.append(PlateauScheduler(patience=0, factor=0.5, threshold=0.5))
    return Trainer(m, nn.CrossEntropyLoss(), opt, callbacks=cbs, progress=False, workers=1)


def fit(t, epochs, validation=True):
    train, val = loaders(validation)
    return t.fit(train, val, epochs)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def killed_and_resumed(tmp_path, make_logger, epochs=3):
    """A run checkpointed after epoch 1 that went on to log epoch 2 before being "killed";
    a fresh Trainer then resumes from the epoch-1 checkpoint and fits to ``epochs``."""
    ckpt = tmp_path / "ckpt"
    t = trainer(make_logger(), ModelCheckpoint(ckpt, save_best=False))
    fit(t, 1)
    shutil.copy(ckpt / "last.npz", tmp_path / "epoch1.npz")
    fit(t, 2)  # logged past the checkpoint kept: what a kill after logging leaves behind
    resumed = trainer(make_logger(), ModelCheckpoint(ckpt, save_best=False))
    resumed.load_checkpoint(tmp_path / "epoch1.npz")
    assert resumed.epoch == 1
    return fit(resumed, epochs)


# -- CSV --------------------------------------------------------------------------------------


def test_csv_reads_back_equal_to_the_history(tmp_path):
    path = tmp_path / "run" / "history.csv"
    history = fit(trainer(CSVLogger(path)), 3)
    fields, rows = read_csv(path)
    assert fields == list(HISTORY_KEYS)
    assert [int(r["epoch"]) for r in rows] == history["epoch"] == [1, 2, 3]
    for key in HISTORY_KEYS[1:]:  # repr precision: every value reads back exactly
        assert [float(r[key]) for r in rows] == history[key], key
    assert len(set(history["lr"])) > 1
    assert not (tmp_path / "run" / "history.csv.part").exists()


def test_csv_is_written_after_every_epoch(tmp_path):
    path = tmp_path / "history.csv"
    seen = []

    class Peek(CSVLogger):
        order = 95  # after the CSVLogger

        @property
        def key(self):
            return "Peek"

        def on_train_begin(self, trainer):
            seen.append(len(read_csv(path)[1]))

        def on_epoch_end(self, trainer, epoch, logs):
            seen.append(len(read_csv(path)[1]))

    fit(trainer(CSVLogger(path), Peek(tmp_path / "unused.csv")), 2)
    assert seen == [0, 1, 2]  # the header alone at the start, then one row per epoch


@pytest.mark.parametrize("na_rep", ["", "nan"])
def test_csv_without_validation_writes_nan_as_na_rep(tmp_path, na_rep):
    path = tmp_path / "history.csv"
    history = fit(trainer(CSVLogger(path, na_rep=na_rep), validation=False), 2, validation=False)
    _, rows = read_csv(path)
    assert [r["val_loss"] for r in rows] == [na_rep, na_rep]
    assert [r["val_accuracy"] for r in rows] == [na_rep, na_rep]
    assert [float(r["train_loss"]) for r in rows] == history["train_loss"]


def test_csv_write_accepts_a_history_read_from_json(tmp_path):
    path = tmp_path / "h.csv"
    CSVLogger(path).write(
        {"epoch": [1, 2], "train_loss": [0.1, math.nan], "lr": [np.float64(1e-3)]}
    )
    _, rows = read_csv(path)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert [r["train_loss"] for r in rows] == ["0.1", ""]
    assert [r["lr"] for r in rows] == ["0.001", ""]  # a short column is padded
    assert rows[0]["val_loss"] == ""  # a missing column too


def test_csv_of_a_resumed_run_equals_an_uninterrupted_run(tmp_path):
    straight_path = tmp_path / "straight.csv"
    straight = fit(trainer(CSVLogger(straight_path)), 3)
    resumed_path = tmp_path / "resumed.csv"
    resumed = killed_and_resumed(tmp_path, lambda: CSVLogger(resumed_path))
    _, a = read_csv(straight_path)
    _, b = read_csv(resumed_path)
    assert len(a) == len(b) == 3  # the row the killed run wrote past its checkpoint is gone
    for key in DETERMINISTIC:
        assert [r[key] for r in a] == [r[key] for r in b], key
    for key in ("elapsed_s", "images_per_s"):
        assert all(float(r[key]) > 0 for r in b)
    assert resumed["train_loss"] == straight["train_loss"]


def test_csv_logger_refuses_a_folder(tmp_path):
    with pytest.raises(IsADirectoryError, match="history.csv"):
        CSVLogger(tmp_path)


# -- TensorBoard ------------------------------------------------------------------------------


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(log_dir: Path) -> list:
    """Every Event of every file, in file-name order (TensorBoard's), through the TFRecord
    framing: length (u64), its masked CRC-32C (u32), the data, the data's masked CRC-32C."""
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
    events = []
    files = sorted(log_dir.glob("events.out.tfevents.*"))
    assert files, f"no event files in {log_dir}"
    for path in files:
        raw = path.read_bytes()
        pos = 0
        while pos < len(raw):
            header = raw[pos : pos + 8]
            (length,) = struct.unpack("<Q", header)
            (length_crc,) = struct.unpack("<I", raw[pos + 8 : pos + 12])
            assert length_crc == masked_crc(header), f"{path}: bad length CRC at {pos}"
            data = raw[pos + 12 : pos + 12 + length]
            (data_crc,) = struct.unpack("<I", raw[pos + 12 + length : pos + 16 + length])
            assert data_crc == masked_crc(data), f"{path}: bad data CRC at {pos}"
            events.append(event_pb2.Event.FromString(data))
            pos += 16 + length
    return events


def points(events, kind="simple_value", purge=True):
    """tag -> [(step, value)], dropping, like TensorBoard, the points at and after the step
    of a restart marker (SessionLog.START) read after them."""
    out: dict[str, list] = {}
    for ev in events:
        if purge and ev.HasField("session_log") and ev.session_log.status == 1:  # START
            for tag in out:
                out[tag] = [(s, v) for s, v in out[tag] if s < ev.step]
        for value in ev.summary.value:
            if value.HasField(kind):
                out.setdefault(value.tag, []).append((ev.step, getattr(value, kind)))
    return out


def test_tensorboard_scalars_and_histograms_read_back(tmp_path):
    pytest.importorskip("tensorboardX")
    t = trainer(TensorBoardLogger(tmp_path / "tb", histograms=True))
    history = fit(t, 2)
    events = read_events(tmp_path / "tb")
    scalars = points(events)
    assert set(scalars) == set(TENSORBOARD_TAGS.values())
    for column, tag in TENSORBOARD_TAGS.items():
        assert [s for s, _ in scalars[tag]] == [1, 2], tag
        expected = np.float32(history[column])  # TensorBoard stores float32
        assert np.array_equal([v for _, v in scalars[tag]], expected), tag
    hists = points(events, "histo")
    names = [name for name, _ in t.model.named_parameters()]
    assert set(hists) == {f"params/{n}" for n in names}
    sizes = {name: p.data.size for name, p in t.model.named_parameters()}
    for name in names:
        assert [s for s, _ in hists[f"params/{name}"]] == [1, 2]
        assert all(h.num == sizes[name] for _, h in hists[f"params/{name}"])


def test_tensorboard_events_are_on_disk_when_the_epoch_ends(tmp_path):
    """tensorboardX's flush() does not wait for its writer thread; each epoch's file is closed
    before the next callback (the checkpoint) runs, so a kill then loses no logged epoch."""
    pytest.importorskip("tensorboardX")
    seen = []

    class Peek(Callback):
        order = 95  # after the TensorBoardLogger, before checkpointing

        def on_epoch_end(self, trainer, epoch, logs):
            seen.append([s for s, _ in points(read_events(tmp_path))["train/loss"]])

    fit(trainer(TensorBoardLogger(tmp_path), Peek()), 3)
    assert seen == [[1], [1, 2], [1, 2, 3]]


def test_tensorboard_without_validation_leaves_val_out(tmp_path):
    pytest.importorskip("tensorboardX")
    fit(trainer(TensorBoardLogger(tmp_path), validation=False), 1, validation=False)
    tags = set(points(read_events(tmp_path)))
    assert tags == set(TENSORBOARD_TAGS.values()) - {"val/loss", "val/accuracy"}


def test_tensorboard_of_a_resumed_run_has_one_point_per_epoch(tmp_path):
    pytest.importorskip("tensorboardX")
    fit(trainer(TensorBoardLogger(tmp_path / "straight")), 3)
    killed_and_resumed(tmp_path, lambda: TensorBoardLogger(tmp_path / "resumed"))
    straight = points(read_events(tmp_path / "straight"))
    events = read_events(tmp_path / "resumed")
    raw = points(events, purge=False)
    assert [s for s, _ in raw["train/loss"]] == [1, 2, 2, 3]  # the killed run's epoch 2 is there
    starts = [ev.step for ev in events if ev.session_log.status == 1]
    assert starts == [1, 2, 2]  # each fit marks a restart at the first epoch it logs
    resumed = points(events)
    for tag in DETERMINISTIC_TAGS:
        assert resumed[tag] == straight[tag], tag


def test_tensorboard_reads_a_resumed_run_like_an_uninterrupted_one(tmp_path):
    """The same, read by TensorBoard's own loader (where the tensorboard package is there)."""
    pytest.importorskip("tensorboardX")
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    fit(trainer(TensorBoardLogger(tmp_path / "straight", histograms=True)), 3)
    killed_and_resumed(tmp_path, lambda: TensorBoardLogger(tmp_path / "resumed", histograms=True))
    runs = {}
    for name in ("straight", "resumed"):
        acc = ea.EventAccumulator(
            str(tmp_path / name), size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0}
        )
        runs[name] = acc.Reload()
    straight, resumed = runs["straight"], runs["resumed"]
    assert set(resumed.Tags()["scalars"]) == set(TENSORBOARD_TAGS.values())
    for tag in DETERMINISTIC_TAGS:
        got = [(e.step, e.value) for e in resumed.Scalars(tag)]
        assert got == [(e.step, e.value) for e in straight.Scalars(tag)], tag
        assert [s for s, _ in got] == [1, 2, 3]
    for tag in resumed.Tags()["histograms"]:
        assert [h.step for h in resumed.Histograms(tag)] == [1, 2, 3]


def test_tensorboard_missing_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"pip install 'gpucnn\[tensorboard\]'"):
        TensorBoardLogger(tmp_path)


def test_loggers_hold_no_checkpoint_state_and_have_their_own_keys(tmp_path):
    pytest.importorskip("tensorboardX")
    csv_logger, tb_logger = CSVLogger(tmp_path / "h.csv"), TensorBoardLogger(tmp_path / "tb")
    assert csv_logger.state_dict() == {} and tb_logger.state_dict() == {}
    assert csv_logger.key != tb_logger.key
    ckpt = ModelCheckpoint(tmp_path / "ckpt", save_best=False)
    t = trainer(csv_logger, tb_logger, ckpt)
    assert [type(c).__name__ for c in t.callbacks][-3:] == [
        "CSVLogger",
        "TensorBoardLogger",
        "ModelCheckpoint",
    ]
    fit(t, 1)
    with np.load(ckpt.last_path) as f:
        assert not [k for k in f.files if "Logger" in k]
