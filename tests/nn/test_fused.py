"""Conv2d -> ReLU -> MaxPool2d(2) fused (gpucnn.functional.fused, gpucnn.nn.fused): the same
output and gradients as the layers run one by one (bit for bit, but for the bias gradient: the
same sum in another order), a float64 gradient check, a naive-loop reference, and the
Sequential wiring (what fuses, what does not, names, repr, summary, frozen layers)."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import functional as F
from gpucnn import models, nn, optim
from gpucnn.nn.fused import ConvReLUPool
from tests.helpers import conv2d_backward_naive, conv2d_naive, gradcheck_module, pool2d_naive

# (N, C, H, W, F, k, stride, padding): the conv's output sizes, even and odd
CASES = [
    (2, 3, 8, 8, 4, 3, 1, 1),  # the seed blocks' shape, shrunk
    (2, 2, 7, 9, 3, 3, 1, 1),  # odd OH and OW: the last row and column are in no window
    (1, 2, 9, 8, 3, 3, 2, 1),  # batch 1, conv stride 2
    (2, 1, 10, 7, 2, 3, 1, 0),  # no padding
    (1, 3, 6, 11, 2, 5, 1, "same"),
    (2, 2, 5, 5, 3, 1, 1, 0),  # 1×1 filters, odd output
    (1, 2, 12, 10, 2, 4, 3, 2),  # even kernel, stride 3
]


def _data(case, dtype, seed=0, bias=True):
    n, c, h, w, f, k, _, _ = case
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, c, h, w)).astype(dtype)
    wt = g.standard_normal((f, c, k, k)).astype(dtype)
    b = g.standard_normal(f).astype(dtype) if bias else None
    return x, wt, b


def _unfused(x, w, b, stride, padding, dy):
    """Conv2d, MaxPool2d(2), ReLU one by one (the order Sequential runs them)."""
    z, c_conv = F.conv2d_forward(x, w, b, stride, padding)
    m, c_pool = F.maxpool2d_forward(z, 2, 2, 0)
    y, c_relu = F.relu_forward(m)
    d = F.maxpool2d_backward(F.relu_backward(dy, c_relu), c_pool)
    return y, F.conv2d_backward(d, c_conv)


def _db_tol(dtype):
    return {"rtol": 1e-13, "atol": 1e-13} if dtype == np.float64 else {"rtol": 1e-5, "atol": 1e-5}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES)
def test_fused_op_is_the_unfused_sequence(case, dtype):
    x, w, b = _data(case, dtype)
    stride, padding = case[6], case[7]
    y, cache = F.conv2d_relu_maxpool_forward(x, w, b, stride, padding)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    y_ref, (dx_ref, dw_ref, db_ref) = _unfused(x, w, b, stride, padding, dy)
    np.testing.assert_array_equal(y, y_ref)
    assert y.dtype == dtype
    dx, dw, db = F.conv2d_relu_maxpool_backward(dy, cache)
    np.testing.assert_array_equal(dx, dx_ref)
    np.testing.assert_array_equal(dw, dw_ref)
    np.testing.assert_allclose(db, db_ref, **_db_tol(dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ties_all_negative_windows_and_no_bias(dtype):
    # 1×1 filters of weight 1 and no bias: the conv output is the input, so windows are exact
    x = np.random.default_rng(2).standard_normal((2, 2, 6, 7)).astype(dtype)
    x[0, 0, :2, :2] = 1.5  # a tie of four: the first wins
    x[0, 1, 2:4, 2:4] = [[0.0, 2.0], [2.0, 0.0]]  # a tie of two
    x[1, 0, :2, 2:4] = -1.0  # an all-negative window: y = 0, no gradient anywhere in it
    x[1, 1, 4:6, 4:6] = 0.0  # an all-zero window: y = 0 and ReLU's gradient at 0 is 0
    w = np.eye(2, dtype=dtype).reshape(2, 2, 1, 1)
    y, cache = F.conv2d_relu_maxpool_forward(x, w, None, 1, 0)
    dy = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)
    y_ref, (dx_ref, dw_ref, db_ref) = _unfused(x, w, None, 1, 0, dy)
    np.testing.assert_array_equal(y, y_ref)
    assert y[1, 0, 0, 1] == 0 and y[1, 1, 2, 2] == 0
    dx, dw, db = F.conv2d_relu_maxpool_backward(dy, cache)
    assert db is None and db_ref is None
    np.testing.assert_array_equal(dx, dx_ref)
    np.testing.assert_array_equal(dw, dw_ref)
    assert dx[0, 0, 0, 0] == dy[0, 0, 0, 0] and not dx[0, 0, :2, :2].ravel()[1:].any()
    assert not dx[1, 0, :2, 2:4].any() and not dx[1, 1, 4:6, 4:6].any()
    assert not dx[:, :, :, 6].any()  # the odd last column is in no window


def test_nan_stays_visible():
    x, w, b = _data(CASES[0], np.float32)
    x[0, 0, 3, 3] = np.nan
    y, _ = F.conv2d_relu_maxpool_forward(x, w, b, 1, 1)
    y_ref, _ = _unfused(x, w, b, 1, 1, np.ones_like(y))
    np.testing.assert_array_equal(y, y_ref)
    assert np.isnan(y).any()


@pytest.mark.parametrize("case", CASES[:4])
def test_fused_op_against_naive_loops(case):
    x, w, b = _data(case, np.float64, seed=4)
    stride, padding = case[6], case[7]
    y, cache = F.conv2d_relu_maxpool_forward(x, w, b, stride, padding)
    z = conv2d_naive(x, w, b, stride, padding)
    np.testing.assert_allclose(y, np.maximum(pool2d_naive(z, 2, 2, 0, np.max), 0), rtol=1e-12)
    dy = np.random.default_rng(5).standard_normal(y.shape)
    dz = np.zeros_like(z)  # dy through the ReLU to each window's first maximum
    for n, f, py, px in np.ndindex(*y.shape):
        window = z[n, f, 2 * py : 2 * py + 2, 2 * px : 2 * px + 2]
        i, j = divmod(int(np.argmax(window)), 2)
        if window[i, j] > 0:
            dz[n, f, 2 * py + i, 2 * px + j] = dy[n, f, py, px]
    dx_ref, dw_ref, db_ref = conv2d_backward_naive(x, w, dz, stride, padding)
    dx, dw, db = F.conv2d_relu_maxpool_backward(dy, cache)
    for got, ref in ((dx, dx_ref), (dw, dw_ref), (db, db_ref)):
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_gradcheck(case):
    n, c, h, w, f, k, stride, padding = case
    conv = nn.Conv2d(c, f, k, stride=stride, padding=padding, rng=0)
    conv.weight.data *= 30  # the article's N(0, 0.01^2) is too flat for a check
    conv.bias.data[...] = np.random.default_rng(5).standard_normal(f) * 0.1
    gradcheck_module(ConvReLUPool(conv, nn.MaxPool2d(2), nn.ReLU()), _x((n, c, h, w)))


def _x(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


def test_need_dx_and_need_params():
    x, w, b = _data(CASES[0], np.float64)
    y, cache = F.conv2d_relu_maxpool_forward(x, w, b, 1, 1)
    dx, dw, db = F.conv2d_relu_maxpool_backward(np.ones_like(y), cache, need_dx=False)
    assert dx is None and dw is not None and db is not None
    dx, dw, db = F.conv2d_relu_maxpool_backward(np.ones_like(y), cache, need_params=False)
    assert dx is not None and dw is None and db is None


def test_errors_name_the_layer_as_unfused():
    w = np.zeros((2, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match="MaxPool2d: kernel 2x2"):
        F.conv2d_relu_maxpool_forward(np.zeros((1, 1, 3, 3), np.float32), w, None, 1, 0)
    with pytest.raises(ValueError, match="Conv2d: expected 1 input channels"):
        F.conv2d_relu_maxpool_forward(np.zeros((1, 2, 6, 6), np.float32), w, None, 1, 0)


# -- Sequential ---------------------------------------------------------------------------


def _seed(dtype):
    model = models.build("seed", seed=0).to(dtype=dtype)
    model[0].input_grad = True  # compare dx too
    for m in model:
        if isinstance(m, nn.Conv2d):
            m.weight.data *= 10  # livelier activations than the article's init
            m.bias.data[...] = np.random.default_rng(6).standard_normal(m.out_channels) * 0.01
    return model


def _step(model, x, labels):
    crit = nn.CrossEntropyLoss()
    model.zero_grad()
    logits = model(x)
    loss = crit(logits, labels)
    dx = model.backward(crit.backward())
    return logits, float(loss), dx, {n: p.grad.copy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_seed_model_fused_is_the_seed_model_unfused(dtype):
    model = _seed(dtype)
    assert [names for names, _ in model.run_steps()][:2] == [("0", "2", "1"), ("3", "5", "4")]
    g = np.random.default_rng(7)
    x = g.standard_normal((3, 1, 28, 28)).astype(dtype)
    labels = g.integers(0, 10, 3)
    fused = _step(model, x, labels)
    model.fuse = False
    assert all(len(names) == 1 for names, _ in model.run_steps())
    unfused = _step(model, x, labels)
    np.testing.assert_array_equal(fused[0], unfused[0])
    assert fused[1] == unfused[1]
    assert fused[2] is not None
    np.testing.assert_array_equal(fused[2], unfused[2])
    assert fused[3].keys() == unfused[3].keys()
    for name in fused[3]:
        if name in ("0.bias", "3.bias"):  # the same sum in another order
            np.testing.assert_allclose(fused[3][name], unfused[3][name], **_db_tol(dtype))
        else:
            np.testing.assert_array_equal(fused[3][name], unfused[3][name], err_msg=name)


def test_conv_pool_relu_as_written_fuses_too():
    g = np.random.default_rng(8)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, rng=g), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten()
    ).to(dtype=np.float64)
    assert [type(s).__name__ for _, s in model.run_steps()] == ["ConvReLUPool", "Flatten"]
    x = g.standard_normal((2, 2, 7, 6))
    y = model(x)
    dy = g.standard_normal(y.shape)
    dx = model.backward(dy)
    grads = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    h = x
    for layer in model:  # one by one, as written
        h = layer(h)
    d = dy
    for layer in reversed(list(model)):
        d = layer.backward(d)
    np.testing.assert_array_equal(h, y)
    np.testing.assert_array_equal(d, dx)
    np.testing.assert_array_equal(model[0].weight.grad, grads[0])
    np.testing.assert_allclose(model[0].bias.grad, grads[1], rtol=1e-13)


@pytest.mark.parametrize(
    "layers",
    [
        lambda: [nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2, stride=1)],
        lambda: [nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(3)],
        lambda: [nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2, padding=1)],
        lambda: [nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2)],
        lambda: [nn.Conv2d(1, 2, 3), nn.Tanh(), nn.MaxPool2d(2)],
        lambda: [nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2)],
        lambda: [nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Dropout(0.0), nn.MaxPool2d(2)],
        lambda: [nn.Conv2d(1, 2, 3), nn.MaxPool2d(2)],
        lambda: [nn.Conv2d(1, 2, 3), nn.ReLU()],
        lambda: [nn.Linear(4, 4), nn.ReLU(), nn.MaxPool2d(2)],
        lambda: [type("MyConv", (nn.Conv2d,), {})(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2)],
    ],
)
def test_only_an_exact_match_fuses(layers):
    model = nn.Sequential(*layers())
    assert all(len(names) == 1 for names, _ in model.run_steps())
    assert "fused" not in repr(model)


def test_fusion_follows_the_backend_switch(monkeypatch):
    from gpucnn.backend import cpu

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2))
    assert len(model.run_steps()) == 1
    monkeypatch.setattr(cpu, "FUSES_CONV_RELU_POOL", False)
    assert len(model.run_steps()) == 3


def test_names_state_and_optimizer_are_unchanged():
    fused, plain = _seed(np.float32), _seed(np.float32)
    plain.fuse = False
    assert fused.state_dict().keys() == plain.state_dict().keys()
    step = fused.run_steps()[0][1]
    assert step.conv.weight is fused[0].weight and step.conv.bias is fused[0].bias
    g = np.random.default_rng(9)
    x, labels = g.standard_normal((2, 1, 28, 28)).astype(np.float32), g.integers(0, 10, 2)
    for model in (fused, plain):
        opt = optim.Adam(model.parameters(), 1e-3)
        _step(model, x, labels)
        opt.step()
    for (name, a), (_, b) in zip(
        fused.state_dict().items(), plain.state_dict().items(), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=name)


def test_frozen_conv_and_no_input_gradient():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, rng=0), nn.ReLU(), nn.MaxPool2d(2))
    model[0].input_grad = False
    model[0].weight.requires_grad = False
    model[0].bias.requires_grad = False
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
    y = model(x)
    assert model.backward(np.ones_like(y)) is None
    assert model[0].weight.grad is None and model[0].bias.grad is None
    with pytest.raises(RuntimeError, match="before forward"):
        model[0].backward(np.ones((2, 2, 6, 6), np.float32))  # the fused step ran, not it


def test_repr_and_summary_show_the_fused_step():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    lines = repr(model).splitlines()[1:-1]
    assert [line.split(":")[0].strip() for line in lines] == ["(0)", "(2)", "(1)", "(3)"]
    assert "one step with (2), (1): conv2d_relu_maxpool" in lines[0]
    assert "fused into (0)'s step" in lines[1]
    assert "runs after (2)" in lines[2] and "fused into (0)'s step" in lines[2]
    rows = model.summary((1, 4, 4), print_fn=None).splitlines()[2:-1]
    assert rows[0].startswith("0 (fused: 0, 2, 1)")
    model.fuse = False
    assert "fused" not in repr(model) + model.summary((1, 4, 4), print_fn=None)


def test_conv_relu_pool_step_shapes_and_flops():
    conv, pool, relu = nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.ReLU()
    step = ConvReLUPool(conv, pool, relu)
    assert step.output_shape((1, 7, 6)) == (2, 3, 3)
    assert step.flops((1, 7, 6)) == conv.flops((1, 7, 6)) + pool.flops((2, 7, 6)) + 18
    with pytest.raises(RuntimeError, match="before forward"):
        step.backward(np.zeros((1, 2, 3, 3), np.float32))
