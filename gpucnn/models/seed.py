"""The article's network ("MyCNN"), the seed model of this project."""

from __future__ import annotations

from gpucnn import nn
from gpucnn.nn.init import RngLike, as_rng


def pooled_side(input_size: int, side: int, network: str) -> int:
    """``side``, the feature maps' side for an input of ``input_size``, when it is >= 1.

    Raises:
        ValueError: the maps would vanish (an input too small for the network).
    """
    if side < 1:
        raise ValueError(
            f"{network}: an input of {input_size}x{input_size} pixels is too small for it"
        )
    return side


def seed_cnn(
    num_classes: int = 10, in_channels: int = 1, rng: RngLike = None, input_size: int = 28
) -> nn.Sequential:
    """conv 1→32 3×3 pad 1, ReLU, max-pool 2; conv 32→64 3×3 pad 1, ReLU, max-pool 2;
    fc 3136→128, ReLU; fc 128→10 (for 28×28 inputs; the first fc takes 64·(S//4)² for S×S).

    Shape: (N, in_channels, S, S) -> (N, num_classes), S = input_size. Init: conv
    N(0, 0.01^2), linear Xavier-uniform, biases 0 (the article's).
    """
    rng = as_rng(rng)
    side = pooled_side(input_size, input_size // 4, "seed")
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1, rng=rng),  # (N,1,28,28) -> (N,32,28,28)
        nn.ReLU(),
        nn.MaxPool2d(2),  # -> (N,32,14,14)
        nn.Conv2d(32, 64, 3, padding=1, rng=rng),  # -> (N,64,14,14)
        nn.ReLU(),
        nn.MaxPool2d(2),  # -> (N,64,7,7)
        nn.Flatten(),  # -> (N,3136)
        nn.Linear(64 * side * side, 128, rng=rng),
        nn.ReLU(),
        nn.Linear(128, num_classes, rng=rng),
    )


def seed_cnn_bn(
    num_classes: int = 10,
    in_channels: int = 1,
    rng: RngLike = None,
    dropout: float = 0.25,
    input_size: int = 28,
) -> nn.Sequential:
    """The seed CNN regularised for augmentation runs: BatchNorm after each conv (whose bias
    BatchNorm's shift makes redundant), dropout after the features and before the classifier.

    Shape: (N, in_channels, S, S) -> (N, num_classes), S = input_size.
    """
    rng = as_rng(rng)
    side = pooled_side(input_size, input_size // 4, "seed")
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1, bias=False, rng=rng),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False, rng=rng),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(dropout, rng=rng),
        nn.Linear(64 * side * side, 128, rng=rng),
        nn.ReLU(),
        nn.Dropout(2 * dropout, rng=rng),
        nn.Linear(128, num_classes, rng=rng),
    )
