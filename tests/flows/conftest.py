"""Prefect's own local API for flow tests: an ephemeral SQLite server in a temporary home."""

from __future__ import annotations

import os

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
