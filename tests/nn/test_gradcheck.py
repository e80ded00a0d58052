"""Float64 central-difference gradient checks for every layer (relative error < 1e-6)."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import nn
from gpucnn.functional import cross_entropy_backward, cross_entropy_forward
from tests.helpers import gradcheck_module, numerical_grad, rel_error


def _x(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


CONV_CASES = [
    # (C, F, k, stride, padding, (N, H, W))
    (2, 3, 3, 1, 0, (2, 7, 6)),
    (2, 3, 3, 2, 1, (1, 7, 8)),  # batch 1, stride 2
    (1, 2, 3, 3, 2, (2, 9, 7)),  # stride 3, padding 2
    (3, 2, 3, 1, "same", (2, 5, 6)),
    (2, 2, 1, 2, 0, (2, 5, 5)),  # 1×1 projection, stride 2
    (2, 2, 4, 2, 1, (1, 8, 7)),  # even kernel, odd width
    (1, 2, 5, 1, "valid", (1, 7, 9)),
    (2, 2, 3, 3, 1, (1, 4, 11)),  # non-square, stride 3
]


@pytest.mark.parametrize(("c", "f", "k", "stride", "padding", "nhw"), CONV_CASES)
def test_conv2d(c, f, k, stride, padding, nhw):
    layer = nn.Conv2d(c, f, k, stride=stride, padding=padding, rng=0)
    layer.bias.data[...] = np.random.default_rng(5).standard_normal(f)
    n, h, w = nhw
    gradcheck_module(layer, _x((n, c, h, w)))


def test_conv2d_without_bias():
    gradcheck_module(nn.Conv2d(2, 3, 3, padding=1, bias=False, rng=0), _x((2, 2, 5, 5)))


POOL_CASES = [
    # (k, stride, padding, (N, C, H, W))
    (2, None, 0, (2, 2, 6, 7)),  # odd width drops the last column, as floor() says
    (3, 2, 1, (1, 2, 7, 7)),
    (3, 3, 0, (2, 1, 7, 8)),
    (2, 1, 0, (1, 2, 5, 4)),
    (2, 2, 1, (1, 1, 5, 5)),
]


@pytest.mark.parametrize(("k", "stride", "padding", "shape"), POOL_CASES)
@pytest.mark.parametrize("cls", [nn.MaxPool2d, nn.AvgPool2d])
def test_pool2d(cls, k, stride, padding, shape):
    gradcheck_module(cls(k, stride, padding), _x(shape))


@pytest.mark.parametrize("cls", [nn.GlobalAvgPool2d, nn.GlobalMaxPool2d])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 1, 3)])
def test_global_pool(cls, shape):
    gradcheck_module(cls(), _x(shape))


@pytest.mark.parametrize(("n", "fin", "fout"), [(3, 5, 4), (1, 7, 2)])
def test_linear(n, fin, fout):
    layer = nn.Linear(fin, fout, rng=0)
    layer.bias.data[...] = 0.3
    gradcheck_module(layer, _x((n, fin)))


@pytest.mark.parametrize("cls", [nn.ReLU, nn.Tanh, nn.Flatten])
def test_elementwise(cls):
    gradcheck_module(cls(), _x((2, 3, 4, 3)))


@pytest.mark.parametrize("p", [0.0, 0.3, 0.7])
def test_dropout_with_fixed_mask(p):
    layer = nn.Dropout(p)

    def reseed():
        layer.rng = np.random.default_rng(3)

    gradcheck_module(layer, _x((4, 5)), before_forward=reseed)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 3, 2), (1, 2, 3, 3)])
def test_batchnorm2d(training, shape):
    layer = nn.BatchNorm2d(shape[1])
    g = np.random.default_rng(7)
    layer.weight.data[...] = g.uniform(0.5, 1.5, shape[1])
    layer.bias.data[...] = g.standard_normal(shape[1])
    layer.running_mean[...] = g.standard_normal(shape[1])
    layer.running_var[...] = g.uniform(0.5, 2.0, shape[1])
    layer.train(training)
    gradcheck_module(layer, _x(shape))


def test_residual_identity_and_projection():
    body = nn.Sequential(
        nn.Conv2d(2, 2, 3, padding=1, rng=1), nn.Tanh(), nn.Conv2d(2, 2, 3, padding=1, rng=2)
    )
    gradcheck_module(nn.Residual(body), _x((2, 2, 4, 5)))
    # bias=False before BatchNorm (as ResNet does): BN subtracts the mean, so a conv bias there
    # has an exactly zero gradient, which a relative-error check cannot judge
    body = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False, rng=1), nn.BatchNorm2d(3)
    )
    short = nn.Sequential(nn.Conv2d(2, 3, 1, stride=2, bias=False, rng=3), nn.BatchNorm2d(3))
    gradcheck_module(nn.Residual(body, short), _x((2, 2, 5, 5)))


def test_small_network_end_to_end():
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, rng=0),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, padding=1, rng=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 3, rng=2),
    )
    for m in model:
        if isinstance(m, nn.Conv2d):  # the article's N(0, 0.01^2) is too flat for a check
            m.weight.data *= 30
    gradcheck_module(model, _x((2, 1, 8, 8)))


@pytest.mark.parametrize(("n", "k"), [(4, 3), (1, 10)])
def test_cross_entropy(n, k):
    g = np.random.default_rng(0)
    logits = g.standard_normal((n, k)) * 3
    labels = g.integers(0, k, n)
    _, cache = cross_entropy_forward(logits, labels)
    analytic = cross_entropy_backward(cache)
    numeric = numerical_grad(lambda: float(cross_entropy_forward(logits, labels)[0]), logits)
    assert rel_error(analytic, numeric) < 1e-6
