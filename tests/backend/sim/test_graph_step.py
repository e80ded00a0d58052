"""One CUDA graph per training step (gpucnn.train.graph), against the same step run eagerly.

CI cannot capture graphs, so tests/backend/sim/fakecupy.py stands in for CuPy's stream capture:
capture records the work without running it or changing device memory, a launch re-executes
exactly what was recorded on the same arrays with the same (frozen) arguments, and host reads
raise while capturing. The first tests check the stand-in itself, including that it catches a
step which passes a per-step host value to a kernel; the rest train a tiny model for two
epochs with graphs and compare against the uncaptured step (same kernels: equal to float32
rounding; BatchNorm's atomics may sum in another order) and against the plain eager Trainer
(cuBLAS in place of the GEMM kernels; a model without dropout, whose masks differ by design:
graph mode keys them on the device per epoch seed and step, the eager path draws a host key per
step). Shapes are tiny: the simulator runs about a thread per millisecond.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import data, nn, optim
from gpucnn.backend import cuda as gpu
from gpucnn.backend import formulas, get_backend, to_host
from gpucnn.train import Trainer, TrainingError
from gpucnn.train import graph as graph_mod
from gpucnn.train.callbacks import Callback, OneCycleScheduler
from gpucnn.train.graph import GraphDropout, GraphTraining, unsupported

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

LOG_KEYS = ("train_loss", "train_accuracy", "grad_norm_mean", "grad_norm_max")


def _fake():
    import cupy

    from tests.backend.sim import fakecupy

    return fakecupy if cupy.ndarray is fakecupy.ndarray else None


def _need_fake():
    fake = _fake()
    if fake is None:
        pytest.skip("checks the stand-in CuPy's capture; a real GPU has no counters")
    return fake


# -- the stand-in --------------------------------------------------------------------------


def _sequence(x, acc, state, idx):
    """A little of everything a step does: kernels, device state, ufuncs, in-place updates,
    reductions, argmax, astype, copies and indexing that copies."""
    y = gpu.relu_fwd(x)
    z = gpu.dropout_fwd_state(y, 0.5, state)
    gpu.dropout_state_advance(state)
    s = (z * np.float32(2) + x).sum(axis=1)
    acc += s.max()
    return [z, s, z.argmax(axis=1), z.astype(np.float64), z.T.copy(), z[idx], s.reshape(-1)]


def test_a_captured_sequence_changes_nothing_and_replays_as_it_runs_eagerly():
    fake = _need_fake()
    backend = get_backend("cuda")
    g = np.random.default_rng(0)
    host_x = g.standard_normal((3, 5)).astype(np.float32)
    runs = {}
    for name in ("graph", "eager"):
        runs[name] = (
            backend.asarray(host_x),
            backend.asarray(np.zeros((), np.float32)),
            backend.asarray(formulas.dropout_state(1234)),
            backend.asarray(np.array([2, 0], np.int64)),
        )
    x, acc, state, idx = runs["graph"]
    with backend.capture() as capture:
        outs = _sequence(x, acc, state, idx)
        with pytest.raises(fake.CaptureError, match="device-to-host"):
            float(acc)
        with pytest.raises(fake.CaptureError, match="host-to-device"):
            backend.asarray(host_x)
    assert not backend.stream.is_capturing()
    # nothing ran: the arrays that existed are as they were, what the capture made is garbage
    np.testing.assert_array_equal(to_host(x), host_x)
    assert to_host(acc) == 0 and to_host(state).tolist() == [1234, 0]
    assert np.isnan(to_host(outs[0])).all()
    # what the capture made took its memory from the backend's keeping allocator (the last
    # output is a view: no memory of its own)
    assert all(any(a._memory is m for m in capture.kept) for a in outs[:-1])
    for _ in range(3):  # each launch is one more eager run: state and accumulator carry on
        capture.graph.launch(backend.stream)
        want = _sequence(*runs["eager"])
        for got, ref in zip(outs, want, strict=True):
            np.testing.assert_array_equal(to_host(got), to_host(ref))
        for a, b in zip(runs["graph"], runs["eager"], strict=True):
            np.testing.assert_array_equal(to_host(a), to_host(b))
    assert capture.graph.launches == 3


def test_the_stand_in_catches_a_per_step_host_value_frozen_into_the_graph():
    _need_fake()
    backend = get_backend("cuda")
    x = backend.asarray(np.ones((4, 8), np.float32))
    counter = {"step": 0}

    def step(out):  # wrong for a graph: the mask key is a host value that changes per step
        out[...] = gpu.dropout_fwd(x, 0.5, key=counter["step"])
        counter["step"] += 1

    eager = []
    for _ in range(3):
        out = backend.asarray(np.zeros((4, 8), np.float32))
        step(out)
        eager.append(to_host(out))
    assert not np.array_equal(eager[0], eager[1])
    counter["step"] = 0
    out = backend.asarray(np.zeros((4, 8), np.float32))
    with backend.capture() as capture:
        step(out)
    replayed = []
    for _ in range(3):
        capture.graph.launch(backend.stream)
        replayed.append(to_host(out))
    np.testing.assert_array_equal(replayed[0], eager[0])
    assert np.array_equal(replayed[1], replayed[0])  # the key captured at step 0, forever
    assert not np.array_equal(replayed[1], eager[1])  # so the replay diverges from eager


def test_products_avoid_cublas_while_capturing():
    fake = _need_fake()
    backend = get_backend("cuda")
    g = np.random.default_rng(2)
    a, b = (
        g.standard_normal((3, 5)).astype(np.float32),
        g.standard_normal((4, 5)).astype(np.float32),
    )
    da, db = backend.asarray(a), backend.asarray(b)
    with backend.capturable():  # the warm-up: the GEMM kernels checked on this shape
        np.testing.assert_allclose(to_host(gpu.matmul(da, db.T)), a @ b.T, rtol=1e-5, atol=1e-6)
    with backend.capture() as capture:
        with pytest.raises(fake.CaptureError, match="cuBLAS"):
            da @ db.T
        out = gpu.matmul(da, db.T)  # the GEMM kernels, w.T read in place
    capture.graph.launch(backend.stream)
    np.testing.assert_allclose(to_host(out), a @ b.T, rtol=1e-5, atol=1e-6)
    eager = gpu.matmul(da, db.T)  # cuBLAS (NumPy here) when not capturing
    np.testing.assert_array_equal(to_host(eager), a @ b.T)


def test_record_step_agrees_with_the_cpu_twin(dev):
    from gpucnn.backend import cpu

    put, get = dev
    values, twin = put(np.zeros(3, np.float32)), np.zeros(3, np.float32)
    state, twin_state = put(formulas.batch_state()), formulas.batch_state()
    for value in (0.25, -1.0, 7.0, 8.0):  # the last is past the end: written nowhere
        gpu.record_step(values, state, put(np.array([value], np.float32)))
        cpu.record_step(twin, twin_state, np.array([value], np.float32))
        gpu.batch_state_advance(state)
        cpu.batch_state_advance(twin_state)
    np.testing.assert_array_equal(get(values), twin)
    np.testing.assert_array_equal(twin, [0.25, -1.0, 7.0])


# -- graph epochs ----------------------------------------------------------------------------


def _model(dropout=True, seed=0, conv_bias=True, in_channels=1):
    g = np.random.default_rng(seed)
    layers = [
        nn.Conv2d(in_channels, 2, 3, padding=1, bias=conv_bias, rng=g),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    ]
    if dropout:
        layers.append(nn.Dropout(0.5, rng=7))
    layers.append(nn.Linear(8, 3, rng=g))
    return nn.Sequential(*layers)


def _data():
    g = np.random.default_rng(1)
    return g.integers(0, 256, (5, 4, 4), dtype=np.uint8), g.integers(0, 3, 5)


def _loader():
    images, labels = _data()  # 5 images in batches of 2: two full batches and a tail of 1
    return data.DataLoader(images, labels, 2, seed=3, mean=0.1, std=0.3, device="cuda")


def _trainer(model, **kw):
    opt = optim.Adam(model.parameters(), 1e-2, amsgrad=True, weight_decay=1e-3)
    return Trainer(model, nn.CrossEntropyLoss(), opt, device="cuda", progress=False, **kw)


def _state(trainer):
    """Parameters, buffers, optimizer state and history as host arrays."""
    model = trainer.model
    out = {f"p.{n}": to_host(p.data).copy() for n, p in model.named_parameters()}
    out.update({f"b.{n}": to_host(b).copy() for n, b in model.named_buffers()})
    out.update({f"o.{k}": np.asarray(v) for k, v in trainer.optimizer.state_dict().items()})
    out["norms"] = np.array(trainer.history["step_grad_norm"])
    return out


def _fit(trainer, loader, runner, epochs, first=0, after_epoch=None):
    """Trainer._fit's epoch loop around ``runner.train_epoch``: logs and host reads per epoch
    (those of the one-time checks apart: the kernel paths' and each first capture's)."""
    from gpucnn.backend.cuda.selfcheck import CHECKS

    fake = _fake()
    logs, reads = [], []
    for epoch in range(first, epochs):
        loader.set_epoch(epoch)
        before = (fake.HOST_READS["n"] if fake else 0) - CHECKS.reads - runner.check_reads
        logs.append(runner.train_epoch(loader, epoch, epochs))
        reads.append(
            (fake.HOST_READS["n"] if fake else 0) - CHECKS.reads - runner.check_reads - before
        )
        trainer.epoch = epoch + 1
        if after_epoch is not None:
            after_epoch(epoch)
    return logs, reads


def _assert_close(got, want, rtol=1e-6, atol=1e-7):
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=atol, err_msg=key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two epochs of the dropout model with graphs, and without capture; a checkpoint after
    the graph run's first epoch; the state after each epoch."""
    out = {"ckpt": tmp_path_factory.mktemp("graph") / "epoch1.npz"}
    for name, capture in (("graph", True), ("eager", False)):
        trainer, loader = _trainer(_model()), _loader()
        runner = GraphTraining(trainer, loader, capture=capture)
        states = []

        def after(epoch, trainer=trainer, states=states, name=name):
            states.append(_state(trainer))
            if name == "graph" and epoch == 0:
                trainer.save_checkpoint(out["ckpt"])

        logs, reads = _fit(trainer, loader, runner, 2, after_epoch=after)
        launches = [s.capture.graph.launches if s.capture else 0 for s in runner.steps]
        kinds = [type(m).__name__ for m in trainer.model]
        runner.close()
        out[name] = {
            "logs": logs,
            "reads": reads,
            "states": states,
            "launches": launches,
            "fallback": runner.fallback,
            "checks": [(c.rows, c.ok, c.line()) for c in runner.checks],
            "layers_during": kinds,
            "layers_after": [type(m).__name__ for m in trainer.model],
            "device_state": trainer.optimizer.device_state,
            "step": trainer.global_step,
        }
    return out


