"""Pictures of a run, as PNG files (matplotlib, from the optional "plots" extra).

Curves of loss, accuracy and the learning rate as the batches had it (titled with the run and
its best epoch); the confusion matrix normalised per true class, its errors on their own
colour scale and the largest confusions in the title; a grid of test images with their
predictions (mistakes first); and the feature maps of one image through the network, each row
labelled with the layers that made it and its shape (the article's "feature map creation", on
the trained model). :func:`run_plots` draws all of them for an evaluated run.

This module knows nothing of how a run is evaluated (gpucnn.train.recipe calls it, never the
other way round): :class:`EvaluatedRun` names what the pictures need.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gpucnn.backend import to_host


class EvaluatedRun(Protocol):
    """What the pictures of an evaluated run need (gpucnn.train.recipe.Evaluation has it)."""

    metrics: dict[str, Any]  # its "confusion_matrix" (K, K) counts
    model: Any  # the evaluated nn.Module, in eval mode, on the host
    images: np.ndarray  # uint8 (N, C, H, W) (or (N, H, W))
    labels: np.ndarray
    predictions: np.ndarray
    classes: list[str]
    mean: Any  # one value, or one per channel
    std: Any
    best_epoch: int | None


def unavailable() -> str | None:
    """Why plots cannot be drawn here (matplotlib missing), or None when they can."""
    try:
        _figure()
    except ImportError as exc:
        return str(exc)
    return None


def run_plots(
    folder: str | Path,
    history: dict[str, list] | None,
    evaluation: EvaluatedRun,
    run_name: str | None = None,
) -> list[Path]:
    """Every picture of an evaluated run, in ``folder``: curves.png (when there is a
    history), confusion_matrix.png, predictions.png and feature_maps.png.

    Args:
        folder: where the PNG files go (made if missing).
        history: the Trainer's per-epoch history, or None.
        evaluation: the evaluated run (e.g. what gpucnn.train.recipe.evaluate_checkpoint
            returned).
        run_name: the run's name, for the titles.

    Returns:
        The files written.
    """
    from gpucnn import data

    folder = Path(folder)
    ev = evaluation
    files = []
    if history and history.get("epoch"):
        files.append(curves(history, folder / "curves.png", ev.best_epoch, run_name))
    cm = np.array(ev.metrics["confusion_matrix"])
    files.append(confusion(cm, ev.classes, folder / "confusion_matrix.png", run_name))
    files.append(
        predictions(ev.images, ev.labels, ev.predictions, ev.classes, folder / "predictions.png")
    )
    x = data.normalize(ev.images[:1], ev.mean, ev.std)
    if feature_stages(ev.model, x):
        files.append(feature_maps(ev.model, ev.images[0], x, folder / "feature_maps.png"))
    return files


def _figure(**kwargs: Any) -> Any:
    """A matplotlib Figure of its own: drawn and saved without pyplot, so making one opens no
    window, needs no GUI backend and leaves the caller's pyplot (a notebook's inline figures)
    as it was; a notebook shows the returned Figure when it is a cell's value."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("plots need matplotlib: pip install 'gpucnn[plots]'") from exc
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)  # its own canvas: draws and saves PNGs, whatever pyplot's backend
    return fig


