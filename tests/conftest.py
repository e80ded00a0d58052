"""Shared fixtures: real MNIST, served on loopback as a mirror.

Where the real files come from, in order: the mirror GPUCNN_DATA_MIRROR names (`.ci/run`
serves the project's copy of MNIST that way), else a data cache that already holds verified
MNIST (GPUCNN_DATA_DIR, or ~/.cache/gpucnn). Tests that need real data skip, saying why,
without either. Both variables are taken out of the environment when the tests start, so no
other test (and no subprocess a test starts) downloads from them by accident.
"""

from __future__ import annotations

import gzip
import http.server
import os
import threading
from functools import partial

import pytest

SOURCE_MIRROR = os.environ.pop("GPUCNN_DATA_MIRROR", None) or None
SOURCE_DATA_DIR = os.environ.pop("GPUCNN_DATA_DIR", None) or None


SIMULATOR_TEST = "test_cuda_kernels_agree_with_the_cpu_in_the_simulator"
_simulator = None  # the module of that test, once collected


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected what they will
def pytest_collection_modifyitems(session, config, items):
    """The simulator's run of tests/backend/sim (test_cuda_simulator.py says why) goes last, and
    starts now, in the background, when it is selected and the suite will run."""
    global _simulator
    chosen = [item for item in items if item.name == SIMULATOR_TEST]
    if not chosen:
        return
    items.remove(chosen[0])
    items.append(chosen[0])
    if not config.option.collectonly:
        _simulator = chosen[0].module
        _simulator.start()


def pytest_sessionfinish(session, exitstatus):
    if _simulator is not None:
        _simulator.stop()


def _real_mnist(cache) -> dict:
    """The verified decompressed MNIST files, by key (downloaded into ``cache`` from the
    source mirror, or found in the source data cache)."""
    from gpucnn import data

    if SOURCE_MIRROR:
        return data.download("mnist", cache, [SOURCE_MIRROR])
    root = SOURCE_DATA_DIR or data.default_root()
    return data.verify_local("mnist", root)


@pytest.fixture(scope="session")
def mnist_mirror(tmp_path_factory):
    """(url, folder): real MNIST as a mirror serves it (.gz files and SHA256SUMS of their
    decompressed contents), on 127.0.0.1."""
    from gpucnn import data

    try:
        files = _real_mnist(tmp_path_factory.mktemp("mnist-source"))
    except (data.DataError, OSError, ValueError) as exc:
        pytest.skip(
            f"real MNIST not available ({exc}); set GPUCNN_DATA_MIRROR to a mirror of it, or "
            "GPUCNN_DATA_DIR to a cache holding it"
        )
    folder = tmp_path_factory.mktemp("mnist-mirror")
    spec = data.get_spec("mnist")
    sums = []
    for key, path in files.items():
        f = spec.files[key]
        (folder / f.remote).write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
        sums.append(f"{f.sha256}  {f.name}")
    (folder / "SHA256SUMS").write_text("\n".join(sums) + "\n")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = partial(Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", folder
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def mnist_root(mnist_mirror, tmp_path_factory):
    """A data folder holding verified real MNIST (downloaded once per session from the mirror)."""
    from gpucnn import data

    root = tmp_path_factory.mktemp("mnist-cache")
    data.download("mnist", root, [mnist_mirror[0]])
    return root
