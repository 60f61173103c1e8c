"""Fixtures and markers shared by the suite.

Markers: `postgres` tests are skipped unless the database is PostgreSQL; `slow`
tests are skipped unless `--run-slow`; stress tests read `stress_seconds`, which
is short by default and long under `--run-slow`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

from eventsourcing_app.store import EventStore

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run the long stress and soak versions of tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="long version: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _skip_postgres_only(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("postgres") and connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")


@pytest.fixture
def stress_seconds(request: pytest.FixtureRequest) -> float:
    """How long a stress test runs: a bounded few seconds in CI, a minute with --run-slow."""
    return 60.0 if request.config.getoption("--run-slow") else 4.0


@pytest.fixture
def event_store() -> EventStore:
    return EventStore()


@pytest.fixture
def worker_env(transactional_db: None) -> dict[str, str]:
    """Environment for subprocesses that must use the test database (committed data only)."""
    settings_dict = connection.settings_dict
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), DJANGO_SETTINGS_MODULE="project.settings")
    if connection.vendor == "postgresql":
        user, host, port = settings_dict["USER"], settings_dict["HOST"], settings_dict["PORT"] or 5432
        env["DATABASE_URL"] = f"postgres://{user}@{host}:{port}/{settings_dict['NAME']}"
    else:
        env["DATABASE_URL"] = f"sqlite:///{settings_dict['NAME']}"
    return env


@pytest.fixture
def run_worker(worker_env: dict[str, str]):
    """Start `python -m tests.workers ARGS…` against the test database; returns the Popen."""

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.workers", *args],
            cwd=REPO_ROOT,
            env=worker_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    return start
