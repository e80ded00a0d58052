"""Run folders and checkpoints that are never wrong: the last update of an epoch checked
before anything is saved, fallback to the previous good checkpoint, best.npz reconciled with
last.npz, one owner per folder, one config per folder, names that stay inside their parent."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpucnn import nn, optim
from gpucnn.data import DataLoader
from gpucnn.train import (
    CheckpointError,
    ModelCheckpoint,
    NonFiniteParametersError,
    Trainer,
    load_checkpoint,
)
from gpucnn.train.atomic import previous
from gpucnn.train.config import TrainConfig
from gpucnn.train.runs import RunFolder, RunFolderError, check_run_name
from tests.processes import folder_held_elsewhere
from tests.train.test_trainer import blobs, loaders, small_model

ROOT = Path(__file__).resolve().parents[2]


def trainer(folder: Path, lr=1e-2, seed=0) -> tuple[Trainer, ModelCheckpoint]:
    model = small_model(seed=seed)
    cb = ModelCheckpoint(folder)
    t = Trainer(
        model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=lr), callbacks=[cb],
        progress=False, workers=1,
    )  # fmt: skip
    return t, cb


# -- nothing non-finite is saved ----------------------------------------------------------
def test_the_last_update_of_an_epoch_is_checked_before_a_checkpoint(tmp_path):
    x, y = blobs(25)  # one batch per epoch: the loss check before it sees finite weights
    t, _ = trainer(tmp_path, lr=np.inf)
    with pytest.raises(NonFiniteParametersError, match="became NaN or infinite in epoch 1"):
        t.fit(DataLoader(x, y, 25, seed=0), epochs=3)
    assert not (tmp_path / "last.npz").exists()
    assert not (tmp_path / "best.npz").exists()


def test_a_poisoned_model_is_never_written(tmp_path):
    t, _ = trainer(tmp_path)
    t.model[0].weight.data[0, 0, 0, 0] = np.nan
    with pytest.raises(CheckpointError, match="not saving .*0.weight holds NaN"):
        t.save_checkpoint(tmp_path / "last.npz")
    assert list(tmp_path.iterdir()) == []


# -- recovery -------------------------------------------------------------------------------
def fit_epochs(folder: Path, epochs: int) -> Trainer:
    train, val = loaders()
    t, _ = trainer(folder)
    t.fit(train, val, epochs)
    return t


def test_a_corrupt_last_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    fit_epochs(tmp_path, 2)
    last = tmp_path / "last.npz"
    last.write_bytes(last.read_bytes()[:1000])  # cut short, as a full disk would
    t, cb = trainer(tmp_path)
    with caplog.at_level("INFO", logger="gpucnn.train"):
        ckpt = cb.resume(t)
    assert ckpt.epoch == 1 and t.epoch == 1
    assert "resumed from the previous checkpoint" in caplog.text
    assert str(previous(last)) in caplog.text


def test_no_usable_checkpoint_says_how_to_start_over(tmp_path):
    fit_epochs(tmp_path, 2)
    for path in (tmp_path / "last.npz", previous(tmp_path / "last.npz")):
        path.write_bytes(b"not a zip")
    t, cb = trainer(tmp_path)
    with pytest.raises(CheckpointError, match="no usable checkpoint .* --overwrite"):
        cb.resume(t)


def test_a_best_written_after_the_last_checkpoint_is_put_back(tmp_path, caplog):
    """A kill between best.npz and last.npz leaves a best of an epoch last does not know."""
    fit_epochs(tmp_path, 2)
    best, last = tmp_path / "best.npz", tmp_path / "last.npz"
    assert (load_checkpoint(best).epoch, load_checkpoint(previous(best)).epoch) == (2, 1)
    previous(last).replace(last)  # as if epoch 2's last.npz was never written
    t, cb = trainer(tmp_path)
    with caplog.at_level("INFO", logger="gpucnn.train"):
        cb.resume(t)
    assert t.epoch == 1 and cb.best_epoch == 1
    assert load_checkpoint(best).epoch == 1
    assert "restored the best of epoch 1" in caplog.text


def test_without_a_last_checkpoint_a_stale_best_is_removed(tmp_path):
    fit_epochs(tmp_path, 1)
    (tmp_path / "last.npz").unlink()  # killed between epoch 1's best.npz and last.npz
    t, cb = trainer(tmp_path)
    assert cb.resume(t) is None
    assert not (tmp_path / "best.npz").exists()


# -- the run folder -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/abs", ".hidden", "a\nb", "a\x7f"])
def test_run_names_are_single_visible_path_components(name):
    with pytest.raises(ValueError, match="is not a folder name"):
        check_run_name(name)


def test_a_second_process_cannot_claim_a_folder_in_use(tmp_path):
    with folder_held_elsewhere(tmp_path / "r") as holder:
        t0 = time.perf_counter()
        with pytest.raises(RunFolderError, match=f"in use by process {holder.pid} on "):
            with RunFolder(tmp_path / "r").claim():
                pass
        assert time.perf_counter() - t0 < 1
    with RunFolder(tmp_path / "r").claim():  # the kernel dropped the dead holder's lock
        pass


def test_a_refusal_names_the_flow_run_holding_the_folder(tmp_path):
    """A flow holds the folder (gpucnn.flows names it with held_as), here inside its process's
    own claim, as the command line holds it around its flow: a second process is told the
    flow run, its process and its host; when the flow's claim ends, the process again."""
    import socket

    held = tmp_path / "held"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom pathlib import Path\n"
         "from gpucnn.train.runs import RunFolder, held_as\n"
         f"folder = RunFolder({str(tmp_path / 'r')!r})\n"
         "with folder.claim():\n"
         "    with held_as(\"flow run 'brave-fox' (1234)\"), folder.claim():\n"
         f"        Path({str(held)!r}).write_text('flow')\n"
         "        sys.stdin.readline()\n"
         f"    Path({str(held)!r}).write_text('process')\n"
         "    sys.stdin.readline()\n"],
        cwd=ROOT, stdin=subprocess.PIPE, text=True,
    )  # fmt: skip

    def refusal(stage: str) -> str:
        deadline = time.monotonic() + 60
        while not (held.exists() and held.read_text() == stage):
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(RunFolderError) as caught:
            with RunFolder(tmp_path / "r").claim():
                pass
        return str(caught.value)

    try:
        where = f"process {holder.pid} on {socket.gethostname()} since "
        assert f"is in use by flow run 'brave-fox' (1234) in {where}" in refusal("flow")
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert f"is in use by {where}" in refusal("process")
    finally:
        holder.kill()
        holder.wait()


