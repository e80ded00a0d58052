"""Downloads always end, and the cache is trusted only on its content.

Against the real loopback server: a mirror that never answers, one that stops sending, one
that trickles; another process holding the folder's lock; a read-only cache; bytes changed with
the timestamp restored. Limits are small here (fractions of a second) so the suite stays fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpucnn import data
from gpucnn.data import ChecksumError, DownloadError
from gpucnn.data import errors as data_errors
from gpucnn.data.fetch import RetryPolicy
from tests.data.test_download import fetch, leftovers

REPO = Path(__file__).resolve().parents[2]
ONCE = RetryPolicy(attempts=1)
TWICE = RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.01)

# A child process registers the same tiny spec (from JSON), then runs a body.
CHILD = (
    "import json, sys, time\n"
    "from pathlib import Path\n"
    "from gpucnn import data\n"
    "from gpucnn.data import registry\n"
    "from gpucnn.data.fetch import folder_lock\n"
    "files = {k: registry.IdxFile(n, tuple(s), sha256=h)\n"
    "         for k, (n, s, h) in json.loads(sys.argv[1]).items()}\n"
    "registry.DATASETS['tiny'] = registry.DatasetSpec(\n"
    "    'tiny', files, (), 0.5, 0.25, tuple('0123456789'))\n"
)
HOLD_LOCK = CHILD + (
    "Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)\n"
    "with folder_lock(Path(sys.argv[2])):\n"
    "    print('locked', flush=True)\n"
    "    time.sleep(float(sys.argv[3]))\n"
)
LOAD = CHILD + (
    "for split in ('train', 'test'):\n"
    "    try:\n"
    "        x, y = data.load('tiny', split, root=sys.argv[2], mirrors=[sys.argv[3]])\n"
    "        data.load('tiny', split, root=sys.argv[2], download=False)\n"
    "        print(split, 'ok', x.shape, flush=True)\n"
    "    except data.DataError as exc:\n"
    "        print(split, type(exc).__name__, str(exc).replace(chr(10), ' | '), flush=True)\n"
)


def spec_json(tiny) -> str:
    return json.dumps({k: [f.name, list(f.shape), f.sha256] for k, f in tiny.files.items()})


def child_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("GPUCNN_DATA_MIRROR", None)
    return env


@contextlib.contextmanager
def lock_held_by_another_process(tiny, folder: Path, seconds: float):
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, spec_json(tiny), str(folder), str(seconds)],
        env=child_env(),
        stdout=subprocess.PIPE,
    )
    try:
        assert p.stdout.readline().strip() == b"locked"
        yield p
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


@pytest.fixture
def refusing_url():
    """A loopback port bound but not listening: connections are refused. (A port merely closed
    again could be picked as the client's own port, and the client would connect to itself.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}/"


def warnings_from(caplog, needle: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "gpucnn.data" and r.levelno >= logging.INFO and needle in r.getMessage()
    ]


# -- stalls, trickles, the deadline --------------------------------------------------------
def test_a_mirror_that_never_answers_is_tried_after_the_others_once_it_failed(
    server, tiny, tmp_path, caplog
):
    tiny.serve_all(server, "/b")
    for k in tiny.files:
        server.serve(tiny.path(k, "/a"), ("hang",))
    caplog.set_level(logging.INFO, "gpucnn.data")
    fetch("tiny", tmp_path, [server.url + "/a/", server.url + "/b/"], timeout=(2, 0.3), retry=TWICE)
    # /a cost one file's two attempts, not four files' eight
    assert {p: n for p, n in server.hits.items() if p.startswith("/a/")} == {
        tiny.path("train_images", "/a"): 2
    }
    assert warnings_from(caplog, "after 2 attempts; last: stalled: no response within 0.3 s")
    data.load("tiny", root=tmp_path, download=False)


def test_a_body_that_stops_coming_is_a_stall(server, tiny, tmp_path):
    tiny.serve_all(server, "/a")
    path = tiny.path("train_images", "/a")
    server.serve(path, ("stall", tiny.gz["train_images"], 100))
    with pytest.raises(DownloadError, match=r"stalled: no data for 0.3 s after 100 bytes") as err:
        fetch("tiny", tmp_path, [server.url + "/a/"], timeout=(2, 0.3), retry=TWICE)
    assert err.value.transient
    assert server.hits[path] == 2
    assert leftovers(tmp_path / "tiny") == []


def test_a_trickle_below_the_rate_floor_ends_the_attempt(server, tiny, tmp_path):
    tiny.serve_all(server, "/a")
    path = tiny.path("train_labels", "/a")
    body = tiny.gz["train_labels"]  # 32 bytes: at 20 bytes/s the old code took it all, slowly
    server.serve(path, ("trickle", body, 0.05), ("ok", body))
    start = time.monotonic()
    fetch("tiny", tmp_path, [server.url + "/a/"], timeout=(2, 0.5))  # floor: 1024 bytes/s
    assert time.monotonic() - start < 1.5
    assert server.hits[path] == 2
    _, labels = data.load("tiny", root=tmp_path, download=False)
    np.testing.assert_array_equal(labels, tiny.arrays["train_labels"])


def test_a_trickle_that_never_ends_is_reported_as_too_slow(server, tiny, tmp_path):
    tiny.serve_all(server, "/a")
    server.serve(tiny.path("train_images", "/a"), ("trickle", tiny.gz["train_images"], 0.02))
    with pytest.raises(DownloadError, match=r"too slow: \d+ bytes/s over 0.[45] s, below") as err:
        fetch("tiny", tmp_path, [server.url + "/a/"], timeout=(2, 0.4), min_rate=200, retry=TWICE)
    assert err.value.transient
    assert leftovers(tmp_path / "tiny") == []


def test_the_deadline_ends_every_file_mirror_and_retry(server, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCNN_DOWNLOAD_DEADLINE", "1")
    for prefix in ("/a", "/b"):
        for k in tiny.files:
            server.serve(tiny.path(k, prefix), ("hang",))
    retry = RetryPolicy(attempts=10, backoff=0.01, max_backoff=0.01)
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        mirrors = [server.url + "/a/", server.url + "/b/"]
        fetch("tiny", tmp_path, mirrors, timeout=(2, 0.4), retry=retry)
    assert time.monotonic() - start < 1.6
    assert err.value.transient
    time.sleep(0.2)  # let the server count the last request, cut short by the deadline
    made = server.hits[tiny.path("train_images", "/a")]
    assert 2 <= made <= 3
    why = dict(err.value.attempts)
    a, b = (server.url + p + "/train-images-idx3-ubyte.gz" for p in ("/a", "/b"))
    assert why[a] == (
        f"stopped by the 1 s download deadline after {made} attempts; "
        "last: stalled: no response within 0.4 s (ReadTimeout)"
    )
    assert why[b] == "not tried: the 1 s download deadline had passed"
    assert tiny.path("train_images", "/b") not in server.hits
    assert leftovers(tmp_path / "tiny") == []


def test_the_deadline_cuts_a_stalled_body_short(server, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUCNN_DOWNLOAD_DEADLINE", "1")
    tiny.serve_all(server, "/a")
    body = tiny.gz["test_images"]
    server.serve(tiny.path("test_images", "/a"), ("trickle", body, 0.05, 10))  # then stalls
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"the 1 s download deadline after 1 attempt\n"):
        fetch("tiny", tmp_path, [server.url + "/a/"], timeout=(2, 3))
    assert time.monotonic() - start < 1.5  # the 3 s stall timeout was shortened to the deadline
    assert leftovers(tmp_path / "tiny") == ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]


def test_the_deadline_parameter_bounds_a_trickle_above_the_floor(server, tiny, tmp_path):
    tiny.serve_all(server, "/a")
    server.serve(tiny.path("train_images", "/a"), ("trickle", tiny.gz["train_images"], 0.01))
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"stopped by the 0.7 s download deadline"):
        fetch("tiny", tmp_path, [server.url + "/a/"], timeout=(2, 0.3), min_rate=10, deadline=0.7)
    assert time.monotonic() - start < 1.2


