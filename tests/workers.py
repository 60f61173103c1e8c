"""Writer and reader loops for the concurrency and gap-free stress tests.

Run as `python -m tests.workers MODE ...` (the `run_worker` fixture does it):
the environment names the settings and the test database, and the worker
prints its result as one JSON line on stdout. Real processes are the point:
each has its own interpreter, connection and transactions, so writers truly
overlap, as web and worker processes do in production. The expected-version
loop also runs in threads of the test process.

Workers meet at a barrier directory: each drops a `ready-<pid>` file and waits
for `go`, so they all start together however long each took to import Django.
The test side uses `release()` and `results_of()`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import django
from django.db import transaction

from eventsourcing_app.exceptions import ConcurrencyError, StreamNotFoundError
from eventsourcing_app.store import EventStore, NewEvent

# How long any side waits for the others at the barrier before giving up.
BARRIER_TIMEOUT = 60.0
# Streams every random writer shares, so that appends to one stream also race.
SHARED_STREAMS = 16
EVENT_TYPE = "tests.StressTick"

Outcome = tuple[list[str], list[str], int]  # (committed event ids, rolled-back event ids, conflicts)


class _DeliberateRollback(Exception):
    """Raised inside a transaction after appending, so that it rolls back and leaves a hole in positions."""


# ------------------------------------------------------------------ barrier
def wait_for_go(barrier: Path) -> None:
    """Say this worker is ready, then wait until the test lets every worker go at once."""
    (barrier / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT
    while not (barrier / "go").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"worker {os.getpid()}: no go signal within {BARRIER_TIMEOUT} s")
        time.sleep(0.01)


def release(barrier: Path, procs: list[subprocess.Popen]) -> None:
    """Wait until every worker is ready, then let them all go; fail if one dies first."""
    deadline = time.monotonic() + BARRIER_TIMEOUT
    while len(list(barrier.glob("ready-*"))) < len(procs):
        for proc in procs:
            if proc.poll() is not None:
                _, stderr = proc.communicate()
                raise AssertionError(f"worker exited with {proc.returncode} before the start:\n{stderr}")
        if time.monotonic() > deadline:
            raise AssertionError(f"workers were not ready within {BARRIER_TIMEOUT} s")
        time.sleep(0.01)
    (barrier / "go").touch()


def results_of(procs: list[subprocess.Popen], *, timeout: float) -> list[dict[str, Any]]:
    """Each worker's JSON result; a worker that fails or hangs fails the test with its stderr."""
    results = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
            raise AssertionError(f"worker {proc.args} still running after {timeout} s:\n{stderr}") from None
        if proc.returncode != 0:
            raise AssertionError(f"worker {proc.args} exited with {proc.returncode}:\n{stderr}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


@contextmanager
def killed_on_exit(procs: list[subprocess.Popen]) -> Iterator[list[subprocess.Popen]]:
    """Kill the workers still running when the block ends, so a failed test leaves no process behind."""
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


# ------------------------------------------------------- expected versions
def write_with_expected_versions(stream_id: str, attempts: int) -> dict[str, list[list[Any]]]:
    """Read the stream's version and append one event expecting it, `attempts` times.

    Returns the (version, event id) pairs this writer got and the (expected,
    actual) versions of each ConcurrencyError it met.
    """
    store = EventStore()
    successes: list[list[Any]] = []  # [version, event id]
    conflicts: list[list[Any]] = []  # [expected, actual]; actual is None only inside a failed transaction
    for attempt in range(attempts):
        try:
            version = store.stream_info(stream_id).version
        except StreamNotFoundError:
            version = 0
        event = NewEvent(EVENT_TYPE, {"attempt": attempt})
        try:
            result = store.append(stream_id, [event], expected_version=version)
        except ConcurrencyError as error:
            conflicts.append([error.expected, error.actual])
        else:
            assert result.events[0].event_id == event.event_id
            successes.append([result.version, str(event.event_id)])
    return {"successes": successes, "conflicts": conflicts}


# ---------------------------------------------------------- random writes
def write_randomly(seconds: float, seed: int) -> dict[str, Any]:
    """Append to random streams in every way the store is used until `seconds` have passed.

    Plain appends, multi-event appends, appends in a transaction that stays open
    a little after the INSERT (as a command does more work), transactions over
    two streams, appends with an expected version and transactions rolled back
    on purpose. Returns the event ids that committed and those that
    rolled back.
    """
    rng = random.Random(seed)
    store = EventStore()
    actions: list[Callable[[EventStore, random.Random], Outcome]] = [
        _append_any,
        _append_then_work,
        _append_then_roll_back,
        _append_to_two_streams,
        _append_expecting_version,
    ]
    committed: list[str] = []
    rolled_back: list[str] = []
    conflicts = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        action = rng.choices(actions, weights=[4, 3, 2, 1, 1])[0]
        done, undone, conflicted = action(store, rng)
        committed += done
        rolled_back += undone
        conflicts += conflicted
    return {"committed": committed, "rolled_back": rolled_back, "conflicts": conflicts}


def _stream(rng: random.Random) -> str:
    """Mostly a shared stream, sometimes a new one."""
    if rng.random() < 0.8:
        return f"Stress-{rng.randrange(SHARED_STREAMS)}"
    return f"Stress-{uuid.uuid4()}"


def _events(rng: random.Random) -> list[NewEvent]:
    """One event most of the time, up to five sometimes."""
    count = 1 if rng.random() < 0.6 else rng.randint(2, 5)
    return [NewEvent(EVENT_TYPE, {"n": n}) for n in range(count)]


def _ids(events: list[NewEvent]) -> list[str]:
    return [str(event.event_id) for event in events]


def _append_any(store: EventStore, rng: random.Random) -> Outcome:
    events = _events(rng)
    store.append(_stream(rng), events)
    return _ids(events), [], 0


def _append_then_work(store: EventStore, rng: random.Random) -> Outcome:
    events = _events(rng)
    with transaction.atomic():
        store.append(_stream(rng), events)
        time.sleep(rng.random() * 0.005)
    return _ids(events), [], 0


def _append_then_roll_back(store: EventStore, rng: random.Random) -> Outcome:
    events = _events(rng)
    try:
        with transaction.atomic():
            store.append(_stream(rng), events)
            time.sleep(rng.random() * 0.005)
            raise _DeliberateRollback
    except _DeliberateRollback:
        return [], _ids(events), 0


def _append_to_two_streams(store: EventStore, rng: random.Random) -> Outcome:
    """One transaction over two streams, in random order, as a saga's step writes."""
    first, second = _events(rng), _events(rng)
    with transaction.atomic():
        store.append(_stream(rng), first)
        store.append(_stream(rng), second)
        time.sleep(rng.random() * 0.005)
    return _ids(first) + _ids(second), [], 0


def _append_expecting_version(store: EventStore, rng: random.Random) -> Outcome:
    stream_id = _stream(rng)
    try:
        version = store.stream_info(stream_id).version
    except StreamNotFoundError:
        version = 0
    events = _events(rng)
    try:
        store.append(stream_id, events, expected_version=version)
    except ConcurrencyError:
        return [], [], 1
    return _ids(events), [], 0


# -------------------------------------------------------------- log reader
def follow_log(stop_file: Path, batch_size: int) -> dict[str, Any]:
    """Follow the global log by position, as a projection does, until `stop_file` appears.

    The reader only ever moves on from the last position it read: it never
    re-scans, so an event that becomes visible below that position is missed,
    and the test sees it missing. After the stop signal it catches up once.
    Returns the (position, event id) pairs in the order read, and how many were
    read while writers were still running.
    """
    store = EventStore()
    seen: list[list[int | str]] = []
    last = 0
    while not stop_file.exists():
        batch = store.read_all(after=last, limit=batch_size)
        if not batch:
            time.sleep(0.0005)
            continue
        seen += [[event.position, str(event.event_id)] for event in batch]
        last = batch[-1].position
    live = len(seen)
    while batch := store.read_all(after=last, limit=batch_size):
        seen += [[event.position, str(event.event_id)] for event in batch]
        last = batch[-1].position
    return {"events": seen, "live": live}


# ------------------------------------------------------------- entry point
def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--barrier", type=Path, required=True, help="directory where workers meet before starting")
    parser = argparse.ArgumentParser(prog="python -m tests.workers", description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    versioned = modes.add_parser("versioned", parents=[common], help="append with expected versions to one stream")
    versioned.add_argument("stream_id")
    versioned.add_argument("--attempts", type=int, default=40)
    writer = modes.add_parser("writer", parents=[common], help="append to random streams for a while")
    writer.add_argument("--seconds", type=float, required=True)
    writer.add_argument("--seed", type=int, default=0)
    reader = modes.add_parser("reader", parents=[common], help="follow the global log until the stop file appears")
    reader.add_argument("--stop-file", type=Path, required=True)
    reader.add_argument("--batch-size", type=int, default=100)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Set Django up from the environment, run one worker loop and print its result as JSON."""
    args = _parser().parse_args(argv)
    django.setup()
    wait_for_go(args.barrier)
    if args.mode == "versioned":
        result = write_with_expected_versions(args.stream_id, args.attempts)
    elif args.mode == "writer":
        result = write_randomly(args.seconds, args.seed)
    else:
        result = follow_log(args.stop_file, args.batch_size)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
