"""The seed CNN in PyTorch, layer for layer the same as gpucnn's "seed" model, and its training
loops for the side-by-side benchmarks (benchmarks/gpu_check.py).

``TorchTraining`` trains a PyTorch model on a dataset resident on its device, as gpucnn's
DataLoader does: each epoch a seeded permutation on the device, batches gathered from it, the
last one partial. Eager, or (``graph=True``, CUDA only) the whole step captured in one CUDA
graph as PyTorch's documentation shows (torch.cuda.graphs: warm-up steps on a side stream,
static input tensors, ``torch.optim.Adam(capturable=True)``, forward + backward + step
captured, each later batch copied into the static tensors and the graph replayed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before the capture (PyTorch's example)


def torch_seed_cnn():
    import torch

    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3136, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def copy_weights(torch_model: Any, gpucnn_model: Any) -> Any:
    """Give ``torch_model`` the parameters of ``gpucnn_model`` (same names, same shapes: the
    two seed models name their layers by position alike), so both start from one init."""
    import torch

    from gpucnn.backend import to_host

    ours = dict(gpucnn_model.named_parameters())
    theirs = dict(torch_model.named_parameters())
    if list(ours) != list(theirs):
        raise ValueError(f"parameter names differ: gpucnn {list(ours)}, torch {list(theirs)}")
    with torch.no_grad():
        for name, p in theirs.items():
            value = torch.as_tensor(to_host(ours[name].data))
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"{name}: gpucnn {tuple(value.shape)}, torch {tuple(p.shape)}")
            p.copy_(value)
    return torch_model


def normalized(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 (N, H, W) or (N, C, H, W) -> float32 (N, C, H, W), (x / 255 - mean) / std."""
    x = images.astype(np.float32) * np.float32(1 / 255)
    if x.ndim == 3:
        x = x[:, None]
    return (x - np.float32(mean)) / np.float32(std)


class TorchTraining:
    """Adam (AMSGrad, weight decay) training of ``model`` on data resident on ``device``.

    Args:
        model: a torch module (moved to ``device``).
        images, labels: uint8 (N, H, W) and integer (N,) host arrays, normalised and moved once.
        batch_size: B; an epoch is ceil(N / B) steps, the last one partial.
        device: "cuda" or "cpu" (the tests run the eager loop on the CPU).
        graph: capture the whole step into one CUDA graph (CUDA only): the first
            GRAPH_WARMUP_STEPS steps run eagerly on a side stream, the next is captured and
            replayed, later ones copy their batch into the static tensors and replay. A batch
            of another size (the tail) runs eagerly on the same parameters, gradients and
            optimizer state.
        scheduler: ``scheduler(optimizer)`` -> an lr scheduler stepped after every batch
            (eager only: a captured step would not see a Python float lr change).

    Each step also accumulates the loss and the correct count on the device (as gpucnn's
    Trainer records its step losses), read by nobody during the epoch.
    """

    def __init__(
        self,
        model: Any,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        device: str = "cuda",
        graph: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        amsgrad: bool = True,
        mean: float = 0.1307,
        std: float = 0.3081,
        seed: int = 0,
        scheduler: Callable[[Any], Any] | None = None,
    ) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        if graph and self.device.type != "cuda":
            raise RuntimeError(f"a whole-step CUDA graph needs torch on CUDA, not {device}")
        if graph and scheduler is not None:
            raise ValueError("a per-batch lr schedule is not captured: use graph=False")
        self.x = torch.as_tensor(normalized(images, mean, std)).to(self.device)
        self.y = torch.as_tensor(np.asarray(labels, np.int64)).to(self.device)
        self.batch_size, self.graph_mode = batch_size, graph
        self.mean, self.std = mean, std
        self.model = model.to(self.device)
        self.opt = torch.optim.Adam(
            self.model.parameters(),
            lr,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            capturable=graph,
        )
        self.scheduler = scheduler(self.opt) if scheduler is not None else None
        self.crit = torch.nn.CrossEntropyLoss()
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(seed)
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.graph: Any = None
        self.side: Any = None
        self.static_x: Any = None
        self.static_y: Any = None
        self.steps = 0  # steps taken, all epochs

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def _math(self, x: Any, y: Any) -> None:
        logits = self.model(x)
        loss = self.crit(logits, y)
        loss.backward()
        self.opt.step()
        self.loss_sum += loss.detach()
        self.correct += (logits.argmax(1) == y).sum()

    def _eager(self, idx: Any) -> None:
        # once a graph holds the gradients' memory they are zeroed in place, never dropped
        self.opt.zero_grad(set_to_none=self.graph is None)
        self._math(self.x[idx], self.y[idx])

    def _graphed(self, idx: Any) -> None:
        torch = self.torch
        if self.static_x is None:
            self.static_x, self.static_y = self.x[idx].clone(), self.y[idx].clone()
        else:
            torch.index_select(self.x, 0, idx, out=self.static_x)
            torch.index_select(self.y, 0, idx, out=self.static_y)
        if self.graph is not None:
            self.graph.replay()
            return
        if self.side is None:  # warm-up and capture on one side stream (its cuBLAS handle
            self.side = torch.cuda.Stream()  # and workspace made before the capture)
        if self.steps < GRAPH_WARMUP_STEPS:  # warm-up on the side stream
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                self.opt.zero_grad(set_to_none=True)
                self._math(self.static_x, self.static_y)
            torch.cuda.current_stream().wait_stream(self.side)
            return
        graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph, stream=self.side):
            self._math(self.static_x, self.static_y)
        self.graph = graph
        graph.replay()  # the capture ran nothing: this batch's step

    def epoch(self, steps: int | None = None) -> None:
        """One epoch (or its first ``steps`` batches), unsynchronised."""
        torch = self.torch
        self.model.train()
        n, b = self.num_samples, self.batch_size
        perm = torch.randperm(n, device=self.device, generator=self.gen)
        starts = range(0, n, b)
        if steps is not None:
            starts = starts[:steps]
        for start in starts:
            idx = perm[start : start + b]
            if self.graph_mode and len(idx) == b:
                self._graphed(idx)
            else:
                self._eager(idx)
            self.steps += 1
            if self.scheduler is not None:
                self.scheduler.step()

    def accuracy(self, images: np.ndarray, labels: np.ndarray, batch: int = 1000) -> float:
        """Test accuracy in eval mode (the host reads one number)."""
        torch = self.torch
        self.model.eval()
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        with torch.no_grad():
            for i in range(0, len(labels), batch):
                xb = torch.as_tensor(normalized(images[i : i + batch], self.mean, self.std))
                yb = torch.as_tensor(np.asarray(labels[i : i + batch], np.int64))
                logits = self.model(xb.to(self.device))
                correct += (logits.argmax(1) == yb.to(self.device)).sum()
        self.model.train()
        return int(correct) / len(labels)