def test_a_bad_deadline_setting_is_refused_naming_it(server, tiny, tmp_path, monkeypatch):
    tiny.serve_all(server, "/a")
    monkeypatch.setenv("GPUCNN_DOWNLOAD_DEADLINE", "soon")
    with pytest.raises(ValueError, match=r"GPUCNN_DOWNLOAD_DEADLINE='soon' is not a number"):
        fetch("tiny", tmp_path, [server.url + "/a/"])


# -- the final error -----------------------------------------------------------------------
def test_the_final_error_names_each_mirror_and_how_to_point_at_another(
    server, tiny, tmp_path, refusing_url
):
    closed = refusing_url
    with pytest.raises(DownloadError) as err:
        fetch("tiny", tmp_path, [server.url + "/missing/", closed], retry=ONCE)
    lines = str(err.value).splitlines()
    assert lines[0] == "could not download train-images-idx3-ubyte from any mirror:"
    assert lines[1] == f"  - {server.url}/missing/train-images-idx3-ubyte.gz: HTTP 404 Not Found"
    assert lines[2].startswith(f"  - {closed}train-images-idx3-ubyte.gz: unreachable (not retried)")
    assert "Connection refused" in lines[2]
    advice = "\n".join(lines[3:])
    for needle in ("GPUCNN_DATA_MIRROR=URL", "--mirror URL", "python -m http.server", "--data-dir"):
        assert needle in advice
    assert "DIR/tiny/" in advice
    assert len(lines) <= 1 + 6  # what the CLI shows: the first line and six more
    assert not err.value.transient  # a 404 is not worth retrying


def test_a_download_error_survives_pickling():
    attempts = [("http://x/t10k-labels-idx1-ubyte.gz", "HTTP 503 Service Unavailable")]
    err = DownloadError("t10k-labels-idx1-ubyte", attempts, True)
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.attempts, back.transient) == (str(err), err.attempts, True)


