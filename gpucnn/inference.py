"""Inference from a trained checkpoint in two lines.

    model = gpucnn.load("runs/<run>/checkpoints/best.npz")
    model.predict(images)            # -> class indices (N,)
    model.predict(["cat.jpg", "dog.png"])   # image files, prepared as training prepared its own

``load`` rebuilds the network named in the checkpoint's config, loads and checks its weights,
puts it in eval mode and wraps it in a :class:`Predictor`, which applies the run's
normalisation (x / 255 for uint8 pixels, then (x - mean[c]) / std[c] per channel) so callers
pass raw images, and reads image files of any size and mode as the run prepared its images.
This module imports NumPy and gpucnn's own layers only; the checkpoint and dataset machinery
is imported when first needed (``load``; gpucnn.data.normalize, the loader's formula, on the
first uint8 batch).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from gpucnn.backend import get_backend, to_device, to_host
from gpucnn.grad_mode import no_grad
from gpucnn.nn import Module


class NonFiniteOutputError(ValueError):
    """The model produced NaN or infinite logits (non-finite weights, or an overflow)."""


class Predictor:
    """A model in eval mode plus what its inputs need: classes and normalisation constants.

    Args:
        module: the network; it is switched to eval mode (BatchNorm uses its running
            statistics, Dropout is the identity).
        classes: the class names, index i for output i.
        mean: mean of the training pixels scaled to [0, 1]: one value, or one per channel.
        std: their standard deviation, likewise.
        input_shape: one sample as the model takes it, (C, H, W), e.g. (1, 28, 28).
        batch_size: images per forward pass; any number of images is processed in chunks.
        config: the run's settings (informational; ``load`` fills it from the checkpoint).
        prepare: how the run prepared image files ("digits": gpucnn.predict's rule for
            MNIST-like data; "resize": gpucnn.data.images' rule, the default for colour).

    Images (every method): uint8 pixels 0..255 (other integer dtypes with values in that
    range too) or floats in [0, 1], shaped (N, C, H, W), or without the channel axis when
    C == 1: (N, H, W), or a single image (H, W) (a batch of one); or image files (a path or a
    list of paths), read and prepared as the run prepared its images.
    """

    def __init__(
        self,
        module: Module,
        classes: Sequence[str],
        mean: float,
        std: float,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        batch_size: int = 1000,
        config: dict[str, Any] | None = None,
        prepare: str | None = None,
    ) -> None:
        from gpucnn.data.normalization import as_normalization

        if not isinstance(module, Module):
            raise TypeError(f"Predictor: module must be a gpucnn nn.Module, got {type(module)}")
        if len(input_shape) != 3 or any(int(s) < 1 for s in input_shape):
            raise ValueError(f"Predictor: input_shape must be (C, H, W), got {input_shape!r}")
        try:
            norm = as_normalization(mean, std).for_channels(int(input_shape[0]))
        except ValueError as exc:
            raise ValueError(
                f"Predictor: need a finite mean and std > 0 per channel, got {mean!r}, {std!r} "
                f"({exc})"
            ) from None
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Predictor: batch_size must be an integer >= 1, got {batch_size!r}")
        self.module = module.eval()
        self.classes = tuple(classes)
        self.normalization = norm
        # one channel: the scalars (as runs of one channel record them); else per channel
        self.mean = norm.mean[0] if norm.channels == 1 else norm.mean
        self.std = norm.std[0] if norm.channels == 1 else norm.std
        self.input_shape = tuple(int(s) for s in input_shape)
        if prepare not in (None, "digits", "resize"):
            raise ValueError(f"Predictor: prepare must be 'digits' or 'resize', got {prepare!r}")
        self.prepare = prepare or ("digits" if self.input_shape[0] == 1 else "resize")
        self.batch_size = batch_size
        self.config = dict(config or {})
        out = tuple(module.output_shape(self.input_shape))
        if out != (len(self.classes),):
            raise ValueError(
                f"Predictor: the model maps {self.input_shape} to {out}, but there are "
                f"{len(self.classes)} classes"
            )

    # -- inputs ---------------------------------------------------------------------------
    def check_images(self, images: Any) -> np.ndarray:
        """``images`` as an (N, C, H, W) array of their own dtype, after checking shape,
        dtype and value range.

        Raises:
            ValueError: naming the shape or dtype given and the one expected.
        """
        if _are_files(images):
            images = self.read(images)
        a = np.asarray(images)
        c, h, w = self.input_shape
        want = f"(N, {c}, {h}, {w})" + (f", (N, {h}, {w}) or ({h}, {w})" if c == 1 else "")
        if a.ndim == 2 and c == 1:
            a = a[None, None]
        elif a.ndim == 3 and c == 1:
            a = a[:, None]
        elif a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or a.shape[1:] != (c, h, w):
            raise ValueError(
                f"images of shape {np.shape(images)} do not fit this model: expected {want} "
                f"(the {h}x{w} images it was trained on; resize them first)"
            )
        if a.dtype == np.bool_ or not (
            np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
        ):
            raise ValueError(
                f"images have dtype {a.dtype}; expected uint8 pixels (0..255) or floats in [0, 1]"
            )
        if a.size == 0:
            return a
        lo, hi = a.min(), a.max()
        if np.issubdtype(a.dtype, np.integer):
            if lo < 0 or hi > 255:
                raise ValueError(
                    f"{a.dtype} images must hold pixels in 0..255, got values in [{lo}, {hi}]"
                )
        elif not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError("images contain NaN or infinite values")
        elif lo < 0 or hi > 1:
            raise ValueError(
                f"float images must be scaled to [0, 1], got values in [{lo:g}, {hi:g}] "
                "(pass uint8 pixels, or divide by 255)"
            )
        return a

    def read(self, paths: Any) -> np.ndarray:
        """Image files as uint8 (N, C, H, W), prepared as the run prepared its images: for a
        model of digits ("digits"), gpucnn.predict.load_image's rule (grayscale, light strokes
        on dark, resized); else gpucnn.data.images' (RGB or grayscale, shorter side to the
        model's size, centre crop, EXIF orientation).

        Raises:
            ValueError: an image is refused (naming its path).
        """
        from gpucnn.data import images as image_files

        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        c, h, w = self.input_shape
        if h != w:
            raise ValueError(f"reading files needs a square input; this model takes {h}x{w}")
        if self.prepare == "digits":
            from gpucnn.predict import load_image

            return np.stack([load_image(p, h) for p in paths])[:, None]
        return np.stack([image_files.load(p, h, c) for p in paths])

    def normalise(self, images: Any) -> np.ndarray:
        """Images as the model takes them: float32 (N, C, H, W), (x - mean) / std with x
        scaled to [0, 1]."""
        return self._normalise(self.check_images(images))

    def _normalise(self, a: np.ndarray) -> np.ndarray:
        if np.issubdtype(a.dtype, np.integer):  # pixels: exactly as the run's loader did
            from gpucnn.data import normalize

            return normalize(a, self.normalization)
        x = a.astype(np.float32)  # already scaled to [0, 1]
        return self.normalization.apply(x)

    def _chunks(self, images: Any) -> Iterator[np.ndarray]:
        a = self.check_images(images)
        device = self.module.device
        for i in range(0, len(a), self.batch_size):
            x = to_device(self._normalise(a[i : i + self.batch_size]), device)
            with no_grad():  # inference: nothing kept for a backward that never comes
                out = self.module(x)
            yield to_host(out)

    # -- outputs --------------------------------------------------------------------------
    def logits(self, images: Any) -> np.ndarray:
        """The raw scores. Shape: images -> (N, K) float32, K = len(classes)."""
        parts = list(self._chunks(images))
        if not parts:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.concatenate(parts)

    def predict_proba(self, images: Any) -> np.ndarray:
        """Class probabilities (softmax of the logits). Shape: images -> (N, K) float32.

        Raises:
            NonFiniteOutputError: the model's outputs are NaN or infinite.
        """
        z = self._finite(self.logits(images))
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, images: Any) -> np.ndarray:
        """The most probable class of each image. Shape: images -> (N,) int64 class indices
        (``classes[i]`` names them).

        Raises:
            NonFiniteOutputError: the model's outputs are NaN or infinite.
        """
        return self._finite(self.logits(images)).argmax(axis=1).astype(np.int64)

    @staticmethod
    def _finite(z: np.ndarray) -> np.ndarray:
        if not np.isfinite(z).all():
            raise NonFiniteOutputError(
                "the model's outputs are NaN or infinite (are its weights finite?); "
                "refusing to report classes from them"
            )
        return z

    def __repr__(self) -> str:
        return (
            f"Predictor({type(self.module).__name__}, {len(self.classes)} classes, "
            f"input {self.input_shape}, mean={self.mean}, std={self.std})"
        )


def load(
    path: str | os.PathLike,
    device: str = "cpu",
    batch_size: int = 1000,
    model: str | None = None,
    dataset: str | None = None,
) -> Predictor:
    """A trained model from a checkpoint, ready to classify images.

    Args:
        path: a checkpoint .npz written by a training run (e.g. checkpoints/best.npz).
        device: "cpu", "cuda" or "auto" for the forward passes.
        batch_size: images per forward pass.
        model: the model's registry name, when the checkpoint's config lacks one.
        dataset: the dataset's name (classes and normalisation), likewise.

    Returns:
        A :class:`Predictor` in eval mode.

    Raises:
        CheckpointError: the file is unreadable, names no or an unknown model or dataset, or
            holds the weights of a different model.
    """
    from gpucnn import data, models
    from gpucnn.data.normalization import Normalization
    from gpucnn.train.checkpoint import load_checkpoint
    from gpucnn.train.errors import CheckpointError

    ckpt = load_checkpoint(path)
    names = {"model": model, "dataset": dataset}
    info = ckpt.config.get("data") if dataset is None else None
    for key in names:
        names[key] = names[key] or ckpt.config.get(key)
        if not names[key] and not (key == "dataset" and info):
            raise CheckpointError(
                f"{ckpt.path}: its config names no {key} (saved without a run config?); "
                f"pass it: gpucnn.load(path, {key}=...)"
            )
    try:
        if not isinstance(info, dict):  # a checkpoint of a named dataset, before per-channel
            info = data.describe(names["dataset"])
        c, h, w = (int(v) for v in info["shape"])
        norm = Normalization.from_dict(info["normalization"])
        module = models.build(
            names["model"], num_classes=len(info["classes"]), in_channels=c, input_size=h
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{ckpt.path}: {exc}") from exc
    ckpt.check_model(module)
    module.load_state_dict(ckpt.model_state())
    module.to(get_backend(device))
    prepare = "digits" if info.get("kind") == "idx" else "resize"
    return Predictor(
        module, info["classes"], norm.mean, norm.std, (c, h, w), batch_size, ckpt.config, prepare
    )


def _are_files(images: Any) -> bool:
    """Whether ``images`` names image files (a path, or a list of them) rather than pixels."""
    if isinstance(images, (str, os.PathLike)):
        return True
    return (
        isinstance(images, (list, tuple))
        and len(images) > 0
        and all(isinstance(p, (str, os.PathLike)) for p in images)
    )
