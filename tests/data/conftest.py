"""Fixtures: a scripted loopback server, a tiny registered dataset, the real MNIST mirror."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest

from gpucnn.data import registry
from gpucnn.data.fetch import RetryPolicy
from gpucnn.data.registry import DatasetSpec, IdxFile
from tests.data.server import ScriptedServer

FAST_RETRY = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05)


def idx_bytes(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a, dtype=np.uint8)
    return bytes([0, 0, 8, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape) + a.tobytes()


class TinyDataset:
    """A registered 4-file IDX dataset small enough for many fault scenarios."""

    def __init__(self, name: str, gz_only: bool = False, seed: int = 0) -> None:
        g = np.random.default_rng(seed)
        self.arrays = {
            "train_images": g.integers(0, 256, (12, 28, 28), dtype=np.uint8),
            "train_labels": g.integers(0, 10, 12, dtype=np.uint8),
            "test_images": g.integers(0, 256, (5, 28, 28), dtype=np.uint8),
            "test_labels": g.integers(0, 10, 5, dtype=np.uint8),
        }
        names = {
            "train_images": "train-images-idx3-ubyte",
            "train_labels": "train-labels-idx1-ubyte",
            "test_images": "t10k-images-idx3-ubyte",
            "test_labels": "t10k-labels-idx1-ubyte",
        }
        self.raw = {k: idx_bytes(a) for k, a in self.arrays.items()}
        self.gz = {k: gzip.compress(b, mtime=0) for k, b in self.raw.items()}
        files = {}
        for k, a in self.arrays.items():
            digest = (
                {"gz_sha256": hashlib.sha256(self.gz[k]).hexdigest()}
                if gz_only
                else {"sha256": hashlib.sha256(self.raw[k]).hexdigest()}
            )
            files[k] = IdxFile(names[k], a.shape, **digest)
        self.files = files
        self.spec = DatasetSpec(
            name, files, ("http://127.0.0.1:9/never/",), 0.5, 0.25, tuple(str(i) for i in range(10))
        )

    def serve_all(self, server: ScriptedServer, prefix: str) -> None:
        for k, f in self.files.items():
            server.serve(f"{prefix}/{f.remote}", ("ok", self.gz[k]))

    def path(self, key: str, prefix: str) -> str:
        return f"{prefix}/{self.files[key].remote}"


@pytest.fixture
def server():
    with ScriptedServer() as s:
        yield s


@pytest.fixture(autouse=True)
def _no_env_mirror(monkeypatch):
    monkeypatch.delenv("GPUCNN_DATA_MIRROR", raising=False)
    monkeypatch.delenv("GPUCNN_DATA_DIR", raising=False)


@pytest.fixture
def tiny(monkeypatch):
    ds = TinyDataset("tiny")
    monkeypatch.setitem(registry.DATASETS, "tiny", ds.spec)
    return ds


@pytest.fixture
def tiny_gz(monkeypatch):
    ds = TinyDataset("tinygz", gz_only=True, seed=1)
    monkeypatch.setitem(registry.DATASETS, "tinygz", ds.spec)
    return ds


def gz_of(a: np.ndarray) -> bytes:
    return gzip.compress(idx_bytes(a), mtime=0)
