"""`manage.py benchmark`: the event store's throughput beside the raw driver's, on the configured database.

Each figure is a small function registered in `FIGURES` with `@figure(name, unit, baseline=...)`;
it returns the runs it measured and the command prints their median. Figures with a baseline
also print their ratio to it: absolute rates vary between machines and runs, ratios taken in
one sitting hold. The raw baselines write the same rows into the same tables with the driver
alone (psycopg 3 or sqlite3), so a ratio is the cost of the store itself.

Concurrent figures run their writers in processes started with 'spawn' (the GIL would serialise
threads), each setting Django up itself against the parent's database.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import multiprocessing
import os
import queue
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.test import Client, override_settings
from django.urls import NoReverseMatch, reverse
from rest_framework import serializers

from ...aggregates import Aggregate, Repository, applies
from ...commands import Command, CommandContext, handles
from ...conf import es_settings
from ...exceptions import ProjectionNotFoundError
from ...store import NO_STREAM, DomainEvent, EventStore, Metadata
from .. import benchmark_urls

if TYPE_CHECKING:
    from ...projections import Projection

REPEATS = 3
EVENT_TABLE = "eventsourcing_event"
STREAM_TABLE = "eventsourcing_stream"
# Scratch copies of the two tables without the triggers, for raw_insert_concurrent_nolock.
SCRATCH_STREAMS = "benchmark_raw_streams"
SCRATCH_EVENTS = "benchmark_raw_events"
METADATA: Metadata = {"correlation_id": "6f1c2a9e-0d7b-4c2e-9b1a-3f5e8d2c4a10"}
# Longest wait for a writer process to answer (its first task includes setting Django up).
WRITER_TIMEOUT = 300.0
# The outbox figure's Redis when --redis-url is not given and the Celery broker is not Redis.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Orders per second the placers offer in the paced saga runs (--saga-rate): the saga throughput aimed at.
SAGA_PACED_RATE = 100.0
# Appends per transaction when the outbox figure writes its (untimed) events.
OUTBOX_APPENDS_PER_TRANSACTION = 100


# ---------------------------------------------------------------- what is appended
@dataclass(frozen=True)
class BenchmarkItemAdded(DomainEvent, event_type="benchmark.ItemAdded"):
    """The benchmark's only event: about 100 bytes of JSON, like a line of an order."""

    sku: str
    quantity: int
    unit_price: Decimal
    currency: str
    note: str


ITEM = BenchmarkItemAdded(
    sku="SKU-000123", quantity=3, unit_price=Decimal("19.99"), currency="EUR", note="gift wrap, leave at the door"
)
# The JSON the raw baselines store, as the store's codec writes ITEM: compact, Decimal as a string.
ITEM_JSON = json.dumps(dataclasses.asdict(ITEM), default=str, separators=(",", ":"))
METADATA_JSON = json.dumps(METADATA, separators=(",", ":"))


class BenchmarkItem(Aggregate):
    """A 10-event aggregate for load_aggregate; each run subclasses it with its own category."""

    quantity: int = 0

    @applies(BenchmarkItemAdded)
    def _item_added(self, event: BenchmarkItemAdded) -> None:
        self.quantity += event.quantity


# ---------------------------------------------------------------- measuring
@dataclass(frozen=True)
class Run:
    """One run of a figure: units of work done (events, aggregates) in so many seconds."""

    units: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.units / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        return f"{self.rate:.0f} ({self.units} in {self.seconds:.2f}s)"


@dataclass(frozen=True)
class Figure:
    """A registered figure: `measure(bench)` returns its runs; `baseline` names the figure it is compared to."""

    name: str
    unit: str
    measure: Callable[[Bench], list[Run]]
    baseline: str | None = None
    vendors: tuple[str, ...] = ("postgresql", "sqlite")


FIGURES: dict[str, Figure] = {}


def figure(
    name: str, unit: str, *, baseline: str | None = None, vendors: tuple[str, ...] = ("postgresql", "sqlite")
) -> Callable[[Callable[[Bench], list[Run]]], Callable[[Bench], list[Run]]]:
    """Register a figure; they run and print in the order they are registered."""

    def register(measure: Callable[[Bench], list[Run]]) -> Callable[[Bench], list[Run]]:
        FIGURES[name] = Figure(name, unit, measure, baseline, vendors)
        return measure

    return register


class FigureSkipped(Exception):
    """A figure cannot be measured here (a service it needs is unreachable); the message says why."""


class Bench:
    """What a figure needs: the database, the sizes asked for, and ways to time work on them.

    Every stream it writes is "<category>-<hex>" under one category made for this benchmark,
    so the benchmark's events never mix with anyone's streams.
    """

    def __init__(
        self,
        *,
        n: int,
        min_seconds: float,
        writers: int,
        alias: str,
        log: Callable[[str], None],
        redis_url: str = DEFAULT_REDIS_URL,
        orders: int = 1000,
        saga_rate: float = SAGA_PACED_RATE,
    ) -> None:
        self.n = n
        self.min_seconds = min_seconds
        self.writers = writers
        self.alias = alias
        self.log = log
        self.redis_url = redis_url
        self.orders = orders
        self.saga_rate = saga_rate
        # What a figure measured for others reported from the same runs (the saga figures).
        self.shared: dict[str, Any] = {}
        self.category = f"Bench{uuid.uuid4().hex[:12]}"
        self._pool: WriterPool | None = None

    @property
    def connection(self) -> Any:
        return connections[self.alias]

    @property
    def vendor(self) -> str:
        return self.connection.vendor

    def repeat(self, step: Callable[[], int], min_units: int) -> list[Run]:
        """REPEATS runs, each calling step() (which returns the units it did) until it has done
        at least `min_units` and lasted at least min_seconds."""
        runs = []
        for _ in range(REPEATS):
            self.settle()
            done, started = 0, time.perf_counter()
            while True:
                done += step()
                seconds = time.perf_counter() - started
                if done >= min_units and seconds >= self.min_seconds:
                    break
            runs.append(Run(done, seconds))
            self.log(f"  {runs[-1].rate:.0f}/s ({done} in {seconds:.1f}s)")
        return runs

    def concurrent(self, task: WriterTask, count_rows: Callable[[], int]) -> list[Run]:
        """REPEATS runs of the writer processes doing `task` together (see WriterPool.run)."""
        if self._pool is None:
            self.log(f"  starting {self.writers} writer processes")
            self._pool = WriterPool(self.writers, self.alias, dict(self.connection.settings_dict), self.log)
        runs = []
        for _ in range(REPEATS):
            self.settle()
            runs.append(self._pool.run(task, min_units=self.n, min_seconds=self.min_seconds, count_rows=count_rows))
            self.log(f"  {runs[-1].rate:.0f}/s ({runs[-1].units} in {runs[-1].seconds:.1f}s)")
        return runs

    def count_rows(self, table: str) -> Callable[[], int]:
        """A counter of this benchmark's rows in an events table (by the category index)."""

        def count() -> int:
            with self.connection.cursor() as cursor:
                cursor.execute(f"SELECT count(*) FROM {table} WHERE category = %s", [self.category])
                return cursor.fetchone()[0]

        return count

    def settle(self) -> None:
        """Start each run with fresh planner statistics (what autovacuum keeps on a live database:
        without them a table just filled by the benchmark gets poor plans) and the WAL written out
        (as the peer benchmark does), best effort: a CHECKPOINT needs a superuser or pg_checkpoint."""
        for sql in ("ANALYZE", "CHECKPOINT" if self.vendor == "postgresql" else "PRAGMA wal_checkpoint(TRUNCATE)"):
            with suppress(DatabaseError), self.connection.cursor() as cursor:
                cursor.execute(sql)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


