"""Augmentation: shapes, reproducibility, exact identities of the geometry."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn.data import Compose, RandomAffine, RandomHorizontalFlip, RandomRotation, parse_recipe
from gpucnn.data.augment import affine


def _x(n=4, h=9, w=9):
    return np.random.default_rng(0).random((n, 1, h, w)).astype(np.float32)


def test_rotation_by_zero_is_the_identity():
    x = _x()
    np.testing.assert_array_equal(RandomRotation(0)(x, np.random.default_rng(0)), x)
    np.testing.assert_array_equal(affine(x, np.zeros(4), np.zeros(4), np.zeros(4), np.ones(4)), x)


def test_rotation_by_90_degrees_is_exact_on_a_square_grid():
    x = _x(2, 7, 7)
    y = affine(x, np.full(2, np.pi / 2), np.zeros(2), np.zeros(2), np.ones(2))
    # positive angle rotates counter-clockwise in (x right, y down) image coordinates
    expected = np.rot90(x, k=-1, axes=(2, 3))
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_integer_shift_moves_pixels_and_fills_with_zero():
    x = _x(1, 6, 6)
    y = affine(x, np.zeros(1), np.array([2.0]), np.array([-1.0]), np.ones(1))
    np.testing.assert_allclose(y[0, 0, :5, 2:], x[0, 0, 1:, :4], atol=1e-6)
    assert not y[0, 0, :, :2].any() and not y[0, 0, 5].any()


def test_flip():
    x = _x()
    np.testing.assert_array_equal(
        RandomHorizontalFlip(1.0)(x, np.random.default_rng(0)), x[..., ::-1]
    )
    np.testing.assert_array_equal(RandomHorizontalFlip(0.0)(x, np.random.default_rng(0)), x)


def test_seeds_reproduce_and_differ():
    t = Compose([RandomAffine(15, (0.1, 0.1), (0.9, 1.1)), RandomHorizontalFlip()])
    x = _x(8, 28, 28)
    a = t(x, np.random.default_rng(5))
    b = t(x, np.random.default_rng(5))
    c = t(x, np.random.default_rng(6))
    assert a.shape == x.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_rotation_keeps_mass_of_a_centred_blob():
    x = np.zeros((1, 1, 28, 28), np.float32)
    x[0, 0, 10:18, 12:16] = 1.0
    y = RandomRotation(30)(x, np.random.default_rng(1))
    assert abs(y.sum() - x.sum()) / x.sum() < 0.05


@pytest.mark.parametrize(
    ("spec", "kinds"),
    [
        ("none", None),
        ("default", ["RandomAffine"]),
        ("rotate=10,shift=0.1", ["RandomAffine"]),
        ("flip,rotate=5,scale=0.9:1.1", ["RandomHorizontalFlip", "RandomAffine"]),
    ],
)
def test_parse_recipe(spec, kinds):
    recipe = parse_recipe(spec)
    if kinds is None:
        assert recipe is None
    else:
        assert [type(t).__name__ for t in recipe.transforms] == kinds


def test_parse_recipe_rejects_unknown_items():
    with pytest.raises(ValueError, match="unknown item 'blur'"):
        parse_recipe("blur=2")