def picture(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """One image as imshow takes it, and its colour map: (H, W) with "gray" for one channel,
    (H, W, 3) in colour (None) for three. Shape: (H, W), (1, H, W) or (3, H, W)."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3:
        return a.transpose(1, 2, 0), None
    return a, "gray"


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.1)
    return path


# -- curves --------------------------------------------------------------------------------
def lr_points(history: dict[str, list]) -> tuple[np.ndarray, np.ndarray, str]:
    """(x in epochs, lr, how) to draw the learning rate the batches trained with; ``how`` is
    "per step", "per epoch" or "at each epoch's start" (a history without lr_end).

    Per step from ``step_lr`` when it holds every step of every epoch (step s of a run of S
    steps per epoch at x = (s + 1) / S, so an epoch's last step meets its loss and accuracy
    points); else each epoch from its first batch's lr (x = epoch - 1) to its last's
    (``lr_end``; x = epoch), e.g. for a history written before step_lr was recorded.
    """
    epochs = len(history["epoch"])
    steps = history.get("step_lr") or []
    if steps and len(steps) % epochs == 0:
        per_epoch = len(steps) // epochs
        return (np.arange(len(steps)) + 1) / per_epoch, np.asarray(steps, float), "per step"
    start = np.asarray(history["lr"], float)
    end = np.asarray(history.get("lr_end") or [math.nan] * epochs, float)
    how = "per epoch" if np.isfinite(end).any() else "at each epoch's start"
    end = np.where(np.isfinite(end), end, start)
    x = np.stack([np.arange(epochs), np.arange(epochs) + 1], axis=1).ravel()
    return x.astype(float), np.stack([start, end], axis=1).ravel(), how


def _lr_axis(ax: Any, values: np.ndarray) -> None:
    """Log scale with one labelled tick per decade when the lr spans more than a decade (a
    one-cycle or decayed run), else linear with a few short labels from 0."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size and positive.max() / positive.min() > 10:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, numticks=12))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}".replace("e-0", "e-")))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_ylim(0, 1.15 * (positive.max() if positive.size else 1.0))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))


def _best_summary(history: dict[str, list], best_epoch: int | None) -> str:
    if not best_epoch or best_epoch > len(history["epoch"]):
        return "no best epoch recorded"
    i = best_epoch - 1
    parts = [f"best epoch {best_epoch} of {len(history['epoch'])}"]
    for key, fmt in (("val_accuracy", "{:.2%}"), ("val_loss", "{:.4f}")):
        value = history.get(key, [math.nan] * (i + 1))[i]
        if value is not None and math.isfinite(value):
            parts.append(f"{key} {fmt.format(value)}")
    return ", ".join(parts)


def curves(
    history: dict[str, list],
    path: str | Path,
    best_epoch: int | None = None,
    run_name: str | None = None,
) -> Path:
    """:func:`curves_figure`, written to ``path`` (PNG); returns the path."""
    return _save(curves_figure(history, best_epoch, run_name), Path(path))


