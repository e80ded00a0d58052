"""Transfer learning: reuse a trained network's features for a new task.

model = models.build("seed")
load_weights(model, "pretrained/best.npz")    # the features learned on the old task
replace_head(model, num_classes=5, rng=0)     # a fresh classifier for the new classes
freeze(model); unfreeze(model[-1])            # train only the head
opt = optim.Adam(model.parameters())          # frozen parameters get no gradient; skipped
"""

from __future__ import annotations

import os

from gpucnn import nn
from gpucnn.nn.init import RngLike
from gpucnn.train.checkpoint import load_checkpoint


def load_weights(model: nn.Module, path: str | os.PathLike, skip_head: bool = False) -> None:
    """Load a checkpoint's parameters and buffers into ``model``.

    Args:
        model: a model of the same architecture (the head may differ when skip_head).
        path: a checkpoint written by the Trainer or save_checkpoint.
        skip_head: leave the last Linear layer alone (its class count may differ).

    Raises:
        CheckpointError: unreadable, a newer format, or a different architecture.
    """
    ckpt = load_checkpoint(path)
    state = ckpt.model_state()
    if skip_head:
        head = _head_name(model)
        state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
        model.load_state_dict(state, strict=False)
        return
    ckpt.check_model(model)
    model.load_state_dict(state)


def _head_name(model: nn.Module) -> str:
    if not isinstance(model, nn.Sequential) or not isinstance(model[-1], nn.Linear):
        raise ValueError(
            f"the model's last layer must be a Linear head, got {type(model[-1]).__name__}"
            if isinstance(model, nn.Sequential)
            else "replace_head needs an nn.Sequential model"
        )
    return str(len(model) - 1)


def replace_head(model: nn.Sequential, num_classes: int, rng: RngLike = None) -> nn.Linear:
    """Swap the last Linear layer for a freshly initialised one with ``num_classes`` outputs.

    Returns:
        The new head.
    """
    name = _head_name(model)
    old: nn.Linear = model[-1]
    head = nn.Linear(old.in_features, num_classes, bias=old.bias is not None, rng=rng)
    head.to(device=model.device, dtype=old.weight.data.dtype)
    setattr(model, name, head)
    return head


def freeze(module: nn.Module) -> None:
    """requires_grad = False for every parameter: no gradient computed, optimizers skip them."""
    for p in module.parameters():
        p.requires_grad = False
        p.grad = None


def unfreeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad = True
