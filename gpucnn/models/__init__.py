"""Models by name: the article's seed CNN and the three networks it cites.

model = gpucnn.models.build("seed")           # or "lenet5", "vgg", "resnet18", "resnet"
model.summary((1, 28, 28))
"""

from __future__ import annotations

from collections.abc import Callable

from gpucnn import nn
from gpucnn.functional.checks import check_positive
from gpucnn.models.lenet import lenet5
from gpucnn.models.resnet import resnet, resnet18, resnet_small
from gpucnn.models.seed import seed_cnn, seed_cnn_bn
from gpucnn.models.vgg import vgg
from gpucnn.nn.init import RngLike

MODELS: dict[str, Callable[..., nn.Module]] = {
    "seed": seed_cnn,
    "seed-bn": seed_cnn_bn,
    "lenet5": lenet5,
    "vgg": vgg,
    "resnet18": resnet18,
    "resnet": resnet_small,
}


def build(
    name: str,
    num_classes: int = 10,
    in_channels: int = 1,
    seed: RngLike = None,
    input_size: int = 28,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: one of ``MODELS`` ("seed", "seed-bn", "lenet5", "vgg", "resnet18", "resnet").
        num_classes: outputs of the last layer.
        in_channels: channels of the input images (1 for MNIST, 3 for colour).
        seed: seed or Generator for the initial weights (None: fresh entropy).
        input_size: the side S of the (S, S) input images (28 for MNIST): the size of the
            first fully connected layer of seed, seed-bn, lenet5 and vgg follows from it.

    Returns:
        The model (an nn.Sequential), float32, on the CPU, in training mode. Its first layer
        has ``input_grad = False``: ``model.backward`` returns None.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    check_positive(name, "num_classes", num_classes)
    check_positive(name, "in_channels", in_channels)
    check_positive(name, "input_size", input_size)
    model = MODELS[name](
        num_classes=num_classes, in_channels=in_channels, rng=seed, input_size=input_size
    )
    # the images need no gradient: the first conv skips its input-gradient GEMM and col2im
    model[0].input_grad = False
    return model


__all__ = ["MODELS", "build", "lenet5", "resnet", "resnet18", "seed_cnn", "seed_cnn_bn", "vgg"]
