"""The pictures of a run, by their structure: curves titled with the run and its best epoch, the
learning rate as the batches had it on readable ticks; a confusion matrix normalised per true
class, its errors on their own colour scale and named in the title; feature maps labelled by
layer and shape, without dead space; and plots.py knows nothing of the recipe that calls it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from gpucnn import data, models, nn, optim, plots
from gpucnn.nn import Parameter
from gpucnn.train.recipe import Evaluation

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, STEPS = 3, 10


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def one_cycle_history() -> dict[str, list]:
    """A 3-epoch history whose lr columns are OneCycleLR's own values, as a fit records them."""
    opt = optim.SGD([Parameter(np.zeros(1, np.float32))], lr=0.0)
    sched = optim.OneCycleLR(opt, 0.015, epochs=EPOCHS, steps_per_epoch=STEPS, pct_start=0.25)
    steps = [opt.lr] + [sched.step() for _ in range(EPOCHS * STEPS - 1)]
    return {
        "epoch": [1, 2, 3],
        "train_loss": [0.9, 0.1, 0.05],
        "train_accuracy": [0.74, 0.97, 0.985],
        "val_loss": [0.16, 0.05, 0.07],
        "val_accuracy": [0.95, 0.98, 0.975],
        "lr": steps[::STEPS],
        "lr_end": steps[STEPS - 1 :: STEPS],
        "step_lr": steps,
    }


def visible_tick_labels(ax, which="major") -> list[str]:
    ax.figure.canvas.draw()
    lo, hi = sorted(ax.get_ylim())
    ticks = ax.yaxis.get_major_ticks() if which == "major" else ax.yaxis.get_minor_ticks()
    return [
        t.label1.get_text() for t in ticks if lo <= t.get_loc() <= hi and t.label1.get_visible()
    ]


def evaluation(n=60, seed=0) -> Evaluation:
    g = np.random.default_rng(seed)
    labels = g.integers(0, 10, n)
    preds = labels.copy()
    preds[::3] = (preds[::3] + 1) % 10
    cm = np.zeros((10, 10), int)
    np.add.at(cm, (labels, preds), 1)
    return Evaluation(
        metrics={"confusion_matrix": cm.tolist()},
        model=models.build("seed", seed=0).eval(),
        images=g.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        labels=labels,
        predictions=preds,
        classes=[str(i) for i in range(10)],
        mean=0.1307,
        std=0.3081,
        best_epoch=2,
    )


def test_mistakes_come_first_in_dataset_order():
    labels = np.array([0, 1, 2, 3, 4, 5])
    preds = np.array([0, 9, 2, 9, 4, 9])
    assert plots.mistakes_first(labels, preds, 4).tolist() == [1, 3, 5, 0]


# -- curves --------------------------------------------------------------------------------
def test_curves_are_titled_with_the_run_and_its_best_epoch():
    fig = plots.curves_figure(one_cycle_history(), best_epoch=2, run_name="fast-seed")
    assert fig.get_suptitle() == (
        "fast-seed: best epoch 2 of 3, val_accuracy 98.00%, val_loss 0.0500"
    )
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "learning rate (per step)"]
    for ax in fig.axes:  # each panel marks the best epoch
        assert "best (2)" in [line.get_label() for line in ax.get_lines()]
        assert ax.get_xlabel() == "epoch"


def test_a_one_cycle_lr_is_drawn_per_step_rising_then_falling_on_decade_ticks():
    history = one_cycle_history()
    ax = plots.curves_figure(history, best_epoch=2).axes[2]
    lr = ax.get_lines()[0]
    np.testing.assert_array_equal(lr.get_ydata(), history["step_lr"])
    x = lr.get_xdata()
    assert x[STEPS - 1] == 1 and x[-1] == EPOCHS  # an epoch's last step meets its epoch
    peak = int(np.argmax(lr.get_ydata()))
    assert 0 < peak < len(x) - 1  # the rise and the fall are both there
    assert lr.get_label() == "lr 0.0006 → max 0.015 → 6e-08"
    assert ax.get_yscale() == "log"
    labels = visible_tick_labels(ax)
    assert 4 <= len(labels) <= 8 and all(re.fullmatch(r"1e-\d", t) for t in labels), labels
    assert not any(visible_tick_labels(ax, "minor"))  # no clutter between the decades


