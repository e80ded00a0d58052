"""A fit names the device it trains on, whatever the device was asked as."""

from __future__ import annotations

import logging

import pytest

from gpucnn import nn, optim
from gpucnn.data import DataLoader
from gpucnn.train import Trainer
from tests.train.test_trainer import blobs, small_model


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_a_fit_logs_the_device_it_trains_on(device, caplog):
    x, y = blobs(40)
    model = small_model()
    t = Trainer(
        model, nn.CrossEntropyLoss(), optim.Adam(model.parameters()), device=device, workers=1
    )
    with caplog.at_level(logging.INFO, logger="gpucnn"):
        t.fit(DataLoader(x, y, 20, seed=0), epochs=1)
    assert "training on cpu" in [r.getMessage().split(" (")[0] for r in caplog.records]