def curves_figure(
    history: dict[str, list], best_epoch: int | None = None, run_name: str | None = None
) -> Any:
    """Loss, accuracy and learning rate by epoch, titled with the run's name and its best
    epoch (the one whose weights the best checkpoint holds), which each panel marks.

    The learning rate is the one the batches trained with, per step when the history has
    ``step_lr`` (so a one-cycle run shows its rise and fall; see :func:`lr_points`), on a log
    scale with a labelled tick per decade when it spans more than a decade.

    Returns:
        The matplotlib Figure (three Axes: loss, accuracy, learning rate).
    """
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    epochs = history["epoch"]
    fig = _figure(figsize=(14, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    for split, style in (("train", "-o"), ("val", "-s")):
        losses = history.get(f"{split}_loss", [])
        if any(v is not None and math.isfinite(v) for v in losses):
            axes[0].plot(epochs, losses, style, label=split, ms=3)
            axes[1].plot(epochs, history[f"{split}_accuracy"], style, label=split, ms=3)
    x, lr, how = lr_points(history)
    finite = lr[np.isfinite(lr)]
    path_of_lr = "constant" if finite.size and finite.min() == finite.max() else ""
    if finite.size and not path_of_lr:
        peak = f" → max {finite.max():.2g}" if finite.max() > max(finite[0], finite[-1]) else ""
        path_of_lr = f"{finite[0]:.2g}{peak} → {finite[-1]:.2g}"
    axes[2].plot(x, lr, "-", color="tab:purple", lw=1.6, label=f"lr {path_of_lr}".strip())
    _lr_axis(axes[2], lr)
    axes[1].yaxis.set_major_formatter(PercentFormatter(1.0))
    titles = ("loss", "accuracy", f"learning rate ({how})")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        if best_epoch:
            ax.axvline(best_epoch, color="tab:green", ls="--", lw=1, label=f"best ({best_epoch})")
    for ax in axes:
        ax.legend(fontsize=9)
    fig.suptitle(f"{run_name or 'training run'}: {_best_summary(history, best_epoch)}")
    return fig


# -- confusion matrix ----------------------------------------------------------------------
def top_confusions(cm: np.ndarray, classes: list[str], n: int = 3) -> list[tuple[str, str, int]]:
    """The ``n`` largest off-diagonal counts as (true class, predicted class, count), largest
    first (ties in row-major order); zeros are not confusions."""
    off = np.array(cm, dtype=np.int64, copy=True)
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:n]
    pairs = [np.unravel_index(i, off.shape) for i in order]
    return [(classes[i], classes[j], int(off[i, j])) for i, j in pairs if off[i, j] > 0]


def confusion(
    cm: np.ndarray, classes: list[str], path: str | Path, run_name: str | None = None
) -> Path:
    """:func:`confusion_figure`, written to ``path`` (PNG); returns the path."""
    return _save(confusion_figure(cm, classes, run_name), Path(path))


def confusion_figure(cm: np.ndarray, classes: list[str], run_name: str | None = None) -> Any:
    """The confusion matrix, true class by row, predicted class by column, each row normalised
    by its class's count: the errors (off the diagonal) coloured on their own scale, up to the
    largest error share, so they stand out rather than vanish beside the diagonal; every
    non-zero count written in its cell, the diagonal's with its recall; the accuracy and the
    largest confusions in the title."""
    from matplotlib.ticker import PercentFormatter

    cm = np.asarray(cm, dtype=np.int64)
    k = len(cm)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    diagonal = np.eye(k, dtype=bool)
    errors = np.ma.masked_where(diagonal, share)
    top = float(errors.max()) if errors.count() and errors.max() > 0 else 1.0
    side = min(4.0 + 0.55 * k, 14.0)
    fig = _figure(figsize=(side + 1.6, side), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(errors, cmap="Reds", vmin=0, vmax=top)
    ax.imshow(np.ma.masked_where(~diagonal, share), cmap="Greys", vmin=0, vmax=4)  # light
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, format=PercentFormatter(1.0, 1))
    bar.set_label("share of the true class predicted as the column (errors)")
    size = 10 if k <= 12 else 7
    for i in range(k):
        for j in range(k):
            if cm[i, j] == 0 and i != j:
                continue
            if i == j:  # the count and the class's recall, on a light grey
                ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.1%}", ha="center", va="center",
                        fontsize=size - 1.5)  # fmt: skip
                continue
            dark = share[i, j] > 0.55 * top
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=size,
                    fontweight="bold", color="white" if dark else "black")  # fmt: skip
    slant = max(len(c) for c in classes) > 3  # long names (Fashion-MNIST's) slant; digits not
    ax.set_xticks(range(k), classes, rotation=30 if slant else 0, ha="right" if slant else "center")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total, right = int(cm.sum()), int(np.trace(cm))
    head = f"{run_name + ': ' if run_name else ''}accuracy {right / max(total, 1):.2%}"
    head += f", {total - right} errors in {total} images"
    worst = top_confusions(cm, classes)
    tail = ", ".join(f"{t} as {p} ({n})" for t, p, n in worst) if worst else "no mistakes"
    ax.set_title(f"{head}\nmost confused (true as predicted): {tail}", fontsize=11)
    return fig