def test_graph_epochs_equal_the_uncaptured_step(runs):
    graph, eager = runs["graph"], runs["eager"]
    assert graph["fallback"] is None
    # each graph's first launch was checked against the eager step (on copies: the states
    # below are the uncaptured run's) and agreed, the conv bias ahead of BatchNorm included
    assert [c[:2] for c in graph["checks"]] == [(2, True), (1, True)] and eager["checks"] == []
    assert graph["checks"][0][2].startswith("the captured step (batch 2) agrees with the eager")
    for got, want in zip(graph["states"], eager["states"], strict=True):
        _assert_close(got, want)
    for got, want in zip(graph["logs"], eager["logs"], strict=True):
        _assert_close({k: got[k] for k in LOG_KEYS}, {k: want[k] for k in LOG_KEYS})
    assert graph["step"] == eager["step"] == 6
    steps = graph["states"][-1]["o.0.step"]
    assert int(steps) == 6  # the host's step counts followed the launches (for checkpoints)


def test_the_graphs_are_captured_once_per_batch_size_and_launched_after(runs):
    if _fake() is None:
        pytest.skip("counts the stand-in's launches")
    # batch 2: warm-up (epoch 1, step 1), captured at step 2, launched there and at 2 more
    # steps; the tail of 1: warm-up in epoch 1, captured and launched in epoch 2
    assert runs["graph"]["launches"] == [3, 1]
    assert runs["eager"]["launches"] == [0, 0]


