"""Fixtures and markers shared by the suite.

Markers: `postgres` tests are skipped unless the database is PostgreSQL; `slow`
tests are skipped unless `--run-slow`; stress tests read `stress_seconds`, which
is short by default and long under `--run-slow`.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from rest_framework.test import APIClient

from eventsourcing_app.commands import Command, dispatch
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
def without_sagas(settings) -> None:
    """Appends do not nudge the sagas: for tests that drive the shop's saga steps by hand."""
    from eventsourcing_app.conf import DEFAULTS

    hooks = [hook for hook in DEFAULTS["COMMIT_HOOKS"] if not hook.startswith("eventsourcing_app.sagas.")]
    settings.EVENTSOURCING = {**settings.EVENTSOURCING, "COMMIT_HOOKS": hooks}


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


@pytest.fixture(autouse=True)
def _celery_eager_unless_real_workers(request: pytest.FixtureRequest):
    """Tasks run in-process, except in `celery` tests, which send them to real workers on the broker."""
    from project.celery import app

    eager = request.node.get_closest_marker("celery") is None
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = eager or previous
    if eager:
        # A subprocess of an earlier test (writers, run_sagas) may have queued a run on the real broker that
        # no worker will take: its "a run is queued" mark in the shared cache would swallow our nudges.
        from tests.celery_helpers import clear_pending_nudges

        clear_pending_nudges()
    yield
    app.conf.task_always_eager = previous


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    """PBKDF2 costs ~0.4 s per HTTP Basic request here; tests do not need that strength."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


PASSWORD = "test-password-123"


def _client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(f"{user.username}:{PASSWORD}".encode()).decode())
    return client


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root", "root@example.com", PASSWORD)


@pytest.fixture
def staff_user(db):
    return get_user_model().objects.create_user("staff", "staff@example.com", PASSWORD, is_staff=True)


@pytest.fixture
def plain_user(db):
    return get_user_model().objects.create_user("plain", "plain@example.com", PASSWORD)


@pytest.fixture
def api_client(superuser) -> APIClient:
    """An HTTP Basic client of a superuser, who may dispatch every command."""
    return _client_for(superuser)


@pytest.fixture
def staff_client(staff_user) -> APIClient:
    return _client_for(staff_user)


@pytest.fixture
def plain_client(plain_user) -> APIClient:
    return _client_for(plain_user)


@pytest.fixture
def client_for():
    return _client_for


@pytest.fixture(autouse=True)
def _skip_celery_without_broker(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("celery") and not os.environ.get("CELERY_BROKER_URL"):
        pytest.skip("needs a Celery broker (set CELERY_BROKER_URL)")


@contextmanager
def dispatched_uncommitted(command: Command, **context_fields) -> Iterator[None]:
    """Dispatch `command` on another thread (its own connection) inside a transaction held open until exit.

    Whatever it locks (its key, its stream rows) stays locked meanwhile; it commits at exit.
    """
    holding, release, errors = threading.Event(), threading.Event(), []

    def hold() -> None:
        try:
            with transaction.atomic():
                dispatch(command, **context_fields)
                holding.set()
                release.wait(timeout=30)
        except Exception as error:  # reported below
            errors.append(error)
            holding.set()
        finally:
            connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(timeout=30)
        assert not errors, errors
        yield
    finally:
        release.set()
        thread.join(timeout=30)


def with_lock_timeout(work, milliseconds: int = 200):
    """work() in a transaction whose lock waits end after `milliseconds` (PostgreSQL)."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = '{int(milliseconds)}ms'")
        return work()
