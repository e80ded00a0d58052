"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998) for 28×28 inputs."""

from __future__ import annotations

from gpucnn import nn
from gpucnn.models.seed import pooled_side
from gpucnn.nn.init import RngLike, as_rng


def lenet5(
    num_classes: int = 10, in_channels: int = 1, rng: RngLike = None, input_size: int = 28
) -> nn.Sequential:
    """C1 conv 5×5 → 6 (pad 2, so 28×28 plays the paper's 32×32), tanh, S2 average-pool 2;
    C3 conv 5×5 → 16, tanh, S4 average-pool 2; C5 fc 400→120, tanh; F6 fc 120→84, tanh;
    output fc 84→num_classes. Subsampling is average pooling, as in the paper (without its
    trainable per-map coefficient); the paper's RBF output layer is a linear layer here.

    Shape: (N, in_channels, S, S) -> (N, num_classes), S = input_size (C5 takes 16·k² for
    k = (S//2 - 4)//2: 5 for 28).
    """
    rng = as_rng(rng)
    side = pooled_side(input_size, (input_size // 2 - 4) // 2, "lenet5")
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2, rng=rng),  # -> (N,6,28,28)
        nn.Tanh(),
        nn.AvgPool2d(2),  # -> (N,6,14,14)
        nn.Conv2d(6, 16, 5, rng=rng),  # -> (N,16,10,10)
        nn.Tanh(),
        nn.AvgPool2d(2),  # -> (N,16,5,5)
        nn.Flatten(),
        nn.Linear(16 * side * side, 120, rng=rng),
        nn.Tanh(),
        nn.Linear(120, 84, rng=rng),
        nn.Tanh(),
        nn.Linear(84, num_classes, rng=rng),
    )