def test_an_epoch_reads_the_device_once_at_its_end(runs):
    if _fake() is None:
        pytest.skip("counts the host reads of the stand-in CuPy")
    assert runs["graph"]["reads"] == [1, 1]


def test_the_fit_swaps_dropout_and_the_optimizer_mode_and_puts_them_back(runs):
    graph = runs["graph"]
    assert "GraphDropout" in graph["layers_during"]
    assert "GraphDropout" not in graph["layers_after"] and "Dropout" in graph["layers_after"]
    assert graph["device_state"] is False


def test_graph_epochs_equal_the_eager_trainer_where_the_math_is_the_same():
    """No dropout (masks differ by design); the rest is the eager Trainer's math, with the
    GEMM kernels in place of cuBLAS: equal to float32 rounding. (No conv bias: ahead of
    BatchNorm its gradient is 0 in exact arithmetic, so rounding noise is all Adam sees.)"""
    eager = _trainer(_model(dropout=False, conv_bias=False), cuda_graph=False)
    history = eager.fit(_loader(), epochs=2)
    trainer, loader = _trainer(_model(dropout=False, conv_bias=False)), _loader()
    trainer.check_loader(loader, "train")  # as fit does (it iterates once)
    runner = GraphTraining(trainer, loader)
    logs, _ = _fit(trainer, loader, runner, 2)
    runner.close()
    assert runner.fallback is None
    _assert_close(_state(trainer), _state(eager), rtol=2e-5, atol=1e-6)
    for epoch, got in enumerate(logs):
        for key in LOG_KEYS:
            assert got[key] == pytest.approx(history[key][epoch], rel=2e-5), key


