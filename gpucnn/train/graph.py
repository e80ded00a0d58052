"""One CUDA graph per training step: the step captured once per batch size, then replayed.

On a GPU an eager step is ~0.5 ms of kernels behind ~4 ms of Python launching them. Here the
whole step is captured into a CUDA graph (CudaBackend.capture) and each later batch is one
``graph.launch(stream)``: no Python per step beyond that call.

A graph replays its launches with the arguments they were captured with, so everything that
changes from step to step lives in device arrays, written by kernels inside the step:

    gather_batch         batch state[BATCH_STEP] of a device permutation -> static x, y
    model.zero_grad, forward, CrossEntropyLoss, backward
    gradient norm        sqrt(sum of squared gradients): gpucnn.train.steps.grad_norm
    optimizer.step()     device state (Adam/SGD use_device_state: t, lr, bias corrections)
    dropout_state_advance  per Dropout layer (GraphDropout reads its mask key on the device)
    correct += (argmax(logits) == y).sum()
    record_step(losses, state, loss), record_step(norms, state, norm)
    batch_state_advance

The epoch loop is the Trainer's (Trainer.run_epoch): this module supplies its steps (a step
runner, gpucnn.train.steps). Per epoch, on the host and outside any graph: the epoch's
permutation (the DataLoader's own,
``default_rng([seed, epoch]).permutation(n)``, so graph and eager see the same batches) is
written into the static device ``perm``; the batch state is reset (formulas.batch_state(epoch,
0)); the per-epoch accumulators (losses, norms, correct) are zeroed; and each Dropout layer
draws one seed from its own host generator (``layer.rng``, which checkpoints save, so a
resumed run draws what an uninterrupted one would) into its device dropout state. At the end
of the epoch the host reads losses, norms, the correct count and a parameters-finite flag in
one transfer: the epoch's only device-to-host read.

Batch sizes: a graph's static buffers x (R, C, H, W) and y (R,) fix its batch size, so there
is one graph for R = batch_size and, when the data do not divide evenly (and drop_last is
off), a second for the tail batch R = N mod batch_size. Capturing runs nothing, so the first
batch of each size runs the step eagerly (the warm-up: optimizer state made, every kernel
compiled, in capturable mode so that it computes with the kernels the graph holds), the next
one is captured and then launched, and later ones are launches. The host's own step counts
(the optimizer's and each parameter's, which checkpoints save: Optimizer.count_step) are
advanced by the host after each launch but the first: capturing the step advanced them once.

Differences from the eager steps (gpucnn.train.steps.EagerSteps), all by design:

- dropout masks come from the device state (formulas.dropout_step_key of the epoch's seed and
  the step), not from one host key per step: the same distribution, other masks;
- matrix products are the Numba GEMM kernels (cuBLAS is refused during capture): the same
  products up to float32 rounding;
- a non-finite loss is found when the epoch ends (NonFiniteLossError names the first bad
  step, as the eager path does) instead of every log_every steps;
- no running loss in the progress bar (reading it would sync).

Requirements (``unsupported`` names the first unmet one): the CUDA backend with stream
capture; a gpucnn DataLoader whose images and labels are on the device (shuffled or not,
drop_last either way) whose augmentation, if any, has a device-drawn form (a flip and/or
RandomAffine: ``device_augmentation``; drawn from a keyed hash, not the host generator); Adam or SGD
(switched to device state for the fit, and back at ``close``); CrossEntropyLoss; float32
parameters; and layers this module knows to be capturable (KNOWN_LAYERS). A capture that fails
(a host sync, an operation CUDA refuses) does not stop training: the rest of the fit runs the
same step uncaptured and ``fallback`` says why.

Trust: each graph's first launch is checked against one eager step from the same state
(gpucnn.train.graph_check: the same work launched by the host, the products by cuBLAS; the
parameters, buffers, loss, gradient norm and correct count must agree to its stated
tolerances, on copies, so the fit is unchanged by the check). A disagreement, or a launch that
fails, keeps the eager step's result and sends the fit on uncaptured with ``fallback`` saying
what differed and by how much. The GEMM kernels a graph holds are checked against cuBLAS per
shape in the warm-up (gpucnn.backend.cuda.selfcheck); where they disagreed, captures fail and
``unsupported`` says so. ``insist`` (the Trainer's ``cuda_graph=True``) raises instead of
falling back.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from gpucnn.backend import backend_of, formulas, is_device_array, to_host
from gpucnn.data import Compose, DataLoader, RandomAffine, RandomHorizontalFlip
from gpucnn.functional.checks import check_float
from gpucnn.losses import CrossEntropyLoss
from gpucnn.nn import (
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    GlobalAvgPool2d,
    GlobalMaxPool2d,
    Linear,
    MaxPool2d,
    ReLU,
    Residual,
    Sequential,
    Tanh,
)
from gpucnn.nn.module import Parameter
from gpucnn.optim import SGD, Adam
from gpucnn.train import graph_check
from gpucnn.train.callbacks import Callback
from gpucnn.train.errors import NonFiniteParametersError, TrainingError
from gpucnn.train.steps import EpochRecord, check_losses, check_parameters, parameters_finite
from gpucnn.train.steps import grad_norm as _grad_norm  # looked up per step (tests replace it)

log = logging.getLogger("gpucnn.train")

# layers whose forward and backward make no host read and pass no per-step host value to a
# kernel (exact types: a subclass may do anything)
KNOWN_LAYERS = (
    Sequential,
    Residual,
    Conv2d,
    BatchNorm2d,
    ReLU,
    Tanh,
    MaxPool2d,
    AvgPool2d,
    GlobalAvgPool2d,
    GlobalMaxPool2d,
    Flatten,
    Linear,
    Dropout,
)


class GraphCaptureError(TrainingError):
    """Capturing the step into a CUDA graph (or launching it) failed; the message says why."""


class GraphCheckError(GraphCaptureError):
    """The captured step disagreed with the eager step (or its first launch failed); the
    eager step's result was kept. The message says what differed and by how much."""


