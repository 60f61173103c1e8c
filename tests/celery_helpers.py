"""Real `celery -A project worker` processes for the `celery` tests, and the fixture that runs them.

Each test run gets a queue of its own on the broker: the workers consume only
it (`-Q`) and send their own tasks to it (`CELERY_TASK_DEFAULT_QUEUE`), and the
test process routes its tasks there too. Stale tasks of other runs, or of
other projects on the same Redis, are never consumed, and ours reach no one
else.

Workers never outlive the test: teardown terminates them (SIGKILL after a
grace period), an atexit handler catches what teardown missed, and on Linux
each worker asks the kernel to SIGKILL it when pytest itself dies.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.core.cache import cache as django_cache

from eventsourcing_app.outbox.hooks import PENDING_KEY as OUTBOX_PENDING_KEY
from eventsourcing_app.projections import ASYNC, projection_registry
from eventsourcing_app.projections.hooks import pending_key
from eventsourcing_app.sagas import saga_registry
from eventsourcing_app.sagas.hooks import pending_key as saga_pending_key
from project.celery import app

REPO_ROOT = Path(__file__).resolve().parent.parent
# Seconds a worker has to start (import Django, connect to the broker) and to stop after SIGTERM.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
READY_LINE = " ready."
PR_SET_PDEATHSIG = 1

_alive: set[subprocess.Popen] = set()


def _kill_leftovers() -> None:
    """atexit: SIGKILL any worker a teardown did not reach (an interrupted session)."""
    for proc in list(_alive):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _alive.clear()


atexit.register(_kill_leftovers)


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel SIGKILLs the worker when pytest's process dies."""
    libc_name = ctypes.util.find_library("c")
    if sys.platform.startswith("linux") and libc_name:
        ctypes.CDLL(libc_name, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class CeleryWorker:
    """One `celery worker` process with its log file."""

    def __init__(self, name: str, proc: subprocess.Popen, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def is_ready(self) -> bool:
        return READY_LINE in self.log()

    def kill(self) -> None:
        """SIGKILL: the process dies wherever it is, with no cleanup (a crashed machine, the OOM killer)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM (Celery's warm shutdown), then SIGKILL if it has not exited in time."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _alive.discard(self.proc)


class CeleryWorkers:
    """Starts workers on one queue; `stop_all()` ends every one of them."""

    def __init__(self, env: dict[str, str], queue: str, log_dir: Path) -> None:
        self.env = env
        self.queue = queue
        self.log_dir = log_dir
        self.workers: list[CeleryWorker] = []

    def start(self, count: int, **extra_env: str) -> list[CeleryWorker]:
        """Start `count` workers at once (they import Django in parallel) and wait until each is ready."""
        started = [self._spawn(len(self.workers) + i, extra_env) for i in range(count)]
        self.workers.extend(started)
        deadline = time.monotonic() + START_TIMEOUT
        for worker in started:
            while not worker.is_ready():
                if worker.proc.poll() is not None:
                    raise RuntimeError(f"worker {worker.name} exited with {worker.proc.returncode}:\n{worker.log()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"worker {worker.name} not ready after {START_TIMEOUT} s:\n{worker.log()}")
                time.sleep(0.1)
        return started

    def _spawn(self, index: int, extra_env: dict[str, str]) -> CeleryWorker:
        name = f"w{index}-{self.queue}@%h"
        log_path = self.log_dir / f"worker-{index}.log"
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "project",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "-n",
            name,
            "-Q",
            self.queue,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env={**self.env, **extra_env},
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (only prctl, which is async-signal-safe)
            )
        _alive.add(proc)
        return CeleryWorker(name, proc, log_path)

    def by_pid(self, pid: int) -> CeleryWorker:
        return next(worker for worker in self.workers if worker.pid == pid)

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.terminate()
        for worker in self.workers:
            worker.stop()

    def logs(self) -> str:
        return "\n".join(f"----- {worker.name} (pid {worker.pid}) -----\n{worker.log()}" for worker in self.workers)


def clear_pending_nudges() -> None:
    """Forget "a run is queued" marks: a mark left by an earlier run would swallow this run's nudges.

    Projections', sagas' and the outbox's alike: a mark left behind by workers on a queue that is
    gone would also keep later (eager) tests' nudges from running anything for a minute.
    """
    keys = [pending_key(projection.name) for projection in projection_registry.of_kind(ASYNC)]
    keys += [saga_pending_key(name) for name in saga_registry.names()]
    django_cache.delete_many([*keys, OUTBOX_PENDING_KEY])


@contextmanager
def own_queue() -> Iterator[str]:
    """A fresh, empty queue name; this process's tasks go to it until the block ends, then it is wiped."""
    queue = f"es-test-{uuid.uuid4().hex[:12]}"
    previous = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge(queue)
    clear_pending_nudges()
    try:
        yield queue
    finally:
        app.conf.task_default_queue = previous
        _forget_queue(queue)
        clear_pending_nudges()


def _forget_queue(queue: str) -> None:
    """Leave nothing of the queue on the broker: messages, bindings, and the messages a killed worker held.

    A worker killed with a task in hand leaves it "unacked"; after the visibility
    timeout any later worker on this Redis would put it back into our dead queue.
    """
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        channel.queue_purge(queue)
        channel.queue_delete(queue)
        client = getattr(channel, "client", None)  # Redis transport only
        if client is None:
            return
        for key in client.scan_iter(match=f"*{queue}*"):
            client.delete(key)
        unacked, index = (
            getattr(channel, "unacked_key", "unacked"),
            getattr(channel, "unacked_index_key", "unacked_index"),
        )
        for tag, payload in client.hscan_iter(unacked):
            _message, *route = json.loads(payload)  # [message, exchange, routing key]
            if queue in route:
                client.hdel(unacked, tag)
                client.zrem(index, tag)


def print_uncaptured(request: pytest.FixtureRequest, text: str) -> None:
    """Print past pytest's capture: output of a teardown is not shown with the failed test's report."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def wait_for(condition: Callable[[], object], timeout: float, message: str, interval: float = 0.05) -> object:
    """Poll `condition` until it returns something truthy (which is returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{message} (after {timeout} s)")
        time.sleep(interval)


def run_writers(env: dict[str, str], count: int, *args: str, timeout: float = 60.0) -> list[str]:
    """Run `count` writer processes (`python -m tests.celery_writers ARGS`) at once; their stdout lines."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.celery_writers", "--seed", str(seed), *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (only prctl, which is async-signal-safe)
        )
        for seed in range(count)
    ]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, f"writer {proc.pid} exited with {proc.returncode}:\n{err}"
            outputs.append(out.strip().splitlines()[-1])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs


def pid_of_owner(lease_owner: str) -> int:
    """The process id in a lease owner ("host:pid:random", see runner.worker_id)."""
    return int(lease_owner.split(":")[-2])
