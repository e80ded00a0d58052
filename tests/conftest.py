"""Shared fixtures: real MNIST from ../shared/data/mnist, served on loopback as a mirror."""

from __future__ import annotations

import http.server
import shutil
import threading
from functools import partial
from pathlib import Path

import pytest

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_mirror(tmp_path_factory):
    """(url, folder): the shared real MNIST files served on 127.0.0.1, as a mirror serves them."""
    if not (SHARED_MNIST / "SHA256SUMS").exists():
        pytest.skip(f"real MNIST not found at {SHARED_MNIST} (it lies beside the checkout in CI)")
    copy = tmp_path_factory.mktemp("mnist-mirror")
    for f in SHARED_MNIST.iterdir():
        shutil.copy(f, copy / f.name)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(copy)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", copy
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def mnist_root(mnist_mirror, tmp_path_factory):
    """A data folder holding verified real MNIST (downloaded once per session from the mirror)."""
    from gpucnn import data

    root = tmp_path_factory.mktemp("mnist-cache")
    data.download("mnist", root, [mnist_mirror[0]])
    return root