# ---------------------------------------------------------------- the raw driver
class RawWriter:
    """Appends a new stream of `count` events with the driver alone: the rows EventStore.append
    writes (a stream row at version `count`, its event rows), in one transaction, without the
    store's guards (expected version, idempotent event ids) or its Python."""

    def __init__(self, *, streams: str, events: str, mark: str, json_cast: str) -> None:
        # The columns the store writes, tenant_id "" as for an append without a tenant.
        self.stream_sql = (
            f"INSERT INTO {streams} (stream_id, category, tenant_id, version, created_at, updated_at)"
            f" VALUES ({mark}, {mark}, '', {mark}, {mark}, {mark})"
        )
        self.event_sql = (
            f"INSERT INTO {events} (event_id, stream_id, category, version, event_type, schema_version, data, metadata,"
            f" tenant_id, recorded_at) VALUES ({mark}, {mark}, {mark}, {mark}, {mark}, 1, {mark}{json_cast},"
            f" {mark}{json_cast}, '', {mark})"
        )

    def append_new_stream(self, stream_id: str, category: str, count: int) -> int:
        """Write the stream and its `count` events; returns `count`."""
        raise NotImplementedError(".append_new_stream() must be overridden.")

    def close(self) -> None:
        raise NotImplementedError(".close() must be overridden.")

    @staticmethod
    def for_database(vendor: str, settings_dict: dict[str, Any], *, streams: str, events: str) -> RawWriter:
        if vendor == "postgresql":
            return PostgresRawWriter(settings_dict, streams=streams, events=events)
        if vendor == "sqlite":
            return SqliteRawWriter(settings_dict, streams=streams, events=events)
        raise CommandError(f"The raw baselines support PostgreSQL and SQLite, not {vendor}.")


# Connection OPTIONS that are Django's own, not libpq's.
_DJANGO_ONLY_OPTIONS = frozenset({"isolation_level", "assume_role", "server_side_binding", "pool"})


class PostgresRawWriter(RawWriter):
    """psycopg 3 on its own connection (autocommit, parameters from the Django settings).

    One event: one statement (the stream row in a CTE), a transaction of its own, as the
    store's append on PostgreSQL. More: BEGIN, the stream row, executemany of the event rows, COMMIT.
    The gap-free trigger on eventsourcing_event fires for these inserts too: it is part of the schema.
    """

    def __init__(self, settings_dict: dict[str, Any], *, streams: str, events: str) -> None:
        super().__init__(streams=streams, events=events, mark="%s", json_cast="::jsonb")
        try:
            import psycopg
        except ImportError as error:
            raise CommandError(
                "The raw PostgreSQL baselines need psycopg 3 (pip install 'psycopg[binary]')."
            ) from error
        options = {k: v for k, v in settings_dict.get("OPTIONS", {}).items() if k not in _DJANGO_ONLY_OPTIONS}
        params = {
            "dbname": settings_dict["NAME"],
            "user": settings_dict.get("USER"),
            "password": settings_dict.get("PASSWORD"),
            "host": settings_dict.get("HOST"),
            "port": settings_dict.get("PORT"),
            **options,
        }
        self.conn = psycopg.connect(**{k: v for k, v in params.items() if v not in (None, "")}, autocommit=True)
        self.single_sql = f"WITH s AS ({self.stream_sql}) {self.event_sql}"

    def append_new_stream(self, stream_id: str, category: str, count: int) -> int:
        now = datetime.now(UTC)
        rows = [
            (uuid.uuid4(), stream_id, category, v, ITEM.event_type, ITEM_JSON, METADATA_JSON, now)
            for v in range(1, count + 1)
        ]
        if count == 1:
            self.conn.execute(self.single_sql, (stream_id, category, 1, now, now, *rows[0]))
            return 1
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.execute(self.stream_sql, (stream_id, category, count, now, now))
            cursor.executemany(self.event_sql, rows)
        return count

    def close(self) -> None:
        self.conn.close()


class SqliteRawWriter(RawWriter):
    """sqlite3 on its own connection with the Django settings' timeout, init_command PRAGMAs
    (WAL…) and transaction mode (BEGIN IMMEDIATE): BEGIN, the stream row, the event row(s)
    (executemany when more than one), COMMIT. Ids and timestamps are stored as Django stores them."""

    def __init__(self, settings_dict: dict[str, Any], *, streams: str, events: str) -> None:
        super().__init__(streams=streams, events=events, mark="?", json_cast="")
        options = settings_dict.get("OPTIONS", {})
        self.conn = sqlite3.connect(settings_dict["NAME"], timeout=options.get("timeout", 5), isolation_level=None)
        for statement in options.get("init_command", "").split(";"):
            if statement.strip():
                self.conn.execute(statement)
        self.begin = f"BEGIN {options.get('transaction_mode') or ''}".strip()

    def append_new_stream(self, stream_id: str, category: str, count: int) -> int:
        now = str(datetime.now(UTC).replace(tzinfo=None))
        rows = [
            (uuid.uuid4().hex, stream_id, category, v, ITEM.event_type, ITEM_JSON, METADATA_JSON, now)
            for v in range(1, count + 1)
        ]
        self.conn.execute(self.begin)
        try:
            self.conn.execute(self.stream_sql, (stream_id, category, count, now, now))
            if count == 1:
                self.conn.execute(self.event_sql, rows[0])
            else:
                self.conn.executemany(self.event_sql, rows)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return count

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------- writer processes
@dataclass(frozen=True)
class WriterTask:
    """What each writer process does in a concurrent run: "append" (EventStore.append) or "raw"
    (RawWriter into `streams`/`events`), one new single-event stream per transaction."""

    kind: str
    category: str
    streams: str = STREAM_TABLE
    events: str = EVENT_TABLE


@dataclass(frozen=True)
class _Channels:
    """The shared objects a writer process is started with."""

    tasks: Any  # this writer's queue of WriterTask (None: exit)
    results: Any  # ("ready" | "done" | "error", writer index, end time or (error line, traceback))
    counts: Any  # units each writer has done in the current run
    go: Any
    stop: Any


