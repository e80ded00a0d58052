"""Loading checkpoints treats the file as hostile: bounded memory, nothing executed, and every
refusal a one-line CheckpointError naming the file and the rule.

The faults are crafted from a genuine checkpoint, rewriting its zip members with zipfile and
numpy.lib.format, as an attacker (or a diverged run) would produce them.
"""

from __future__ import annotations

import io
import re
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npformat

from gpucnn import models, nn, optim
from gpucnn.train import CheckpointError, EarlyStopping, ModelCheckpoint, load_checkpoint
from gpucnn.train import checkpoint_checks as checkpoint_module
from gpucnn.train.checkpoint import generators, save_checkpoint

MiB = 1 << 20


def seed_with_state() -> tuple[nn.Module, optim.Adam, EarlyStopping]:
    """The seed model after one Adam step, with an EarlyStopping holding best weights."""
    model = models.build("seed", seed=0)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    g = np.random.default_rng(0)
    for p in model.parameters():
        p.grad = g.standard_normal(p.data.shape).astype(np.float32)
    opt.step()
    stopper = EarlyStopping(monitor="val_loss", patience=3)
    stopper.best, stopper.wait, stopper.best_epoch = 0.25, 1, 2
    stopper.best_weights = model.state_dict()
    return model, opt, stopper


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> Path:
    """A real checkpoint: the seed model, Adam state and an EarlyStopping's best weights."""
    tmp = tmp_path_factory.mktemp("genuine")
    model, opt, stopper = seed_with_state()
    return save_checkpoint(
        tmp / "seed.npz",
        model,
        opt,
        {stopper.key: stopper},
        epoch=3,
        step=120,
        config={"model": "seed", "lr": 1e-3},
        history={"epoch": [0, 1, 2], "val_loss": [0.5, 0.25, float("nan")]},
    )


def members(path: Path) -> dict[str, bytes]:
    """The raw .npy bytes of each member, by name without ".npy"."""
    with zipfile.ZipFile(path) as zf:
        return {i.filename[:-4]: zf.read(i) for i in zf.infolist()}


def npy(a) -> bytes:
    f = io.BytesIO()
    npformat.write_array(f, np.asanyarray(a), allow_pickle=True)
    return f.getvalue()


def header(shape: tuple, descr: str = "<f4") -> bytes:
    f = io.BytesIO()
    npformat.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
    return f.getvalue()


def data_of(raw: bytes) -> bytes:
    """The array bytes of a .npy member, without its header."""
    f = io.BytesIO(raw)
    assert npformat.read_magic(f) == (1, 0)
    npformat.read_array_header_1_0(f)
    return raw[f.tell() :]


