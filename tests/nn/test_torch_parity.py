"""Layers and the loss against PyTorch's definitions on random cases (float32 tolerances)."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import models, nn

torch = pytest.importorskip("torch")
TF = torch.nn.functional

RTOL, ATOL = 1e-4, 1e-5


def t(a, grad=False):
    return torch.tensor(np.asarray(a), requires_grad=grad)


def close(a, b, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a), b.detach().numpy(), rtol=rtol, atol=atol)


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize(
    ("c", "f", "k", "stride", "padding", "hw"),
    [
        (1, 32, 3, 1, 1, (28, 28)),
        (3, 4, 3, 2, 0, (9, 8)),
        (2, 3, 5, 3, 2, (11, 7)),
        (4, 2, 3, 1, "same", (6, 5)),
        (2, 5, 1, 2, 0, (7, 7)),
    ],
)
def test_conv2d(c, f, k, stride, padding, hw):
    layer = nn.Conv2d(c, f, k, stride=stride, padding=padding, rng=0)
    layer.bias.data[...] = rand(f, 9)
    x = rand((3, c, *hw))
    y = layer(x)
    dy = rand(y.shape, 1)
    dx = layer.backward(dy)
    xt, wt, bt = t(x, True), t(layer.weight.data, True), t(layer.bias.data, True)
    yt = TF.conv2d(xt, wt, bt, stride=stride, padding=padding)
    yt.backward(t(dy))
    close(y, yt)
    close(dx, xt.grad)
    close(layer.weight.grad, wt.grad, rtol=1e-3, atol=1e-4)
    close(layer.bias.grad, bt.grad, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("tile", [2, 4])
def test_conv2d_by_winograd(tile, monkeypatch):
    """Winograd's float32 error is im2col's for F(2x2, 3x3) and ~10x it for F(4x4, 3x3)
    (benchmarks/results/winograd-cpu.md): both inside the float32 tolerance of these tests."""
    from gpucnn.backend import cpu

    monkeypatch.setattr(cpu, "WINOGRAD_TILE", tile)
    layer = nn.Conv2d(32, 64, 3, padding=1, rng=0, algorithm="winograd")
    layer.bias.data[...] = rand(64, 9)
    x = rand((3, 32, 14, 14))
    y = layer(x)
    dy = rand(y.shape, 1)
    dx = layer.backward(dy)
    xt, wt, bt = t(x, True), t(layer.weight.data, True), t(layer.bias.data, True)
    yt = TF.conv2d(xt, wt, bt, padding=1)
    yt.backward(t(dy))
    close(y, yt)
    close(dx, xt.grad)
    close(layer.weight.grad, wt.grad, rtol=1e-3, atol=1e-4)
    close(layer.bias.grad, bt.grad, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    ("k", "stride", "padding"), [(2, None, 0), (3, 2, 1), (3, 1, 0), (2, 2, 1)]
)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool2d(kind, k, stride, padding):
    layer = (nn.MaxPool2d if kind == "max" else nn.AvgPool2d)(k, stride, padding)
    x = rand((2, 3, 7, 9))
    y = layer(x)
    dy = rand(y.shape, 1)
    dx = layer.backward(dy)
    xt = t(x, True)
    fn = TF.max_pool2d if kind == "max" else TF.avg_pool2d
    yt = fn(xt, k, stride, padding)
    yt.backward(t(dy))
    close(y, yt)
    close(dx, xt.grad)


@pytest.mark.parametrize("kind", ["avg", "max"])
def test_global_pool(kind):
    layer = nn.GlobalAvgPool2d() if kind == "avg" else nn.GlobalMaxPool2d()
    x = rand((2, 3, 5, 4))
    y = layer(x)
    dy = rand(y.shape, 1)
    dx = layer.backward(dy)
    xt = t(x, True)
    yt = xt.mean(dim=(2, 3)) if kind == "avg" else xt.amax(dim=(2, 3))
    yt.backward(t(dy))
    close(y, yt)
    close(dx, xt.grad)


def test_linear_relu_tanh():
    lin = nn.Linear(7, 5, rng=0)
    lin.bias.data[...] = rand(5, 3)
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(5, 4, rng=1), nn.Tanh())
    x = rand((6, 7))
    y = model(x)
    dy = rand(y.shape, 1)
    dx = model.backward(dy)
    xt = t(x, True)
    ps = [t(p.data, True) for p in model.parameters()]
    yt = torch.tanh(TF.linear(torch.relu(TF.linear(xt, ps[0], ps[1])), ps[2], ps[3]))
    yt.backward(t(dy))
    close(y, yt)
    close(dx, xt.grad)
    for p, pt in zip(model.parameters(), ps, strict=True):
        close(p.grad, pt.grad)


def test_batchnorm2d_train_eval_and_running_stats():
    ours = nn.BatchNorm2d(3, momentum=0.2)
    ref = torch.nn.BatchNorm2d(3, momentum=0.2)
    g = np.random.default_rng(4)
    gamma, beta = g.uniform(0.5, 2, 3).astype(np.float32), rand(3, 5)
    ours.weight.data[...], ours.bias.data[...] = gamma, beta
    with torch.no_grad():
        ref.weight.copy_(t(gamma))
        ref.bias.copy_(t(beta))
    for step in range(3):  # running stats accumulate over steps
        x = rand((4, 3, 5, 6), 10 + step) * 3 + 1
        ours.zero_grad()
        ref.zero_grad()
        y = ours(x)
        dy = rand(y.shape, 20 + step)
        dx = ours.backward(dy)
        xt = t(x, True)
        yt = ref(xt)
        yt.backward(t(dy))
        close(y, yt)
        close(dx, xt.grad, rtol=1e-3, atol=1e-4)
        close(ours.weight.grad, ref.weight.grad, rtol=1e-3, atol=1e-3)
        close(ours.bias.grad, ref.bias.grad, rtol=1e-3, atol=1e-3)
        close(ours.running_mean, ref.running_mean)
        close(ours.running_var, ref.running_var)
    ours.eval()
    ref.eval()
    x = rand((2, 3, 4, 4), 30)
    close(ours(x), ref(t(x)))


def test_cross_entropy():
    logits, labels = rand((8, 10)) * 4, np.random.default_rng(2).integers(0, 10, 8)
    crit = nn.CrossEntropyLoss()
    loss = crit(logits, labels)
    dlogits = crit.backward()
    lt = t(logits, True)
    ref = TF.cross_entropy(lt, torch.tensor(labels))
    ref.backward()
    np.testing.assert_allclose(float(loss), ref.item(), rtol=1e-5)
    close(dlogits, lt.grad)


def test_dropout_follows_inverted_dropout():
    layer = nn.Dropout(0.25, rng=0)
    x = np.ones((200, 100), np.float32)
    y = layer(x)
    kept = y != 0
    # survivors are scaled by 1/(1-p), as torch.nn.Dropout does; about p of them are zeroed
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    assert abs(1 - kept.mean() - 0.25) < 0.01
    np.testing.assert_array_equal(layer.backward(x) != 0, kept)
    layer.eval()
    np.testing.assert_array_equal(layer(x), x)
    torch_eval = torch.nn.Dropout(0.25).eval()
    close(layer(x), torch_eval(t(x)))


def test_seed_model_matches_the_same_network_in_torch():
    ours = models.build("seed", seed=0)
    ref = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(3136, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )
    with torch.no_grad():
        for p, pt in zip(ours.parameters(), ref.parameters(), strict=True):
            pt.copy_(t(p.data))
    x, labels = rand((4, 1, 28, 28)), np.array([3, 1, 4, 1])
    crit = nn.CrossEntropyLoss()
    loss = crit(ours(x), labels)
    ours.backward(crit.backward())
    ref_loss = TF.cross_entropy(ref(t(x)), torch.tensor(labels))
    ref_loss.backward()
    np.testing.assert_allclose(float(loss), ref_loss.item(), rtol=1e-5)
    for (name, p), pt in zip(ours.named_parameters(), ref.parameters(), strict=True):
        np.testing.assert_allclose(p.grad, pt.grad.numpy(), rtol=1e-3, atol=1e-6, err_msg=name)
