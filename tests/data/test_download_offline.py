"""Offline, a download fails fast: a mirror whose name does not resolve, or whose port refuses
connections, is given up at once (no retries on it, and an error that flows do not retry), while
stalls and 5xx keep their retries (tests/data/test_download*.py).

The unresolvable names are under ``.invalid``, reserved never to resolve (RFC 6761); the refusing
port is a loopback port bound but not listening.
"""

from __future__ import annotations

import logging
import pickle
import socket

import pytest

from gpucnn import data
from gpucnn.data import DownloadError
from gpucnn.data.fetch import RetryPolicy

NOWHERE = "http://mnist-mirror.gpucnn.invalid/"
# retries that would be seen (and cost little) if an unreachable mirror were retried
QUICK_RETRIES = RetryPolicy(attempts=4, backoff=0.001, max_backoff=0.001)


@pytest.fixture
def refusing_url():
    """A loopback port bound but not listening: connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}/"


def messages(caplog, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


@pytest.mark.parametrize("kind", ["unresolvable name", "refused connection"])
def test_an_unreachable_mirror_is_given_up_at_once(kind, tiny, tmp_path, caplog, refusing_url):
    url = NOWHERE if kind == "unresolvable name" else refusing_url
    caplog.set_level(logging.INFO, "gpucnn.data")
    with pytest.raises(DownloadError) as err:
        data.download("tiny", tmp_path, [url], retry=QUICK_RETRIES)
    assert messages(caplog, "retrying") == []
    assert len(messages(caplog, f"fetching {url}")) == 1
    (why,) = [why for _, why in err.value.attempts]
    assert why.startswith("unreachable (not retried): ConnectionError: [Errno")
    # a resolver's errors are negative (EAI_NONAME "Name or service not known", EAI_AGAIN, ...)
    assert ("[Errno -" if kind == "unresolvable name" else "Connection refused") in why
    assert not err.value.transient  # flows do not try the whole download again


def test_offline_the_error_says_so_and_the_way_out(tiny, tmp_path, caplog, refusing_url):
    # the default retry policy and timeouts: what a user offline meets
    caplog.set_level(logging.INFO, "gpucnn.data")
    with pytest.raises(DownloadError) as err:
        data.download("tiny", tmp_path, [NOWHERE, refusing_url])
    lines = str(err.value).splitlines()
    assert lines[0] == (
        "could not download train-images-idx3-ubyte: no mirror could be reached "
        "(offline, or a firewall or proxy in the way?):"
    )
    assert lines[1].startswith(f"  - {NOWHERE}train-images-idx3-ubyte.gz: unreachable")
    assert lines[2].startswith(f"  - {refusing_url}train-images-idx3-ubyte.gz: unreachable")
    assert "GPUCNN_DATA_MIRROR=URL" in lines[3] and "--data-dir DIR" in lines[5]
    assert len(lines) <= 1 + 6  # what the CLI shows: the first line and six more
    assert err.value.unreachable and not err.value.transient
    assert messages(caplog, "retrying") == []
    back = pickle.loads(pickle.dumps(err.value))  # as Prefect hands it on
    assert (str(back), back.unreachable, back.transient) == (str(err.value), True, False)


def test_an_unreachable_mirror_before_a_working_one_costs_one_try(server, tiny, tmp_path, caplog):
    tiny.serve_all(server, "/a")
    caplog.set_level(logging.INFO, "gpucnn.data")
    data.download("tiny", tmp_path, [NOWHERE, server.url + "/a/"], retry=QUICK_RETRIES)
    data.load("tiny", root=tmp_path, download=False)
    # tried for the first file only, then after the mirror that works
    assert len(messages(caplog, f"fetching {NOWHERE}")) == 1
    assert messages(caplog, "retrying") == []


def test_a_5xx_mirror_beside_an_unreachable_one_is_still_retried(server, tiny, tmp_path, caplog):
    for k in tiny.files:
        server.serve(tiny.path(k, "/a"), ("status", 503))
    caplog.set_level(logging.INFO, "gpucnn.data")
    with pytest.raises(DownloadError) as err:
        data.download("tiny", tmp_path, [NOWHERE, server.url + "/a/"], retry=QUICK_RETRIES)
    assert server.hits[tiny.path("train_images", "/a")] == 4
    assert str(err.value).splitlines()[0].endswith("from any mirror:")  # one was reachable
    assert not err.value.unreachable
