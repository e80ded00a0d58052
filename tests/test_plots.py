"""The pictures of a run: drawn from an evaluation, mistakes first, best epoch marked."""

from __future__ import annotations

import numpy as np
import pytest

from gpucnn import models, plots
from gpucnn.train.recipe import Evaluation

pytest.importorskip("matplotlib")


def test_mistakes_come_first_in_dataset_order():
    labels = np.array([0, 1, 2, 3, 4, 5])
    preds = np.array([0, 9, 2, 9, 4, 9])
    assert plots.mistakes_first(labels, preds, 4).tolist() == [1, 3, 5, 0]


def test_run_plots_draws_every_picture(tmp_path):
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = g.integers(0, 10, 20)
    preds = labels.copy()
    preds[::3] = (preds[::3] + 1) % 10
    cm = np.zeros((10, 10), int)
    np.add.at(cm, (labels, preds), 1)
    ev = Evaluation(
        metrics={"confusion_matrix": cm.tolist()},
        model=models.build("seed", seed=0).eval(),
        images=images,
        labels=labels,
        predictions=preds,
        classes=[str(i) for i in range(10)],
        mean=0.1307,
        std=0.3081,
        best_epoch=2,
    )
    history = {
        "epoch": [1, 2, 3],
        "train_loss": [1.0, 0.5, 0.4],
        "train_accuracy": [0.5, 0.8, 0.9],
        "val_loss": [0.9, 0.6, 0.7],
        "val_accuracy": [0.6, 0.8, 0.7],
        "lr": [1e-3] * 3,
    }
    files = plots.run_plots(tmp_path / "plots", history, ev)
    names = sorted(f.name for f in files)
    assert names == ["confusion_matrix.png", "curves.png", "feature_maps.png", "predictions.png"]
    assert all(f.stat().st_size > 1000 for f in files)


def test_unavailable_is_none_with_matplotlib():
    assert plots.unavailable() is None