def test_colour_batches_normalised_per_channel_in_a_graph_equal_the_eager_trainer():
    """3-channel images with a mean and std per channel: the graph gathers [0, 1] pixels and
    normalises them with device constants made before the capture, as data.normalize does."""
    g = np.random.default_rng(2)
    images, labels = g.integers(0, 256, (4, 3, 4, 4), dtype=np.uint8), g.integers(0, 3, 4)
    norm = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}

    def loader():
        return data.DataLoader(images, labels, 2, seed=3, device="cuda", **norm)

    eager = _trainer(_model(dropout=False, conv_bias=False, in_channels=3), cuda_graph=False)
    eager.fit(loader(), epochs=1)
    trainer, train = _trainer(_model(dropout=False, conv_bias=False, in_channels=3)), loader()
    trainer.check_loader(train, "train")
    runner = GraphTraining(trainer, train)
    _fit(trainer, train, runner, 1)
    runner.close()
    assert runner.fallback is None
    _assert_close(_state(trainer), _state(eager), rtol=2e-5, atol=1e-6)


def test_a_run_resumed_after_epoch_1_ends_as_the_uninterrupted_one(runs):
    trainer, loader = _trainer(_model(seed=5)), _loader()  # other weights: the load sets them
    trainer.load_checkpoint(runs["ckpt"])
    assert trainer.epoch == 1
    runner = GraphTraining(trainer, loader)
    logs, _ = _fit(trainer, loader, runner, 2, first=1)
    runner.close()
    _assert_close(_state(trainer), runs["graph"]["states"][1])
    _assert_close(
        {k: logs[0][k] for k in LOG_KEYS}, {k: runs["graph"]["logs"][1][k] for k in LOG_KEYS}
    )


