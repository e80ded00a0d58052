"""A small deterministic training run, killed and resumed by test_resume.py.

    python -m tests.train.resume_script OUTDIR EPOCHS [--resume]

Dropout (a generator in the model), BatchNorm (buffers), augmentation (the loader's
per-epoch generator), Adam with amsgrad, early stopping and the plateau scheduler all carry
state that a resume must restore exactly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from gpucnn import nn, optim
from gpucnn.data import DataLoader, RandomAffine
from gpucnn.train import EarlyStopping, ModelCheckpoint, PlateauScheduler, Trainer


def build():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, rng=0),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.3, rng=1),
        nn.Linear(8 * 6 * 6, 32, rng=2),
        nn.ReLU(),
        nn.Linear(32, 4, rng=3),
    )


def main() -> None:
    out, epochs, resume = Path(sys.argv[1]), int(sys.argv[2]), "--resume" in sys.argv
    g = np.random.default_rng(0)
    labels = g.integers(0, 4, 3000)
    images = (g.random((3000, 12, 12)) * 80 + labels[:, None, None] * 40).astype(np.uint8)
    train = DataLoader(
        images[:2400],
        labels[:2400],
        32,
        seed=5,
        mean=0.4,
        std=0.3,
        augment=RandomAffine(10, (0.1, 0.1)),
    )
    val = DataLoader(images[2400:], labels[2400:], 200, shuffle=False, mean=0.4, std=0.3)
    model = build()
    opt = optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4, amsgrad=True)
    callbacks = [
        EarlyStopping(patience=50),
        # asks for a 50% better val_loss every epoch, so it cuts the lr within the run
        PlateauScheduler(patience=0, factor=0.7, threshold=0.5),
        ModelCheckpoint(out),
    ]
    trainer = Trainer(model, nn.CrossEntropyLoss(), opt, callbacks=callbacks, progress=False)
    if resume and (out / "last.npz").exists():
        trainer.load_checkpoint(out / "last.npz")
    trainer.fit(train, val, epochs)
    np.savez(out / "final.npz", **model.state_dict(), lr=np.float64(opt.lr))


if __name__ == "__main__":
    main()