def unsupported(trainer: Any, loader: Any) -> str | None:
    """Why the Trainer's fit on ``loader`` cannot run as CUDA graphs (one sentence), or None.

    ``trainer`` needs ``backend``, ``model``, ``criterion`` and ``optimizer``.
    """
    backend = trainer.backend
    if backend.name != "cuda":
        return f"CUDA graphs need the cuda device, not {backend.name}"
    if not hasattr(backend.stream, "begin_capture"):
        return "this CuPy cannot capture a stream into a CUDA graph"
    checks = getattr(backend.kernels, "selfcheck", None)
    off = checks.why_off("gemm") if checks is not None else None
    if off is not None:
        return f"a captured step needs the GEMM kernels, and {off}"
    if not isinstance(loader, DataLoader):
        return f"the train loader is a {type(loader).__name__}, not a gpucnn DataLoader"
    if not (is_device_array(loader.images) and is_device_array(loader.labels)):
        return "the train loader's images and labels are not on the device"
    if loader.augment is not None and device_augmentation(loader.augment) is None:
        return f"the augmentation {loader.augment!r} has no device-drawn form (it runs eagerly)"
    if type(trainer.optimizer) not in (Adam, SGD):
        return f"{type(trainer.optimizer).__name__} has no device-state step (Adam and SGD do)"
    for cb in getattr(trainer, "callbacks", ()):
        if type(cb).on_batch_end is not Callback.on_batch_end and not cb.between_graphs:
            return (
                f"the callback {type(cb).__name__} acts after every batch, on the host (a "
                "callback that only sets optimizer.lr can say between_graphs = True)"
            )
    if type(trainer.criterion) is not CrossEntropyLoss:
        return f"the loss {type(trainer.criterion).__name__} is not CrossEntropyLoss"
    model = trainer.model
    if type(model) is Dropout:
        return "the model is a bare Dropout layer"
    for name, m in model.named_modules():
        if type(m) not in KNOWN_LAYERS:
            return f"layer {name or 'model'} ({type(m).__name__}) is not known to be capturable"
    for name, p in model.named_parameters():
        if np.dtype(p.data.dtype) != np.float32:
            return f"parameter {name} is {p.data.dtype}; a captured step gathers float32 batches"
    return None


def device_augmentation(augment: Any) -> dict[str, Any] | None:
    """The parameters of ``kernels.affine_params`` that draw ``augment`` on the device, or None
    when it has no such form. Supported: a RandomHorizontalFlip and/or one RandomAffine (or
    RandomRotation) after it, alone or in a Compose, as data.parse_recipe builds them. In a
    graph the draws come from the keyed hash of (the loader's seed, epoch, step), not from the
    loader's host generator: the same ranges, other draws than an eager epoch's."""
    parts = list(augment.transforms) if isinstance(augment, Compose) else [augment]
    params: dict[str, Any] = {
        "degrees": 0.0, "translate": (0.0, 0.0), "scale": (1.0, 1.0), "flip": 0.0
    }  # fmt: skip
    if parts and type(parts[0]) is RandomHorizontalFlip:
        params["flip"] = float(parts.pop(0).p)
    if parts and isinstance(parts[0], RandomAffine):
        a = parts.pop(0)
        params.update(degrees=a.degrees, translate=tuple(a.translate), scale=tuple(a.scale))
    if parts or params["degrees"] > 360:
        return None
    return params