def test_a_capture_that_fails_falls_back_to_the_uncaptured_step(runs, monkeypatch):
    norm = graph_mod._grad_norm

    def reads_the_norm(model, xp):  # a host read inside the step: CUDA refuses it in capture
        total = norm(model, xp)
        float(total)
        return total

    monkeypatch.setattr(graph_mod, "_grad_norm", reads_the_norm)
    trainer, loader = _trainer(_model()), _loader()
    runner = GraphTraining(trainer, loader)
    _fit(trainer, loader, runner, 1)
    assert runner.fallback is not None and "capturing the training step" in runner.fallback
    assert "device-to-host" in runner.fallback or _fake() is None
    assert all(s.capture is None for s in runner.steps)
    assert not trainer.backend.stream.is_capturing()
    runner.close()
    # the failed capture ran nothing and counted no step: epoch 1 is the uncaptured one's
    _assert_close(_state(trainer), runs["eager"]["states"][0])


# -- requirements ----------------------------------------------------------------------------


def test_unmet_requirements_are_named():
    trainer, loader = _trainer(_model()), _loader()
    assert unsupported(trainer, loader) is None
    images, labels = _data()
    on_cpu = _model()
    cpu = Trainer(
        on_cpu, nn.CrossEntropyLoss(), optim.SGD(on_cpu.parameters(), 0.1), progress=False
    )
    assert "cuda" in unsupported(cpu, data.DataLoader(images, labels, 2))
    augmenting = data.DataLoader(images, labels, 2, augment=data.RandomRotation(5.0), device="cuda")
    assert unsupported(trainer, augmenting) is None  # drawn on the device in a graph
    odd_augment = data.Compose([data.RandomAffine(5.0), data.RandomHorizontalFlip()])
    augmenting = data.DataLoader(images, labels, 2, augment=odd_augment, device="cuda")
    assert "has no device-drawn form" in unsupported(trainer, augmenting)
    assert "not a gpucnn DataLoader" in unsupported(trainer, [(None, None)])

    class Custom(nn.ReLU):
        pass

    odd = _trainer(nn.Sequential(nn.Flatten(), Custom(), nn.Linear(16, 3)))
    assert "layer 1 (Custom) is not known" in unsupported(odd, loader)
    with pytest.raises(TrainingError, match="has no device-drawn form"):
        GraphTraining(trainer, augmenting)

    class EveryBatch(Callback):
        def on_batch_end(self, trainer, step):
            pass

    per_batch = _trainer(_model(), callbacks=[EveryBatch()])
    assert "callback EveryBatch acts after every batch" in unsupported(per_batch, loader)
    one_cycle = _trainer(_model(), callbacks=[OneCycleScheduler(0.1, total_steps=6)])
    assert unsupported(one_cycle, loader) is None  # it only sets optimizer.lr, between graphs


def test_graph_dropout_keys_its_masks_on_the_device_and_shares_the_generator():
    backend = get_backend("cuda")
    like = nn.Dropout(0.5, rng=3)
    layer = GraphDropout(like, backend)
    assert layer.rng is like.rng and not list(layer.named_buffers())
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    layer.state[...] = backend.asarray(formulas.dropout_state(99, 2))
    key = int(formulas.dropout_step_key(np.uint64(99), np.uint64(2)))
    np.testing.assert_array_equal(
        to_host(layer(backend.asarray(x))), to_host(gpu.dropout_fwd(backend.asarray(x), 0.5, key))
    )
    layer.eval()
    x = backend.asarray(x)
    assert layer(x) is x and layer.backward(x) is x


