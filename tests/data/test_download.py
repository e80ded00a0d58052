"""Downloads against a real HTTP server on 127.0.0.1, including its faults.

After every failure the folder holds nothing with a final name that is not verified, and
load() refuses what is left.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpucnn import data
from gpucnn.data import ChecksumError, DataError, DownloadError
from gpucnn.data.fetch import RetryPolicy, default_root
from tests.data.conftest import FAST_RETRY, gz_of


def fetch(name, root, mirrors, **kw):
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("timeout", (2.0, 2.0))
    return data.download(name, root, mirrors, **kw)


def leftovers(folder: Path) -> list[str]:
    """Files other than the lock and the verification record."""
    return sorted(p.name for p in folder.iterdir() if p.name not in (".lock", ".verified.json"))


def assert_refused(name, root, split="train"):
    with pytest.raises(DataError):
        data.load(name, split, root=root, download=False)


def test_first_mirror_serves(server, tiny, tmp_path):
    tiny.serve_all(server, "/a")
    paths = fetch("tiny", tmp_path, [server.url + "/a/", server.url + "/b/"])
    assert sorted(paths) == ["test_images", "test_labels", "train_images", "train_labels"]
    images, labels = data.load("tiny", "train", root=tmp_path, download=False)
    np.testing.assert_array_equal(images, tiny.arrays["train_images"])
    np.testing.assert_array_equal(labels, tiny.arrays["train_labels"])
    assert images.dtype == np.uint8 and labels.dtype == np.int64
    assert not any(p.startswith("/b/") for p in server.hits)
    assert leftovers(tmp_path / "tiny") == sorted(f.name for f in tiny.files.values())


def test_a_valid_cached_file_is_never_downloaded_again(server, tiny, tmp_path):
    tiny.serve_all(server, "/a")
    fetch("tiny", tmp_path, [server.url + "/a/"])
    hits = dict(server.hits)
    fetch("tiny", tmp_path, [server.url + "/a/"])
    data.load("tiny", "test", root=tmp_path, mirrors=[server.url + "/a/"])
    assert dict(server.hits) == hits


def test_503_twice_then_success(server, tiny, tmp_path):
    tiny.serve_all(server, "/a")
    path = tiny.path("train_images", "/a")
    server.serve(path, ("status", 503), ("status", 503), ("ok", tiny.gz["train_images"]))
    fetch("tiny", tmp_path, [server.url + "/a/"])
    assert server.hits[path] == 3
    images, _ = data.load("tiny", root=tmp_path, download=False)
    np.testing.assert_array_equal(images, tiny.arrays["train_images"])


def test_429_is_retried_and_persistent_5xx_gives_up(server, tiny, tmp_path):
    tiny.serve_all(server, "/a")
    server.serve(tiny.path("train_labels", "/a"), ("status", 429), ("ok", tiny.gz["train_labels"]))
    server.serve(tiny.path("test_images", "/a"), ("status", 500))
    with pytest.raises(DownloadError, match=r"gave up after 3 attempts; last: HTTP 500") as err:
        fetch("tiny", tmp_path, [server.url + "/a/"])
    assert err.value.transient  # worth retrying later
    assert server.hits[tiny.path("train_labels", "/a")] == 2
    assert server.hits[tiny.path("test_images", "/a")] == 3
    assert "t10k-images-idx3-ubyte" not in leftovers(tmp_path / "tiny")
    assert_refused("tiny", tmp_path, "test")


def test_404_on_the_first_mirror_moves_on_at_once(server, tiny, tmp_path):
    tiny.serve_all(server, "/b")  # /a serves nothing: 404 everywhere
    fetch("tiny", tmp_path, [server.url + "/a/", server.url + "/b/"])
    assert all(n == 1 for p, n in server.hits.items() if p.startswith("/a/"))
    # after its first failure /a is tried after /b, which serves the other three at once
    assert [p for p in server.hits if p.startswith("/a/")] == [tiny.path("train_images", "/a")]
    data.load("tiny", root=tmp_path, download=False)


def test_truncated_body_is_retried_then_reported(server, tiny, tmp_path):
    tiny.serve_all(server, "/a")
    body = tiny.gz["train_images"]
    server.serve(tiny.path("train_images", "/a"), ("truncate", body, len(body) // 2))
    with pytest.raises(DownloadError) as err:
        fetch("tiny", tmp_path, [server.url + "/a/"])
    assert "truncated" in str(err.value) or "connection broke" in str(err.value)
    assert server.hits[tiny.path("train_images", "/a")] == FAST_RETRY.attempts
    assert leftovers(tmp_path / "tiny") == []  # no .part file, no final name
    assert_refused("tiny", tmp_path)


def test_truncated_once_then_whole(server, tiny, tmp_path):
    tiny.serve_all(server, "/a")
    body = tiny.gz["test_images"]
    server.serve(tiny.path("test_images", "/a"), ("truncate", body, 100), ("ok", body))
    fetch("tiny", tmp_path, [server.url + "/a/"])
    images, _ = data.load("tiny", "test", root=tmp_path, download=False)
    np.testing.assert_array_equal(images, tiny.arrays["test_images"])


def test_wrong_content_is_a_checksum_failure_and_the_next_mirror_is_tried(server, tiny, tmp_path):
    tiny.serve_all(server, "/b")
    tiny.serve_all(server, "/a")
    wrong = gz_of(np.zeros((12, 28, 28), np.uint8))  # valid gzip, valid IDX, wrong digest
    server.serve(tiny.path("train_images", "/a"), ("ok", wrong))
    fetch("tiny", tmp_path, [server.url + "/a/", server.url + "/b/"])
    assert server.hits[tiny.path("train_images", "/a")] == 1  # not retried
    assert server.hits[tiny.path("train_images", "/b")] == 1
    images, _ = data.load("tiny", root=tmp_path, download=False)
    np.testing.assert_array_equal(images, tiny.arrays["train_images"])


def test_every_mirror_failing_lists_each_and_why(server, tiny, tmp_path):
    tiny.serve_all(server, "/a")
    wrong = gz_of(np.zeros((12, 28, 28), np.uint8))
    server.serve(tiny.path("train_images", "/a"), ("ok", wrong))
    with pytest.raises(DownloadError) as err:
        fetch("tiny", tmp_path, [server.url + "/a/", server.url + "/missing/"])
    msg = str(err.value)
    assert not err.value.transient  # a checksum failure is not worth retrying
    assert "could not download train-images-idx3-ubyte from any mirror" in msg
    assert f"{server.url}/a/train-images-idx3-ubyte.gz: checksum mismatch" in msg
    assert f"expected {tiny.files['train_images'].sha256}" in msg
    assert f"{server.url}/missing/train-images-idx3-ubyte.gz: HTTP 404" in msg
    assert [u for u, _ in err.value.attempts] == [
        f"{server.url}/a/train-images-idx3-ubyte.gz",
        f"{server.url}/missing/train-images-idx3-ubyte.gz",
    ]
    assert_refused("tiny", tmp_path)


def test_html_page_with_status_200_is_not_data(server, tiny, tmp_path):
    tiny.serve_all(server, "/a")
    server.serve(tiny.path("train_labels", "/a"), ("html",))
    with pytest.raises(DownloadError, match=r"not a gzip file"):
        fetch("tiny", tmp_path, [server.url + "/a/"])
    assert server.hits[tiny.path("train_labels", "/a")] == 1
    assert "train-labels-idx1-ubyte" not in leftovers(tmp_path / "tiny")
    assert_refused("tiny", tmp_path)


def test_wrong_idx_dimensions_are_a_format_failure(server, tiny_gz, tmp_path, monkeypatch):
    # a gz-only dataset whose published digest matches a file of the wrong shape
    bad = gz_of(np.zeros((11, 28, 28), np.uint8))
    files = dict(tiny_gz.spec.files)
    f = files["train_images"]
    files["train_images"] = type(f)(f.name, f.shape, gz_sha256=hashlib.sha256(bad).hexdigest())
    monkeypatch.setitem(
        data.DATASETS,
        "tinygz",
        type(tiny_gz.spec)("tinygz", files, tiny_gz.spec.mirrors, 0.5, 0.25, tiny_gz.spec.classes),
    )
    tiny_gz.serve_all(server, "/a")
    server.serve(tiny_gz.path("train_images", "/a"), ("ok", bad))
    with pytest.raises(
        DownloadError, match=r"IDX dimensions \(11, 28, 28\), expected \(12, 28, 28\)"
    ):
        fetch("tinygz", tmp_path, [server.url + "/a/"])
    assert_refused("tinygz", tmp_path)


def test_a_server_slower_than_the_read_timeout(server, tiny, tmp_path):
    tiny.serve_all(server, "/a")
    server.serve(tiny.path("train_images", "/a"), ("slow", 1.5, tiny.gz["train_images"]))
    with pytest.raises(DownloadError, match=r"gave up after 2 attempts; last: .*Timeout"):
        fetch(
            "tiny",
            tmp_path,
            [server.url + "/a/"],
            timeout=(2.0, 0.3),
            retry=RetryPolicy(attempts=2, backoff=0.01),
        )
    assert leftovers(tmp_path / "tiny") == []
    assert_refused("tiny", tmp_path)


def test_slow_then_fast_succeeds(server, tiny, tmp_path):
    tiny.serve_all(server, "/a")
    server.serve(
        tiny.path("train_images", "/a"),
        ("slow", 1.0, tiny.gz["train_images"]),
        ("ok", tiny.gz["train_images"]),
    )
    fetch("tiny", tmp_path, [server.url + "/a/"], timeout=(2.0, 0.3))
    data.load("tiny", root=tmp_path, download=False)


def test_two_concurrent_downloads_into_one_folder(server, tiny, tmp_path):
    for k in tiny.files:  # slow enough that the two processes overlap
        server.serve(tiny.path(k, "/a"), ("slow", 0.3, tiny.gz[k]))
    # each process registers the same tiny spec (from JSON) and downloads into one folder
    spec = json.dumps({k: [f.name, list(f.shape), f.sha256] for k, f in tiny.files.items()})
    code = (
        "import json, sys\n"
        "from gpucnn.data import download, registry\n"
        "files = {k: registry.IdxFile(n, tuple(s), sha256=h)\n"
        "         for k, (n, s, h) in json.loads(sys.argv[1]).items()}\n"
        "registry.DATASETS['tiny'] = registry.DatasetSpec('tiny', files, (), 0.5, 0.25, ())\n"
        "download('tiny', sys.argv[2], [sys.argv[3]])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, spec, str(tmp_path), server.url + "/a/"],
            env=env,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    assert all(n == 1 for n in server.hits.values())  # the second process found them verified
    assert sum(server.hits.values()) == 4
    for split in ("train", "test"):
        images, labels = data.load("tiny", split, root=tmp_path, download=False)
        np.testing.assert_array_equal(labels, tiny.arrays[f"{split}_labels"])


def test_a_corrupted_cached_file_is_detected_and_replaced(server, tiny, tmp_path):
    tiny.serve_all(server, "/a")
    fetch("tiny", tmp_path, [server.url + "/a/"])
    path = tmp_path / "tiny" / tiny.files["train_images"].name
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF  # same size, one flipped byte
    path.write_bytes(bytes(raw))
    with pytest.raises(
        ChecksumError, match=r"train-images-idx3-ubyte: sha256 [0-9a-f]{64}, expected"
    ):
        data.load("tiny", root=tmp_path, download=False)
    before = server.hits[tiny.path("train_images", "/a")]
    images, _ = data.load("tiny", root=tmp_path, mirrors=[server.url + "/a/"])
    np.testing.assert_array_equal(images, tiny.arrays["train_images"])
    assert server.hits[tiny.path("train_images", "/a")] == before + 1
    assert server.hits[tiny.path("train_labels", "/a")] == 1  # the others stayed cached


def test_gz_digest_datasets_verify_the_compressed_bytes(server, tiny_gz, tmp_path):
    tiny_gz.serve_all(server, "/a")
    recompressed = gzip.compress(tiny_gz.raw["test_labels"], compresslevel=1, mtime=12345)
    server.serve(tiny_gz.path("test_labels", "/a"), ("ok", recompressed))
    with pytest.raises(DownloadError, match=r"sha256 of t10k-labels-idx1-ubyte.gz is"):
        fetch("tinygz", tmp_path, [server.url + "/a/"])
    server.serve(tiny_gz.path("test_labels", "/a"), ("ok", tiny_gz.gz["test_labels"]))
    fetch("tinygz", tmp_path, [server.url + "/a/"])
    _, labels = data.load("tinygz", "test", root=tmp_path, download=False)
    np.testing.assert_array_equal(labels, tiny_gz.arrays["test_labels"])
    # the digest of the decompressed file was recorded, so a later corruption is caught too
    path = tmp_path / "tinygz" / "t10k-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError):
        data.load("tinygz", "test", root=tmp_path, download=False)


def test_a_file_not_written_by_gpucnn_is_not_trusted_without_a_digest(server, tiny_gz, tmp_path):
    folder = tmp_path / "tinygz"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte").write_bytes(tiny_gz.raw["test_images"])
    (folder / "t10k-labels-idx1-ubyte").write_bytes(tiny_gz.raw["test_labels"])
    with pytest.raises(ChecksumError, match="no recorded digest"):
        data.load("tinygz", "test", root=tmp_path, download=False)


def test_env_mirror_is_tried_first(server, tiny, tmp_path, monkeypatch):
    tiny.serve_all(server, "/env")
    monkeypatch.setenv("GPUCNN_DATA_MIRROR", server.url + "/env")
    fetch("tiny", tmp_path, [server.url + "/a/"])
    assert not any(p.startswith("/a/") for p in server.hits)


def test_env_data_dir_is_the_default_root(server, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCNN_DATA_DIR", str(tmp_path / "cache"))
    assert default_root() == tmp_path / "cache"
    tiny.serve_all(server, "/a")
    data.download("tiny", mirrors=[server.url + "/a/"], retry=FAST_RETRY)
    assert (tmp_path / "cache" / "tiny" / "train-images-idx3-ubyte").exists()


def test_default_root_is_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_root() == tmp_path / "gpucnn"


def test_missing_files_without_download(tmp_path, tiny):
    with pytest.raises(
        DataError, match=r"is missing; call gpucnn.data.load\('tiny', download=True\)"
    ):
        data.load("tiny", root=tmp_path, download=False)


def test_unknown_dataset_and_split():
    with pytest.raises(
        ValueError,
        match="unknown dataset 'cifar'; choose one of cifar10, fashion-mnist, kmnist, mnist",
    ):
        data.load("cifar")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        data.load("mnist", split="val")


@pytest.mark.slow
def test_real_mnist_from_a_loopback_mirror(mnist_mirror, tmp_path):
    url, files = mnist_mirror
    sums = dict(line.split()[::-1] for line in (files / "SHA256SUMS").read_text().splitlines())
    paths = data.download("mnist", tmp_path, [url])
    for path in paths.values():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sums[path.name]
    train_x, train_y = data.load("mnist", "train", root=tmp_path, download=False)
    test_x, test_y = data.load("mnist", "test", root=tmp_path, download=False)
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert train_y.shape == (60000,) and test_y.shape == (10000,)
    assert np.bincount(train_y).tolist()[:2] == [5923, 6742]  # the well-known class counts
    assert abs(train_x.mean() / 255 - 0.1307) < 1e-4  # the normalisation constant
