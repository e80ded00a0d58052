"""A stand-in for CuPy under the simulator, so that the CUDA backend's whole path (layers,
functional ops, launchers, kernels, optimizer) runs on a machine without a GPU.

Its arrays are NumPy arrays of a subclass whose type lives in a module named "cupy", which is
how gpucnn tells device arrays from host arrays; every NumPy function it hands out returns
that subclass. The kernels run in Numba's simulator on them. It stands in only where real
CuPy is absent, and only in tests/backend/sim.
"""

from __future__ import annotations

import functools
import sys
import types

import numpy as np

HOST_READS = {"n": 0}  # device -> host transfers: get(), float(), int(), bool(), item()
SYNCS = {"n": 0}  # Stream.synchronize() calls: each a host wait on a GPU


class ndarray(np.ndarray):  # noqa: N801 - CuPy's name
    """A "device" array. The ways CuPy copies to the host (each a sync on a GPU) are counted."""

    def get(self) -> np.ndarray:
        HOST_READS["n"] += 1
        return np.array(self).view(np.ndarray)

    def _read(self, convert):
        HOST_READS["n"] += 1
        return convert(np.array(self).view(np.ndarray))

    def __float__(self):
        return self._read(float)

    def __int__(self):
        return self._read(int)

    def __bool__(self):
        return self._read(bool)

    def item(self, *args):
        return self._read(lambda a: a.item(*args))

    def tolist(self):
        return self._read(lambda a: a.tolist())


ndarray.__module__ = "cupy"


def _wrap(value):
    if isinstance(value, np.ndarray) and not isinstance(value, ndarray):
        return value.view(ndarray)
    if isinstance(value, np.generic):  # CuPy reductions give 0-d arrays, never scalars
        return np.asarray(value).view(ndarray)
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    return value


def _wrapped(fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        return _wrap(fn(*args, **kwargs))

    return call


def asarray(a, dtype=None):
    return np.array(np.asarray(a), dtype=dtype, copy=True).view(ndarray)


def asnumpy(a):
    if isinstance(a, ndarray):
        HOST_READS["n"] += 1
    return np.array(a).view(np.ndarray)


class Stream:
    """cupy.cuda.Stream as far as gpucnn uses it: a handle (``ptr``), ``use()`` and the
    ``with`` block that make it current, ``synchronize()`` (counted). The simulator runs every
    launch at once and in order, so there is nothing for a stream to order."""

    _made = 0

    def __init__(self, null: bool = False, non_blocking: bool = False) -> None:
        Stream._made += 1
        self.ptr = 0 if null else 0x5000 + Stream._made  # a distinct made-up handle
        self.non_blocking = non_blocking
        self._outer: list[Stream] = []

    def use(self) -> Stream:
        _CURRENT[0] = self
        return self

    def __enter__(self) -> Stream:
        self._outer.append(_CURRENT[0])
        return self.use()

    def __exit__(self, *exc) -> None:
        _CURRENT[0] = self._outer.pop()

    def synchronize(self) -> None:
        SYNCS["n"] += 1


_CURRENT = [Stream(null=True)]


def get_current_stream() -> Stream:
    return _CURRENT[0]


def install() -> types.ModuleType:
    """Register this module as ``cupy`` (when no real CuPy is importable) and return it."""
    module = types.ModuleType("cupy")
    module.__dict__.update(ndarray=ndarray, asarray=asarray, asnumpy=asnumpy, array=asarray)
    module.cuda = types.SimpleNamespace(Stream=Stream, get_current_stream=get_current_stream)

    def __getattr__(name):
        attr = getattr(np, name)
        return _wrapped(attr) if callable(attr) and not isinstance(attr, type) else attr

    module.__getattr__ = __getattr__
    sys.modules["cupy"] = module
    return module
