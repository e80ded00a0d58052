"""The model registry, summaries, and the seed model learning."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import models, nn, optim


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("seed", 421_642),  # 320 + 18,496 + 401,536 + 1,290
        ("lenet5", 61_706),  # LeCun et al.'s 60k, with a 10-way linear output
        ("resnet18", 11_172_810),  # torchvision's 11,689,512 less its 7×7 RGB stem and 1000-way fc
        ("vgg", None),
        ("resnet", None),
    ],
)
def test_build_forward_and_count(name, params):
    model = models.build(name, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    assert model(x).shape == (2, 10)
    if params is not None:
        assert model.num_parameters() == params
    assert model.output_shape((1, 28, 28)) == (10,)


def test_build_other_classes_and_channels():
    model = models.build("resnet", num_classes=3, in_channels=3, seed=0)
    assert model(np.zeros((1, 3, 28, 28), np.float32)).shape == (1, 3)


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'alexnet'; choose one of seed"):
        models.build("alexnet")


def test_seeded_builds_are_identical():
    a, b = models.build("seed", seed=3), models.build("seed", seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        np.testing.assert_array_equal(pa.data, pb.data)


def test_seed_init_is_the_articles():
    model = models.build("seed", seed=0)
    conv2, fc1 = model[3], model[7]
    assert abs(conv2.weight.data.std() - 0.01) < 0.001  # N(0, 0.01^2)
    bound = np.sqrt(6 / (3136 + 128))  # Xavier-uniform
    assert np.abs(fc1.weight.data).max() <= bound and np.abs(fc1.weight.data).max() > 0.9 * bound
    assert not fc1.bias.data.any() and not conv2.bias.data.any()


def test_resnet_uses_kaiming_normal():
    model = models.build("resnet18", seed=0)
    conv = model[3][0].body[0]  # stage 1, block 0, first conv: 64 -> 64, 3×3
    fan_out = 64 * 9
    assert abs(conv.weight.data.std() - np.sqrt(2 / fan_out)) < 0.005


def test_summary_shows_shapes_flops_and_weight_sharing():
    text = models.build("seed", seed=0).summary((1, 28, 28), print_fn=None)
    lines = text.splitlines()
    conv1 = next(line for line in lines if line.startswith("0 "))
    assert "(32, 28, 28)" in conv1 and "320" in conv1
    # a fully connected map from 1×28×28 to 32×28×28 needs 784*25,088 + 25,088 weights
    assert "19,694,080" in conv1
    assert "451,584" in conv1  # 2 * 1*3*3 * 32*28*28 FLOPs
    assert "421,642 parameters" in lines[-1]
    assert (
        models.build("seed").summary((64, 1, 28, 28), print_fn=None).splitlines()[-1] == lines[-1]
    )


def test_seed_model_overfits_one_small_batch():
    """The pieces train together: 16 images with random labels are memorised."""
    g = np.random.default_rng(0)
    x = g.standard_normal((16, 1, 28, 28)).astype(np.float32)
    y = g.integers(0, 10, 16)
    model = models.build("seed", seed=0)
    crit = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(60):
        model.zero_grad()
        loss = float(crit(model(x), y))
        first = loss if first is None else first
        model.backward(crit.backward())
        opt.step()
    assert first > 2.0
    assert loss < 0.01
    assert (model(x).argmax(axis=1) == y).all()
