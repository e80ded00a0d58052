"""A user's own folder of images: real MNIST digits written as PNG and JPEG files, read back
through the folder path, cached once, split per class; every bad input named."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from gpucnn import data
from gpucnn.data import cache, folder, images
from tests.data.imagefolders import CLASSES, random_folder, tinted, write_digits

pytest.importorskip("PIL", reason="image folders need Pillow (the 'images' extra)")


@pytest.fixture(scope="module")
def digits(mnist_root):
    """The first 200 real MNIST test digits and their labels."""
    x, y = data.load("mnist", "test", root=mnist_root, download=False)
    return x[:200], y[:200]


def by_path(ds: data.Dataset) -> dict[str, int]:
    """{relative path: row of the cache} for every usable image."""
    rows = np.concatenate([p.rows() for p in ds.parts.values()])
    return {ds.facts["paths"][r]: int(r) for r in rows}


def test_png_digits_through_the_folder_path_equal_the_idx_arrays(digits, tmp_path):
    x, y = digits
    paths = write_digits(tmp_path / "digits", x, y)
    ds = data.open_dataset(str(tmp_path / "digits"), tmp_path / "cache")
    assert ds.kind == "folder" and ds.classes == tuple(CLASSES)
    assert ds.shape == (1, 28, 28)  # every image grayscale: one channel, 28 the common size
    rows = by_path(ds)
    cached = ds.parts["train"].images
    for i, p in enumerate(paths):
        rel = p.relative_to(tmp_path / "digits").as_posix()
        np.testing.assert_array_equal(cached[rows[rel], 0], x[i])
    labels = dict(zip(ds.facts["paths"], np.zeros(len(paths), int), strict=False))
    labels = {
        ds.facts["paths"][r]: lab
        for r, lab in zip(ds.parts["train"].rows(), ds.parts["train"].labels, strict=True)
    }
    assert all(labels[p.relative_to(tmp_path / "digits").as_posix()] == y[i]
               for i, p in enumerate(paths))  # fmt: skip


def test_colour_and_mixed_sizes_are_decoded_by_the_stated_rule(digits, tmp_path):
    from PIL import Image

    x, y = digits
    x, y = x[:30], y[:30]
    paths = write_digits(tmp_path / "d", x, y, colour=True, mixed=True)
    ds = data.open_dataset(str(tmp_path / "d"), tmp_path / "cache")
    assert ds.shape == (3, 28, 28) and ds.prepare["size"] == 28 and ds.prepare["channels"] == 3
    rows = by_path(ds)
    cached = ds.parts["train"].images
    for i in (0, 1, 2, 4):  # PNG 28x28, JPEG 42x42, PNG 28x28, PNG 56x56
        rel = paths[i].relative_to(tmp_path / "d").as_posix()
        with Image.open(paths[i]) as img:
            want = img.convert("RGB")
            if want.size != (28, 28):
                want = want.resize((28, 28), Image.Resampling.BILINEAR)
            want = np.asarray(want).transpose(2, 0, 1)
        np.testing.assert_array_equal(cached[rows[rel]], want)
    np.testing.assert_array_equal(cached[rows[paths[0].relative_to(tmp_path / "d").as_posix()]],
                                  tinted(x[0], int(y[0])).transpose(2, 0, 1))  # fmt: skip


def test_classes_hidden_entries_other_files_and_extensions(tmp_path):
    root = random_folder(tmp_path / "f", n_per_class=2)
    (root / ".DS_Store").write_bytes(b"\0\1")
    (root / ".ipynb_checkpoints").mkdir()
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "x.png").write_bytes(b"not an image")
    (root / "class0" / ".hidden.png").write_bytes(b"not an image")
    (root / "class0" / "notes.txt").write_text("hello")
    (root / "class1" / "UPPER.PNG").write_bytes((root / "class1" / "0.png").read_bytes())
    (root / "class2" / "nested").mkdir()
    (root / "class2" / "nested" / "deep.JpG").write_bytes((root / "class2" / "0.png").read_bytes())
    listing = folder.scan(root)
    assert listing.classes == ("class0", "class1", "class2")
    rels = [f[0] for f in listing.files]
    assert "class1/UPPER.PNG" in rels and "class2/nested/deep.JpG" in rels
    assert not any("MACOSX" in r or "hidden" in r for r in rels)
    assert listing.ignored == 1  # notes.txt
    ds = data.open_dataset(str(root), tmp_path / "cache")
    assert ds.facts["ignored_files"] == 1 and len(ds.parts["train"]) == 8


def test_the_cache_is_reused_and_a_changed_file_invalidates_it(tmp_path, caplog):
    root = random_folder(tmp_path / "f")
    caplog.set_level("INFO", "gpucnn.data")
    data.download(str(root), tmp_path / "cache")
    assert "decoding" in caplog.text
    made = list((tmp_path / "cache" / "folders").glob("*/images-*.npy"))
    assert len(made) == 1
    caplog.clear()
    start = time.monotonic()
    ds = data.open_dataset(str(root), tmp_path / "cache")
    assert time.monotonic() - start < 5 and "decoding" not in caplog.text
    assert isinstance(ds.parts["train"].images, np.memmap)  # mapped, not read into memory
    # a file rewritten with other pixels: the next run decodes again and sees them
    from PIL import Image

    target = root / "class1" / "0.png"
    Image.fromarray(np.full((12, 12, 3), 7, np.uint8)).save(target)
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    ds = data.open_dataset(str(root), tmp_path / "cache")
    assert "decoding" in caplog.text
    row = by_path(ds)["class1/0.png"]
    assert (ds.parts["train"].images[row] == 7).all()
    assert len(list((tmp_path / "cache" / "folders").glob("*/images-*.npy"))) == 1


def test_ctrl_c_while_caching_leaves_no_half_written_cache(tmp_path, monkeypatch):
    root = random_folder(tmp_path / "f")
    real, calls = images.load, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(images, "load", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.download(str(root), tmp_path / "cache")
    (where,) = (tmp_path / "cache" / "folders").iterdir()
    assert sorted(p.name for p in where.iterdir()) == [".lock"]
    monkeypatch.setattr(images, "load", real)
    # a killed writer's temporary file is removed by the next writer
    (where / ".images-x.npy.part-abc").write_bytes(b"half")
    data.download(str(root), tmp_path / "cache")
    assert not list(where.glob(".*.part-*")) and (where / cache.MANIFEST).exists()


def corrupt(path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)


def truncate(path):
    path.write_bytes(path.read_bytes()[:60])


@pytest.mark.parametrize("damage", [corrupt, truncate], ids=["corrupt", "truncated"])
def test_a_bad_image_is_named_and_skip_bad_images_lists_it(tmp_path, damage):
    root = random_folder(tmp_path / "f", size=40)
    bad = root / "class1" / "2.png"
    damage(bad)
    with pytest.raises(data.DataError, match=r"(?s)class1/2\.png: .*--skip-bad-images"):
        data.download(str(root), tmp_path / "cache")
    ds = data.open_dataset(str(root), tmp_path / "cache", skip_bad_images=True)
    assert [s[0] for s in ds.facts["skipped_images"]] == ["class1/2.png"]
    assert len(ds.parts["train"]) == 11
    assert "class1/2.png" not in by_path(ds)


def test_an_image_over_the_pixel_limit_is_refused_by_name(tmp_path, monkeypatch):
    from PIL import Image

    root = random_folder(tmp_path / "f", size=12)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "class0" / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 40x40 image is over it
    with pytest.raises(data.DataError, match=r"class0/big\.png: image of 40x40 pixels is larger"):
        data.download(str(root), tmp_path / "cache")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: (r.mkdir(), (r / "x.png").write_bytes(b"x")), r"no class folders \(1 images"),
        (lambda r: random_folder(r, classes=1), r"one class folder only \(class0/\)"),
        (lambda r: (random_folder(r), (r / "empty").mkdir()), r"empty: the class folder holds no"),
        (lambda r: None, "no such folder"),
    ],
    ids=["no-images", "one-class", "empty-class", "missing"],
)
def test_a_folder_that_cannot_train_fails_naming_it(tmp_path, make, message):
    root = tmp_path / "photos"
    make(root)
    with pytest.raises(data.DataError, match=message):
        data.download(str(root), tmp_path / "cache")


def test_a_symlink_loop_ends_and_each_folder_is_read_once(tmp_path):
    root = random_folder(tmp_path / "f", n_per_class=2)
    os.symlink(root / "class0", root / "class0" / "again")
    os.symlink(root / "class1", root / "class1" / "loop")
    listing = folder.scan(root)
    assert len(listing.files) == 6


def test_a_split_on_disk_and_a_stratified_seeded_split(tmp_path):
    from gpucnn.train.config import TrainConfig
    from gpucnn.train.recipe import load_data

    flat = random_folder(tmp_path / "flat", n_per_class=10, classes=3, size=8)
    ds = data.open_dataset(str(flat), tmp_path / "cache")
    parts = ds.split(val_fraction=0.2, seed=0, test_fraction=0.3)
    for name, n in (("train", 5), ("val", 2), ("test", 3)):  # per class: 10 * fraction
        assert np.bincount(parts[name].labels).tolist() == [n] * 3
    again = ds.split(val_fraction=0.2, seed=0, test_fraction=0.3)
    assert all((again[k].rows() == parts[k].rows()).all() for k in parts)
    other = ds.split(val_fraction=0.2, seed=1, test_fraction=0.3)
    assert not (other["test"].rows() == parts["test"].rows()).all()
    assert not set(parts["train"].rows()) & set(parts["test"].rows())
    # train/ and test/ on disk: the test set is test/, validation comes out of train/
    split = tmp_path / "split"
    random_folder(split / "train", n_per_class=5, size=8)
    random_folder(split / "test", n_per_class=2, size=8)
    config = TrainConfig(dataset=str(split), data_dir=str(tmp_path / "cache"), val_fraction=0.2)
    run = load_data(config)
    assert [len(run.parts[k]) for k in ("train", "val", "test")] == [12, 3, 6]


def test_per_channel_statistics_of_the_training_split(tmp_path):
    root = random_folder(tmp_path / "f", n_per_class=6, size=8)
    ds = data.open_dataset(str(root), tmp_path / "cache")
    parts = ds.split(0.2, seed=0, test_fraction=0.2)
    norm = ds.normalization_for(parts["train"])
    x = np.asarray(parts["train"].images[parts["train"].rows()], np.float64) / 255
    np.testing.assert_allclose(norm.mean, x.mean(axis=(0, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(norm.std, x.std(axis=(0, 2, 3)), atol=1e-6)


def test_data_dir_holding_class_folders_of_images_is_refused(tmp_path):
    root = random_folder(tmp_path / "photos")
    with pytest.raises(data.DataError, match=r"holds class folders of images \(class0/, class1/"):
        data.download("mnist", root)
    with pytest.raises(data.DataError, match=f"pass --dataset {root}"):
        data.load("mnist", root=root, download=False)
    assert not (root / "mnist").exists()


def test_a_data_dir_inside_the_dataset_folder_is_refused(tmp_path):
    root = random_folder(tmp_path / "photos")
    with pytest.raises(data.DataError, match="lies inside the dataset folder"):
        data.download(str(root), root)
    assert sorted(p.name for p in root.iterdir()) == ["class0", "class1", "class2"]


def test_image_folder_class(tmp_path):
    root = random_folder(tmp_path / "f", n_per_class=3, size=10)
    f = data.ImageFolder(root, image_size=8, cache_root=tmp_path / "cache")
    assert f.classes == ["class0", "class1", "class2"] and f.class_to_idx["class2"] == 2
    assert len(f) == 9 and f.images.shape == (9, 3, 8, 8)
    img, label = f[4]
    assert img.shape == (3, 8, 8) and label == 1 and f.samples[4][1] == 1
    assert json.loads((next((tmp_path / "cache" / "folders").iterdir()) / "manifest.json")
                      .read_text())["prepare"]["size"] == 8  # fmt: skip
