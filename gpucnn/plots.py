"""Pictures of a run, as PNG files (matplotlib, from the optional "plots" extra).

Curves of loss / accuracy / learning rate, the confusion matrix, a grid of test images with
their predictions (mistakes first), and the first conv layer's filters with the feature maps
they make of one image (the article's "feature map creation", shown on the trained model).
:func:`run_plots` draws all of them for an evaluated run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpucnn.backend import to_host

if TYPE_CHECKING:
    from gpucnn.train.recipe import Evaluation


def unavailable() -> str | None:
    """Why plots cannot be drawn here (matplotlib missing), or None when they can."""
    try:
        _pyplot()
    except ImportError as exc:
        return str(exc)
    return None


def run_plots(
    folder: str | Path, history: dict[str, list] | None, evaluation: Evaluation
) -> list[Path]:
    """Every picture of an evaluated run, in ``folder``: curves.png (when there is a
    history), confusion_matrix.png, predictions.png and feature_maps.png.

    Args:
        folder: where the PNG files go (made if missing).
        history: the Trainer's per-epoch history, or None.
        evaluation: what gpucnn.train.recipe.evaluate_checkpoint returned.

    Returns:
        The files written.
    """
    from gpucnn import data, nn

    folder = Path(folder)
    ev = evaluation
    files = []
    if history and history.get("epoch"):
        files.append(curves(history, folder / "curves.png", best_epoch=ev.best_epoch))
    cm = np.array(ev.metrics["confusion_matrix"])
    files.append(confusion(cm, ev.classes, folder / "confusion_matrix.png"))
    files.append(
        predictions(ev.images, ev.labels, ev.predictions, ev.classes, folder / "predictions.png")
    )
    first_conv = next((m for _, m in ev.model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None:
        x = data.normalize(ev.images[:1], ev.mean, ev.std)
        files.append(filters_and_maps(first_conv, ev.images[0], x, folder / "feature_maps.png"))
    return files


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


def curves(history: dict[str, list], path: str | Path, best_epoch: int | None = None) -> Path:
    """Loss, accuracy and learning rate per epoch; ``best_epoch`` (the one whose weights the
    best checkpoint holds) is marked on each panel."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        if best_epoch:
            ax.axvline(best_epoch, color="tab:green", ls="--", lw=1, label=f"best ({best_epoch})")
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


def mistakes_first(labels: np.ndarray, preds: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` images to show: every mistake first, then correct ones, each group in
    dataset order."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    return np.concatenate([np.flatnonzero(preds != labels), np.flatnonzero(preds == labels)])[:n]


def predictions(
    images: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    classes: list[str],
    path: str | Path,
    n: int = 32,
) -> Path:
    """A grid of ``n`` images titled "predicted (true)": the mistakes first (in red), then
    correct predictions (in black), each group in dataset order."""
    plt = _pyplot()
    labels, preds = np.asarray(labels), np.asarray(preds)
    shown = mistakes_first(labels, preds, n)
    wrong = np.flatnonzero(preds != labels)
    cols = 8
    rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.5 + 0.4), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= len(shown):
            continue
        i = shown[k]
        ax.imshow(images[i], cmap="gray")
        ok = preds[i] == labels[i]
        ax.set_title(
            f"{classes[preds[i]]} ({classes[labels[i]]})",
            fontsize=8,
            color="black" if ok else "red",
        )
    fig.suptitle(
        f"predicted (true): {len(wrong)} mistakes of {len(labels)} images, mistakes first in red",
        fontsize=9,
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
    fig, axes = plt.subplots(3, f, figsize=(f * 1.1 + 1.2, 3.8), squeeze=False)
    wmax = float(abs(w).max()) or 1.0
    mmax = float(abs(maps[:f]).max()) or 1.0
    shown = []
    for i in range(f):
        shown.append(axes[0, i].imshow(w[i], cmap="bwr", vmin=-wmax, vmax=wmax))
        shown.append(axes[1, i].imshow(maps[i], cmap="bwr", vmin=-mmax, vmax=mmax))
        shown.append(axes[2, i].imshow(np.maximum(maps[i], 0), cmap="viridis", vmin=0, vmax=mmax))
        for r in range(3):
            axes[r, i].axis("off")
    axes[0, 0].set_title("filters", fontsize=8, loc="left")
    axes[1, 0].set_title("feature maps", fontsize=8, loc="left")
    axes[2, 0].set_title("after ReLU", fontsize=8, loc="left")
    for r in range(3):  # one colour scale per row, shared by its panels
        fig.colorbar(shown[r], ax=list(axes[r]), fraction=0.02, pad=0.01)
    inset = fig.add_axes([0.95, 0.35, 0.08, 0.3])
    inset.imshow(image, cmap="gray")
    inset.axis("off")
    inset.set_title("input", fontsize=8)
    return _save(fig, Path(path))


def sweep_curves(histories: dict[str, dict[str, list]], path: str | Path) -> Path:
    """Validation loss and accuracy per epoch of every trial of a sweep, one line each."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, h in histories.items():
        axes[0].plot(h["epoch"], h["val_loss"], "-o", ms=3, label=name)
        axes[1].plot(h["epoch"], h["val_accuracy"], "-o", ms=3, label=name)
    for ax, title in zip(axes, ("validation loss", "validation accuracy"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if histories:
        axes[1].legend(fontsize=7)
    return _save(fig, Path(path))
