"""python -m gpucnn.predict: image files in, classes and probabilities out."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

import gpucnn
from gpucnn import models, nn, optim
from gpucnn.predict import load_image, main, predict_files
from gpucnn.train import Trainer
from gpucnn.train.checkpoint import save_checkpoint

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


def seven():
    """A "7" as a stroke mask: 1.0 where the ink is, 0.0 elsewhere (64×64)."""
    ink = np.zeros((64, 64))
    ink[12:18, 14:50] = 1
    for r in range(18, 54):
        c = 49 - (r - 18) // 2
        ink[r, c - 5 : c + 1] = 1
    return ink


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


# -- drawings with an alpha channel ---------------------------------------------------------


def test_rgba_ink_on_transparent_reads_as_its_grayscale_twin(tmp_path):
    """A digit drawn in black on a transparent canvas (alpha is the only thing that shows it)
    must read as the same digit drawn in black on white, not as a blank image."""
    ink = seven()
    gray = (255 * (1 - ink)).astype(np.uint8)  # black on white
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    rgba = np.zeros((64, 64, 4), np.uint8)  # every pixel black; alpha = ink
    rgba[..., 3] = (255 * ink).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    want = load_image(tmp_path / "gray.png")
    got = load_image(tmp_path / "rgba.png")
    assert want.max() > 200  # the twin shows the digit, light on dark
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("colour", "hidden"),
    [
        ((220, 30, 30), (220, 30, 30)),  # alpha alone draws the digit
        ((255, 230, 0), (255, 255, 255)),  # light ink, hidden white
        ((40, 90, 255), (0, 0, 0)),
        ((220, 30, 30), (255, 255, 255)),
    ],
)
def test_coloured_ink_on_transparent_shows_the_digit(tmp_path, colour, hidden):
    """Red, yellow or blue ink; the transparent pixels carry whatever colour the app left."""
    ink = seven()
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = np.where(ink[..., None] > 0, colour, hidden)
    rgba[..., 3] = (255 * ink).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    got = load_image(tmp_path / "c.png").astype(float)
    mask = np.asarray(Image.fromarray((255 * ink).astype(np.uint8)).resize((28, 28))) > 127
    assert got[mask].mean() > 60 + got[~mask].mean()  # strokes light, background dark


def test_gray_alpha_and_opaque_rgba_images(tmp_path):
    ink = seven()
    la = np.zeros((64, 64, 2), np.uint8)
    la[..., 1] = (255 * ink).astype(np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    gray = (255 * (1 - ink)).astype(np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    opaque = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    want = load_image(tmp_path / "gray.png")
    np.testing.assert_array_equal(load_image(tmp_path / "la.png"), want)
    np.testing.assert_array_equal(load_image(tmp_path / "opaque.png"), want)


def test_cli_classifies_a_transparent_drawing_as_its_twin(tmp_path, checkpoint, capsys):
    ink = seven()
    Image.fromarray((255 * (1 - ink)).astype(np.uint8), "L").save(tmp_path / "gray.png")
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 3] = (255 * ink).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert main(["--checkpoint", str(checkpoint), str(tmp_path / "gray.png")]) == 0
    want = capsys.readouterr().out.split(": ", 1)[1]
    assert main(["--checkpoint", str(checkpoint), str(tmp_path / "rgba.png")]) == 0
    assert capsys.readouterr().out.split(": ", 1)[1] == want


# -- images that cannot be classified -------------------------------------------------------


def test_tiny_image_is_refused(tmp_path, checkpoint, capsys):
    a = np.zeros((5, 5), np.uint8)
    a[1:4, 2] = 255
    Image.fromarray(a).save(tmp_path / "tiny.png")
    assert main(["--checkpoint", str(checkpoint), str(tmp_path / "tiny.png")]) == 1
    err = capsys.readouterr().err
    assert "5x5" in err and "too small" in err and "8x8" in err


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_blank_image_is_refused(tmp_path, checkpoint, capsys, mode):
    Image.new(mode, (64, 64), (200,) * len(mode) if mode != "RGBA" else 0).save(
        tmp_path / "blank.png"
    )
    assert main(["--checkpoint", str(checkpoint), str(tmp_path / "blank.png")]) == 1
    err = capsys.readouterr().err
    assert "single shade" in err and "nothing is drawn" in err


def png_claiming(width, height):
    """A small, valid-looking PNG whose header claims width × height pixels."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_a_clean_error(tmp_path, checkpoint, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(20000, 20000))
    assert main(["--checkpoint", str(checkpoint), str(bomb)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bomb}: ") and "limit of" in err and "pixels" in err
    assert f"{Image.MAX_IMAGE_PIXELS:,}" in err


def test_image_above_the_pixel_limit_is_refused(tmp_path, checkpoint, capsys, monkeypatch):
    # 40×40 = 1600 pixels: above a limit of 1000 but under twice it, where Pillow only warns
    Image.fromarray(np.tile(np.arange(40, dtype=np.uint8), (40, 1))).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert main(["--checkpoint", str(checkpoint), str(tmp_path / "big.png")]) == 1
    err = capsys.readouterr().err
    assert "40x40" in err and "limit of 1,000 pixels" in err


def test_non_finite_probabilities_are_never_printed(tmp_path, capsys):
    model = models.build("seed", seed=0)
    good = save_checkpoint(
        tmp_path / "ok.npz", model, config={"model": "seed", "dataset": "mnist"}
    )  # save_checkpoint refuses NaN weights: poison a copy of the file instead
    arrays = dict(np.load(good))
    arrays = {
        k: np.full_like(v, np.nan) if k.startswith("model/") else v for k, v in arrays.items()
    }
    path = tmp_path / "nan.npz"
    np.savez(path, **arrays)
    assert main(["--checkpoint", str(path), str(digit(tmp_path, "a.png"))]) == 1
    out, err = capsys.readouterr()
    assert "nan" not in out.lower() and err.startswith("error: ")


# -- --top ----------------------------------------------------------------------------------


def run_cli(*args):
    root = Path(gpucnn.__file__).resolve().parents[1]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.run(
        [sys.executable, "-m", "gpucnn.predict", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_top_zero_is_a_usage_error(tmp_path, checkpoint):
    r = run_cli("--top", "0", "--checkpoint", checkpoint, digit(tmp_path, "a.png"))
    assert r.returncode == 2, r.stderr
    assert "--top" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_top_beyond_the_classes_is_a_usage_error(tmp_path, checkpoint, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--top", "11", "--checkpoint", str(checkpoint), str(digit(tmp_path, "a.png"))])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--top" in err and "10 classes" in err


def test_top_lists_every_class_when_asked(tmp_path, checkpoint, capsys):
    assert (
        main(["--top", "10", "--checkpoint", str(checkpoint), str(digit(tmp_path, "a.png"))]) == 0
    )
    assert len(capsys.readouterr().out.split("top: ")[1].split(", ")) == 10


# -- signals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_ends_predict_in_one_line_with_its_exit_status(tmp_path, checkpoint, sig, code):
    """As the training command: 128 + the signal, one line, no traceback. The image is a FIFO,
    so predict waits on reading it until the signal comes."""
    fifo = tmp_path / "digit.png"
    os.mkfifo(fifo)
    root = Path(gpucnn.__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpucnn.predict", "--checkpoint", str(checkpoint), str(fifo)],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    writer = None
    try:
        deadline = time.monotonic() + 60
        while writer is None:  # a non-blocking writer opens once predict has opened the FIFO
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.05)
        time.sleep(0.2)  # predict is reading it now (nothing comes)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if writer is not None:
            os.close(writer)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert err.strip() == "interrupted" and out == ""