def test_the_trainer_runs_its_steps_as_graphs_by_default_on_cuda(monkeypatch, caplog):
    """Trainer(device="cuda") with the default cuda_graph="auto" trains through the graph
    runner (its graphs are launched), a one-cycle schedule setting the lr of every batch
    between the launches, and ends where the eager Trainer ends with the same schedule."""
    launched = []
    real_capture = graph_mod.GraphTraining

    class Counting(real_capture):
        def train_epoch(self, loader, epoch, epochs):
            logs = super().train_epoch(loader, epoch, epochs)
            launched.append(self.fallback)
            return logs

    monkeypatch.setattr(graph_mod, "GraphTraining", Counting)

    def cycle():  # 3 batches per epoch (5 images in batches of 2), 2 epochs
        return [OneCycleScheduler(5e-2, epochs=2, steps_per_epoch=3)]

    trainer = _trainer(_model(dropout=False, conv_bias=False), callbacks=cycle())
    with caplog.at_level("INFO", logger="gpucnn.train"):
        trainer.fit(_loader(), epochs=2)
    assert launched == [None, None]  # both epochs ran as graphs, no fallback
    assert "training eagerly" not in caplog.text
    assert trainer._graph is None  # closed at the end of the fit
    eager = _trainer(_model(dropout=False, conv_bias=False), cuda_graph=False, callbacks=cycle())
    eager.fit(_loader(), epochs=2)
    assert trainer.history["lr"] == eager.history["lr"] == pytest.approx([2e-3, 0.0231318551])
    assert trainer.history["step_lr"] == eager.history["step_lr"]  # the lr of every batch
    assert trainer.history["lr_end"] == eager.history["lr_end"] == eager.history["step_lr"][2::3]
    _assert_close(_state(trainer), _state(eager), rtol=2e-5, atol=1e-6)


def test_insisting_on_graphs_names_why_they_cannot_run():
    trainer = _trainer(_model(), cuda_graph=True)
    odd_augment = data.Compose([data.RandomAffine(5.0), data.RandomHorizontalFlip()])
    augmenting = data.DataLoader(*_data(), 4, seed=0, device="cuda", augment=odd_augment)
    with pytest.raises(TrainingError, match="cuda_graph=True, but the augmentation"):
        trainer.fit(augmenting, epochs=1)


def test_augmented_graph_epochs_with_a_direct_first_conv_equal_the_uncaptured_step(monkeypatch):
    """Flip and affine parameters drawn on the device inside the graph, and the first conv
    convolved directly (no columns; its own reduction for dw): the captured epochs equal the
    same work run uncaptured. (One test for both: each graph test costs a minute in the
    simulator.)"""
    monkeypatch.setattr(gpu, "DIRECT_CONV_MAX_TAPS", 9)
    recipe = data.parse_recipe("rotate=10,shift=0.1,scale=0.9:1.1,flip")
    results = {}
    for capture in (True, False):
        images, labels = _data()
        loader = data.DataLoader(images, labels, 2, seed=3, device="cuda", augment=recipe)
        trainer = _trainer(_model(dropout=False))
        trainer.check_loader(loader, "train")
        runner = GraphTraining(trainer, loader, capture=capture)
        _fit(trainer, loader, runner, 2)
        runner.close()
        assert runner.fallback is None
        assert trainer.model[0]._cache.algorithm == "direct"  # the first conv went direct
        results[capture] = _state(trainer)
    _assert_close(results[True], results[False])


def test_plateau_cuts_and_early_stopping_act_alike_with_and_without_graphs():
    """ReduceLROnPlateau changes the lr between epochs without a recapture (the optimizer's
    device state takes it), and early stopping ends both fits at the same epoch."""
    from gpucnn.train import EarlyStopping, PlateauScheduler

    histories = {}
    for graphs in (True, False):
        images, labels = _data()
        train = data.DataLoader(images, labels, 2, seed=3, device="cuda")
        val = data.DataLoader(images, labels, 5, shuffle=False, device="cuda")
        callbacks = [
            EarlyStopping("val_loss", patience=1, min_delta=10.0),  # stops after 2 epochs
            PlateauScheduler("val_loss", factor=0.5, patience=0, threshold=10.0),  # cuts each
        ]
        trainer = _trainer(
            _model(dropout=False, conv_bias=False), cuda_graph=graphs, callbacks=callbacks
        )
        histories[graphs] = trainer.fit(train, val, epochs=4)
    assert histories[True]["epoch"] == histories[False]["epoch"] == [1, 2]
    assert histories[True]["lr"] == histories[False]["lr"] == [1e-2, 5e-3]
    np.testing.assert_allclose(histories[True]["val_loss"], histories[False]["val_loss"], rtol=2e-5)