def write(path: Path, entries, deflate: tuple[str, ...] = ()) -> Path:
    """A zip of (name, bytes) entries, stored unless named in ``deflate``, as np.savez lays
    them out (".npy" appended; duplicates allowed, as a hand-made zip may have them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(path, "w") as zf:
            for name, raw in entries:
                method = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
                zf.writestr(name + ".npy", raw, compress_type=method)
    return path


def craft(tmp_path: Path, genuine: Path, changes: dict) -> Path:
    """The genuine checkpoint with members replaced (an array or raw bytes) or removed (None)."""
    entries = members(genuine)
    for key, value in changes.items():
        if value is None:
            del entries[key]
        else:
            entries[key] = value if isinstance(value, bytes) else npy(value)
    return write(tmp_path / "crafted.npz", entries.items())


def original(genuine: Path, key: str) -> np.ndarray:
    with np.load(genuine) as npz:
        return npz[key]


def refused(path: Path, *patterns: str, **kwargs) -> str:
    """Load must raise one CheckpointError line naming the path and matching every pattern."""
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    return message


# -- a genuine checkpoint still loads and restores everything ----------------------------------


def dropout_model(seed: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=seed),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.2, rng=seed + 4),
        nn.Linear(256, 3, rng=seed + 1),
    )


@pytest.mark.parametrize("check_against_model", [False, True])
def test_a_genuine_checkpoint_round_trips(tmp_path, check_against_model):
    model = dropout_model(0)
    model.train()
    model(np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32))
    opt = optim.Adam(model.parameters(), lr=0.01)
    for p in model.parameters():
        p.grad = np.full_like(p.data, 0.5)
    opt.step()
    stopper = EarlyStopping(monitor="val_loss")
    stopper.best, stopper.wait, stopper.best_epoch = 0.5, 2, 4
    stopper.best_weights = model.state_dict()
    saver = ModelCheckpoint(tmp_path / "run")
    saver.best = 0.75
    callbacks = {stopper.key: stopper, saver.key: saver}
    history = {"epoch": [0, 1], "val_loss": [0.9, float("nan")]}
    path = save_checkpoint(
        tmp_path / "ck.npz", model, opt, callbacks, 2, 40, {"model": "x"}, history
    )

    fresh = dropout_model(7)
    ck = load_checkpoint(path, model=fresh) if check_against_model else load_checkpoint(path)
    assert (ck.epoch, ck.step, ck.config, ck.path) == (2, 40, {"model": "x"}, path)
    assert ck.history["val_loss"][0] == 0.9 and np.isnan(ck.history["val_loss"][1])
    assert [name for name, _ in ck.signature] == list(model.state_dict())
    fresh_opt = optim.Adam(fresh.parameters(), lr=0.1)
    fresh_stopper, fresh_saver = EarlyStopping(monitor="val_loss"), ModelCheckpoint(tmp_path)
    ck.restore(fresh, fresh_opt, {stopper.key: fresh_stopper, saver.key: fresh_saver})

    for name, a in model.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[name], a, err_msg=name)
    ours, theirs = opt.state_dict(), fresh_opt.state_dict()
    assert sorted(ours) == sorted(theirs)
    for key, value in ours.items():
        np.testing.assert_array_equal(theirs[key], value, err_msg=key)
    assert (fresh_stopper.best, fresh_stopper.wait, fresh_stopper.best_epoch) == (0.5, 2, 4)
    for name, a in stopper.best_weights.items():
        np.testing.assert_array_equal(fresh_stopper.best_weights[name], a)
    assert fresh_saver.best == 0.75
    assert generators(fresh)["4"].random() == generators(model)["4"].random()


# -- the faults the reliability probe found, one test each -------------------------------------


@pytest.mark.parametrize("shape", [(2**40,), (2**20, 2**20), (3,), (-1,)])
def test_a_header_claiming_more_or_less_than_the_member_holds_is_refused(tmp_path, genuine, shape):
    raw = members(genuine)["model/7.weight"]
    path = craft(tmp_path, genuine, {"model/7.weight": header(shape) + data_of(raw)})
    pattern = "impossible shape" if min(shape) < 0 else r"header claiming shape .* stores"
    refused(path, "model/7.weight", pattern)


@pytest.mark.parametrize(
    ("extra", "deflate"),
    [
        pytest.param(True, ("junk",), id="compressed-extra-member"),
        pytest.param(False, ("model/7.weight",), id="compressed-model-member"),
        pytest.param(False, ("config", "history", "model_signature"), id="compressed-json"),
    ],
)
def test_compressed_members_are_refused_before_anything_is_unpacked(
    tmp_path, genuine, extra, deflate
):
    entries = members(genuine)
    if extra:  # 64 MiB of zeros deflate to ~64 KiB: the probe's zip bomb, scaled down
        entries["junk"] = header((8 * MiB,), "<f8") + bytes(64 * MiB)
    path = write(tmp_path / "bomb.npz", entries.items(), deflate)
    del entries
    assert path.stat().st_size < genuine.stat().st_size + MiB
    tracemalloc.start()
    try:
        refused(path, "compressed", "stored members only")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB


@pytest.mark.parametrize(
    ("key", "value", "pattern"),
    [
        ("config", np.array("[1, 2]"), "config must be a JSON object, got a JSON array"),
        ("config", np.array('"run"'), "config must be a JSON object, got a JSON string"),
        ("config", np.array("{not json"), "config is not valid JSON"),
        ("config", np.array("[" * 100_000 + "]" * 100_000), "config is not valid JSON"),
        ("config", np.array(5), r"config must be JSON text \(a 0-d unicode array\)"),
        ("config", np.array(["{}", "{}"]), r"config must be JSON text .*shape \(2,\)"),
        ("config", np.array(b"{}"), "config has dtype |S2; .* unicode text only"),
        ("history", np.array("[]"), "history must be a JSON object"),
        ("history", np.array('{"loss": 1.0}'), r"history\['loss'\] must be a JSON array"),
        ("history", np.array('{"loss": ["a"]}'), r"history\['loss'\] .* of numbers"),
        ("model_signature", np.array('{"a": 1}'), "model_signature must be a JSON array"),
        ("model_signature", np.array('[["0.weight"]]'), r"distinct \[name, shape\] pairs"),
        ("model_signature", np.array('[["a", [-1]]]'), r"distinct \[name, shape\] pairs"),
        ("rng/4", np.array("[1]"), "rng/4 must be a JSON object"),
    ],
)
def test_json_members_must_be_json_of_their_type(tmp_path, genuine, key, value, pattern):
    refused(craft(tmp_path, genuine, {key: value}), pattern)


def test_json_members_are_bounded_in_length(tmp_path, genuine, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "MAX_JSON_CHARS", 500)
    config = np.array('{"note": "' + "x" * 600 + '"}')
    refused(craft(tmp_path, genuine, {"config": config}), "config is 61. characters of JSON", "500")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (np.int64(0), "format 0,"),
        (np.int64(-5), "format -5,"),
        (np.float64(1.9), r"format 1\.9 \(float64\), not an integer"),
        (np.float64(1.0), r"format 1\.0 \(float64\)"),
        (np.bool_(True), r"format True \(bool\)"),
        (np.array("1"), r"format '1' \(<U1\)"),
        (np.array([1, 1]), r"format_version of int64 of shape \(2,\)"),
    ],
)
def test_only_this_format_version_is_read(tmp_path, genuine, value, shown):
    path = craft(tmp_path, genuine, {"format_version": value})
    refused(path, shown, r"this gpucnn reads format 1 only")


@pytest.mark.parametrize(
    ("key", "value", "pattern"),
    [
        ("epoch", np.int64(-1), r"epoch must be a non-negative integer \(0-d\), got -1"),
        ("step", np.int64(-3), r"step must be a non-negative integer .* got -3"),
        ("epoch", np.float64(2.5), r"epoch must be a 0-d integer array, got float64"),
        ("step", np.array([1, 2]), r"step must be a 0-d integer array, got int64 of shape"),
        ("epoch", np.array("3"), r"epoch must be a 0-d integer array, got <U1"),
        ("step", np.bool_(True), r"step must be a 0-d integer array, got bool"),
    ],
)
def test_epoch_and_step_must_be_non_negative_integers(tmp_path, genuine, key, value, pattern):
    refused(craft(tmp_path, genuine, {key: value}), pattern)


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("model/0.weight", np.nan),
        ("model/9.bias", np.inf),
        ("model/7.weight", -np.inf),
        ("optim/0.exp_avg", np.nan),
        ("optim/3.exp_avg_sq", np.inf),
        ("optim/lr", np.nan),
        ("callback/EarlyStopping/best_weights/3.weight", np.nan),
    ],
)
def test_non_finite_weights_and_optimizer_state_are_refused(tmp_path, genuine, key, bad):
    a = original(genuine, key).copy()
    a.flat[a.size // 2] = bad
    path = craft(tmp_path, genuine, {key: a})
    count = "holds 1 NaN and 0 infinite" if np.isnan(bad) else "holds 0 NaN and 1 infinite"
    refused(path, re.escape(key) + " " + count, "must be finite")


def test_a_pickled_object_member_is_refused_without_running_it(tmp_path, genuine):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('ran')",)

    evil = npy(np.array([Payload()], dtype=object))
    for key in ("model/0.weight", "config", "epoch"):
        path = craft(tmp_path, genuine, {key: evil})
        refused(path, re.escape(key), "pickled Python objects")
        assert not marker.exists()


# -- the structural rules behind those: names, dtypes, sizes, signature ------------------------


@pytest.mark.parametrize(
    ("entry", "pattern"),
    [
        ("junk", r"member 'junk', which gpucnn never writes"),
        ("model_signature2", "'model_signature2', which gpucnn never writes"),
        ("optim/x", "'optim/x', which gpucnn never writes"),
        ("callback/Early Stopping/best", "which gpucnn never writes"),
        ("rng/../x", r"'rng/\.\./x', which gpucnn never writes"),
        ("model/0.weight", "model/0.weight.npy' twice"),
    ],
)
def test_members_gpucnn_never_writes_are_refused(tmp_path, genuine, entry, pattern):
    entries = list(members(genuine).items()) + [(entry, npy(np.zeros(3, np.float32)))]
    refused(write(tmp_path / "extra.npz", entries), pattern)


def test_a_member_that_is_not_npy_is_refused(tmp_path, genuine):
    path = tmp_path / "readme.npz"
    path.write_bytes(genuine.read_bytes())
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("README.txt", "hello")
    refused(path, "'README.txt', which is not a .npy array")


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        (np.zeros((32, 1, 3, 3), np.complex64), "dtype complex64"),
        (np.zeros((32, 1, 3, 3), "datetime64[s]"), r"dtype datetime64\[s\]"),
        (np.zeros((32, 1, 3, 3), [("a", "<f4")]), "dtype "),
        (np.full((32, 1, 3, 3), "w"), r"model/0.weight must hold numbers, got <U1"),
        (b"\x93NUMPY\x01\x00garbage", "no valid .npy header"),
        (b"not numpy at all", "no valid .npy header"),
    ],
)
def test_model_members_must_be_numeric_npy(tmp_path, genuine, value, pattern):
    refused(craft(tmp_path, genuine, {"model/0.weight": value}), "model/0.weight", pattern)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"model/9.bias": None}, "model/9.bias is missing"),
        ({"model/9.extra": np.zeros(3, np.float32)}, "model/9.extra is not in the signature"),
        (
            {"model/9.bias": np.zeros(5, np.float32)},
            r"model/9.bias has shape \(5,\) but the signature says \(10,\)",
        ),
    ],
)
def test_model_members_must_match_the_stored_signature(tmp_path, genuine, change, pattern):
    refused(craft(tmp_path, genuine, change), "do not match its model_signature", pattern)


def hide_before_directory(raw: bytes, junk: bytes) -> bytes:
    """Insert ``junk`` between the last member and the central directory, moving the end
    record's directory offset: a valid zip whose members do not account for its size."""
    eocd = len(raw) - 22
    assert raw[eocd : eocd + 4] == b"PK\x05\x06"
    directory = int.from_bytes(raw[eocd + 16 : eocd + 20], "little")
    moved = (directory + len(junk)).to_bytes(4, "little")
    head, tail = raw[eocd : eocd + 16], raw[eocd + 20 :]
    return raw[:directory] + junk + raw[directory:eocd] + head + moved + tail


