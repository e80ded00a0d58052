"""What this machine offers gpucnn: the versions of the stack, the devices, what ``--device auto``
picks and why, and the known traps of a GPU set-up (each with its fix).

Here, in gpucnn.backend, because finding out means importing CuPy and numba.cuda, which only
this package does; ``python -m gpucnn.doctor`` prints it. Nothing here raises for a missing or
broken GPU stack: that is what it reports. CuPy is imported only when a CuPy wheel is
installed, and the driver is asked through ``libcuda`` directly (ctypes), so a driver is found
(or found missing) whether or not CuPy works.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.metadata
import os
import platform
import sys
from typing import Any

import numpy as np

_CUPY_WHEEL_CUDA = {"cupy-cuda13x": 13, "cupy-cuda12x": 12, "cupy-cuda11x": 11}


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cupy_wheels() -> dict[str, str]:
    """The CuPy distributions installed (name -> version), without importing CuPy."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name == "cupy" or name.startswith("cupy-cuda"):
            found[name] = dist.version
    return found


def driver_cuda_version() -> tuple[int, int] | None:
    """The newest CUDA version the installed NVIDIA driver supports, e.g. (13, 0), asked of
    libcuda itself; None when no driver library loads."""
    names = {"win32": ["nvcuda.dll"], "darwin": []}.get(
        sys.platform, ["libcuda.so.1", "libcuda.so"]
    )
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int(0)
        try:
            if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
                continue
        except AttributeError:
            continue
        return version.value // 1000, (version.value % 1000) // 10
    return None


def _blas() -> list[str]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ["unknown (threadpoolctl is not installed)"]
    out = []
    for info in threadpool_info():
        if info.get("user_api") == "blas":
            out.append(
                f"{info.get('internal_api')} {info.get('version') or '?'} "
                f"({info.get('num_threads')} threads, "
                f"{info.get('threading_layer', '?')} threading, "
                f"{info.get('architecture') or '?'})"
            )
    return out or ["none found by threadpoolctl"]


def _cupy_runtime() -> dict[str, Any]:
    """CuPy's version and the CUDA runtime it was built for, when CuPy imports (else why not)."""
    if not cupy_wheels() and "cupy" not in sys.modules:
        return {"cupy": None}
    try:
        import cupy

        out: dict[str, Any] = {"cupy": cupy.__version__}
        runtime = cupy.cuda.runtime
        v = int(runtime.runtimeGetVersion())
        out["cuda runtime"] = f"{v // 1000}.{(v % 1000) // 10}" if v else "none (simulator)"
        return out
    except Exception as exc:
        return {"cupy": f"installed but not importable ({type(exc).__name__}: {exc})"}


def versions() -> dict[str, Any]:
    """Python, the platform, NumPy, Numba, numba-cuda, CuPy (wheel, version, CUDA runtime), the
    driver's CUDA version, the BLAS and its threads, and the optional Prefect and PyTorch."""
    driver = driver_cuda_version()
    out: dict[str, Any] = {
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "gpucnn": _dist_version("gpucnn") or "not installed (run from a checkout)",
        "numpy": np.__version__,
        "numba": _dist_version("numba"),
        "numba-cuda": _dist_version("numba-cuda"),
        "cupy wheels": ", ".join(f"{k} {v}" for k, v in cupy_wheels().items()) or None,
        "cuda driver": f"supports CUDA {driver[0]}.{driver[1]}" if driver else None,
        "blas": "; ".join(_blas()),
        "prefect": _dist_version("prefect"),
        "torch": _dist_version("torch"),
    }
    out.update(_cupy_runtime())
    return out


def cpu_device() -> dict[str, Any]:
    """The CPU: its model and the cores this process may use."""
    from gpucnn.backend.cpu import threads

    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                model,
            )
    except OSError:
        pass
    return {
        "device": "cpu",
        "name": model,
        "cores": threads.cores(),
        "logical cores": os.cpu_count(),
        "kernel threads": threads.get_num_threads(),
    }


