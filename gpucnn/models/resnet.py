"""ResNet (He, Zhang, Ren & Sun 2016) with BasicBlocks, adapted to 28×28 inputs."""

from __future__ import annotations

from gpucnn import nn
from gpucnn.nn import init
from gpucnn.nn.init import RngLike, as_rng


def basic_block(c_in: int, c_out: int, stride: int, rng: RngLike) -> nn.Sequential:
    """relu( bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x) ); the shortcut is the identity,
    or a 1×1 conv + BN projection when the stride or channel count changes.

    Shape: (N, c_in, H, W) -> (N, c_out, ceil(H / stride), ceil(W / stride)).
    """
    body = nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False, rng=rng),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False, rng=rng),
        nn.BatchNorm2d(c_out),
    )
    shortcut = None
    if stride != 1 or c_in != c_out:
        shortcut = nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False, rng=rng),
            nn.BatchNorm2d(c_out),
        )
    return nn.Sequential(nn.Residual(body, shortcut), nn.ReLU())


def resnet(
    num_classes: int = 10,
    in_channels: int = 1,
    rng: RngLike = None,
    widths: tuple[int, ...] = (64, 128, 256, 512),
    blocks: tuple[int, ...] = (2, 2, 2, 2),
) -> nn.Sequential:
    """Stem (3×3 conv, BN, ReLU; no 7×7 conv or max-pool, which would shrink a 28×28 digit
    to nothing), stages of BasicBlocks (the first stage keeps the size, each later one halves
    it with stride 2), global average pooling and a linear classifier. Conv weights are
    Kaiming-normal (fan_out, as torchvision's ResNet), BN starts at gamma 1, beta 0.

    Shape: (N, in_channels, H, W) -> (N, num_classes).
    """
    if len(widths) != len(blocks):
        raise ValueError(f"resnet: widths {widths} and blocks {blocks} differ in length")
    rng = as_rng(rng)
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False, rng=rng),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(),
    ]
    c = widths[0]
    for stage, (width, n_blocks) in enumerate(zip(widths, blocks, strict=True)):
        for b in range(n_blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            layers.append(basic_block(c, width, stride, rng))
            c = width
    layers += [nn.GlobalAvgPool2d(), nn.Linear(c, num_classes, rng=rng)]
    model = nn.Sequential(*layers)
    for _, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            init.kaiming_normal_(m.weight, rng, mode="fan_out")
    return model


def resnet18(
    num_classes: int = 10, in_channels: int = 1, rng: RngLike = None, input_size: int = 28
) -> nn.Sequential:
    """ResNet-18: BasicBlocks [2, 2, 2, 2] at widths 64, 128, 256, 512 (11.2 M parameters);
    global pooling makes it take any input size."""
    return resnet(num_classes, in_channels, rng)


def resnet_small(
    num_classes: int = 10, in_channels: int = 1, rng: RngLike = None, input_size: int = 28
) -> nn.Sequential:
    """A narrow ResNet for quick CPU runs: one BasicBlock per stage at widths 16, 32, 64."""
    return resnet(num_classes, in_channels, rng, widths=(16, 32, 64), blocks=(1, 1, 1))
