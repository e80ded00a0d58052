from __future__ import annotations

import numpy as np
import pytest

from gpucnn import models, nn, optim
from gpucnn.train import CheckpointError, Trainer, freeze, load_weights, replace_head, unfreeze


def test_replace_head_freeze_and_fine_tune(tmp_path):
    base = models.build("seed", seed=0)
    t = Trainer(base, nn.CrossEntropyLoss(), optim.Adam(base.parameters()), progress=False)
    t.save_checkpoint(tmp_path / "pre.npz")

    model = models.build("seed", seed=1)
    load_weights(model, tmp_path / "pre.npz")
    for a, b in zip(model.parameters(), base.parameters(), strict=True):
        np.testing.assert_array_equal(a.data, b.data)
    head = replace_head(model, 5, rng=0)
    assert model[-1] is head and head.out_features == 5
    freeze(model)
    unfreeze(head)
    assert [p.requires_grad for p in model.parameters()] == [False] * 6 + [True, True]
    frozen = [p.data.copy() for p in model.parameters()[:6]]
    opt = optim.Adam(model.parameters(), lr=1e-2)
    crit = nn.CrossEntropyLoss()
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    y = np.arange(8) % 5
    for _ in range(3):
        model.zero_grad()
        crit(model(x), y)
        model.backward(crit.backward())
        opt.step()
    assert all(p.grad is None for p in model.parameters()[:6])
    for p, before in zip(model.parameters()[:6], frozen, strict=True):
        np.testing.assert_array_equal(p.data, before)
    assert model.num_parameters(trainable_only=True) == 128 * 5 + 5

    # the fine-tuned model's checkpoint loads into a 5-class model, and not into a 10-class one
    Trainer(model, crit, opt, progress=False).save_checkpoint(tmp_path / "ft.npz")
    with pytest.raises(CheckpointError, match="different model"):
        load_weights(models.build("seed"), tmp_path / "ft.npz")
    ten = models.build("seed", seed=3)
    load_weights(ten, tmp_path / "ft.npz", skip_head=True)
    np.testing.assert_array_equal(ten[0].weight.data, model[0].weight.data)


def test_replace_head_needs_a_linear_head():
    with pytest.raises(ValueError, match="last layer must be a Linear head, got ReLU"):
        replace_head(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), 3)
