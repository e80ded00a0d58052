"""python -m gpucnn.predict: image files in, classes and probabilities out."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import models, nn, optim
from gpucnn.predict import load_image, main, predict_files
from gpucnn.train import Trainer

Image = pytest.importorskip("PIL.Image")


@pytest.fixture
def checkpoint(tmp_path):
    model = models.build("seed", seed=0)
    t = Trainer(
        model,
        nn.CrossEntropyLoss(),
        optim.Adam(model.parameters()),
        progress=False,
        config={"model": "seed", "dataset": "mnist"},
    )
    return t.save_checkpoint(tmp_path / "ck.npz")


def digit(tmp_path, name, light_background=False, size=(56, 56)):
    a = np.zeros((28, 28), np.uint8)
    a[6:22, 12:16] = 255  # a "1"
    if light_background:
        a = 255 - a
    path = tmp_path / name
    Image.fromarray(a).resize(size).save(path)
    return path


def test_images_are_normalised_to_light_strokes_on_dark(tmp_path):
    dark = load_image(digit(tmp_path, "a.png"))
    light = load_image(digit(tmp_path, "b.jpg", light_background=True))
    assert dark.shape == light.shape == (28, 28)
    assert dark.mean() < 127 and light.mean() < 127
    assert abs(int(dark[14, 14]) - int(light[14, 14])) < 40


def test_predict_files(tmp_path, checkpoint):
    paths = [str(digit(tmp_path, "a.png")), str(digit(tmp_path, "b.jpg", True))]
    results = predict_files(checkpoint, paths)
    for r in results:
        assert r["class"] in [str(d) for d in range(10)]
        assert 0.0 < r["probability"] <= 1.0
        assert len(r["top"]) == 3 and r["top"][0][1] >= r["top"][1][1] >= r["top"][2][1]


def test_cli_prints_one_line_per_image_and_fails_cleanly(tmp_path, checkpoint, capsys):
    png = digit(tmp_path, "a.png")
    assert main(["--checkpoint", str(checkpoint), str(png)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"{png}: ") and "top:" in out[0]
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert main(["--checkpoint", str(checkpoint), str(bad)]) == 1
    assert capsys.readouterr().err.startswith(f"error: {bad}: not a readable image")
