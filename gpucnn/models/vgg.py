"""VGG-style network (Simonyan & Zisserman 2015) sized for 28×28 inputs."""

from __future__ import annotations

from gpucnn import nn
from gpucnn.models.seed import pooled_side
from gpucnn.nn.init import RngLike, as_rng

# Stacks of 3×3 convs ("same" padding) separated by 2×2 max-pools: 28 -> 14 -> 7 -> 3.
VGG_CONFIG: tuple[int | str, ...] = (32, 32, "M", 64, 64, "M", 128, 128, "M")


def vgg(
    num_classes: int = 10,
    in_channels: int = 1,
    rng: RngLike = None,
    config: tuple[int | str, ...] = VGG_CONFIG,
    batch_norm: bool = False,
    hidden: int = 256,
    dropout: float = 0.5,
    input_size: int = 28,
) -> nn.Sequential:
    """VGG's recipe at MNIST scale: only 3×3 convolutions (two stacked see 5×5, three 7×7,
    with fewer parameters and more nonlinearities), channels doubling after each pool, then
    a dropout-regularised classifier.

    Shape: (N, in_channels, input_size, input_size) -> (N, num_classes).
    """
    rng = as_rng(rng)
    layers: list[nn.Module] = []
    c, size = in_channels, input_size
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            size //= 2
            continue
        layers.append(nn.Conv2d(c, int(item), 3, padding="same", rng=rng))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(item)))
        layers.append(nn.ReLU())
        c = int(item)
    pooled_side(input_size, size, "vgg")
    layers += [
        nn.Flatten(),
        nn.Linear(c * size * size, hidden, rng=rng),
        nn.ReLU(),
        nn.Dropout(dropout, rng=rng),
        nn.Linear(hidden, num_classes, rng=rng),
    ]
    return nn.Sequential(*layers)