class WriterPool:
    """`writers` processes, each with its own database connection, kept for all concurrent runs.

    A run hands each writer a task; each sets up (connection, one untimed unit) and reports
    ready; then all start together on one event and append until the run has lasted
    min_seconds and done min_units in all. The run's time is from the start to the last
    writer's last completed unit, and the rows the table gained must equal the units counted.
    """

    def __init__(self, writers: int, alias: str, settings_dict: dict[str, Any], log: Callable[[str], None]) -> None:
        self.log = log
        settings_module = os.environ.get("DJANGO_SETTINGS_MODULE")
        if not settings_module:
            raise CommandError("Concurrent figures need DJANGO_SETTINGS_MODULE, so the writer processes can set up.")
        context = multiprocessing.get_context("spawn")
        self.counts = context.RawArray("q", writers)
        self.go, self.stop, self.results = context.Event(), context.Event(), context.Queue()
        self.tasks = [context.SimpleQueue() for _ in range(writers)]
        self.processes = []
        for index in range(writers):
            channels = _Channels(self.tasks[index], self.results, self.counts, self.go, self.stop)
            process = context.Process(
                target=_writer_process,
                args=(index, settings_module, alias, settings_dict, channels),
                name=f"benchmark-writer-{index}",
                daemon=True,
            )
            process.start()
            self.processes.append(process)

    def run(self, task: WriterTask, *, min_units: int, min_seconds: float, count_rows: Callable[[], int]) -> Run:
        for tasks in self.tasks:
            tasks.put(task)
        answers = self._collect(len(self.processes))
        ready = sum(1 for kind, _, _ in answers if kind == "ready")
        if ready < len(answers):
            self.stop.set()
            self.go.set()
            self._finish(self._collect(ready))
            self._raise(answers)
        for index in range(len(self.counts)):
            self.counts[index] = 0
        rows_before = count_rows()
        started = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on the machine
        self.go.set()
        early = self._wait(started, min_units, min_seconds)
        self.stop.set()
        answers = self._finish(early + self._collect(len(self.processes) - len(early)))
        self._raise(answers)
        units, rows = sum(self.counts), count_rows() - rows_before
        if rows != units:
            raise CommandError(f"The writers counted {units} appends but {rows} rows were added.")
        return Run(units, max(end for _, _, end in answers) - started)

    def _wait(self, started: float, min_units: int, min_seconds: float) -> list[tuple]:
        """Until the run is long enough; returns early answers (only a failing writer answers mid-run)."""
        while time.monotonic() - started < min_seconds or sum(self.counts) < min_units:
            try:
                return [self.results.get(timeout=0.01)]
            except queue.Empty:
                self._check_alive()
        return []

    def _collect(self, count: int) -> list[tuple]:
        answers = []
        deadline = time.monotonic() + WRITER_TIMEOUT
        while len(answers) < count:
            try:
                answers.append(self.results.get(timeout=0.5))
            except queue.Empty:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise CommandError(f"A writer process did not answer within {WRITER_TIMEOUT:.0f}s.") from None
        return answers

    def _finish(self, answers: list[tuple]) -> list[tuple]:
        self.go.clear()
        self.stop.clear()
        return answers

    def _check_alive(self) -> None:
        for process in self.processes:
            if not process.is_alive():
                raise CommandError(f"Writer process {process.name} exited (code {process.exitcode}).")

    def _raise(self, answers: list[tuple]) -> None:
        for kind, index, detail in answers:
            if kind == "error":
                summary, trace = detail
                self.log(trace)
                raise CommandError(f"Writer process {index} failed: {summary}")

    def close(self) -> None:
        """Stop the writers, even mid-run (an interrupted benchmark), and wait for them to exit."""
        self.stop.set()
        self.go.set()
        for tasks, process in zip(self.tasks, self.processes, strict=True):
            if process.is_alive():
                tasks.put(None)
        deadline = time.monotonic() + 10
        while any(process.is_alive() for process in self.processes) and time.monotonic() < deadline:
            # Drained, so no writer waits to flush its last answers into the pipe.
            with suppress(queue.Empty):
                self.results.get(timeout=0.1)
        for process in self.processes:
            if process.is_alive():
                process.terminate()
            process.join()


def _writer_process(index: int, settings_module: str, alias: str, settings_dict: dict[str, Any], ch: _Channels) -> None:
    """A writer process's main: set Django up on the parent's database, then serve tasks until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the writers
    failure = None
    try:
        os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
        import django

        django.setup()
        connections[alias].settings_dict.update(settings_dict)
    except Exception as error:
        failure = _failure(error)
    while (task := ch.tasks.get()) is not None:
        if failure:
            ch.results.put(("error", index, failure))
            continue
        try:
            step, close = _writer_step(task, alias, settings_dict)
        except Exception as error:
            ch.results.put(("error", index, _failure(error)))
            continue
        try:
            step()  # untimed: connection open, statements warmed up
            ch.results.put(("ready", index, None))
            ch.go.wait()
            done = 0
            while not ch.stop.is_set():
                done += step()
                ch.counts[index] = done
            ch.results.put(("done", index, time.monotonic()))
        except Exception as error:
            ch.results.put(("error", index, _failure(error)))
        finally:
            close()


def _failure(error: Exception) -> tuple[str, str]:
    """A writer's error as (its first line, the full traceback), for the parent to report."""
    return traceback.format_exception_only(error)[0].strip().splitlines()[0], traceback.format_exc()


def _writer_step(
    task: WriterTask, alias: str, settings_dict: dict[str, Any]
) -> tuple[Callable[[], int], Callable[[], None]]:
    """(step, close) for a task: step appends one event to a new stream, in its own transaction."""
    if task.kind == "append":
        return _append_step(EventStore(alias), task.category, 1), connections[alias].close
    writer = RawWriter.for_database(connections[alias].vendor, settings_dict, streams=task.streams, events=task.events)
    return _raw_step(writer, task.category, 1), writer.close


def _append_step(store: EventStore, category: str, count: int) -> Callable[[], int]:
    events = [ITEM] * count

    def step() -> int:
        store.append(f"{category}-{uuid.uuid4().hex}", events, expected_version=NO_STREAM, metadata=METADATA)
        return count

    return step


def _raw_step(writer: RawWriter, category: str, count: int) -> Callable[[], int]:
    def step() -> int:
        return writer.append_new_stream(f"{category}-{uuid.uuid4().hex}", category, count)

    return step


@contextmanager
def _raw_writer(bench: Bench) -> Iterator[RawWriter]:
    settings_dict = dict(bench.connection.settings_dict)
    writer = RawWriter.for_database(bench.vendor, settings_dict, streams=STREAM_TABLE, events=EVENT_TABLE)
    try:
        yield writer
    finally:
        writer.close()


# ---------------------------------------------------------------- the figures
@figure("append_single", "events/s", baseline="raw_insert_single")
def append_single(bench: Bench) -> list[Run]:
    """EventStore.append of one event to a new stream (expected NO_STREAM), in the append's own transaction."""
    return bench.repeat(_append_step(EventStore(bench.alias), bench.category, 1), bench.n)


@figure("raw_insert_single", "events/s")
def raw_insert_single(bench: Bench) -> list[Run]:
    """The driver alone writing what append_single writes: a new stream row and its one event row,
    one transaction each (see PostgresRawWriter, SqliteRawWriter)."""
    with _raw_writer(bench) as writer:
        return bench.repeat(_raw_step(writer, bench.category, 1), bench.n)


@figure("append_concurrent", "events/s", baseline="raw_insert_concurrent")
def append_concurrent(bench: Bench) -> list[Run]:
    """--writers processes at once, each with its own connection, each as append_single (gap-free log in force)."""
    return bench.concurrent(WriterTask("append", bench.category), bench.count_rows(EVENT_TABLE))


@figure("raw_insert_concurrent", "events/s", baseline="raw_insert_concurrent_nolock")
def raw_insert_concurrent(bench: Bench) -> list[Run]:
    """--writers processes at once, each with its own raw connection, each as raw_insert_single (the
    real tables: on PostgreSQL their gap-free trigger marks these inserts in flight too)."""
    return bench.concurrent(WriterTask("raw", bench.category), bench.count_rows(EVENT_TABLE))


@figure("raw_insert_concurrent_nolock", "events/s", vendors=("postgresql",))
def raw_insert_concurrent_nolock(bench: Bench) -> list[Run]:
    """As raw_insert_concurrent, into scratch copies of the two tables (same columns, indexes and
    foreign key) without the gap-free trigger, dropped afterwards: what the gap-free trigger costs."""
    with _scratch_tables(bench):
        task = WriterTask("raw", bench.category, streams=SCRATCH_STREAMS, events=SCRATCH_EVENTS)
        return bench.concurrent(task, bench.count_rows(SCRATCH_EVENTS))


@figure("append_batch", "events/s", baseline="raw_insert_batch")
def append_batch(bench: Bench) -> list[Run]:
    """EventStore.append of 10 events to a new stream (expected NO_STREAM), one transaction each."""
    return bench.repeat(_append_step(EventStore(bench.alias), bench.category, 10), bench.n)


