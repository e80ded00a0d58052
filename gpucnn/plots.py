"""Pictures of a run, as PNG files (matplotlib, from the optional "plots" extra).

Curves of loss / accuracy / learning rate, the confusion matrix, a grid of test images with
their predictions, and the first conv layer's filters with the feature maps they make of one
image (the article's "feature map creation", shown on the trained model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gpucnn.backend import to_host


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never a window
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("plots need matplotlib: pip install 'gpucnn[plots]'") from exc
    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def curves(history: dict[str, list], path: str | Path) -> Path:
    """Loss, accuracy and learning rate per epoch."""
    plt = _pyplot()
    epochs = history["epoch"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for split, style in (("train", "-o"), ("val", "-s")):
        if any(v == v for v in history.get(f"{split}_loss", [])):
            axes[0].plot(epochs, history[f"{split}_loss"], style, label=split, ms=3)
            axes[1].plot(epochs, history[f"{split}_accuracy"], style, label=split, ms=3)
    axes[2].plot(epochs, history["lr"], "-o", ms=3)
    axes[2].set_yscale("log")
    for ax, title in zip(axes, ("loss", "accuracy", "learning rate"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    return _save(fig, Path(path))


def confusion(cm: np.ndarray, classes: list[str], path: str | Path) -> Path:
    """The confusion matrix, true class by row, predicted class by column."""
    plt = _pyplot()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    ax.set_title("confusion matrix")
    return _save(fig, Path(path))


def predictions(
    images: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    classes: list[str],
    path: str | Path,
    n: int = 32,
) -> Path:
    """A grid of images titled "predicted (true)", mistakes in red."""
    plt = _pyplot()
    n = min(n, len(images))
    cols = 8
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.5))
    for k, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(images[k], cmap="gray")
        ok = preds[k] == labels[k]
        ax.set_title(
            f"{classes[preds[k]]} ({classes[labels[k]]})",
            fontsize=8,
            color="black" if ok else "red",
        )
    return _save(fig, Path(path))


def filters_and_maps(conv: Any, image: np.ndarray, x: np.ndarray, path: str | Path) -> Path:
    """The first conv layer's filters and the feature maps each makes of one image.

    Args:
        conv: the trained nn.Conv2d.
        image: the raw image (H, W) to show.
        x: the same image normalised, shaped (1, C, H, W) as the model takes it.
    """
    plt = _pyplot()
    w = to_host(conv.weight.data)[:, 0]  # (F, k, k), first input channel
    maps = to_host(conv(x))[0]  # (F, OH, OW)
    f = min(len(w), 16)
    fig, axes = plt.subplots(3, f, figsize=(f * 1.1, 3.8))
    axes = np.atleast_2d(axes)
    for i in range(f):
        axes[0, i].imshow(w[i], cmap="bwr", vmin=-abs(w).max(), vmax=abs(w).max())
        axes[1, i].imshow(maps[i], cmap="viridis")
        axes[2, i].imshow(np.maximum(maps[i], 0), cmap="viridis")
        for r in range(3):
            axes[r, i].axis("off")
    axes[0, 0].set_title("filters", fontsize=8, loc="left")
    axes[1, 0].set_title("feature maps", fontsize=8, loc="left")
    axes[2, 0].set_title("after ReLU", fontsize=8, loc="left")
    inset = fig.add_axes([0.92, 0.35, 0.08, 0.3])
    inset.imshow(image, cmap="gray")
    inset.axis("off")
    inset.set_title("input", fontsize=8)
    return _save(fig, Path(path))
