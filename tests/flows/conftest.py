"""Prefect's own local API for flow tests: an ephemeral SQLite server in a temporary home."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

prefect = pytest.importorskip("prefect", reason="the flows need the 'flows' extra (prefect)")


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield home


@pytest.fixture
def migrated_database(prefect_api, tmp_path) -> Path:
    """A copy of the session's Prefect database (SQLite's online backup), its schema made:
    a server on it starts in seconds, not after the minute a new database's migrations can
    take on a busy 2-core machine."""
    import sqlite3

    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    source = PREFECT_API_DATABASE_CONNECTION_URL.value().split(":///", 1)[1]
    copy = tmp_path / "prefect" / "prefect.db"
    copy.parent.mkdir()
    with sqlite3.connect(source) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    return copy