def test_a_constant_lr_has_a_linear_axis_from_zero_with_short_labels():
    history = one_cycle_history()
    history["step_lr"] = [1e-3] * len(history["step_lr"])
    history["lr"] = history["lr_end"] = [1e-3] * EPOCHS
    ax = plots.curves_figure(history).axes[2]
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
    assert ax.get_lines()[0].get_label() == "lr constant"
    assert all(len(t) <= 7 for t in visible_tick_labels(ax))
    assert plots.curves_figure(history).get_suptitle() == "training run: no best epoch recorded"


def test_a_history_without_step_lr_draws_each_epoch_from_start_to_end():
    history = one_cycle_history()
    del history["step_lr"]
    fig = plots.curves_figure(history)
    line = fig.axes[2].get_lines()[0]
    assert fig.axes[2].get_title() == "learning rate (per epoch)"
    np.testing.assert_array_equal(line.get_xdata(), [0, 1, 1, 2, 2, 3])
    want = np.ravel(list(zip(history["lr"], history["lr_end"], strict=True)))
    np.testing.assert_array_equal(line.get_ydata(), want)


# -- confusion matrix ----------------------------------------------------------------------
def test_the_confusion_matrix_shows_each_classes_errors_on_their_own_scale():
    cm = np.diag([980, 1130, 1000, 1010, 960, 880, 950, 1000, 960, 990])
    cm[9, 4], cm[7, 2], cm[5, 3], cm[4, 9], cm[3, 5] = 12, 8, 5, 3, 1
    classes = [str(i) for i in range(10)]
    fig = plots.confusion_figure(cm, classes, run_name="seed-run")
    ax = fig.axes[0]
    errors = ax.get_images()[0]  # the off-diagonal shares, normalised per true class
    share = cm / cm.sum(axis=1, keepdims=True)
    off = ~np.eye(10, dtype=bool)
    np.testing.assert_allclose(errors.get_array()[off], share[off])
    assert errors.get_array().mask[~off].all()
    assert errors.get_clim() == (0, pytest.approx(12 / 1002))  # the largest error: full colour
    title = ax.get_title()
    assert title.startswith("seed-run: accuracy 99.71%, 29 errors in 9889 images\n")
    assert title.endswith("most confused (true as predicted): 9 as 4 (12), 7 as 2 (8), 5 as 3 (5)")
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
    for i, j in zip(*np.nonzero(cm), strict=True):  # every non-zero count, readable
        assert texts[i, j].get_text().split("\n")[0] == str(cm[i, j])
        assert texts[i, j].get_fontsize() >= 8
    assert len(texts) == np.count_nonzero(cm)  # zeros are left blank
    assert texts[0, 0].get_text() == "980\n100.0%"  # the diagonal with its recall
    assert [t.get_rotation() for t in ax.get_xticklabels()] == [0] * 10  # digits stand up
    assert [t.get_text() for t in ax.get_xticklabels()] == classes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")
    assert "errors" in fig.axes[1].get_ylabel()  # the colour bar says what it measures


def test_top_confusions_name_true_then_predicted():
    cm = np.array([[5, 2, 0], [7, 5, 0], [0, 2, 9]])
    assert plots.top_confusions(cm, ["a", "b", "c"]) == [
        ("b", "a", 7),
        ("a", "b", 2),
        ("c", "b", 2),
    ]
    assert plots.top_confusions(np.diag([3, 3]), ["a", "b"]) == []