def cuda_devices() -> list[dict[str, Any]]:
    """Each CUDA device CuPy sees (name, compute capability, memory, SMs); [] without one."""
    from gpucnn.backend import _cuda_missing

    if _cuda_missing() is not None:
        return []
    import cupy

    out = []
    for i in range(int(cupy.cuda.runtime.getDeviceCount())):
        props = cupy.cuda.runtime.getDeviceProperties(i)
        name = props["name"]
        out.append(
            {
                "device": f"cuda:{i}",
                "name": name.decode() if isinstance(name, bytes) else str(name),
                "compute capability": f"{props['major']}.{props['minor']}",
                "memory GiB": round(props["totalGlobalMem"] / 2**30, 1),
                "multiprocessors": props["multiProcessorCount"],
            }
        )
    return out


def auto_choice() -> tuple[str, str]:
    """(device, why): what ``get_backend("auto")`` picks here, and the reason."""
    from gpucnn.backend import _cuda_missing

    why = _cuda_missing()
    if why is None:
        return "cuda", "a GPU is visible to numba.cuda and CuPy can use it"
    return "cpu", f"cuda is unavailable: {why}"


@dataclasses.dataclass(frozen=True)
class Trap:
    """A known way a GPU set-up goes wrong: whether it is ``found`` here (None: cannot apply,
    e.g. no GPU package installed), what was seen, and the fix."""

    name: str
    found: bool | None
    seen: str
    fix: str

    @property
    def status(self) -> str:
        return {True: "FOUND", False: "clear", None: "n/a"}[self.found]


def traps() -> list[Trap]:
    """NumPy >= 2.5 beside numba-cuda, a CuPy wheel for the wrong CUDA major version (or two
    wheels), CUPY_TF32 (cuBLAS in TF32), and no driver where GPU packages are installed."""
    numba_cuda, wheels, driver = _dist_version("numba-cuda"), cupy_wheels(), driver_cuda_version()
    numpy_major_minor = tuple(int(p) for p in np.__version__.split(".")[:2])
    out = []
    if numba_cuda is None:
        out.append(Trap("NumPy >= 2.5 with numba-cuda", None, "numba-cuda is not installed", ""))
    else:
        bad = numpy_major_minor >= (2, 5)
        out.append(
            Trap(
                "NumPy >= 2.5 with numba-cuda",
                bad,
                f"numpy {np.__version__}, numba-cuda {numba_cuda}"
                + (": importing numba.cuda fails (np.row_stack was removed)" if bad else ""),
                "pip install 'numpy<2.5' (the gpu extras pin it)",
            )
        )
    fix_wheel = (
        "install the wheel for your driver's CUDA: pip install 'gpucnn[gpu]' (CUDA 13) or "
        "'gpucnn[gpu-cuda12]' (CUDA 12), after pip uninstall of the other cupy-cuda* wheel "
        "(or update the driver)"
    )
    if not wheels:
        out.append(Trap("CuPy for the wrong CUDA major version", None, "no CuPy installed", ""))
    elif len(wheels) > 1:
        out.append(
            Trap(
                "CuPy for the wrong CUDA major version",
                True,
                f"several CuPy wheels installed ({', '.join(wheels)}): they overwrite each other",
                fix_wheel,
            )
        )
    else:
        (name,) = wheels
        needs = _CUPY_WHEEL_CUDA.get(name)
        bad = needs is not None and driver is not None and driver[0] < needs
        seen = f"{name} (CUDA {needs or '?'}), driver supports CUDA " + (
            f"{driver[0]}.{driver[1]}" if driver else "? (no driver)"
        )
        out.append(Trap("CuPy for the wrong CUDA major version", bad, seen, fix_wheel))
    wants_gpu = bool(wheels) or numba_cuda is not None
    tf32 = os.environ.get("CUPY_TF32", "0") not in ("", "0")
    out.append(
        Trap(
            "CUPY_TF32 set",
            tf32 if wheels else None,
            f"CUPY_TF32={os.environ.get('CUPY_TF32', '')!r}: cuBLAS rounds float32 products to "
            "TF32 (about 3 decimal digits), and the GEMM kernels' check against it fails"
            if tf32
            else "CUPY_TF32 is not set: cuBLAS computes float32 products in float32",
            "unset CUPY_TF32",
        )
    )
    out.append(
        Trap(
            "no NVIDIA driver",
            (driver is None) if wants_gpu else None,
            "libcuda does not load"
            if driver is None
            else f"driver supports CUDA {driver[0]}.{driver[1]}",
            "install the NVIDIA driver (nvidia-smi must work), or train with --device cpu",
        )
    )
    return out