class GraphDropout(Dropout):
    """Dropout for a captured step: the mask key of each step is derived on the device from a
    dropout state (uint64 [seed, step], ``state``), so a replayed graph draws a new mask each
    step. The fit writes the epoch's seed into ``state`` and advances it after each step.

    It shares the original layer's generator (``rng``, which a checkpoint saves under this
    layer's name) and holds no buffer, so checkpoints look the same with either in place.
    """

    def __init__(self, like: Dropout, backend: Any) -> None:
        super().__init__(like.p, rng=0)
        self.rng = like.rng
        self.training = like.training
        self.state = backend.asarray(formulas.dropout_state(0))
        self._on = False

    def forward(self, x: Any) -> Any:
        check_float("Dropout", x)
        self._on = self.training and self.p > 0
        if not self._on:
            return x
        return backend_of(x).kernels.dropout_fwd_state(x, self.p, self.state)

    def backward(self, dy: Any) -> Any:
        if not self._on:
            return dy
        return backend_of(dy).kernels.dropout_bwd_state(dy, self.p, self.state)


class _StepGraph:
    """The step for one batch size R: static buffers x (R, C, H, W) and y (R,); the warm-up,
    the capture, and the launches of the captured graph."""

    def __init__(self, fit: GraphTraining, rows: int) -> None:
        xp = fit.backend.xp
        self.fit, self.rows = fit, rows
        self.x = xp.zeros((rows, *fit.loader.images.shape[1:]), dtype=np.float32)
        self.y = xp.zeros(rows, dtype=np.int64)
        self.inv = xp.zeros((rows, 4), dtype=np.float32)  # augmentation: affine_warp's inputs
        self.shift = xp.zeros((rows, 2), dtype=np.float32)
        self.warm = False
        self.capture: Any = None  # the backend's Capture: the graph and the memory it uses
        self.updated: list[Parameter] = []  # what the optimizer updated in the step

    def run(self, index: int) -> None:
        """Step ``index`` of the epoch: warm-up (uncaptured), or the first capture checked
        against the eager step, or a launch; uncaptured once the fit has fallen back."""
        fit = self.fit
        if not (self.warm and fit.captures and fit.fallback is None):
            self.eager()
            self.warm = True
        elif self.capture is None:
            try:
                self.capture_step()
                fit.checks.append(self.checked_launch(index))
            except GraphCheckError as exc:  # the eager step's result stands
                fit.give_up(exc)
            except GraphCaptureError as exc:  # nothing ran
                fit.give_up(exc)
                self.eager()
        else:
            try:
                self.capture.graph.launch(fit.backend.stream)
            except Exception as exc:
                fit.give_up(
                    GraphCaptureError(
                        f"launching the captured step (batch {self.rows}) failed: "
                        f"{type(exc).__name__}: {exc}"
                    )
                )
                self.eager()
                return
            fit.optimizer.count_step(self.updated)  # the launch's step, on the host

    def eager(self) -> None:
        """The step, run now (with the kernels a capture would hold)."""
        with self.fit.backend.capturable():
            self.work()

    def capture_step(self) -> None:
        fit = self.fit
        self._before_capture = fit.optimizer.step_counts()
        try:
            with fit.backend.capture() as capture:
                self.work()
        except Exception as exc:
            fit.optimizer.set_step_counts(self._before_capture)  # nothing ran: counts go back
            raise GraphCaptureError(
                f"capturing the training step (batch {self.rows}) failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self.capture = capture

    def checked_launch(self, index: int) -> graph_check.StepCheck:
        """The first launch of the graph, checked against the eager step from the same state
        (gpucnn.train.graph_check). Agreement: the graph's step stands. Otherwise the eager
        step's result is put back and GraphCheckError says what differed."""
        fit = self.fit
        fit.optimizer.set_step_counts(self._before_capture)  # the eager step counts itself
        arrays = graph_check.step_arrays(fit)
        params = list(fit.model.parameters())
        before = graph_check.copies(arrays)
        graph_grads = [p.grad for p in params]  # the graph's own arrays, written at launch
        self.work()  # eager: launched by the host now, the products by cuBLAS
        eager, eager_grads = graph_check.copies(arrays), [p.grad for p in params]
        graph_check.put_back(arrays, before)
        try:
            self.capture.graph.launch(fit.backend.stream)
            result = graph_check.compare(
                fit, arrays, before, eager, (graph_grads, eager_grads), index, self.rows
            )
        except Exception as exc:
            graph_check.put_back(arrays, eager)
            raise GraphCheckError(
                f"launching the captured step (batch {self.rows}) failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            fit.check_reads += 1
        if not result.ok:
            graph_check.put_back(arrays, eager)
            raise GraphCheckError(result.line())
        for p, grad in zip(params, graph_grads, strict=True):
            p.grad = grad
        return result

    def work(self) -> None:
        """The step's work, every per-step value read from device arrays (see the module
        docstring)."""
        fit = self.fit
        k, loader, model, criterion = fit.backend.kernels, fit.loader, fit.model, fit.criterion
        if fit.augment is None and loader.normalization.uniform:
            k.gather_batch(
                loader.images, loader.labels, fit.perm, fit.batch_state, loader.batch_size,
                loader.mean, loader.std, self.x, self.y,
            )  # fmt: skip
            x = self.x
        else:  # as data.normalize: [0, 1] pixels, augmented, then normalised per channel
            k.gather_batch(
                loader.images, loader.labels, fit.perm, fit.batch_state, loader.batch_size,
                0.0, 1.0, self.x, self.y,
            )  # fmt: skip
            x = self.x
            a = fit.augment
            if a is not None:
                k.affine_params(
                    fit.batch_state, loader.seed, tuple(self.x.shape), a["degrees"],
                    a["translate"], a["scale"], a["flip"], self.inv, self.shift,
                )  # fmt: skip
                x = k.affine_warp(self.x, self.inv, self.shift)
            x = loader.normalization.apply(x, fit.norm_constants)
        model.zero_grad()
        logits = model(x)
        loss = criterion(logits, self.y)
        model.backward(criterion.backward())
        norm = _grad_norm(model, fit.backend.xp)
        self.updated = [p for p in fit.optimizer.params if p.requires_grad and p.grad is not None]
        fit.optimizer.step()
        for layer in fit.dropouts:
            k.dropout_state_advance(layer.state)
        fit.correct += (logits.argmax(axis=1) == self.y).sum()
        k.record_step(fit.losses, fit.batch_state, loss)
        k.record_step(fit.norms, fit.batch_state, norm)
        k.batch_state_advance(fit.batch_state)


class GraphTraining:
    """A Trainer's epochs as CUDA graphs: ``train_epoch`` stands in for
    ``Trainer.train_epoch`` (same arguments, same logs, same history and global_step
    updates: the Trainer's own epoch loop, ``Trainer.run_epoch``, with this object as its
    step runner); ``close()`` puts the model's Dropout layers and the optimizer's mode back.

    Args:
        trainer: the Trainer (its backend, model, criterion, optimizer, callbacks, progress,
            log_every, history and global_step are used).
        loader: the train DataLoader (``unsupported`` must return None for it).
        capture: False runs every step uncaptured (the same work, eagerly): the reference the
            graph path is tested against, and what a failed capture falls back to.
        insist: raise (a GraphCaptureError, a TrainingError) where a capture, its check
            against the eager step or a launch fails, instead of going on uncaptured; default:
            the Trainer's ``cuda_graph is True``.

    Attributes:
        fallback: None, or why the fit went on uncaptured (a capture or a launch that failed,
            or a captured step that disagreed with the eager step: what, and by how much).
        checks: the gpucnn.train.graph_check.StepCheck of each graph that passed its check.
        check_reads: device-to-host reads those checks made (one each).
    """

    def __init__(
        self, trainer: Any, loader: DataLoader, capture: bool = True, insist: bool | None = None
    ) -> None:
        reason = unsupported(trainer, loader)
        if reason is not None:
            raise TrainingError(f"cannot train with CUDA graphs: {reason}")
        self.trainer, self.loader, self.captures = trainer, loader, capture
        self.insist = getattr(trainer, "cuda_graph", "auto") is True if insist is None else insist
        self.backend = trainer.backend
        self.model, self.criterion = trainer.model, trainer.criterion
        self.optimizer = trainer.optimizer
        self.augment = device_augmentation(loader.augment) if loader.augment is not None else None
        # made before any capture: a captured step reads them from device memory
        self.norm_constants = loader.normalization.constants(self.backend.xp)
        self.fallback: str | None = None
        self.checks: list[graph_check.StepCheck] = []
        self.check_reads = 0
        xp = self.backend.xp
        self._was_device_state = self.optimizer.device_state
        if not self._was_device_state:
            self.optimizer.use_device_state()
        self._swaps = []  # (parent, name, original, variant)
        for _, parent in list(self.model.named_modules()):
            for name, child in parent.named_children():
                if type(child) is Dropout:
                    variant = GraphDropout(child, self.backend)
                    setattr(parent, name, variant)
                    self._swaps.append((parent, name, child, variant))
        self.dropouts = [variant for *_, variant in self._swaps]
        n, b = loader.num_samples, loader.batch_size
        self.full_batches = n // b
        tail = 0 if loader.drop_last else n % b
        self.sizes = np.array([b] * self.full_batches + ([tail] if tail else []), np.int64)
        self.perm = xp.zeros(n, dtype=np.int64)
        self.batch_state = self.backend.asarray(formulas.batch_state())
        self.stats = xp.zeros((2, len(self.sizes)), dtype=np.float32)
        self.losses, self.norms = self.stats[0], self.stats[1]
        self.correct = xp.zeros((), dtype=np.int64)
        self.steps = [_StepGraph(self, b)] + ([_StepGraph(self, tail)] if tail else [])

    def give_up(self, exc: GraphCaptureError) -> None:
        """Go on uncaptured, saying why (``fallback``); raise ``exc`` instead when insisting."""
        if self.insist:
            raise exc
        self.fallback = str(exc)

    # -- the step runner of Trainer.run_epoch (gpucnn.train.steps) -----------------------
    def begin_epoch(self, epoch: int, batches: int | None = None) -> None:
        """The epoch's host writes: permutation, batch state, accumulators, dropout seeds
        (``batches``: the loop's count, which ``sizes`` fixes)."""
        loader, backend, xp = self.loader, self.backend, self.backend.xp
        n = loader.num_samples
        rng = np.random.default_rng([loader.seed, loader.epoch])  # as DataLoader.__iter__
        order = rng.permutation(n) if loader.shuffle else np.arange(n)
        loader.epoch += 1
        xp.copyto(self.perm, backend.asarray(order.astype(np.int64)))
        xp.copyto(self.batch_state, backend.asarray(formulas.batch_state(epoch, 0)))
        self.stats.fill(0)
        self.correct.fill(0)
        for layer in self.dropouts:
            seed = int(layer.rng.integers(2**63))
            xp.copyto(layer.state, backend.asarray(formulas.dropout_state(seed)))

    def step(self, index: int, batch: Any = None) -> None:
        """Step ``index`` of the epoch, by the graph of its batch size (the batch is in
        device memory already: gathered inside the step)."""
        self.steps[0 if index < self.full_batches else 1].run(index)

    def note(self, index: int) -> str:
        return ""  # no running loss: reading it would sync

    def end_epoch(self, epoch: int) -> EpochRecord:
        """Losses, norms and the correct count in one device-to-host read, with whether every
        parameter is finite (the checks of the eager steps' end of an epoch)."""
        xp, nb = self.backend.xp, len(self.sizes)
        summary = xp.concatenate(
            [
                self.stats.reshape(-1).astype(np.float64),
                self.correct.astype(np.float64).reshape(1),
                parameters_finite(self.model, xp).astype(np.float64).reshape(1),
            ]
        )
        host = to_host(summary)  # the epoch's one read
        losses, norms = host[:nb].astype(np.float32), host[nb : 2 * nb].astype(np.float32)
        check_losses(losses, epoch)
        if not host[2 * nb + 1]:
            check_parameters(self.model, xp, epoch)  # names the parameter
            raise NonFiniteParametersError(epoch + 1, "?")
        return EpochRecord(losses, norms, self.sizes, int(host[2 * nb]))

    def train_epoch(self, loader: Any, epoch: int, epochs: int) -> dict[str, float]:
        """One epoch, as Trainer.train_epoch (same logs; step norms into the history): the
        Trainer's epoch loop with these steps."""
        if loader is not self.loader:
            raise ValueError("GraphTraining.train_epoch: not the loader it was built for")
        n = len(self.sizes)
        return self.trainer.run_epoch(range(n), n, epoch, epochs, self)

    def close(self) -> None:
        """Put the original Dropout layers back (in their places, in the current mode) and the
        optimizer's mode; drop the graphs (their memory goes back to the pool)."""
        for parent, name, original, variant in self._swaps:
            original.train(variant.training)
            setattr(parent, name, original)
        self._swaps, self.dropouts = [], []
        if not self._was_device_state:
            self.optimizer.use_device_state(False)
        self.steps = []
