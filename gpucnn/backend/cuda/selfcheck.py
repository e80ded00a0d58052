"""Kernel paths that check themselves on the device they run on, once per (path, shape, device).

A *path* is a family of kernels that stands in for a reference computation: the GEMM kernels
(gemm.py) for cuBLAS inside a captured CUDA graph, the direct convolution (direct.py) for
im2col + GEMM, the fused bias + ReLU + 2×2 max pool (fused.py) for the layers one by one, and
whatever comes next (a Winograd convolution registers itself the same way: ``register`` its
name, then route its launcher through ``run``). None of them has run on a real GPU before a
user's, so none is trusted on hope:

- the first time a path runs on a shape on a device, its launcher also computes the reference
  (cuBLAS for the products) on the same inputs and compares, in one device-to-host read;
- agreement is kept for the process (``CHECKS``): later calls on that (path, shape, device)
  run the path alone;
- disagreement switches the path off on that device for the process and logs one line (path,
  shape, device, which output, by how much, the tolerance). From then on the launcher
  computes through the reference instead (inside a capture: through capturable kernels, e.g.
  im2col + the GEMM kernels), or, for a path whose reference a capture refuses (the GEMM
  kernels: cuBLAS), raises :class:`KernelPathOff` inside a capture, which fails that capture
  and leaves the fit eager (gpucnn.train.graph says why in its one line).

A capture cannot read the device, so a shape met for the first time inside a capture raises
:class:`KernelPathOff` too; gpucnn's captured step never does, since each batch size's first
step runs uncaptured (the warm-up), where every shape of the step is checked.

Tolerance: for each output, max |path - reference| <= TOL * scale, where scale is what the
output's rounding is relative to: for a product (and a convolution) the largest entry of
|a| @ |b| (the sum of the magnitudes a float32 dot product rounds from; cancellation cannot
make it small), else the largest |reference|. TOL = 1e-4 is ~1700 float32 ulps (2^-24) of
that scale: summation orders differ by far less (~sqrt(K) ulps), a wrong index or a lost
partial sum by far more. Integer outputs (a max pool's argmax) must be equal.

Cost, once per (path, shape, device): the reference (one cuBLAS product for a GEMM, plus
|a| @ |b|), a few reductions and one host read (which waits for the device).
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpucnn.backend.cuda.launch import array_module, stream_capturing

log = logging.getLogger("gpucnn.backend")

TOL = 1e-4
MAX_VERDICTS = 4096  # kept verdicts (oldest agreements forgotten first: checked again on use)

__all__: list[str] = []  # nothing here is a kernel: the contract with the CPU is unchanged


class KernelPathOff(RuntimeError):
    """Inside a stream capture: a path switched off on this device whose reference a capture
    refuses, or a shape the path was never checked on (a capture cannot read the device)."""


@dataclass(frozen=True)
class Path:
    """A checked path: its name, what it is (plural: "the ... kernels") and what it is checked
    against, for the line a check logs."""

    name: str
    what: str
    reference: str


PATHS: dict[str, Path] = {}


def register(name: str, what: str, reference: str) -> Path:
    """Declare a path (a kernel family used in place of ``reference``); returns it."""
    PATHS[name] = Path(name, what, reference)
    return PATHS[name]


register("gemm", "the GEMM kernels (cuda/gemm.py)", "cuBLAS")
register("direct", "the direct convolution kernels (cuda/direct.py)", "im2col + cuBLAS")
register(
    "fused",
    "the fused bias + ReLU + 2x2 max pool kernels (cuda/fused.py)",
    "the bias add, max pool and ReLU kernels one by one",
)


@dataclass(frozen=True)
class Verdict:
    """One check: ``error`` is the largest max |path - reference| / scale over the outputs
    (``worst`` names that output), ``tol`` the tolerance it is held to."""

    path: str
    shape: tuple
    device: int
    error: float
    tol: float
    worst: str

    @property
    def ok(self) -> bool:
        return math.isfinite(self.error) and self.error <= self.tol

    def line(self) -> str:
        """One sentence: what was compared, where, and the result."""
        p = PATHS.get(self.path) or Path(self.path, f"the {self.path} kernels", "its reference")
        where = f"on device {self.device} at {self.path} {_shape_text(self.shape)}"
        if self.ok:
            return (
                f"{p.what} agree with {p.reference} {where}: error {self.error:.1e} "
                f"(tolerance {self.tol:.0e})"
            )
        return (
            f"{p.what} disagree with {p.reference} {where}: {self.worst} differs by "
            f"{self.error:.2e} of its scale (tolerance {self.tol:.0e}); {self.path} is "
            "switched off on this device for this process"
        )


def _shape_text(shape: tuple) -> str:
    return " ".join(str(s) for s in shape)


class Registry:
    """The verdicts of this process, by (path, shape, device), and the paths switched off."""

    def __init__(self) -> None:
        self._verdicts: dict[tuple, Verdict] = {}
        self._off: dict[tuple[str, int], Verdict] = {}
        self.reads = 0  # device-to-host reads the checks made (one per check)

    def verdict(self, path: str, shape: tuple, device: int) -> Verdict | None:
        return self._verdicts.get((path, shape, device))

    def off(self, path: str, device: int) -> Verdict | None:
        """The verdict that switched ``path`` off on ``device``, or None while it is on."""
        return self._off.get((path, device))

    def record(self, verdict: Verdict) -> Verdict:
        """Keep a verdict; a disagreement switches its path off on its device (one line)."""
        if len(self._verdicts) >= MAX_VERDICTS:
            self._verdicts.pop(next(iter(self._verdicts)))
        self._verdicts[(verdict.path, verdict.shape, verdict.device)] = verdict
        if verdict.ok:
            log.debug("%s", verdict.line())
        elif (verdict.path, verdict.device) not in self._off:
            self._off[(verdict.path, verdict.device)] = verdict
            log.warning("%s", verdict.line())
        return verdict

    def verdicts(self) -> list[Verdict]:
        return list(self._verdicts.values())

    def switched_off(self) -> list[Verdict]:
        return list(self._off.values())

    def forget(self) -> None:
        """Forget every verdict, switch every path back on and count reads from 0 (tests)."""
        self._verdicts.clear()
        self._off.clear()
        self.reads = 0


CHECKS = Registry()


def current_device() -> int:
    """CuPy's current CUDA device (0 where CuPy has no runtime to ask, as in the simulator)."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDevice())
    except Exception:
        return 0


