"""Batches inside a captured step: the CUDA gather, augmentation draws and state advance agree
with their CPU twins bit for bit, the gathered batches are gpucnn.data.normalize's bits, and
everything per step is read from the batch state, so the same launches replayed step after
step walk through the epoch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpucnn.backend import cpu, formulas
from gpucnn.backend import cuda as gpu
from gpucnn.backend.formulas import BATCH_EPOCH, BATCH_ROWS, BATCH_STEP
from gpucnn.data.loader import normalize

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

MEAN, STD = 0.1307, 0.3081


def _data(n=11, shape=(1, 4, 5), seed=0):
    g = np.random.default_rng(seed)
    images = g.integers(0, 256, (n, *shape), dtype=np.uint8)
    images[0].flat[:2] = (0, 255)
    return images, g.integers(0, 10, n).astype(np.int64), g.permutation(n).astype(np.int64)


def _bits(a):
    return np.asarray(a).view(np.uint32)


@pytest.mark.parametrize("shape", [(1, 4, 5), (3, 2, 3)])
@pytest.mark.parametrize(("mean", "std"), [(MEAN, STD), (0.0, 1.0)])
def test_steps_gather_normalized_batches_as_the_cpu_twin_and_normalize(dev, shape, mean, std):
    put, get = dev
    images, labels, perm = _data(shape=shape)
    b = 4
    d_images, d_labels, d_perm = put(images), put(labels), put(perm)
    state, twin = put(formulas.batch_state()), formulas.batch_state()
    out_x, out_y = put(np.full((b, *shape), np.nan, np.float32)), put(np.zeros(b, np.int64))
    ref_x, ref_y = np.empty((b, *shape), np.float32), np.empty(b, np.int64)
    for step in range(4):  # 11 images: 4, 4, the tail of 3, then past the end
        gpu.gather_batch(d_images, d_labels, d_perm, state, b, mean, std, out_x, out_y)
        cpu.gather_batch(images, labels, perm, twin, b, mean, std, ref_x, ref_y)
        rows = min(b, max(0, 11 - step * b))
        idx = perm[step * b : step * b + rows]
        assert get(state)[BATCH_ROWS] == rows == twin[BATCH_ROWS]
        np.testing.assert_array_equal(_bits(get(out_x)), _bits(ref_x))
        np.testing.assert_array_equal(get(out_y), ref_y)
        np.testing.assert_array_equal(
            _bits(get(out_x)[:rows]), _bits(normalize(images[idx], mean, std))
        )
        np.testing.assert_array_equal(get(out_y)[:rows], labels[idx])
        assert (get(out_x)[rows:] == 0).all() and (get(out_y)[rows:] == -1).all()
        gpu.batch_state_advance(state)
        cpu.batch_state_advance(twin)
        assert get(state).tolist() == twin.tolist() == [step + 1, 0, rows, 0]


def test_the_tail_batch_fills_buffers_of_its_own_size(dev):
    put, get = dev
    images, labels, perm = _data()
    out_x, out_y = put(np.empty((3, 1, 4, 5), np.float32)), put(np.empty(3, np.int64))
    state = put(formulas.batch_state(epoch=5, step=2))  # rows 8, 9, 10 of 11
    gpu.gather_batch(put(images), put(labels), put(perm), state, 4, MEAN, STD, out_x, out_y)
    np.testing.assert_array_equal(_bits(get(out_x)), _bits(normalize(images[perm[8:]], MEAN, STD)))
    np.testing.assert_array_equal(get(out_y), labels[perm[8:]])
    assert get(state).tolist() == [2, 5, 3, 0]


def test_a_short_or_bad_permutation_leaves_rows_empty(dev):
    put, get = dev
    images, labels, _ = _data()
    perm = np.array([3, -1, 11, 7, 2], np.int64)  # not image indices: -1 and 11; 5 of 11 used
    for step, expect in ((0, [3, -1, -1, 7]), (1, [2, -1, -1, -1])):
        out_x, out_y = put(np.empty((4, 1, 4, 5), np.float32)), put(np.empty(4, np.int64))
        state = put(formulas.batch_state(step=step))
        gpu.gather_batch(put(images), put(labels), put(perm), state, 4, MEAN, STD, out_x, out_y)
        ref_x, ref_y = np.empty((4, 1, 4, 5), np.float32), np.empty(4, np.int64)
        cpu.gather_batch(images, labels, perm, formulas.batch_state(step=step), 4, MEAN, STD,
                         ref_x, ref_y)  # fmt: skip
        np.testing.assert_array_equal(_bits(get(out_x)), _bits(ref_x))
        np.testing.assert_array_equal(get(out_y), ref_y)
        kept = [i for i, j in enumerate(expect) if j >= 0]
        assert get(out_y).tolist() == [labels[j] if j >= 0 else -1 for j in expect]
        np.testing.assert_array_equal(
            get(out_x)[kept], normalize(images[[expect[i] for i in kept]], MEAN, STD)
        )
        assert get(state)[BATCH_ROWS] == (4 if step == 0 else 1)


def test_the_launchers_reject_arrays_that_do_not_fit(dev):
    put, _ = dev
    images, labels, perm = _data()
    args = (put(images), put(labels), put(perm), put(formulas.batch_state()))
    x, y = put(np.empty((4, 1, 4, 5), np.float32)), put(np.empty(4, np.int64))
    with pytest.raises(ValueError, match=r"out_x float32 \(R, 1, 4, 5\), 1 <= R <= 3"):
        gpu.gather_batch(*args, 3, MEAN, STD, x, y)
    with pytest.raises(ValueError, match=r"labels int64 \(11,\)"):
        gpu.gather_batch(args[0], put(labels.astype(np.int32)), *args[2:], 4, MEAN, STD, x, y)
    with pytest.raises(ValueError, match=r"\(4,\) int64 state"):
        gpu.gather_batch(*args[:3], put(np.zeros(2, np.uint64)), 4, MEAN, STD, x, y)
    with pytest.raises(ValueError, match="std must be > 0"):
        gpu.gather_batch(*args, 4, MEAN, 0.0, x, y)
    inv, shift = put(np.empty((4, 4), np.float32)), put(np.empty((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"degrees must be in \[0, 360.0\]"):
        gpu.affine_params(args[3], 1, (4, 1, 4, 5), 400.0, (0, 0), (1, 1), 0.0, inv, shift)
    with pytest.raises(ValueError, match=r"out_shift float32 \(3, 2\)"):
        gpu.affine_params(args[3], 1, (3, 1, 4, 5), 10.0, (0, 0), (1, 1), 0.0, inv[:3], shift)


RECIPES = [  # degrees, translate, scale, flip
    (10.0, (0.1, 0.1), (1.0, 1.0), 0.0),  # the default recipe
    (30.0, (0.2, 0.05), (0.8, 1.25), 0.5),
    (360.0, (0.0, 0.0), (0.5, 2.0), 1.0),
]


def _params(put, get, kernels, state, recipe, n=48, h=7, w=9, seed=2024):
    inv, shift = put(np.empty((n, 4), np.float32)), put(np.empty((n, 2), np.float32))
    kernels.affine_params(state, seed, (n, 1, h, w), *recipe, inv, shift)
    return get(inv), get(shift)


@pytest.mark.parametrize("recipe", RECIPES)
def test_augmentation_draws_equal_the_cpu_twin_and_lie_in_the_recipe_ranges(dev, recipe):
    put, get = dev
    degrees, (fx, fy), (lo, hi), flip = recipe
    n, h, w, seed = 48, 7, 9, 2024
    state = put(formulas.batch_state(epoch=3, step=5))
    inv, shift = _params(put, get, gpu, state, recipe)
    inv_c, shift_c = _params(np.asarray, np.asarray, cpu, formulas.batch_state(3, 5), recipe)
    np.testing.assert_array_equal(_bits(inv), _bits(inv_c))
    np.testing.assert_array_equal(_bits(shift), _bits(shift_c))
    # against float64 from the same draws: the hash's 24-bit integers, mapped as documented
    key = formulas.augment_key(np.uint64(seed), np.uint64(3), np.uint64(5))
    draws = np.array(
        [[int(formulas.dropout_draw(key, 5 * i + lane)) for lane in range(5)] for i in range(n)]
    )
    v = (2 * draws[:, :3] + 1 - 2**24) / 2**24
    theta, s = math.radians(degrees) * v[:, 0], lo + (hi - lo) * draws[:, 3] / 2**24
    flipped = draws[:, 4] < round(flip * 2**24)
    sign = np.where(flipped, -1.0, 1.0)
    ref = np.stack([sign * np.cos(theta), sign * np.sin(theta), -np.sin(theta), np.cos(theta)], 1)
    np.testing.assert_allclose(inv, ref / s[:, None], rtol=0, atol=4e-6)
    np.testing.assert_allclose(shift, np.stack([fx * w * v[:, 1], fy * h * v[:, 2]], 1), rtol=1e-6)
    # the recipe's ranges, read back from the matrices
    zoom = 1 / np.hypot(inv[:, 2], inv[:, 3])
    angle = np.degrees(np.arctan2(-inv[:, 2], inv[:, 3]))
    assert (zoom >= lo * (1 - 1e-6)).all() and (zoom <= hi * (1 + 1e-6)).all()
    assert (np.abs(angle) <= degrees + 1e-4).all() or degrees == 360.0
    assert (np.abs(shift[:, 0]) <= fx * w).all() and (np.abs(shift[:, 1]) <= fy * h).all()
    np.testing.assert_array_equal(np.sign(inv[:, 0] * inv[:, 3]) < 0, flipped)
    if flip == 0.5:
        assert 0.25 < flipped.mean() < 0.75
    if degrees and degrees < 360:
        assert np.ptp(angle) > degrees  # spread over the range, not stuck


def test_each_step_and_epoch_draws_anew_and_a_step_draws_the_same_again(dev):
    put, get = dev
    recipe = RECIPES[1]
    state = put(formulas.batch_state(epoch=1))
    first = _params(put, get, gpu, state, recipe)
    gpu.batch_state_advance(state)
    second = _params(put, get, gpu, state, recipe)
    assert not np.array_equal(first[0], second[0]) and get(state)[BATCH_STEP] == 1
    again = _params(put, get, gpu, put(formulas.batch_state(epoch=1)), recipe)
    np.testing.assert_array_equal(again[0], first[0])
    other_epoch = _params(put, get, gpu, put(formulas.batch_state(epoch=2)), recipe)
    assert not np.array_equal(other_epoch[0], first[0])
    other_seed = _params(put, get, gpu, put(formulas.batch_state(epoch=1)), recipe, seed=7)
    assert not np.array_equal(other_seed[0], first[0])
    assert get(state)[BATCH_EPOCH] == 1


def test_warping_with_the_drawn_parameters_agrees_between_the_twins(dev):
    put, get = dev
    images, labels, perm = _data(n=9, shape=(1, 7, 9))
    b = 4
    state = put(formulas.batch_state(epoch=0, step=1))
    x, y = put(np.empty((b, 1, 7, 9), np.float32)), put(np.empty(b, np.int64))
    # augmentation acts on [0, 1] images: gather with mean 0, std 1, warp, then normalise
    gpu.gather_batch(put(images), put(labels), put(perm), state, b, 0.0, 1.0, x, y)
    inv, shift = put(np.empty((b, 4), np.float32)), put(np.empty((b, 2), np.float32))
    gpu.affine_params(state, 11, (b, 1, 7, 9), 15.0, (0.1, 0.1), (0.9, 1.1), 0.5, inv, shift)
    warped = get(gpu.affine_warp(x, inv, shift))
    x01 = images[perm[4:8]].astype(np.float32) * np.float32(1 / 255)
    np.testing.assert_array_equal(get(x), x01)
    ref = cpu.affine_warp(x01, get(inv), get(shift))
    np.testing.assert_allclose(warped, ref, atol=1e-4)
    # a flip alone is an exact mirror on both
    gpu.affine_params(state, 11, (b, 1, 7, 9), 0.0, (0.0, 0.0), (1.0, 1.0), 1.0, inv, shift)
    np.testing.assert_array_equal(get(inv), np.tile(np.float32([-1, 0, 0, 1]), (b, 1)))
    np.testing.assert_array_equal(get(gpu.affine_warp(x, inv, shift)), x01[..., ::-1])
    np.testing.assert_array_equal(cpu.affine_warp(x01, get(inv), get(shift)), x01[..., ::-1])
