"""CIFAR-10 from an archive in the official binary layout, built here and served on loopback by a
real HTTP server: downloaded, verified, its members checked, parsed; every bad archive refused
with nothing left behind."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile

import numpy as np
import pytest

from gpucnn import data
from gpucnn.data import cifar
from tests.data.conftest import FAST_RETRY

RECORDS = 20  # per batch file: the official layout, 10,000 records shrunk to 20
NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()


def batches(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{member: (images uint8 (RECORDS, 3, 32, 32), labels)} of the six batch files."""
    g = np.random.default_rng(seed)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    return {
        n: (g.integers(0, 256, (RECORDS, 3, 32, 32), dtype=np.uint8), g.integers(0, 10, RECORDS))
        for n in names
    }


def record_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Each record: 1 label byte, then 1024 red, 1024 green and 1024 blue bytes (row-major)."""
    rows = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], 1)
    return rows.tobytes()


def archive(content: dict[str, tuple[np.ndarray, np.ndarray]], tamper=None) -> bytes:
    """A cifar-10-binary.tar.gz as published: the folder, six batches, meta, readme.
    ``tamper(tar)`` may add members before the file closes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        folder = tarfile.TarInfo("cifar-10-batches-bin")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)

        def add(name: str, blob: bytes) -> None:
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))

        for name, (images, labels) in content.items():
            add(name, record_bytes(images, labels))
        add("batches.meta.txt", ("\n".join(NAMES) + "\n\n").encode())
        add("readme.html", b"<html>the CIFAR-10 binary version</html>")
        if tamper is not None:
            tamper(tar)
    return buf.getvalue()


def spec_for(blob: bytes, **changes) -> cifar.ArchiveSpec:
    return dataclasses.replace(
        cifar.SPEC,
        records=RECORDS,
        size=len(blob),
        md5=hashlib.md5(blob).hexdigest(),
        sha256=hashlib.sha256(blob).hexdigest(),
        mirrors=("http://127.0.0.1:9/never/",),
        **changes,
    )


def left_in(root) -> list[str]:
    """Every file under root but the folder lock."""
    return sorted(p.name for p in root.rglob("*") if p.is_file() and p.name != ".lock")


def test_an_archive_in_the_official_layout_is_downloaded_verified_and_parsed(
    server, tmp_path, monkeypatch
):
    content = batches()
    blob = archive(content)
    monkeypatch.setattr(cifar, "SPEC", spec_for(blob))
    server.serve("/c/cifar-10-binary.tar.gz", ("ok", blob))
    monkeypatch.setenv("GPUCNN_DATA_MIRROR", server.url + "/c/")  # served like the MNIST files
    x, y = data.load("cifar10", "train", root=tmp_path)
    want = np.concatenate([content[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(x, want)
    np.testing.assert_array_equal(
        y, np.concatenate([content[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    )
    ds = data.open_dataset("cifar10", tmp_path)
    assert ds.classes == tuple(NAMES) and ds.shape == (3, 32, 32)
    np.testing.assert_array_equal(ds.parts["test"].images, content["test_batch.bin"][0])
    assert ds.normalization.mean == (0.4914, 0.4822, 0.4465)
    assert ds.normalization.std == (0.2470, 0.2435, 0.2616)
    # the archive is not kept; its SHA-256 and each extracted file's are recorded
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    assert "readme.html" not in left_in(tmp_path) and not list(tmp_path.rglob("*.tar.gz"))
    assert ds.facts["sha256"]["cifar-10-binary.tar.gz"] == hashlib.sha256(blob).hexdigest()
    # a later call only verifies; a corrupted file is fetched again
    hits = server.hits["/c/cifar-10-binary.tar.gz"]
    data.download("cifar10", tmp_path)
    assert server.hits["/c/cifar-10-binary.tar.gz"] == hits
    (folder / "data_batch_2.bin").write_bytes(b"\0" * (RECORDS * 3073))
    data.download("cifar10", tmp_path)
    assert server.hits["/c/cifar-10-binary.tar.gz"] == hits + 1
    np.testing.assert_array_equal(data.load("cifar10", "train", root=tmp_path)[0], want)


def symlink_member(tar):
    info = tarfile.TarInfo("cifar-10-batches-bin/evil")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tar.addfile(info)


def escaping_member(tar):
    info = tarfile.TarInfo("cifar-10-batches-bin/../../evil.txt")
    info.size = 4
    tar.addfile(info, io.BytesIO(b"evil"))


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda c: (archive(c), {"md5": "0" * 32}), "checksum mismatch: md5"),
        (lambda c: (archive(c), {"sha256": "0" * 64}), "checksum mismatch: sha256"),
        (lambda c: (archive(c, escaping_member), {}), r"lies outside cifar-10-batches-bin/"),
        (lambda c: (archive(c, symlink_member), {}), r"'cifar-10-batches-bin/evil' is a link"),
        (
            lambda c: (
                archive(
                    {
                        **c,
                        "data_batch_3.bin": (
                            c["test_batch.bin"][0][:-1],
                            c["test_batch.bin"][1][:-1],
                        ),
                    }
                ),
                {},
            ),
            r"data_batch_3.bin holds 58,387 bytes, expected 61,460",
        ),  # fmt: skip
    ],
    ids=["wrong-md5", "wrong-sha256", "dot-dot-member", "link-member", "truncated-member"],
)
def test_a_bad_archive_is_refused_with_nothing_left_behind(
    server, tmp_path, monkeypatch, make, why
):
    blob, changes = make(batches())
    spec = spec_for(blob)
    monkeypatch.setattr(cifar, "SPEC", dataclasses.replace(spec, **changes))
    server.serve("/c/cifar-10-binary.tar.gz", ("ok", blob))
    with pytest.raises(data.DownloadError, match=why) as caught:
        cifar.download("cifar10", tmp_path / "data", [server.url + "/c/"], retry=FAST_RETRY)
    assert "cifar-10-binary.tar.gz" in str(caught.value).splitlines()[0]
    assert left_in(tmp_path) == []  # no archive, no member, no record, no temporary file


def test_files_not_written_by_gpucnn_are_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "SPEC", spec_for(archive(batches())))
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name in cifar.SPEC.members:
        (folder / name).write_bytes(b"\0" * (RECORDS * 3073))
    with pytest.raises(data.DataError, match="no recorded digest"):
        data.load("cifar10", root=tmp_path, download=False)
