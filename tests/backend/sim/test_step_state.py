"""Step state on the device (what a training step captured into a CUDA graph needs) and the
one stream every launch goes to.

The ``*_state`` kernels read their per-step values from small device arrays: the optimizer's
step count, learning rate and constants (formulas.STATE_SIZE), dropout's [seed, step]. They
must agree with their CPU twins and with the host-scalar (eager) path, bit for bit: the
constants come from the same float64 expressions, rounded the same way.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import nn, optim
from gpucnn.backend import cpu, formulas, get_backend, to_host
from gpucnn.backend import cuda as gpu
from gpucnn.backend.cuda import launch

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

ADAM = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-3}


def _fake_cupy():
    import cupy

    from tests.backend.sim import fakecupy

    if cupy.ndarray is not fakecupy.ndarray:
        pytest.skip("counts the host reads of the stand-in CuPy; a real GPU has no counter")
    return fakecupy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_advance_gives_the_host_paths_constants(dev, dtype):
    put, get = dev
    state = put(formulas.step_state(0, 3e-3, momentum=0.9, dampening=0.25, **ADAM))
    twin = formulas.step_state(0, 3e-3, momentum=0.9, dampening=0.25, **ADAM)
    dt = np.dtype(dtype)
    for t in range(1, 5):
        gpu.optim_state_advance(state)
        cpu.optim_state_advance(twin)
        # float64 throughout (a GPU's pow may differ from the host's in the last bit)
        np.testing.assert_allclose(get(state), twin, rtol=5e-16, atol=0)
        c = formulas.step_constants(get(state), dt)
        adam = formulas.adam_constants(
            dt, 3e-3 / (1 - 0.9**t), 0.9, 0.999, 1 - 0.999**t, 1e-8, 1e-3
        )
        sgd = formulas.sgd_constants(dt, 3e-3, 0.9, 0.25, 1e-3)
        got_adam = [c[k] for k in range(formulas.K_STEP_SIZE, formulas.K_WD + 1)]
        got_sgd = [c[k] for k in (formulas.K_LR, formulas.K_MOMENTUM, formulas.K_DAMP_C)]
        assert [a.tobytes() for a in got_adam] == [a.tobytes() for a in adam]
        assert [a.tobytes() for a in got_sgd] == [a.tobytes() for a in sgd[:3]]
        assert c[formulas.K_FIRST] == (t == 1) and get(state)[formulas.STATE_T] == t


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_from_device_state_equals_the_eager_kernel_and_the_cpu_twin(dev, amsgrad, dtype):
    put, get = dev
    g = np.random.default_rng(3)
    w0 = g.standard_normal((5, 7)).astype(dtype)
    runs = {
        name: [put(w0.copy())] + [put(np.zeros_like(w0)) for _ in range(3)]
        for name in ("eager", "state", "cpu")
    }
    state, twin = put(formulas.step_state(0, 1e-2, **ADAM)), formulas.step_state(0, 1e-2, **ADAM)
    lr = 1e-2
    for t in range(1, 6):
        if t == 4:  # a new learning rate, written into the state arrays
            lr = 2.5e-3
            state[formulas.STATE_LR] = lr
            twin[formulas.STATE_LR] = lr
        grad = g.standard_normal(w0.shape).astype(dtype)
        w, m, v, vmax = runs["eager"]
        gpu.adam_update(w, put(grad), m, v, vmax if amsgrad else None, step_size=lr / (1 - 0.9**t),
                        beta1=0.9, beta2=0.999, bias_correction2=1 - 0.999**t, eps=1e-8,
                        weight_decay=1e-3)  # fmt: skip
        gpu.optim_state_advance(state)
        w, m, v, vmax = runs["state"]
        gpu.adam_update_state(w, put(grad), m, v, vmax if amsgrad else None, state)
        cpu.optim_state_advance(twin)
        w, m, v, vmax = runs["cpu"]
        cpu.adam_update_state(w, grad, m, v, vmax if amsgrad else None, twin)
        for a, b, c in zip(runs["eager"], runs["state"], runs["cpu"], strict=True):
            np.testing.assert_array_equal(get(b), get(a))
            np.testing.assert_array_equal(get(c), get(a))


@pytest.mark.parametrize(
    "hyper",
    [
        {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
        {"momentum": 0.8, "dampening": 0.3},
        {},
    ],
)
def test_sgd_from_device_state_equals_the_eager_kernel_and_the_cpu_twin(dev, hyper):
    put, get = dev
    g = np.random.default_rng(4)
    w0 = g.standard_normal(41).astype(np.float32)
    momentum = hyper.get("momentum", 0.0)
    bufs = {k: (put(np.zeros_like(w0)) if momentum else None) for k in ("eager", "state", "cpu")}
    ws = {k: put(w0.copy()) for k in bufs}
    state, twin = put(formulas.step_state(0, 0.05, **hyper)), formulas.step_state(0, 0.05, **hyper)
    for t in range(1, 5):
        grad = g.standard_normal(w0.shape).astype(np.float32)
        gpu.sgd_update(ws["eager"], put(grad), bufs["eager"], first=t == 1, lr=0.05,
                       momentum=momentum, dampening=hyper.get("dampening", 0.0),
                       weight_decay=hyper.get("weight_decay", 0.0),
                       nesterov=hyper.get("nesterov", False))  # fmt: skip
        gpu.optim_state_advance(state)
        gpu.sgd_update_state(ws["state"], put(grad), bufs["state"], state)
        cpu.optim_state_advance(twin)
        cpu.sgd_update_state(ws["cpu"], grad, bufs["cpu"], twin)
        np.testing.assert_array_equal(get(ws["state"]), get(ws["eager"]))
        np.testing.assert_array_equal(get(ws["cpu"]), get(ws["eager"]))


def test_the_state_kernels_refuse_a_state_of_the_wrong_layout(dev):
    put, _ = dev
    w = put(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="float64 state array"):
        gpu.optim_state_advance(put(np.zeros(formulas.STATE_SIZE, np.float32)))
    with pytest.raises(ValueError, match="state array"):
        gpu.adam_update_state(w, w, w, w, None, put(np.zeros(3)))
    with pytest.raises(ValueError, match="uint64 state array"):
        gpu.dropout_fwd_state(w, 0.5, put(np.zeros(2, np.int64)))


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_dropout_with_the_key_on_the_device_draws_the_host_keys_mask(dev, p):
    put, get = dev
    x = np.random.default_rng(5).standard_normal((3, 4, 5)).astype(np.float32)
    seed = 0xDEADBEEF12345
    state, twin = put(formulas.dropout_state(seed)), formulas.dropout_state(seed)
    seen = []
    for step in range(3):
        key = int(formulas.dropout_step_key(np.uint64(seed), np.uint64(step)))
        for start in (0, 11):
            want = cpu.dropout_fwd(x, p, key, start)
            np.testing.assert_array_equal(get(gpu.dropout_fwd_state(put(x), p, state, start)), want)
            np.testing.assert_array_equal(cpu.dropout_fwd_state(x, p, twin, start), want)
            np.testing.assert_array_equal(get(gpu.dropout_fwd(put(x), p, key, start)), want)
        dy = np.ones_like(x)
        np.testing.assert_array_equal(  # backward recomputes the forward pass's mask
            get(gpu.dropout_bwd_state(put(dy), p, state)), cpu.dropout_bwd(dy, p, key)
        )
        seen.append(get(gpu.dropout_fwd_state(put(x), p, state)) != 0)
        gpu.dropout_state_advance(state)
        cpu.dropout_state_advance(twin)
        np.testing.assert_array_equal(get(state), twin)
        assert get(state)[formulas.DROPOUT_STEP] == step + 1
    assert not np.array_equal(seen[0], seen[1])  # a new mask every step


def _model(seed=0):
    g = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(6, 5, rng=g), nn.ReLU(), nn.Linear(5, 3, rng=g))


def _train(make, steps, lr_at=None, device="cuda"):
    """Run ``steps`` steps of a small model; ``lr_at``: {step: lr} set through optimizer.lr.
    Returns the model, the optimizer and the host reads the steps made (stand-in CuPy)."""
    from tests.backend.sim import fakecupy

    model = _model().to(device)
    opt = make(model.parameters())
    g = np.random.default_rng(9)
    backend = get_backend(device)
    batches = [
        (backend.asarray(g.standard_normal((4, 6)).astype(np.float32)),
         backend.asarray(g.standard_normal((4, 3)).astype(np.float32)))
        for _ in range(steps)
    ]  # fmt: skip
    reads = fakecupy.HOST_READS["n"]
    for s, (x, dy) in enumerate(batches):
        if lr_at and s in lr_at:
            opt.lr = lr_at[s]
        model.zero_grad()
        model(x)
        model.backward(dy)
        opt.step()
    return model, opt, fakecupy.HOST_READS["n"] - reads


OPTIMIZERS = {
    "adam": lambda **kw: lambda ps: optim.Adam(ps, 1e-2, amsgrad=True, weight_decay=1e-3, **kw),
    "sgd": lambda **kw: lambda ps: optim.SGD(ps, 0.05, momentum=0.9, nesterov=True, **kw),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_device_state_steps_equal_eager_steps_and_a_new_lr_needs_no_host_read(name):
    _fake_cupy()
    make = OPTIMIZERS[name]
    lr_at = {3: 2e-3}  # as ReduceLROnPlateau sets it, mid-run
    eager, _, _ = _train(make(), 5, lr_at)
    graphable, opt, reads = _train(make(device_state=True), 5, lr_at)
    assert reads == 0
    assert opt.lr == 2e-3 and to_host(opt.step_state)[formulas.STATE_LR] == 2e-3
    for a, b in zip(eager.parameters(), graphable.parameters(), strict=True):
        np.testing.assert_array_equal(to_host(b.data), to_host(a.data))
    # the CPU backend's device-state path (host arrays, CPU twins) gives the same bits
    on_cpu, _, _ = _train(make(device_state=True), 5, lr_at, device="cpu")
    for a, b in zip(graphable.parameters(), on_cpu.parameters(), strict=True):
        np.testing.assert_array_equal(b.data, to_host(a.data))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_state_dict_round_trip_restores_the_device_state_exactly(name):
    _fake_cupy()
    make = OPTIMIZERS[name](device_state=True)
    model_a, opt_a, _ = _train(make, 3)
    model_b = _model(seed=1).to("cuda")
    opt_b = make(model_b.parameters())
    before = opt_b.step_state  # made before the load: loading writes it in place
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        pb.data[...] = pa.data
    opt_b.load_state_dict({k: np.asarray(v) for k, v in opt_a.state_dict().items()})
    assert opt_b.step_state is before
    np.testing.assert_array_equal(to_host(opt_b.step_state), to_host(opt_a.step_state))
    x = get_backend("cuda").asarray(np.ones((2, 6), np.float32))
    dy = get_backend("cuda").asarray(np.full((2, 3), 0.5, np.float32))
    for model, opt in ((model_a, opt_a), (model_b, opt_b)):
        for _ in range(2):
            model.zero_grad()
            model(x)
            model.backward(dy)
            opt.step()
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        np.testing.assert_array_equal(to_host(pb.data), to_host(pa.data))
    np.testing.assert_array_equal(to_host(opt_b.step_state), to_host(opt_a.step_state))


def test_prepare_puts_cupy_and_every_launch_on_one_stream():
    import cupy

    backend = get_backend("cuda")
    backend.prepare()
    backend.prepare()  # again: the same stream, nothing rebuilt
    assert backend.stream is get_backend("cuda").stream
    assert cupy.cuda.get_current_stream() is backend.stream
    assert launch.current_stream() is backend.stream
    from tests.backend.sim import fakecupy

    wrapped = launch.stream()
    if cupy.ndarray is fakecupy.ndarray:
        assert wrapped == 0  # the simulator has no external streams: it runs launches in order
    else:
        assert wrapped != 0  # numba's external_stream of backend.stream, made once
    assert launch.config(1000) == (4, launch.THREADS, wrapped)
    assert launch.config(1000) is launch.config(1000)  # computed once per size
    x = backend.asarray(np.array([-1.0, 2.0], np.float32))
    np.testing.assert_array_equal(to_host(gpu.relu_fwd(x)), [0.0, 2.0])