def test_claims_nest_in_one_process_and_an_unused_new_folder_goes_again(tmp_path):
    folder = RunFolder(tmp_path / "new")
    with folder.claim(), folder.claim():
        assert folder.path.is_dir()
    assert not folder.path.exists()  # made by the claim, used by nothing: removed


def test_resuming_with_another_config_names_the_differing_fields(tmp_path):
    from gpucnn.train.atomic import write_json

    write_json(tmp_path / "config.json", TrainConfig(lr=1e-3, limit=2000).to_dict())
    folder = RunFolder(tmp_path)
    folder.check_config(TrainConfig(lr=1e-3, limit=2000, epochs=9, device="cpu"))  # resumable
    with pytest.raises(RunFolderError, match=r"lr 0.001 there, 0.05 now; limit 2000 there, 100"):
        folder.check_config(TrainConfig(lr=0.05, limit=100))


def test_a_full_disk_names_the_file_and_leaves_it_intact(tmp_path):
    import errno

    from gpucnn.train.atomic import write_atomic

    target = tmp_path / "history.json"
    target.write_text("old")

    def full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=rf"No space left on device \(writing {target}; it is"):
        write_atomic(target, full)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


# -- a tidy run folder ----------------------------------------------------------------------
def test_the_lock_is_removed_when_the_run_ends(tmp_path):
    folder = RunFolder(tmp_path / "r")
    with folder.claim():
        (folder.path / "config.json").write_text("{}")
        assert folder.lock_path.exists()  # while a process holds it
    assert folder.path.is_dir() and sorted(p.name for p in folder.path.iterdir()) == ["config.json"]
    with folder.claim():  # and the folder can be claimed again
        pass
    assert not folder.lock_path.exists()


def test_a_lock_left_by_a_killed_holder_is_taken_and_removed(tmp_path):
    with folder_held_elsewhere(tmp_path / "r"):  # killed at the end: its .lock stays
        (tmp_path / "r" / "config.json").write_text("{}")
    assert (tmp_path / "r" / ".lock").exists()
    with RunFolder(tmp_path / "r").claim():
        pass
    assert not (tmp_path / "r" / ".lock").exists()


def test_a_claim_that_raced_a_release_does_not_hold_the_removed_file(tmp_path, monkeypatch):
    """The lock file goes when its run ends. A claimant that opened it just before must not
    hold a lock on the removed file while a third one locks the new file: it finds the file
    replaced, and the folder in use by the third."""
    import fcntl

    folder = RunFolder(tmp_path / "r")
    first = folder._lock()
    (folder.path / "config.json").write_text("{}")
    real_flock, third = fcntl.flock, []

    def the_first_ends_and_a_third_claims(f, op):  # between our open and our lock
        monkeypatch.setattr(fcntl, "flock", real_flock)
        folder._unlock(*first)
        third.append(folder._lock())
        return real_flock(f, op)

    monkeypatch.setattr(fcntl, "flock", the_first_ends_and_a_third_claims)
    with pytest.raises(RunFolderError, match=f"in use by process {os.getpid()} on "):
        folder._lock()
    assert third
    folder._unlock(*third[0])
    assert not folder.lock_path.exists()


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=oct)
def test_files_in_a_run_folder_follow_the_umask(tmp_path, umask):
    import stat

    from gpucnn.train.atomic import write_json

    old = os.umask(umask)
    try:
        write_json(tmp_path / "summary.json", {})  # atomic: a temporary file renamed
        (tmp_path / "history.csv").write_text("epoch\n")  # a plain open()
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"summary.json": 0o666 & ~umask, "history.csv": 0o666 & ~umask}
