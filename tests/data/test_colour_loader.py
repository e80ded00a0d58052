"""Colour batches: per-channel normalisation, rows of a memory-mapped cache, the photo recipe."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import data
from gpucnn.data import cache
from gpucnn.data.augment import RandomCrop


def test_normalisation_is_per_channel_in_float32_and_scalar_for_one_channel():
    g = np.random.default_rng(0)
    x = g.integers(0, 256, (4, 3, 5, 5), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    got = data.normalize(x, mean, std)
    want = x.astype(np.float32) * np.float32(1 / 255)
    want -= np.array(mean, np.float32)[None, :, None, None]
    want *= (np.float32(1) / np.array(std, np.float32))[None, :, None, None]
    np.testing.assert_array_equal(got, want)  # the same float32 operations, bit for bit
    one = g.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    scalar = (one.astype(np.float32) * np.float32(1 / 255) - np.float32(0.1307)) * (
        np.float32(1) / np.float32(0.3081)
    )
    np.testing.assert_array_equal(data.normalize(one, 0.1307, 0.3081)[:, 0], scalar)
    with pytest.raises(ValueError, match="3 means but 2 stds"):
        data.Normalization((0.1, 0.2, 0.3), (0.1, 0.2))
    with pytest.raises(ValueError, match="every std must be > 0"):
        data.Normalization((0.1,), (0.0,))
    with pytest.raises(ValueError, match="normalisation of 3 channels"):
        data.DataLoader(one, np.zeros(4, int), mean=mean, std=std)
    assert data.Normalization.from_dict({"mean": 0.1307, "std": 0.3081}).channels == 1


def test_a_loader_over_rows_of_a_memory_map_gives_the_in_memory_batches(tmp_path):
    g = np.random.default_rng(1)
    images = g.integers(0, 256, (50, 3, 6, 6), dtype=np.uint8)
    labels = g.integers(0, 4, 50)
    with cache.ArrayWriter(tmp_path, "images-x.npy", images.shape) as out:
        for i, row in enumerate(images):
            out[i] = row
        out.commit()
    mapped = np.load(tmp_path / "images-x.npy", mmap_mode="r")
    rows = np.sort(g.permutation(50)[:30])
    kwargs = {"batch_size": 8, "seed": 3, "mean": (0.5, 0.5, 0.5), "std": (0.2, 0.3, 0.4)}
    kwargs["augment"] = data.parse_recipe("crop-flip")
    a = list(data.DataLoader(mapped, labels[rows], indices=rows, **kwargs))
    b = list(data.DataLoader(images[rows], labels[rows], **kwargs))
    assert len(a) == len(b) == 4
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    with pytest.raises(ValueError, match="indices must be rows of the 50 images"):
        data.DataLoader(mapped, labels[:2], indices=[0, 50])


def test_released_pages_leave_the_process(tmp_path):
    n = 4096
    with cache.ArrayWriter(tmp_path, "images-big.npy", (n, 3, 32, 32)) as out:
        out.array[:] = 7
        out.commit()
    mapped = np.load(tmp_path / "images-big.npy", mmap_mode="r")

    def resident_mb() -> float:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        pytest.skip("no /proc/self/status here")

    before = resident_mb()
    assert int(mapped[:, :, :, :].sum(dtype=np.int64)) == 7 * mapped.size  # every page read
    touched = resident_mb()
    cache.release_pages(mapped)
    assert touched - before > 8  # 12 MB mapped in
    assert resident_mb() < touched - 8  # and handed back


def test_random_crop_is_a_whole_pixel_shift_with_black_coming_in():
    x = np.arange(2 * 1 * 6 * 6, dtype=np.float32).reshape(2, 1, 6, 6) + 1
    rng = np.random.default_rng(0)
    y = RandomCrop(padding=2)(x, rng)
    rng = np.random.default_rng(0)
    tx, ty = rng.integers(-2, 3, 2), rng.integers(-2, 3, 2)
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for k in range(2):
        top, left = 2 - int(ty[k]), 2 - int(tx[k])
        np.testing.assert_array_equal(y[k], padded[k, :, top : top + 6, left : left + 6])
    assert repr(data.parse_recipe("crop-flip")).startswith("Compose([RandomHorizontalFlip")
    assert data.parse_recipe("crop=3,flip").transforms[0].padding == 3
