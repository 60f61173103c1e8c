"""`make run`'s server: migrate, seed, and runserver serve the admin (with DEBUG=0, no collectstatic)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read().decode()


@pytest.fixture
def demo_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}", DEBUG="0", PYTHONPATH=str(REPO_ROOT))
    return env


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        check=False,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_demo_serves_the_admin_on_the_embedded_default(demo_env: dict[str, str]) -> None:
    manage(demo_env, "migrate", "--noinput")
    assert "Demo seeded" in manage(demo_env, "seed_demo")
    assert "Log in at" in manage(demo_env, "create_demo_superuser")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=REPO_ROOT,
        env=demo_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _, page = get(f"http://127.0.0.1:{port}/admin/login/")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail(f"runserver did not come up: {server.stderr.read() if server.poll() else ''}")
                time.sleep(0.3)
        assert status == 200
        assert "Log in" in page
        assert "eventsourcing_app demo shop" in page
        status, content_type, css = get(f"http://127.0.0.1:{port}/static/admin/css/base.css")
        assert (status, content_type.split(";")[0]) == (200, "text/css")
        assert len(css) > 1000
    finally:
        server.terminate()
        server.wait(timeout=10)
