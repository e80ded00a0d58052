"""Split, batches, shuffling and normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn.data import DataLoader, train_val_split


def _data(n=103):
    g = np.random.default_rng(0)
    return g.integers(0, 256, (n, 4, 5), dtype=np.uint8), np.arange(n) % 10


def test_split_is_seeded_80_20_and_disjoint():
    images, labels = _data(1000)
    ids = np.arange(1000)
    (tr_x, tr_y), (va_x, va_y) = train_val_split(images, ids, 0.2, seed=1)
    assert len(tr_y) == 800 and len(va_y) == 200
    assert not set(tr_y) & set(va_y)
    (tr_x2, tr_y2), _ = train_val_split(images, ids, 0.2, seed=1)
    np.testing.assert_array_equal(tr_y, tr_y2)
    np.testing.assert_array_equal(tr_x, images[tr_y])  # images travel with their labels
    (_, tr_y3), _ = train_val_split(images, ids, 0.2, seed=2)
    assert not np.array_equal(tr_y, tr_y3)


def test_batches_cover_every_item_once_with_a_partial_last_batch():
    images, labels = _data(103)
    loader = DataLoader(images, labels, batch_size=10, seed=0)
    batches = list(loader)
    assert len(loader) == len(batches) == 11
    assert [len(y) for _, y in batches][-1] == 3
    x, _ = batches[0]
    assert x.shape == (10, 1, 4, 5) and x.dtype == np.float32
    seen = np.concatenate([y for _, y in batches])
    assert sorted(seen.tolist()) == sorted(labels.tolist())
    dropped = DataLoader(images, labels, batch_size=10, drop_last=True)
    assert len(dropped) == 10 == len(list(dropped))


def test_shuffle_changes_per_epoch_and_is_reproducible():
    images, labels = _data(50)
    a = DataLoader(images, np.arange(50), batch_size=50, seed=3)
    e0, e1 = next(iter(a))[1], next(iter(a))[1]
    assert not np.array_equal(e0, e1)
    b = DataLoader(images, np.arange(50), batch_size=50, seed=3)
    b.set_epoch(1)  # a resumed run sees epoch 1's order
    np.testing.assert_array_equal(next(iter(b))[1], e1)
    unshuffled = DataLoader(images, np.arange(50), batch_size=50, shuffle=False)
    np.testing.assert_array_equal(next(iter(unshuffled))[1], np.arange(50))


def test_normalisation():
    images = np.array([[[0, 255]]], np.uint8)
    x, _ = next(iter(DataLoader(images, np.array([1]), mean=0.1307, std=0.3081)))
    np.testing.assert_allclose(x.ravel(), [(0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081], rtol=1e-6)


def test_limit():
    images, labels = _data(103)
    assert DataLoader(images, labels, batch_size=8, limit=20).num_samples == 20


def test_augmentation_is_applied_before_normalisation():
    images, labels = _data(8)
    seen = []

    def spy(x, rng):
        seen.append((float(x.min()), float(x.max())))
        return x * 0

    x, _ = next(iter(DataLoader(images, labels, batch_size=8, mean=0.5, std=0.5, augment=spy)))
    assert 0.0 <= seen[0][0] and seen[0][1] <= 1.0
    np.testing.assert_allclose(x, -1.0)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"images": np.zeros((3, 4, 4), np.float32)}, "expected uint8 images"),
        ({"labels": np.zeros(2, np.int64)}, "3 images but 2 labels"),
        ({"labels": np.zeros(3, np.float32)}, "labels must be integers"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"device": "cuda"}, "device 'cuda' is unavailable"),
    ],
)
def test_bad_loader_arguments(kw, match):
    args = {"images": np.zeros((3, 4, 4), np.uint8), "labels": np.zeros(3, np.int64), **kw}
    with pytest.raises((ValueError, RuntimeError), match=match):
        DataLoader(**args)
