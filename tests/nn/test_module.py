"""Module mechanics: naming, modes, gradient accumulation, state, placement."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import nn
from gpucnn.backend import BackendUnavailableError


def _net():
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, rng=0),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.Dropout(0.5, rng=0),
        nn.GlobalAvgPool2d(),
        nn.Linear(2, 3, rng=0),
    )


def test_named_parameters_and_buffers():
    net = _net()
    assert [n for n, _ in net.named_parameters()] == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "5.weight",
        "5.bias",
    ]
    assert [n for n, _ in net.named_buffers()] == ["1.running_mean", "1.running_var"]
    assert net.num_parameters() == 2 * 9 + 2 + 2 + 2 + 6 + 3


def test_train_and_eval_reach_every_layer():
    net = _net().eval()
    assert not any(m.training for _, m in net.named_modules())
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(net(x), net(x))  # no dropout, no batch stats
    net.train()
    assert all(m.training for _, m in net.named_modules())


def test_gradients_accumulate_until_zero_grad():
    layer = nn.Linear(3, 2, rng=0)
    x, dy = np.ones((4, 3), np.float32), np.ones((4, 2), np.float32)
    layer(x)
    layer.backward(dy)
    once = layer.weight.grad.copy()
    layer(x)
    layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * once)
    layer.zero_grad()
    assert layer.weight.grad is None


def test_state_dict_round_trip_and_mismatches():
    a, b = (
        _net(),
        nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1, rng=5),
            nn.BatchNorm2d(2),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.GlobalAvgPool2d(),
            nn.Linear(2, 3, rng=5),
        ),
    )
    a[1].running_mean[...] = [0.5, -0.5]
    state = a.state_dict()
    state["0.weight"][...] = 7.0  # a copy: editing it leaves the model alone
    assert not np.any(a[0].weight.data == 7.0)
    b.load_state_dict(a.state_dict())
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        np.testing.assert_array_equal(pa, pb, err_msg=name)
    bad = a.state_dict()
    bad["5.weight"] = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match=r"5.weight has shape \(4, 2\) in the state but \(3, 2\)"):
        b.load_state_dict(bad)
    partial = a.state_dict()
    del partial["1.running_var"]
    with pytest.raises(ValueError, match=r"missing keys \['1.running_var'\]"):
        b.load_state_dict(partial)
    b.load_state_dict(partial, strict=False)


def test_to_dtype_casts_parameters_and_buffers():
    net = _net().to(dtype=np.float64)
    assert {p.data.dtype for p in net.parameters()} == {np.dtype(np.float64)}
    assert net[1].running_var.dtype == np.float64


def test_to_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(BackendUnavailableError, match="device 'cuda' is unavailable"):
        _net().to("cuda")
    assert _net().to("cpu").device == "cpu"


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match="item 1 is function"):
        nn.Sequential(nn.ReLU(), lambda x: x)


def test_repr_shows_the_structure():
    text = repr(_net())
    assert "Conv2d(1, 2, kernel_size=3, stride=1, padding=1, bias=True, runs='im2col+GEMM')" in text
    assert "Dropout(p=0.5)" in text


@pytest.mark.parametrize("pool_padding", [0, 1])
def test_relu_before_max_pool_runs_after_it_with_identical_results(pool_padding):
    # Sequential runs ReLU after a following MaxPool2d; the output and every gradient must be
    # those of the layers run one by one in the order written.
    g = np.random.default_rng(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, rng=g),
        nn.ReLU(),
        nn.MaxPool2d(2, padding=pool_padding),
        nn.Flatten(),
    ).to(dtype=np.float64)
    model.fuse = False  # the reorder alone: the fused step's db is another order of its sum
    ran = [type(m).__name__ for _, m in model.run_order()]
    assert ran == ["Conv2d", "MaxPool2d", "ReLU", "Flatten"]
    x = g.standard_normal((2, 2, 6, 6))
    x[0, :, :2, :2] = -1.0  # a window with no positive value: its gradient is zero both ways
    y = model(x)
    dy = g.standard_normal(y.shape)
    dx = model.backward(dy)
    grads = [p.grad.copy() for p in model.parameters()]

    model.zero_grad()
    h = x
    for layer in model:  # the order as written
        h = layer(h)
    np.testing.assert_array_equal(h, y)
    d = dy
    for layer in reversed(list(model)):
        d = layer.backward(d)
    np.testing.assert_array_equal(d, dx)
    for p, ref in zip(model.parameters(), grads, strict=True):
        np.testing.assert_array_equal(p.grad, ref)


def test_only_a_relu_directly_before_a_max_pool_moves():
    layers = [nn.Tanh(), nn.MaxPool2d(2), nn.ReLU(), nn.AvgPool2d(2), nn.ReLU(), nn.MaxPool2d(2)]
    order = [m for _, m in nn.Sequential(*layers).run_order()]
    assert order == layers[:4] + [layers[5], layers[4]]


def test_repr_and_summary_list_the_layers_in_the_order_they_run():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    lines = repr(model).splitlines()[1:-1]
    assert [line.split(":")[0].strip() for line in lines] == ["(0)", "(2)", "(1)", "(3)"]
    assert "runs after (2)" in lines[2]
    rows = model.summary((1, 4, 4), print_fn=None).splitlines()[2:-1]
    assert [r.split()[0] for r in rows] == ["0", "2", "1", "3"]
    assert rows[2].split()[1:4] == ["(after", "2)", "ReLU"]
    assert "(2, 2, 2)" in rows[2]  # the ReLU sees the pooled shape


def test_replacing_a_child_keeps_its_place():
    model = nn.Sequential(nn.ReLU(), nn.Tanh(), nn.Flatten())
    setattr(model, "1", nn.ReLU())
    assert [type(m).__name__ for m in model] == ["ReLU", "ReLU", "Flatten"]