@pytest.mark.parametrize("where", ["before-the-directory", "in-front"])
def test_a_file_larger_than_its_members_is_refused(tmp_path, genuine, where):
    raw, junk = genuine.read_bytes(), bytes(MiB)
    path = tmp_path / "padded.npz"
    path.write_bytes(hide_before_directory(raw, junk) if where != "in-front" else junk + raw)
    refused(path, "members hold .* bytes but the file has", "must account for the file")


def test_a_given_model_is_checked_before_any_model_array_is_read(tmp_path, genuine):
    w = original(genuine, "model/0.weight").copy()
    w[0] = np.nan
    path = craft(tmp_path, genuine, {"model/0.weight": w})
    other = models.build("seed", num_classes=5, seed=0)
    refused(path, r"different model: 9.weight has shape \(10, 128\) there", model=other)
    assert load_checkpoint(genuine, model=models.build("seed", seed=1)).epoch == 3


# -- restoring into objects the saved state does not fit ---------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "pattern"),
    [
        ("optim/0.exp_avg", np.zeros((2, 2), np.float32), r"has shape \(2, 2\) but its param"),
        ("optim/99.exp_avg", np.zeros(3, np.float32), "belongs to parameter 99"),
        ("callback/EarlyStopping/best", np.array([1.0, 2.0]), "callback EarlyStopping does not"),
        ("callback/EarlyStopping/wait", None, "callback EarlyStopping does not fit"),
        ("optim/lr", None, r"holds no optimizer state \(optim/lr\)"),
    ],
)
def test_restore_refuses_state_that_does_not_fit(tmp_path, genuine, key, value, pattern):
    ck = load_checkpoint(craft(tmp_path, genuine, {key: value}))
    model, opt, stopper = seed_with_state()
    with pytest.raises(CheckpointError, match=pattern) as info:
        ck.restore(model, opt, {stopper.key: stopper})
    assert str(ck.path) in str(info.value) and "\n" not in str(info.value)


def test_restore_refuses_a_generator_state_of_another_kind(tmp_path):
    model = dropout_model(0)
    path = save_checkpoint(tmp_path / "d.npz", model)
    bad = craft(tmp_path, path, {"rng/4": np.array('{"bit_generator": "MT19937", "state": {}}')})
    with pytest.raises(CheckpointError, match="rng/4 is not a state of the generator of 4"):
        load_checkpoint(bad).restore(dropout_model(1))


def test_checkpoint_errors_are_one_line():
    assert str(CheckpointError("x.npz: bad\n  member\tname")) == "x.npz: bad member name"