# -- the lock ------------------------------------------------------------------------------
def test_waiting_for_another_process_lock_is_logged_once_then_proceeds(
    server, tiny, tmp_path, caplog
):
    tiny.serve_all(server, "/a")
    caplog.set_level(logging.INFO, "gpucnn.data")
    with lock_held_by_another_process(tiny, tmp_path / "tiny", 1.0) as holder:
        fetch("tiny", tmp_path, [server.url + "/a/"])
    waits = warnings_from(caplog, "waiting for")
    assert len(waits) == 1, waits
    assert str(tmp_path / "tiny" / ".lock") in waits[0]
    assert f"held by process {holder.pid}" in waits[0]
    data.load("tiny", root=tmp_path, download=False)


def test_waiting_for_a_lock_ends_at_the_deadline_naming_the_holder(
    server, tiny, tmp_path, monkeypatch
):
    tiny.serve_all(server, "/a")
    monkeypatch.setenv("GPUCNN_DOWNLOAD_DEADLINE", "0.5")
    with lock_held_by_another_process(tiny, tmp_path / "tiny", 3.0) as holder:
        start = time.monotonic()
        with pytest.raises(DownloadError) as err:
            fetch("tiny", tmp_path, [server.url + "/a/"])
        assert time.monotonic() - start < 1.5
    first = str(err.value).splitlines()[0]
    assert str(tmp_path / "tiny" / ".lock") in first
    assert f"held by process {holder.pid}" in first
    assert isinstance(err.value, data_errors.CacheLockError)
    assert err.value.transient  # the holder's own download ends at its deadline
    assert str(pickle.loads(pickle.dumps(err.value))) == str(err.value)
    assert not server.hits


# -- a cache that is only read --------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in [folder, *folder.iterdir()]}


def test_a_complete_cache_is_only_read_never_written(server, tiny, tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    for k, f in tiny.files.items():  # as copied from elsewhere: no lock, no record
        (folder / f.name).write_bytes(tiny.raw[k])
    before = snapshot(folder)
    data.download("tiny", tmp_path, [server.url + "/a/"])
    for split in ("train", "test"):
        data.load("tiny", split, root=tmp_path, mirrors=[server.url + "/a/"])
        data.load("tiny", split, root=tmp_path, download=False)
    assert snapshot(folder) == before
    assert not server.hits


def run_unprivileged(*args: str) -> subprocess.CompletedProcess:
    """Run LOAD in a child that file permissions bind: as root, in a user namespace of its own
    (`unshare -U`), where root's files are not its own to override."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        unshare = shutil.which("unshare")
        if unshare is None:
            pytest.skip("running as root, which ignores file permissions, and no `unshare`")
        probe = subprocess.run([unshare, "-U", "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"running as root and `unshare -U` is refused: {probe.stderr.strip()}")
        prefix = [unshare, "-U"]
    return subprocess.run(
        [*prefix, sys.executable, "-c", LOAD, *args],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextlib.contextmanager
def read_only(*paths: Path):
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in paths}
    try:
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def test_a_read_only_cache_loads_and_a_corrupt_one_is_refused_clearly(server, tiny, tmp_path):
    tiny.serve_all(server, "/a")
    fetch("tiny", tmp_path, [server.url + "/a/"])
    folder = tmp_path / "tiny"
    (folder / ".lock").unlink()  # as a folder prepared read-only for others would be
    raw = bytearray((folder / "t10k-labels-idx1-ubyte").read_bytes())
    files = sorted(folder.iterdir())
    mirror = server.url + "/a/"
    with read_only(tmp_path, folder, *files):
        out = run_unprivileged(spec_json(tiny), str(tmp_path), mirror)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["train ok (12, 28, 28)", "test ok (5, 28, 28)"], out.stdout

    raw[-1] ^= 1
    (folder / "t10k-labels-idx1-ubyte").write_bytes(bytes(raw))
    with read_only(tmp_path, folder, *files):
        out = run_unprivileged(spec_json(tiny), str(tmp_path), mirror)
    assert out.returncode == 0, out.stderr
    train, test = out.stdout.splitlines()
    assert test.startswith(f"test ChecksumError cannot fetch into {folder}: Permission denied")
    assert "t10k-labels-idx1-ubyte: sha256" in test and "--data-dir" in test
    assert sorted(folder.iterdir()) == files


# -- the content, not the timestamp ----------------------------------------------------------
def test_bytes_changed_with_the_timestamp_restored_are_caught(server, tiny, tmp_path):
    tiny.serve_all(server, "/a")
    fetch("tiny", tmp_path, [server.url + "/a/"])
    path = tmp_path / "tiny" / tiny.files["train_images"].name
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[200] ^= 0x01
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ChecksumError, match=r"train-images-idx3-ubyte: sha256 [0-9a-f]{64}"):
        data.load("tiny", root=tmp_path, download=False)
    images, _ = data.load("tiny", root=tmp_path, mirrors=[server.url + "/a/"])
    np.testing.assert_array_equal(images, tiny.arrays["train_images"])
    assert server.hits[tiny.path("train_images", "/a")] == 2