def why_off(path: str) -> str | None:
    """The line that switched ``path`` off on the current device, or None while it is on."""
    verdict = CHECKS.off(path, current_device())
    return None if verdict is None else verdict.line()


Outputs = tuple  # a launcher's outputs, in order
Reference = Callable[[Callable[[Any, Any], Any]], tuple[Outputs, Callable[[], tuple]]]


def cublas(a: Any, b: Any) -> Any:
    """The reference product: CuPy's ``@`` (cuBLAS; NumPy's in the simulator)."""
    return operator.matmul(a, b)


def run(
    path: str,
    shape: tuple,
    fast: Callable[[], Outputs],
    reference: Reference,
    names: tuple[str, ...],
    product: Callable[[Any, Any], Any] | None = None,
) -> Outputs:
    """The outputs of ``path`` on ``shape``, checked on first use (see the module docstring).

    Args:
        path: a registered path's name.
        shape: what identifies the inputs' shapes, layouts and dtypes (hashable).
        fast: runs the path; returns its outputs (a tuple of arrays).
        reference: ``reference(product)`` computes the same outputs another way, with
            ``product`` for its matrix products, and returns (outputs, scales): ``scales()``
            gives one scale per floating output (what its rounding is relative to; None for
            an integer output, which must be equal), computed only for a check.
        names: the outputs' names (for the line a mismatch logs).
        product: the product a switched-off path computes its reference with (gemm.matmul:
            cuBLAS, or the GEMM kernels while a step is captured or warmed up); None when the
            reference needs cuBLAS, which a capture refuses (the GEMM path itself).

    Returns:
        The path's outputs (checked, or trusted), or the reference's (the path is off).

    Raises:
        KernelPathOff: inside a capture, for a path that is off and has no capturable
            reference, or a shape never checked.
    """
    capturing = stream_capturing()
    device = current_device()
    off = CHECKS.off(path, device)
    if off is not None:
        if product is not None:  # as a capture would run it (a warm-up checks its GEMMs)
            return reference(product)[0]
        if not capturing:
            return reference(cublas)[0]
        raise KernelPathOff(off.line())
    if CHECKS.verdict(path, shape, device) is not None:
        return fast()
    if capturing:
        raise KernelPathOff(
            f"{PATHS[path].what} were not checked on device {device} at {path} "
            f"{_shape_text(shape)} before this capture (a capture cannot read the device)"
        )
    got = fast()
    want, scales = reference(cublas)
    verdict = CHECKS.record(_compare(path, shape, device, got, want, scales(), names))
    return got if verdict.ok else want


def _compare(
    path: str, shape: tuple, device: int, got: Outputs, want: Outputs, scales: tuple, names: tuple
) -> Verdict:
    """Every output's error on the device, then one host read of them all."""
    xp = array_module(want[0])
    errors = []
    for g, w, s in zip(got, want, scales, strict=True):
        if s is None:  # integers: equal or not
            errors.append((g != w).any().astype(np.float64) * np.float64(1e30))
            continue
        g64, w64 = g.astype(np.float64), w.astype(np.float64)
        finite = xp.isfinite(w64)
        # a non-finite reference entry must be matched by the same non-finite value
        same = (g64 == w64) | (xp.isnan(g64) & xp.isnan(w64))
        diff = xp.where(finite, xp.abs(g64 - w64), xp.where(same, 0.0, np.inf))
        scale = xp.maximum(xp.asarray(s, dtype=np.float64), np.float64(1e-30))
        errors.append(diff.max() / scale if diff.size else xp.zeros((), np.float64))
    from gpucnn.backend import to_host

    host = to_host(xp.stack([xp.asarray(e, dtype=np.float64).reshape(()) for e in errors]))
    CHECKS.reads += 1
    host = np.where(np.isnan(host), np.inf, host)
    worst = int(np.argmax(host))
    return Verdict(path, shape, device, float(host[worst]), TOL, names[worst])


def finite_abs(a: Any) -> Any:
    """|a| with its non-finite entries as 0: a scale from the finite part of an input (a NaN
    in the data is compared entry by entry, never through the scale)."""
    xp = array_module(a)
    return xp.where(xp.isfinite(a), xp.abs(a), 0)


def abs_product_max(a: Any, b: Any) -> Any:
    """max of |a| @ |b| (cuBLAS): the scale a product's rounding is relative to (a 0-d array)."""
    xp = array_module(a)
    if a.size == 0 or b.size == 0:
        return xp.zeros((), dtype=a.dtype)
    return cublas(finite_abs(a), finite_abs(b)).max()


def max_abs(a: Any) -> Any:
    """max |a| over its finite entries (0 for an empty array), as a 0-d device array."""
    xp = array_module(a)
    return finite_abs(a).max() if a.size else xp.zeros((), dtype=a.dtype)
