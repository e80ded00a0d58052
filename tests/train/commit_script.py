"""One short run of the recipe on real MNIST, for tests/train/test_commit.py to kill and resume.

    python -m tests.train.commit_script RUN_DIR DATA_DIR

GPUCNN_KILL_AT (gpucnn.train.faults) names the moment of the commit sequence at which the
process kills itself.
"""

from __future__ import annotations

import sys

from gpucnn.train.config import TrainConfig
from gpucnn.train.recipe import train

CONFIG = {"limit": 600, "epochs": 3, "batch_size": 50, "device": "cpu", "model": "seed-bn"}

if __name__ == "__main__":
    run_dir, data_dir = sys.argv[1], sys.argv[2]
    train(TrainConfig(**CONFIG, data_dir=data_dir), run_dir, progress=False)