@figure("raw_insert_batch", "events/s")
def raw_insert_batch(bench: Bench) -> list[Run]:
    """The driver alone writing what append_batch writes: a new stream row and executemany of its
    10 event rows, one transaction each."""
    with _raw_writer(bench) as writer:
        return bench.repeat(_raw_step(writer, bench.category, 10), bench.n)


@figure("load_aggregate", "aggregates/s")
def load_aggregate(bench: Bench) -> list[Run]:
    """Repository.load of 10-event aggregates, no snapshot, cycling over N/10 of them appended beforehand (untimed)."""
    item_class = type(bench.category, (BenchmarkItem,), {"category": bench.category, "__module__": __name__})
    repository: Repository[BenchmarkItem] = Repository(item_class, store=EventStore(bench.alias))
    aggregates = max(1, -(-bench.n // 10))  # N events' worth per run
    ids = [uuid.uuid4().hex for _ in range(aggregates)]
    for aggregate_id in ids:
        repository.store.append(
            f"{bench.category}-{aggregate_id}", [ITEM] * 10, expected_version=NO_STREAM, metadata=METADATA
        )
    position = 0

    def step() -> int:
        nonlocal position
        item = repository.load(ids[position % len(ids)])
        position += 1
        if item.version != 10:
            raise CommandError(f"Loaded {item.stream_id} at version {item.version}, not 10.")
        return 1

    return bench.repeat(step, aggregates)


class BenchmarkAddItem(Command, command_type="BenchmarkAddItem"):
    """The command of command_http: start a new benchmark aggregate with one ItemAdded event."""

    item_id = serializers.CharField(max_length=64)
    category = serializers.CharField(max_length=50)


@handles(BenchmarkAddItem)
def _add_item(command: BenchmarkAddItem, context: CommandContext) -> None:
    item_class = type(command.category, (BenchmarkItem,), {"category": command.category, "__module__": __name__})
    item = item_class(command.item_id)
    item.raise_event(ITEM)
    context.save(item)


@figure("command_http", "commands/s", baseline="append_single")
def command_http(bench: Bench) -> list[Run]:
    """POST /api/commands/BenchmarkAddItem/ through Django's test client (in-process WSGI: URL routing,
    Django and DRF middleware, session authentication, the command permission, throttling, JSON parsing)
    and the full command middleware chain; each appends one event to a new stream, as append_single."""
    try:
        url = reverse("eventsourcing:command", kwargs={"command_type": BenchmarkAddItem.command_type})
    except NoReverseMatch:
        raise CommandError("command_http needs the API's URLs: include('eventsourcing_app.api.urls')") from None
    with _logged_in_client() as client:
        return bench.repeat(partial(_post, client, url, bench.category, "command_http"), bench.n)


@figure("http_floor", "requests/s", baseline="append_single")
def http_floor(bench: Bench) -> list[Run]:
    """The same POST, client and session as command_http, to a DRF view that only authenticates, parses the
    body and answers (no command, no database write): Django's and DRF's share of command_http, and so the
    most command_http could reach with an append that cost nothing."""
    with _logged_in_client() as client, override_settings(ROOT_URLCONF=benchmark_urls.__name__):
        return bench.repeat(
            partial(_post, client, f"/{benchmark_urls.FLOOR_PATH}", bench.category, "http_floor"), bench.n
        )


@contextmanager
def _logged_in_client() -> Iterator[Client]:
    """Django's test client, logged in (a session) as a superuser made for the figure and deleted after it."""
    user = get_user_model().objects.create_superuser(f"benchmark-{uuid.uuid4().hex[:12]}", "", None)
    host = next((h for h in settings.ALLOWED_HOSTS if h and "*" not in h and not h.startswith(".")), "localhost")
    client = Client(HTTP_HOST=host)
    client.force_login(user)
    try:
        yield client
    finally:
        client.logout()
        user.delete()


def _post(client: Client, url: str, category: str, figure_name: str) -> int:
    """One POST of a BenchmarkAddItem body; it must answer 200."""
    body = json.dumps({"item_id": uuid.uuid4().hex, "category": category})
    response = client.post(url, data=body, content_type="application/json")
    if response.status_code != 200:
        raise CommandError(f"{figure_name}: {response.status_code} {response.content[:300]!r}")
    return 1


# ---------------------------------------------------------------- projections
def _benchmark_projection() -> tuple[Projection, Callable[[int], Iterable[tuple[str, list[DomainEvent]]]]]:
    """The projection measured by catchup/rebuild and the function making its events (settings)."""
    from ...projections import projection_registry  # models load once Django is set up (writer processes)

    name, make_events = es_settings.BENCHMARK_PROJECTION, es_settings.BENCHMARK_EVENTS
    if not name or make_events is None:
        raise CommandError(
            "catchup, rebuild and raw_read need EVENTSOURCING['BENCHMARK_PROJECTION'] (a projection name) and "
            "['BENCHMARK_EVENTS'] (a function count -> (stream_id, events) pairs); see docs/benchmarks.md."
        )
    try:
        return projection_registry.lookup(name), make_events
    except ProjectionNotFoundError as error:
        raise CommandError(str(error)) from None


def _append_projection_events(bench: Bench, count: int) -> int:
    """Append about `count` events for the benchmark projection, untimed, and nothing else.

    Their streams are renamed into the benchmark's own category, like every stream it writes.
    No append or commit hook runs: the events are the projection's to read, and must leave no
    outbox messages, inline read-model rows or nudges behind (the example shop's outbox sends
    every OrderConfirmed to a Celery task: tens of thousands of them queued ahead of the saga figure).
    """
    _, make_events = _benchmark_projection()
    store = EventStore(bench.alias)
    appended = 0
    hooks_off = {"APPEND_HOOKS": [], "COMMIT_HOOKS": []}
    with override_settings(EVENTSOURCING={**(settings.EVENTSOURCING or {}), **hooks_off}):
        for stream_id, events in make_events(count):
            store.append(f"{bench.category}-{stream_id.partition('-')[2]}", events, expected_version=NO_STREAM)
            appended += len(events)
    return appended


@figure("raw_read", "events/s")
def raw_read(bench: Bench) -> list[Run]:
    """The driver alone reading the benchmark projection's events (event_type IN its types) in position
    order, in keyset batches of PROJECTION_BATCH_SIZE: the read side of catchup and rebuild."""
    projection, _ = _benchmark_projection()
    if not EventStore(bench.alias).read_all(event_types=list(projection.event_types), limit=1):
        _append_projection_events(bench, bench.n)
    reader = RawReader.for_database(bench.vendor, dict(bench.connection.settings_dict))
    store, types, size = EventStore(bench.alias), list(projection.event_types), es_settings.PROJECTION_BATCH_SIZE
    bench.settle()
    try:
        return [_timed(lambda: reader.read_all(store, types, size)) for _ in range(REPEATS)]
    finally:
        reader.close()


@figure("catchup", "events/s", baseline="raw_read")
def catchup(bench: Bench) -> list[Run]:
    """The async runner bringing the benchmark projection (a Django-model read model) up to date with N new
    events: batches of PROJECTION_BATCH_SIZE, each applied with its checkpoint in one transaction."""
    from ...models import Checkpoint, CheckpointStatus  # models load once Django is set up (writer processes)
    from ...projections import ProjectionRunner, pending_events

    projection, _ = _benchmark_projection()
    store = EventStore(bench.alias)
    runs = []
    for _ in range(REPEATS):
        start = store.head_position()
        _append_projection_events(bench, bench.n)
        Checkpoint.objects.using(bench.alias).update_or_create(
            name=projection.name,
            defaults={"position": start, "status": CheckpointStatus.RUNNING, "lease_owner": "", "last_error": ""},
        )
        pending = pending_events(projection, start, store)
        bench.settle()
        runner = ProjectionRunner(projection, store=store)
        run = _timed(lambda runner=runner, pending=pending: (runner.run(), pending)[1])
        _check_caught_up(projection, store)
        runs.append(run)
        bench.log(f"  {run.rate:.0f}/s ({run.units} in {run.seconds:.1f}s)")
    return runs


@figure("rebuild", "events/s", baseline="raw_read")
def rebuild_figure(bench: Bench) -> list[Run]:
    """rebuild() of the benchmark projection: clear its read model and replay the whole log into it
    (the events it wants; all that catchup and raw_read appended are in it)."""
    from ...projections import pending_events, rebuild

    projection, _ = _benchmark_projection()
    store = EventStore(bench.alias)
    runs = []
    for _ in range(REPEATS):
        pending = pending_events(projection, 0, store)
        bench.settle()
        run = _timed(lambda pending=pending: (rebuild(projection.name, store=store), pending)[1])
        _check_caught_up(projection, store)
        runs.append(run)
        bench.log(f"  {run.rate:.0f}/s ({run.units} in {run.seconds:.1f}s)")
    return runs


# ---------------------------------------------------------------- outbox
@figure("outbox", "messages/s")
def outbox_figure(bench: Bench) -> list[Run]:
    """The outbox processor draining N messages (one event per stream, appended untimed, routed to a
    Redis Streams destination made for the run) into a Redis stream of its own: claim, one XADD
    pipeline per round, record; destination rows and stream deleted afterwards (--redis-url)."""
    from ...models import OutboxMessage
    from ...outbox import OutboxProcessor

    destination = f"benchmark-{bench.category.lower()}"
    stream = f"eventsourcing-benchmark-{uuid.uuid4().hex}"
    client = _redis_client(bench.redis_url)
    runs = []
    try:
        with override_settings(EVENTSOURCING=_outbox_settings(destination, bench.redis_url, stream)):
            for _ in range(REPEATS):
                _append_outbox_events(bench, bench.n)
                bench.settle()
                with OutboxProcessor(destinations=[destination], using=bench.alias) as processor:
                    run = _timed(lambda processor=processor: processor.run().delivered)
                if run.units != bench.n:
                    raise CommandError(f"outbox: {run.units} of {bench.n} messages were delivered.")
                runs.append(run)
                bench.log(f"  {run.rate:.0f}/s ({run.units} in {run.seconds:.1f}s)")
        if (entries := client.xlen(stream)) != REPEATS * bench.n:
            raise CommandError(f"outbox: the Redis stream holds {entries} entries, not {REPEATS * bench.n}.")
    finally:
        OutboxMessage.objects.using(bench.alias).filter(destination=destination).delete()
        client.delete(stream)
        client.close()
    return runs


def _redis_client(url: str) -> Any:
    """A client of the figure's Redis, or FigureSkipped saying why there is none."""
    from ...outbox.publishers._urls import redact

    try:
        import redis
    except ImportError:
        raise FigureSkipped("the redis package is not installed") from None
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)
        client.ping()
    except (redis.RedisError, ValueError) as error:
        raise FigureSkipped(f"Redis is unreachable at {redact(url)} ({error}); see --redis-url") from None
    return client


def _outbox_settings(destination: str, redis_url: str, stream: str) -> dict[str, Any]:
    """EVENTSOURCING with one Redis Streams destination, the benchmark event routed to it, no nudges."""
    current = settings.EVENTSOURCING or {}
    hook = "eventsourcing_app.outbox.hooks.write_outbox_messages"
    append_hooks = list(current.get("APPEND_HOOKS", es_settings.defaults["APPEND_HOOKS"]))
    return {
        **current,
        "APPEND_HOOKS": append_hooks if hook in append_hooks else [*append_hooks, hook],
        "COMMIT_HOOKS": [],  # the figure runs the processor itself
        "OUTBOX_DESTINATIONS": {
            destination: {
                "PUBLISHER": "eventsourcing_app.outbox.publishers.redis_streams.RedisStreamsPublisher",
                "OPTIONS": {"url": redis_url, "stream": stream},
            }
        },
        "OUTBOX_ROUTES": [{"events": [ITEM.event_type], "destination": destination}],
    }


def _append_outbox_events(bench: Bench, count: int) -> None:
    """`count` single-event streams, OUTBOX_APPENDS_PER_TRANSACTION appends per transaction (untimed)."""
    store = EventStore(bench.alias)
    for start in range(0, count, OUTBOX_APPENDS_PER_TRANSACTION):
        with transaction.atomic(using=bench.alias):
            for _ in range(min(OUTBOX_APPENDS_PER_TRANSACTION, count - start)):
                store.append(
                    f"{bench.category}-{uuid.uuid4().hex}", [ITEM], expected_version=NO_STREAM, metadata=METADATA
                )


# ---------------------------------------------------------------- sagas
# The saga figures: threads placing the orders, Celery workers running the saga, how often the
# read model is polled for outcomes, and how long a run may go without an order reaching one.
SAGA_PLACERS = 4
SAGA_WORKERS = 2
SAGA_POLL_SECONDS = 0.005
SAGA_STALL_SECONDS = 60.0
# Orders of the untimed warm-up, which proves the workers share this database and queue.
SAGA_WARMUP_ORDERS = 10
WORKER_START_SECONDS = 60.0
WORKER_STOP_SECONDS = 10.0


@dataclass(frozen=True)
class Reading(Run):
    """A run of a figure that is a reading (a latency in ms), not a rate: `value`, over `units` orders."""

    value: float = 0.0

    @property
    def rate(self) -> float:
        return self.value

    def describe(self) -> str:
        return f"{self.value:.0f} ({self.units} orders in {self.seconds:.2f}s)"


@dataclass(frozen=True)
class SagaRun:
    """One run of the saga figures: orders placed, seconds from the first placing to the last outcome seen,
    each order's latency (ms, sorted), how many ended with each final status, and the seconds the placing
    took."""

    orders: int
    seconds: float
    latencies: list[float]
    outcomes: dict[str, int]
    placing: float

    def percentile(self, percent: float) -> float:
        """Nearest rank: the latency that `percent`% of the orders did not exceed."""
        rank = max(1, -(-len(self.latencies) * percent // 100))
        return self.latencies[int(rank) - 1]


@figure("saga_orders", "orders/s")
def saga_orders(bench: Bench) -> list[Run]:
    """--orders orders (1000) through the saga of EVENTSOURCING['BENCHMARK_SAGA'] (the example project:
    OrderFulfillment, reserve, authorise, confirm), placed with dispatch by 4 threads as fast as they go and
    run by 2 `celery worker` processes started for it on a queue of its own, moved on by on-commit nudges
    alone (no beat): orders over the time from the first placing to the last outcome seen in the read model.
    Needs a Celery broker (skipped without one)."""
    return [Run(run.orders, run.seconds) for run in _saga_runs(bench)]


@figure("saga_p50_ms", "ms")
def saga_p50_ms(bench: Bench) -> list[Run]:
    """The median order's latency in the saga_orders runs: from the return of its PlaceOrder dispatch
    (committed) to its final status first seen in the read model, which is polled every 5 ms."""
    return [Reading(run.orders, run.seconds, run.percentile(50)) for run in _saga_runs(bench)]


@figure("saga_p95_ms", "ms")
def saga_p95_ms(bench: Bench) -> list[Run]:
    """The 95th percentile of the same latencies."""
    return [Reading(run.orders, run.seconds, run.percentile(95)) for run in _saga_runs(bench)]


@figure("saga_paced_p50_ms", "ms")
def saga_paced_p50_ms(bench: Bench) -> list[Run]:
    """The median order's latency, measured as saga_p50_ms, in runs where the placers offer --saga-rate
    orders/s (100) instead of all at once: the latency at that load, not the time an order waits behind
    a burst (which is the burst's size over saga_orders)."""
    return [Reading(run.orders, run.seconds, run.percentile(50)) for run in _saga_runs(bench, paced=True)]


@figure("saga_paced_p95_ms", "ms")
def saga_paced_p95_ms(bench: Bench) -> list[Run]:
    """The 95th percentile of the paced runs' latencies."""
    return [Reading(run.orders, run.seconds, run.percentile(95)) for run in _saga_runs(bench, paced=True)]


def _saga_runs(bench: Bench, *, paced: bool = False) -> list[SagaRun]:
    """The burst or the paced saga runs, all measured once with one pool of workers (or why they are skipped)."""
    runs = bench.shared.get("saga")
    if runs is None:
        try:
            runs = _measure_sagas(bench)
        except FigureSkipped as skipped:
            runs = skipped
        bench.shared["saga"] = runs
    if isinstance(runs, FigureSkipped):
        raise runs
    burst, paced_runs = runs
    if paced and not paced_runs:
        raise FigureSkipped("--saga-rate is 0")
    return paced_runs if paced else burst


def _measure_sagas(bench: Bench) -> tuple[list[SagaRun], list[SagaRun]]:
    workload = es_settings.BENCHMARK_SAGA
    if workload is None:
        raise FigureSkipped("EVENTSOURCING['BENCHMARK_SAGA'] is not set (see docs/benchmarks.md)")
    with CeleryWorkerPool(_celery_app(), SAGA_WORKERS, bench.log) as workers:
        try:
            _saga_run(workload, min(SAGA_WARMUP_ORDERS, bench.orders), f"{bench.category}-warmup")
        except CommandError as error:
            raise CommandError(
                f"saga_orders: the warm-up orders did not go through ({error}). Do the workers use this database, "
                "and do they send their tasks to the queue named by CELERY_TASK_DEFAULT_QUEUE in their "
                f"environment? Their logs end:\n{workers.log_tail()}"
            ) from None
        burst = [_timed_saga_run(bench, workers, workload, f"r{index}") for index in range(REPEATS)]
        paced = []
        if bench.saga_rate > 0:
            bench.log(f"  paced runs: {bench.saga_rate:g} orders/s offered")
            paced = [
                _timed_saga_run(bench, workers, workload, f"p{index}", rate=bench.saga_rate) for index in range(REPEATS)
            ]
    return burst, paced


def _timed_saga_run(
    bench: Bench, workers: CeleryWorkerPool, workload: Any, name: str, *, rate: float | None = None
) -> SagaRun:
    workers.wait_until_idle(bench.alias)
    bench.settle()
    run = _saga_run(workload, bench.orders, f"{bench.category}-{name}", rate=rate)
    bench.log(
        f"  {run.orders / run.seconds:.0f}/s ({run.orders} in {run.seconds:.1f}s, placed in {run.placing:.1f}s), "
        f"p50 {run.percentile(50):.0f} ms, p95 {run.percentile(95):.0f} ms, max {run.latencies[-1]:.0f} ms; "
        f"outcomes {run.outcomes}"
    )
    return run


def _saga_run(workload: Any, count: int, tag: str, *, rate: float | None = None) -> SagaRun:
    """Place `count` orders from SAGA_PLACERS threads while this thread polls the read model for their outcomes.

    With a `rate`, order i is placed no earlier than i / rate seconds after the start (an open-loop
    arrival schedule: a slow saga does not slow the arrivals down), else as fast as the placers go.
    """
    workload.prepare(count, tag)
    committed: dict[str, float] = {}  # order id -> when its dispatch returned (written by the placers)
    indexes = itertools.count()
    errors: list[BaseException] = []
    stop = threading.Event()

    def place() -> None:
        try:
            while not stop.is_set() and (index := next(indexes)) < count:
                if rate and (wait := started + index / rate - time.monotonic()) > 0:
                    time.sleep(wait)
                order_id = workload.start(tag, index)
                committed[order_id] = time.monotonic()
        except BaseException as error:  # reported by the polling thread
            errors.append(error)
        finally:
            connections.close_all()  # this thread's connections

    started = time.monotonic()
    placers = [threading.Thread(target=place, name=f"saga-placer-{n}", daemon=True) for n in range(SAGA_PLACERS)]
    for placer in placers:
        placer.start()
    try:
        final = _poll_outcomes(workload, count, committed, errors)
    finally:
        stop.set()
        for placer in placers:
            placer.join()
    latencies = sorted((at - committed[order_id]) * 1000 for order_id, (_, at) in final.items())
    outcomes: dict[str, int] = {}
    for status, _ in final.values():
        outcomes[status] = outcomes.get(status, 0) + 1
    placing = max(committed.values()) - started
    return SagaRun(count, max(at for _, at in final.values()) - started, latencies, outcomes, placing)


def _poll_outcomes(
    workload: Any, count: int, committed: dict[str, float], errors: list[BaseException]
) -> dict[str, tuple[str, float]]:
    """Each order's final status and when it was first seen, polling every SAGA_POLL_SECONDS.

    It gives up when the placers fail, or when for SAGA_STALL_SECONDS no order reached a final
    status and no checkpoint (of a saga or an async projection) moved: nothing is being done.
    """
    from ...models import Checkpoint

    final: dict[str, tuple[str, float]] = {}
    progress = checked = time.monotonic()
    positions = None
    while len(final) < count:
        if errors:
            raise CommandError(f"saga_orders: placing an order failed: {errors[0]!r}")
        if pending := [order_id for order_id in list(committed) if order_id not in final]:
            seen = workload.finished(pending)
            now = time.monotonic()
            final.update((order_id, (status, now)) for order_id, status in seen.items())
            progress = now if seen else progress
        if time.monotonic() - checked > 1:
            checked, moved = time.monotonic(), sorted(Checkpoint.objects.values_list("name", "position"))
            progress, positions = (checked if moved != positions else progress), moved
        if time.monotonic() - progress > SAGA_STALL_SECONDS:
            raise CommandError(
                f"{len(final)} of {count} orders reached a final status, and nothing moved in {SAGA_STALL_SECONDS:.0f}s"
            )
        time.sleep(SAGA_POLL_SECONDS)
    return final


def _celery_app() -> Any:
    """The project's Celery app, or FigureSkipped when tasks do not go through a broker."""
    try:
        from celery import current_app
    except ImportError:
        raise FigureSkipped("Celery is not installed") from None
    app = current_app._get_current_object()
    broker = app.conf.broker_url or ""
    if app.conf.task_always_eager or urlsplit(broker).scheme in ("", "memory"):
        raise FigureSkipped("it needs a Celery broker, and tasks run in this process (set CELERY_BROKER_URL)")
    if not app.main or app.main == "__main__":
        raise FigureSkipped("the Celery app has no module name for `celery -A` (Celery('<module>'))")
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as error:
        raise FigureSkipped(f"the Celery broker is unreachable ({error})") from None
    return app


class CeleryWorkerPool:
    """`celery -A <app> worker` processes on a queue of their own, stopped (and the queue deleted) on exit.

    The workers consume only that queue and get it as CELERY_TASK_DEFAULT_QUEUE in their environment (the
    example project's settings read it), so the tasks they send themselves go there too; this process sends
    its nudges there while the pool is open. Nothing else on the broker is consumed, and nothing reaches others.
    """

    def __init__(self, app: Any, count: int, log: Callable[[str], None]) -> None:
        self.app = app
        self.count = count
        self.log = log
        self.queue = f"es-benchmark-sagas-{uuid.uuid4().hex[:12]}"
        self.folder = Path(tempfile.mkdtemp(prefix="eventsourcing-benchmark-"))
        self.processes: list[subprocess.Popen] = []
        self.previous_queue = app.conf.task_default_queue

    def __enter__(self) -> CeleryWorkerPool:
        self.app.conf.task_default_queue = self.queue
        _forget_nudges()
        try:
            self.log(f"  starting {self.count} celery workers on queue {self.queue}")
            self.processes = [self._spawn(index) for index in range(self.count)]
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _spawn(self, index: int) -> subprocess.Popen:
        module = self.app.main
        root = Path(importlib.import_module(module.split(".")[0]).__file__ or ".").resolve().parent.parent
        env = {
            **os.environ,
            "CELERY_TASK_DEFAULT_QUEUE": self.queue,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        }
        if settings_module := os.environ.get("DJANGO_SETTINGS_MODULE"):
            env["DJANGO_SETTINGS_MODULE"] = settings_module
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            module,
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "-n",
            f"benchmark{index}-{self.queue}@%h",
            "-Q",
            self.queue,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        with (self.folder / f"worker-{index}.log").open("wb") as log_file:
            return subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )

    def _log(self, index: int) -> str:
        path = self.folder / f"worker-{index}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + WORKER_START_SECONDS
        for index, process in enumerate(self.processes):
            while " ready." not in self._log(index):
                if process.poll() is not None or time.monotonic() > deadline:
                    state = "exited" if process.returncode is not None else "is not ready"
                    raise CommandError(f"saga_orders: celery worker {index} {state}:\n{self.log_tail()}")
                time.sleep(0.1)

    def wait_until_idle(self, using: str) -> None:
        """Until the sagas and async projections are caught up, no outbox message waits and the queue is empty,
        twice in a row: a run starts with no earlier run's tail (its notifications, say) still on the workers."""
        from ...models import OutboxMessage, OutboxStatus
        from ...projections import projection_statuses

        deadline, quiet = time.monotonic() + SAGA_STALL_SECONDS, 0
        while quiet < 2:
            queued = self._queued()
            lagging = [status.name for status in projection_statuses(sagas=True) if status.lag]
            outbox = OutboxMessage.objects.using(using).filter(status=OutboxStatus.PENDING).count()
            quiet = quiet + 1 if not (queued or lagging or outbox) else 0
            if time.monotonic() > deadline:
                self.log(
                    f"  still busy after {SAGA_STALL_SECONDS:.0f}s ({queued} tasks queued, lagging {lagging},"
                    f" {outbox} outbox messages pending); measuring anyway"
                )
                return
            time.sleep(0.2)

    def _queued(self) -> int:
        """Messages waiting in the queue (Redis drops an empty queue's key: passive declare then says "no queue")."""
        with self.app.connection_for_write() as connection:
            try:
                return connection.default_channel.queue_declare(queue=self.queue, passive=True).message_count
            except connection.channel_errors:
                return 0

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(
            f"--- worker {index} ---\n" + "\n".join(self._log(index).splitlines()[-lines:])
            for index in range(len(self.processes))
        )

    def close(self) -> None:
        """SIGTERM (warm shutdown), SIGKILL after WORKER_STOP_SECONDS; then the queue goes, and the logs."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=WORKER_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.app.conf.task_default_queue = self.previous_queue
        with suppress(Exception):
            self._delete_queue()
        _forget_nudges()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _delete_queue(self) -> None:
        """Leave nothing of the queue on the broker, on Redis not even its bindings or a killed worker's
        unacknowledged messages (which would be restored into it after the visibility timeout)."""
        with self.app.connection_for_write() as connection:
            channel = connection.default_channel
            channel.queue_purge(self.queue)
            channel.queue_delete(self.queue)
            client = getattr(channel, "client", None)  # the Redis transport's
            if client is None:
                return
            for key in client.scan_iter(match=f"*{self.queue}*"):
                client.delete(key)
            unacked = getattr(channel, "unacked_key", "unacked")
            for tag, payload in client.hscan_iter(unacked):
                if self.queue in json.loads(payload)[1:]:  # [message, exchange, routing key]
                    client.hdel(unacked, tag)
                    client.zrem(getattr(channel, "unacked_index_key", "unacked_index"), tag)


def _forget_nudges() -> None:
    """Drop "a run is queued" marks (of sagas, async projections, the outbox) an earlier run may have left in the
    cache: one would swallow this run's nudges until it expires."""
    from django.core.cache import cache

    from ...outbox.hooks import PENDING_KEY as OUTBOX_PENDING_KEY
    from ...projections import ASYNC, projection_registry
    from ...projections.hooks import pending_key
    from ...sagas import saga_registry
    from ...sagas.hooks import pending_key as saga_pending_key

    keys = [pending_key(p.name) for p in projection_registry.of_kind(ASYNC)]
    cache.delete_many([*keys, *(saga_pending_key(name) for name in saga_registry.names()), OUTBOX_PENDING_KEY])


def _timed(work: Callable[[], int]) -> Run:
    started = time.perf_counter()
    units = work()
    return Run(units, time.perf_counter() - started)


def _check_caught_up(projection: Projection, store: EventStore) -> None:
    from ...models import Checkpoint, CheckpointStatus
    from ...projections import pending_events

    checkpoint = Checkpoint.objects.using(store.using).get(name=projection.name)
    if checkpoint.status != CheckpointStatus.RUNNING or pending_events(projection, checkpoint.position, store):
        raise CommandError(f"{projection.name} did not catch up: {checkpoint.status} {checkpoint.last_error}")


class RawReader:
    """Reads event rows of some types in position order with the driver alone, in keyset batches
    (decoding what the driver decodes, nothing more)."""

    def __init__(self, conn: Any, mark: str) -> None:
        self.conn, self.mark = conn, mark

    @staticmethod
    def for_database(vendor: str, settings_dict: dict[str, Any]) -> RawReader:
        if vendor == "postgresql":
            return RawReader(PostgresRawWriter(settings_dict, streams=STREAM_TABLE, events=EVENT_TABLE).conn, "%s")
        return RawReader(SqliteRawWriter(settings_dict, streams=STREAM_TABLE, events=EVENT_TABLE).conn, "?")

    def read_all(self, store: EventStore, event_types: list[str], batch_size: int) -> int:
        """Every row of these types, batch after batch, with the store's own SQL (log_query)."""
        after, read = 0, 0
        while True:
            sql, params = store.log_query(after=after, limit=batch_size, event_types=event_types)
            if not (rows := self.conn.execute(sql.replace("%s", self.mark), params).fetchall()):
                return read
            after, read = rows[-1][0], read + len(rows)

    def close(self) -> None:
        self.conn.close()


@contextmanager
def _scratch_tables(bench: Bench) -> Iterator[None]:
    drop = f"DROP TABLE IF EXISTS {SCRATCH_EVENTS}, {SCRATCH_STREAMS}"
    with bench.connection.cursor() as cursor:
        cursor.execute(drop)
        cursor.execute(f"CREATE TABLE {SCRATCH_STREAMS} (LIKE {STREAM_TABLE} INCLUDING ALL)")
        cursor.execute(f"CREATE TABLE {SCRATCH_EVENTS} (LIKE {EVENT_TABLE} INCLUDING ALL)")
        cursor.execute(
            f"ALTER TABLE {SCRATCH_EVENTS} ADD FOREIGN KEY (stream_id) REFERENCES {SCRATCH_STREAMS} (stream_id)"
            " DEFERRABLE INITIALLY DEFERRED"
        )
    try:
        yield
    finally:
        with bench.connection.cursor() as cursor:
            cursor.execute(drop)


# ---------------------------------------------------------------- the command
class Command(BaseCommand):
    help = (
        "Measure the event store on the configured database: appends (single, concurrent, batch) and aggregate "
        "loads, each beside the raw driver (psycopg 3 / sqlite3) writing the same rows into the same tables, with "
        "their ratios. Each figure is the median of 3 runs of at least --events events and --min-seconds seconds. "
        "It appends REAL events (to streams of a new category Bench<random>, at least 3 x --events per figure) "
        "that cannot be deleted, because events are immutable: run it on a database kept for benchmarks. It "
        "refuses to start if the event table holds any events, unless --yes is given."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--events", type=int, default=2000, help="events per run, at least (default 2000)")
        parser.add_argument("--min-seconds", type=float, default=2.0, help="seconds per run, at least (default 2)")
        parser.add_argument("--writers", type=int, default=8, help="writer processes of concurrent figures (8)")
        parser.add_argument("--only", default="", help=f"comma-separated figures, of: {', '.join(FIGURES)}")
        parser.add_argument("--json", metavar="FILE", help="also write every figure and ratio to FILE as JSON")
        parser.add_argument("--yes", action="store_true", help="run even though the event table holds events")
        parser.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
        parser.add_argument("--orders", type=int, default=1000, help="orders per run of the saga figures (1000)")
        parser.add_argument(
            "--saga-rate",
            type=float,
            default=SAGA_PACED_RATE,
            help=f"orders/s offered in the paced saga runs ({SAGA_PACED_RATE:g}; 0 skips them)",
        )
        parser.add_argument(
            "--redis-url",
            help="Redis of the outbox figure (default: CELERY_BROKER_URL when it is Redis, else "
            f"{DEFAULT_REDIS_URL}); the figure is skipped when it is unreachable",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        names = self._figure_names(options)
        connection = connections[DEFAULT_DB_ALIAS]
        self._check_database(connection, yes=options["yes"])
        quiet = options["no_progress"] or options["verbosity"] == 0
        bench = Bench(
            n=options["events"],
            min_seconds=options["min_seconds"],
            writers=options["writers"],
            alias=DEFAULT_DB_ALIAS,
            log=(lambda message: None) if quiet else self.stderr.write,
            redis_url=options["redis_url"] or _default_redis_url(),
            orders=options["orders"],
            saga_rate=options["saga_rate"],
        )
        for line in self._header(bench, names):
            self.stdout.write(line)
        try:
            results = self._measure(bench, names)
        finally:
            bench.close()
        ratios = _ratios(results)
        for name, ratio in ratios.items():
            self.stdout.write(f"{name}: {ratio:.2f}")
        if options["json"]:
            document = {name: {"value": float(f"{value:.5g}"), "unit": unit} for name, (value, unit) in results.items()}
            document.update({name: float(f"{ratio:.4g}") for name, ratio in ratios.items()})
            Path(options["json"]).write_text(json.dumps(document, indent=2) + "\n")

    def _figure_names(self, options: dict[str, Any]) -> list[str]:
        """Check the arguments before touching the database; returns the figures asked for."""
        if options["events"] < 1:
            raise CommandError("--events must be at least 1.")
        if options["min_seconds"] < 0:
            raise CommandError("--min-seconds must not be negative.")
        if options["writers"] < 1:
            raise CommandError("--writers must be at least 1.")
        if options["orders"] < 1:
            raise CommandError("--orders must be at least 1.")
        if options["json"] and not Path(options["json"]).resolve().parent.is_dir():
            raise CommandError(f"--json: the folder of {options['json']!r} does not exist.")
        if options["redis_url"] and urlsplit(options["redis_url"]).scheme not in ("redis", "rediss", "unix"):
            raise CommandError("--redis-url must be a redis://, rediss:// or unix:// URL.")
        if not options["only"]:
            return list(FIGURES)
        names = [name.strip() for name in options["only"].split(",") if name.strip()]
        if unknown := [name for name in names if name not in FIGURES]:
            raise CommandError(f"Unknown figure(s) {', '.join(unknown)}; known: {', '.join(FIGURES)}.")
        if not names:
            raise CommandError("--only names no figure.")
        return [name for name in FIGURES if name in names]

    def _check_database(self, connection: Any, *, yes: bool) -> None:
        if connection.in_atomic_block:
            raise CommandError("Run the benchmark outside a transaction: its writer processes must see its data.")
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {EVENT_TABLE})")
                has_events = bool(cursor.fetchone()[0])
        except DatabaseError as error:
            raise CommandError(f"Cannot read {EVENT_TABLE} ({error}); run `manage.py migrate` first.") from None
        if has_events and not yes:
            raise CommandError(
                "The event table already holds events. The benchmark appends real events, which cannot be "
                "deleted; run it on a database kept for benchmarks, or pass --yes to go ahead."
            )

    def _measure(self, bench: Bench, names: list[str]) -> dict[str, tuple[float, str]]:
        results: dict[str, tuple[float, str]] = {}
        for name in names:
            spec = FIGURES[name]
            if bench.vendor not in spec.vendors:
                self.stdout.write(f"# {name}: skipped, only measured on {', '.join(spec.vendors)}")
                continue
            bench.log(f"{name}: {REPEATS} runs of at least {bench.n} events and {bench.min_seconds:g}s")
            try:
                runs = spec.measure(bench)
            except FigureSkipped as skipped:
                self.stdout.write(f"# {name}: skipped, {skipped}")
                continue
            value = statistics.median(run.rate for run in runs)
            results[name] = (value, spec.unit)
            self.stdout.write(f"{name}: {_number(value)} {spec.unit}")
            detail = "  ".join(run.describe() for run in runs)
            self.stdout.write(f"# {name} runs: {detail}")
        return results

    def _header(self, bench: Bench, names: list[str]) -> list[str]:
        docs = [f"# {name}: {' '.join((FIGURES[name].measure.__doc__ or '').split())}" for name in names]
        return [
            f"# {_database_line(bench)}",
            f"# events={bench.n} min_seconds={bench.min_seconds:g} writers={bench.writers} orders={bench.orders} "
            f"repeats={REPEATS} "
            f"payload={len(ITEM_JSON)} bytes; streams written under category {bench.category}",
            *docs,
        ]


def _default_redis_url() -> str:
    broker = getattr(settings, "CELERY_BROKER_URL", "") or ""
    return broker if urlsplit(broker).scheme in ("redis", "rediss") else DEFAULT_REDIS_URL


def _ratios(results: dict[str, tuple[float, str]]) -> dict[str, float]:
    """figure/baseline for each measured figure whose baseline was measured too."""
    ratios = {}
    for name, (value, _) in results.items():
        baseline = FIGURES[name].baseline
        if baseline in results and results[baseline][0] > 0:
            ratios[f"{name}/{baseline}"] = value / results[baseline][0]
    return ratios


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _database_line(bench: Bench) -> str:
    with bench.connection.cursor() as cursor:
        if bench.vendor == "postgresql":
            names = (
                "server_version",
                "synchronous_commit",
                "fsync",
                "wal_sync_method",
                "shared_buffers",
                "commit_delay",
            )
            cursor.execute("SELECT " + ", ".join(f"current_setting('{name}')" for name in names))
            return "PostgreSQL " + ", ".join(f"{n}={v}" for n, v in zip(names, cursor.fetchone(), strict=True))
        if bench.vendor == "sqlite":
            cursor.execute("PRAGMA journal_mode")
            mode = cursor.fetchone()[0]
            cursor.execute("PRAGMA synchronous")
            return f"SQLite {sqlite3.sqlite_version}, journal_mode={mode}, synchronous={cursor.fetchone()[0]}"
    return bench.vendor