# -- predictions ---------------------------------------------------------------------------
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
    labels, preds = np.asarray(labels), np.asarray(preds)
    shown = mistakes_first(labels, preds, n)
    wrong = np.flatnonzero(preds != labels)
    cols = 8
    rows = max(1, -(-len(shown) // cols))
    width, wspace, hspace = cols * 1.15, 0.06, 0.25
    side = 0.98 * width / (cols + (cols - 1) * wspace)  # an image's side, in inches
    height = rows * side * (1 + hspace) + 0.45  # rows of square images under their titles
    fig = _figure(figsize=(width, height))
    axes = fig.subplots(rows, cols, squeeze=False)
    top = 1 - 0.45 / height
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=top, wspace=wspace, hspace=hspace)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= len(shown):
            continue
        i = shown[k]
        shown_image, cmap = picture(images[i])
        ax.imshow(shown_image, cmap=cmap)
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


# -- feature maps --------------------------------------------------------------------------
def _describe_layer(layer: Any) -> str:
    from gpucnn import nn

    if isinstance(layer, nn.Conv2d):
        k, st = layer.kernel_size, layer.stride
        text = f"Conv2d {layer.weight.shape[1]}→{layer.weight.shape[0]} {k}×{k}"
        return text + (f" stride {st}" if st != 1 else "")
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        return f"{type(layer).__name__} {layer.kernel_size}×{layer.kernel_size}"
    if any(isinstance(m, nn.Residual) for _, m in layer.named_modules()):
        return "residual block"
    return type(layer).__name__


def feature_stages(model: Any, x: np.ndarray, limit: int = 6) -> list[tuple[str, np.ndarray]]:
    """The feature maps of one image through the network: (label, maps (C, H, W)) per stage.

    A stage is a convolution with the BatchNorm, ReLU and Dropout right after it, a pooling
    layer, or a block (a residual block): for an nn.Sequential, each of its layers in turn
    until the maps stop being 4-D (Flatten, global pooling). The label names the layers (their
    index in the Sequential) and the maps' shape. More than ``limit`` stages: the first, the
    last and evenly spaced ones between. A model that is not a Sequential: its first Conv2d.
    """
    from gpucnn import nn

    if not isinstance(model, nn.Sequential):
        conv = next((m for _, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
        return [] if conv is None else [(_describe_layer(conv), to_host(conv(x))[0])]
    stages: list[tuple[str, np.ndarray]] = []
    open_conv: list[Any] | None = None  # [first index, last index, description, maps]

    def close() -> None:
        if open_conv is not None:
            first, last, text, maps = open_conv
            where = f"layer {first}" if first == last else f"layers {first}-{last}"
            stages.append((f"{where}: {text} → {tuple(maps.shape)}", maps))

    for i, layer in enumerate(model.children()):
        x = layer(x)
        if x.ndim != 4:
            break
        maps = to_host(x)[0]
        if open_conv is not None and isinstance(layer, (nn.BatchNorm2d, nn.ReLU, nn.Dropout)):
            extra = {nn.BatchNorm2d: " + BatchNorm", nn.ReLU: " + ReLU"}.get(type(layer), "")
            open_conv = [open_conv[0], i, open_conv[2] + extra, maps]
            continue
        close()
        open_conv = None
        if isinstance(layer, nn.Conv2d):
            open_conv = [i, i, _describe_layer(layer), maps]
        elif not isinstance(layer, (nn.BatchNorm2d, nn.ReLU, nn.Dropout)):
            stages.append((f"layer {i}: {_describe_layer(layer)} → {tuple(maps.shape)}", maps))
    close()
    if len(stages) > limit:
        keep = sorted(set(np.linspace(0, len(stages) - 1, limit).round().astype(int)))
        stages = [stages[i] for i in keep]
    return stages


def feature_maps(
    model: Any, image: np.ndarray, x: np.ndarray, path: str | Path, per_row: int = 8
) -> Path:
    """:func:`feature_maps_figure`, written to ``path`` (PNG); returns the path."""
    return _save(feature_maps_figure(model, image, x, per_row), Path(path))


def feature_maps_figure(model: Any, image: np.ndarray, x: np.ndarray, per_row: int = 8) -> Any:
    """One image through the trained network: the input and the first convolution's filters
    on top, then a row per stage (:func:`feature_stages`), each titled with its layers and the
    maps' shape and showing its ``per_row + 1`` most active channels (largest mean), on one
    colour scale per row (its bar on the right).

    The layout is computed, in inches, from the rows and cells it holds (no layout engine:
    quick to draw, and nothing left empty).

    Args:
        model: the trained network, in eval mode, on the host.
        image: the raw image (H, W) or (C, H, W) to show (in colour for 3 channels).
        x: the same image normalised, shaped (1, C, H, W) as the model takes it.
        per_row: the filters shown beside the input (and maps per row, one more).

    Returns:
        The matplotlib Figure; ``fig.texts`` holds the row titles, top row first.
    """
    from gpucnn import nn

    stages = feature_stages(model, x)
    conv = next((m for _, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    cols = per_row + 1  # the top row: the input, then the filters; the others: maps
    cell, gap, head, label, bar = 1.05, 0.12, 0.32, 0.16, 0.6  # inches
    width = 0.1 + cols * (cell + gap) + bar
    row_h = head + label + cell
    height = (len(stages) + 1) * row_h + 0.1
    fig = _figure(figsize=(width, height))

    def at(column: int, top: float, w: float = cell, h: float = cell) -> Any:
        left = 0.1 + column * (cell + gap)
        return fig.add_axes((left / width, 1 - (top + h) / height, w / width, h / height))

    def row_of(r: int, first: int, arrays: list, names: list, signed: bool, text: str) -> None:
        top = r * row_h
        fig.text(0.1 / width, 1 - (top + 0.22) / height, text, fontsize=9.5, ha="left")
        hi = max(float(np.abs(a).max()) for a in arrays) or 1.0
        for c, (a, name) in enumerate(zip(arrays, names, strict=True)):
            ax = at(first + c, top + head + label)
            im = ax.imshow(a, cmap="bwr" if signed else "magma", vmin=-hi if signed else 0, vmax=hi)
            ax.set_axis_off()
            if name:
                ax.set_title(name, fontsize=7, pad=2)
        cax = at(cols, top + head + label + 0.05, w=0.1, h=cell - 0.1)
        fig.colorbar(im, cax=cax).ax.tick_params(labelsize=7)

    ax = at(0, head + label)
    shown_image, cmap = picture(image)
    ax.imshow(shown_image, cmap=cmap)
    ax.set_axis_off()
    ax.set_title("input", fontsize=7, pad=2)
    about = f"input {tuple(np.shape(image))}"
    if conv is not None:
        weights = to_host(conv.weight.data)  # (F, C, k, k)
        n = min(len(weights), per_row)
        about += f"; the first conv's filters, {_describe_layer(conv)}: {n} of {len(weights)}"
        if weights.shape[1] == 3:  # colour filters as colours, each scaled to [0, 1]
            about += " (as RGB)"
            lo = weights.min(axis=(1, 2, 3), keepdims=True)
            span = np.maximum(weights.max(axis=(1, 2, 3), keepdims=True) - lo, 1e-12)
            rgb = ((weights - lo) / span).transpose(0, 2, 3, 1)
            fig.text(0.1 / width, 1 - 0.22 / height, about, fontsize=9.5, ha="left")
            for c in range(n):
                ax = at(1 + c, head + label)
                ax.imshow(rgb[c])
                ax.set_axis_off()
        else:
            w = weights[:, 0]  # (F, k, k), the first input channel
            row_of(0, 1, list(w[:per_row]), [""] * n, True, about)
    else:
        fig.text(0.1 / width, 1 - 0.22 / height, about, fontsize=9.5, ha="left")
    for r, (text, maps) in enumerate(stages, start=1):
        order = np.argsort(-maps.reshape(len(maps), -1).mean(axis=1), kind="stable")[:cols]
        names = [f"ch {c}" for c in order]
        most = f"{len(order)} most active of {len(maps)} channels"
        row_of(r, 0, list(maps[order]), names, bool((maps < 0).any()), f"{text}  ({most})")
    return fig


def sweep_curves(histories: dict[str, dict[str, list]], path: str | Path) -> Path:
    """Validation loss and accuracy per epoch of every trial of a sweep, one line each."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(figsize=(12, 4))
    axes = fig.subplots(1, 2)
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