# -- feature maps --------------------------------------------------------------------------
def test_feature_maps_are_labelled_by_layer_with_their_shapes():
    ev = evaluation()
    x = data.normalize(ev.images[:1], ev.mean, ev.std)
    fig = plots.feature_maps_figure(ev.model, ev.images[0], x)
    assert [t.get_text() for t in fig.texts] == [
        "input (28, 28); the first conv's filters, Conv2d 1→32 3×3: 8 of 32",
        "layers 0-1: Conv2d 1→32 3×3 + ReLU → (32, 28, 28)  (9 most active of 32 channels)",
        "layer 2: MaxPool2d 2×2 → (32, 14, 14)  (9 most active of 32 channels)",
        "layers 3-4: Conv2d 32→64 3×3 + ReLU → (64, 14, 14)  (9 most active of 64 channels)",
        "layer 5: MaxPool2d 2×2 → (64, 7, 7)  (9 most active of 64 channels)",
    ]
    shapes = [im.get_array().shape for ax in fig.axes for im in ax.get_images()]
    want = [(28, 28)] + [(3, 3)] * 8 + [(28, 28)] * 9 + [(14, 14)] * 18 + [(7, 7)] * 9
    assert shapes == want  # the input, 8 filters, then 9 maps a row of the row's size
    grid = {round(ax.get_position().x0, 4) for ax in fig.axes if ax.get_images()}
    assert len(grid) == 9  # every row on the same 9 columns: none shorter than another


def test_a_deep_network_shows_at_most_six_stages_first_and_last_included():
    layers = [nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU()]
    for _ in range(7):
        layers += [nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()]
    layers += [nn.MaxPool2d(2), nn.GlobalAvgPool2d(), nn.Linear(2, 3)]
    model = nn.Sequential(*layers).eval()
    x = np.random.default_rng(0).normal(size=(1, 1, 12, 12)).astype(np.float32)
    labels = [label for label, _ in plots.feature_stages(model, x)]
    assert len(labels) == 6  # of 9 stages: 8 convolutions and the pooling
    assert labels[0] == "layers 0-2: Conv2d 1→2 3×3 + BatchNorm + ReLU → (2, 12, 12)"
    assert labels[1] == "layers 5-6: Conv2d 2→2 3×3 + ReLU → (2, 12, 12)"  # evenly spaced
    assert labels[-1] == "layer 17: MaxPool2d 2×2 → (2, 6, 6)"


def longest_blank_band(png: Path) -> float:
    """The widest band of pure white pixel rows or columns, as a fraction of the image's
    height or width (an empty gap between panels, or beside them)."""
    import matplotlib.image

    white = (matplotlib.image.imread(png)[..., :3] > 0.99).all(axis=2)
    widest = 0.0
    for blank in (white.all(axis=1), white.all(axis=0)):  # rows, then columns
        longest = run = 0
        for b in blank:
            run = run + 1 if b else 0
            longest = max(longest, run)
        widest = max(widest, longest / len(blank))
    return widest


def test_every_picture_of_a_run_is_drawn_without_dead_space(tmp_path):
    history = one_cycle_history()
    files = plots.run_plots(tmp_path / "plots", history, evaluation())
    names = sorted(f.name for f in files)
    assert names == ["confusion_matrix.png", "curves.png", "feature_maps.png", "predictions.png"]
    for f in files:
        assert f.stat().st_size > 1000
        assert longest_blank_band(f) < 0.035, f.name  # no empty gap between or beside panels


def test_unavailable_is_none_with_matplotlib():
    assert plots.unavailable() is None


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any level (TYPE_CHECKING and function bodies too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_plots_does_not_import_the_recipe_that_calls_it():
    assert "gpucnn.plots" in imported_modules(ROOT / "gpucnn" / "train" / "recipe.py")
    assert not {m for m in imported_modules(ROOT / "gpucnn" / "plots.py") if "train" in m}


def test_drawing_leaves_pyplots_backend_alone():
    """A notebook's inline figures keep working after gpucnn draws (it used to switch
    matplotlib to Agg for the whole process)."""
    import matplotlib

    was = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        fig = plots.curves_figure(one_cycle_history(), best_epoch=2)
        assert matplotlib.get_backend() == "svg"
        assert fig.canvas.get_supported_filetypes().get("png")  # and it still saves PNGs
    finally:
        matplotlib.use(was)
