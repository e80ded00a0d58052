"""Transfer learning without internet: features learned on digits 0-4 reused for digits 5-9.

    python examples/transfer_learning.py [--labelled 300] [--data-dir DIR] [--mirror URL]

1. Pretrain the seed CNN on MNIST digits 0-4 (all their training images).
2. Fine-tune: load those weights, replace the 5-way head with a fresh one for digits 5-9,
   freeze everything else, and train only the head on a few hundred labelled 5-9 images.
3. Baseline: the same network trained from scratch on the same few hundred images.
Both are tested on every 5-9 image of the MNIST test set.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpucnn import data, models, nn, optim  # noqa: E402
from gpucnn.train import Trainer, freeze, load_weights, replace_head, unfreeze  # noqa: E402

MEAN, STD = 0.1307, 0.3081


def subset(x, y, digits):
    keep = np.isin(y, digits)
    return x[keep], y[keep] - min(digits)


def loader(x, y, batch=64, shuffle=True, seed=0):
    return data.DataLoader(x, y, batch, shuffle=shuffle, seed=seed, mean=MEAN, std=STD)


def fit(model, x, y, epochs, lr, seed=0):
    trainer = Trainer(
        model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=lr), progress=False
    )
    trainer.fit(loader(x, y, seed=seed), epochs=epochs)
    return trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--labelled", type=int, default=300, help="labelled 5-9 images to learn from")
    ap.add_argument("--pretrain-epochs", type=int, default=2)
    ap.add_argument("--finetune-epochs", type=int, default=30)
    ap.add_argument(
        "--head-lr",
        type=float,
        default=1e-2,
        help="learning rate for the head alone (a 645-parameter linear model "
        "trains well at a higher rate than a whole network)",
    )
    ap.add_argument("--lr", type=float, default=1e-3, help="learning rate from scratch")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--mirror", action="append", default=None)
    ap.add_argument("--workdir", default="runs/transfer")
    ap.add_argument(
        "--pretrained", default=None, help="reuse this 0-4 checkpoint instead of pretraining again"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    x, y = data.load("mnist", "train", root=args.data_dir, mirrors=args.mirror)
    xt, yt = data.load("mnist", "test", root=args.data_dir, mirrors=args.mirror)
    x04, y04 = subset(x, y, [0, 1, 2, 3, 4])
    x59, y59 = subset(x, y, [5, 6, 7, 8, 9])
    xt59, yt59 = subset(xt, yt, [5, 6, 7, 8, 9])
    pick = np.random.default_rng(0).permutation(len(y59))[: args.labelled]
    few_x, few_y = x59[pick], y59[pick]
    test = loader(xt59, yt59, 1000, shuffle=False)

    t0 = time.perf_counter()
    pretrained = Path(args.pretrained) if args.pretrained else work / "pretrained-0to4.npz"
    if not args.pretrained:
        pre = models.build("seed", num_classes=5, seed=0)
        pretrainer = fit(pre, x04, y04, args.pretrain_epochs, 1e-3)
        pretrainer.save_checkpoint(pretrained)
    pre_time = time.perf_counter() - t0

    tuned = models.build("seed", num_classes=5, seed=1)
    load_weights(tuned, pretrained)
    replace_head(tuned, 5, rng=1)
    freeze(tuned)
    unfreeze(tuned[-1])
    tuned_acc = fit(tuned, few_x, few_y, args.finetune_epochs, args.head_lr).evaluate(test)[
        "accuracy"
    ]

    scratch = models.build("seed", num_classes=5, seed=1)
    scratch_acc = fit(scratch, few_x, few_y, args.finetune_epochs, args.lr).evaluate(test)[
        "accuracy"
    ]

    print(
        f"pretrained on {len(y04)} images of digits 0-4 for {args.pretrain_epochs} epochs "
        f"({pre_time:.0f} s)"
    )
    print(
        f"{args.labelled} labelled images of digits 5-9, {args.finetune_epochs} epochs, "
        f"tested on {len(yt59)} test images of 5-9:"
    )
    print(
        f"  fine-tuned head only ({tuned.num_parameters(trainable_only=True)} trainable "
        f"parameters): {tuned_acc:.4f}"
    )
    print(f"  from scratch ({scratch.num_parameters()} parameters):        {scratch_acc:.4f}")


if __name__ == "__main__":
    main()
