"""The backend contract: gpucnn.backend.cpu and gpucnn.backend.cuda export the same kernels
(functions, names and signatures), so the math above them never asks which device it is on."""

from __future__ import annotations

import inspect

import pytest

from gpucnn.backend import cpu

cuda = pytest.importorskip("gpucnn.backend.cuda", reason="numba.cuda is not importable here")


def test_both_backends_export_the_same_functions():
    assert sorted(cpu.__all__) == sorted(cuda.__all__)
    for module in (cpu, cuda):
        missing = [n for n in module.__all__ if not callable(getattr(module, n, None))]
        assert not missing, f"{module.__name__} lists {missing} but does not define them"


@pytest.mark.parametrize("name", sorted(cpu.__all__))
def test_twins_have_the_same_signature(name):
    ours, theirs = inspect.signature(getattr(cpu, name)), inspect.signature(getattr(cuda, name))
    strip = [p.replace(annotation=inspect.Parameter.empty) for p in ours.parameters.values()]
    strip_cuda = [p.replace(annotation=inspect.Parameter.empty) for p in theirs.parameters.values()]
    assert strip == strip_cuda, f"{name}: cpu{ours} but cuda{theirs}"


def test_cuda_launchers_live_beside_their_kernels():
    """Each launcher is defined in a family module that also holds *_kernel functions, as the
    CPU side keeps one file per family."""
    for name in cuda.__all__:
        module = inspect.getmodule(getattr(cuda, name))
        assert module in cuda.KERNEL_MODULES, f"{name} is defined in {module.__name__}"
        assert any(n.endswith("_kernel") for n in dir(module)), module.__name__
