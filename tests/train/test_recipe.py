"""The article's recipe on real MNIST."""

from __future__ import annotations

import json

import pytest

from gpucnn.train.recipe import TrainConfig, evaluate, train


@pytest.mark.slow
def test_one_epoch_of_the_seed_recipe_reaches_98_percent(mnist_root, tmp_path):
    config = TrainConfig(epochs=1, device="cpu", data_dir=str(mnist_root))
    summary = train(config, tmp_path, progress=False)
    assert summary["epochs"] == 1
    metrics = evaluate(config, summary["best_checkpoint"])
    assert metrics["samples"] == 10000
    assert metrics["accuracy"] >= 0.98, metrics["accuracy"]
    assert json.loads((tmp_path / "config.json").read_text())["model"] == "seed"
    assert (tmp_path / "checkpoints" / "last.npz").exists()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown model 'alexnet'"):
        TrainConfig(model="alexnet")
    with pytest.raises(ValueError, match="unknown dataset 'cifar100'; choose one of cifar10"):
        TrainConfig(dataset="cifar100")
    with pytest.raises(ValueError, match="image_size and channels prepare an image folder"):
        TrainConfig(dataset="mnist", image_size=32)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="unknown item 'blur'"):
        TrainConfig(augment="blur")


def test_config_round_trips_through_a_dict():
    c = TrainConfig(model="lenet5", limit=100, mirrors=["http://x/"])
    assert TrainConfig.from_dict({**c.to_dict(), "unknown": 1}) == c
