"""`manage.py benchmark`: every figure is measured and reported, in text and JSON; bad arguments are refused.

Speed itself is never asserted here (DESIGN §4): these runs are tiny, only their shape is checked.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from eventsourcing_app.management.commands.benchmark import FIGURES
from eventsourcing_app.models import Event, OutboxMessage, SagaState, SagaStatus
from eventsourcing_app.store import EventStore
from project.shop.events import StockAdded
from project.shop.models import OrderSummary

SAGA_LATENCIES = ("saga_p50_ms", "saga_p95_ms", "saga_paced_p50_ms", "saga_paced_p95_ms")
SAGA_FIGURES = {"saga_orders", *SAGA_LATENCIES}
RATIOS = {
    "append_single/raw_insert_single",
    "append_concurrent/raw_insert_concurrent",
    "append_batch/raw_insert_batch",
}


def applicable_figures() -> set[str]:
    return {name for name, spec in FIGURES.items() if connection.vendor in spec.vendors}


def run_benchmark(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("benchmark", "--events", "20", "--min-seconds", "0", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_every_figure_is_measured_and_reported(transactional_db: None, tmp_path: Path) -> None:
    users_stream = f"Stock-{uuid.uuid4()}"
    EventStore().append(users_stream, [StockAdded(sku="SKU-1", quantity=5)])
    path = tmp_path / "bench.json"

    out, err = run_benchmark("--writers", "2", "--json", str(path), "--yes")

    # Only the outbox figure (when Redis is unreachable) and the saga figures (tasks run in this process,
    # as in every test without real workers) may be skipped, and they say so.
    skipped = {
        line[2:].split(":")[0]
        for line in out.splitlines()
        if line.endswith(("see --redis-url", "(set CELERY_BROKER_URL)"))
    }
    assert skipped <= {"outbox", *SAGA_FIGURES}
    assert SAGA_FIGURES <= skipped
    figures = applicable_figures() - skipped
    assert {"append_single", "append_concurrent", "append_batch", "load_aggregate"} <= figures
    assert ("raw_insert_concurrent_nolock" in figures) == (connection.vendor == "postgresql")
    document = json.loads(path.read_text())
    expected_ratios = _ratio_names(figures)
    assert expected_ratios >= RATIOS
    assert set(document) == figures | expected_ratios
    lines = out.splitlines()
    for name in figures:
        value, unit = document[name]["value"], document[name]["unit"]
        assert set(document[name]) == {"value", "unit"}
        assert value > 0
        assert unit == FIGURES[name].unit
        assert any(line.startswith(f"{name}: ") and line.endswith(f" {unit}") for line in lines), name
        assert any(line.startswith(f"# {name} runs: ") for line in lines), name
    for ratio in expected_ratios:
        figure, baseline = ratio.split("/")
        assert document[ratio] == pytest.approx(document[figure]["value"] / document[baseline]["value"], rel=0.01)
        printed = [line for line in lines if line.startswith(f"{ratio}: ")]
        assert len(printed) == 1
        assert float(printed[0].split(": ")[1]) == pytest.approx(document[ratio], abs=0.006)
    assert "append_single:" in err  # progress goes to stderr, not stdout
    assert not any(line.startswith("  ") for line in lines)

    # Everything the benchmark wrote is under its own category; the user's stream is untouched.
    category = next(line.split("category ")[1] for line in lines if "category Bench" in line)
    assert Event.objects.exclude(category=category).count() == 1
    assert Event.objects.filter(category=category).count() >= 6 * 3 * 20  # six appending figures, 3 runs each
    assert EventStore().stream_info(users_stream).version == 1
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass('benchmark_raw_events'), to_regclass('benchmark_raw_streams')")
            assert cursor.fetchone() == (None, None)


def _ratio_names(figures: set[str]) -> set[str]:
    return {f"{name}/{FIGURES[name].baseline}" for name in figures if FIGURES[name].baseline in figures}


def test_only_runs_the_figures_named(transactional_db: None, tmp_path: Path) -> None:
    path = tmp_path / "bench.json"

    out, _ = run_benchmark("--only", "raw_insert_single, append_single", "--json", str(path), "--no-progress")

    assert set(json.loads(path.read_text())) == {
        "append_single",
        "raw_insert_single",
        "append_single/raw_insert_single",
    }
    assert [line.split(":")[0] for line in out.splitlines() if not line.startswith("#")] == [
        "append_single",
        "raw_insert_single",
        "append_single/raw_insert_single",
    ]


def test_the_projection_figures_leave_no_work_for_anyone_else(transactional_db: None) -> None:
    # Their events are the example shop's orders, confirmed: appended with the shop's hooks, each
    # OrderConfirmed would leave an outbox message for the order-notification task behind.
    run_benchmark("--only", "raw_read,catchup,rebuild", "--no-progress")

    assert Event.objects.filter(event_type="OrderConfirmed").count() >= 4 * 10  # raw_read's, then 3 catchup runs
    assert not OutboxMessage.objects.exists()


def test_refuses_a_database_with_events_unless_yes(transactional_db: None) -> None:
    EventStore().append(f"Stock-{uuid.uuid4()}", [StockAdded(sku="SKU-1", quantity=5)])

    with pytest.raises(CommandError, match="--yes"):
        run_benchmark("--only", "append_single")

    assert Event.objects.count() == 1


@pytest.mark.django_db
def test_refuses_to_run_inside_a_transaction() -> None:
    # Its writer processes could not see rows of an uncommitted transaction.
    with pytest.raises(CommandError, match="outside a transaction"):
        run_benchmark("--only", "append_single", "--yes")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--events", "0"], "--events must be at least 1"),
        (["--min-seconds", "-1"], "--min-seconds must not be negative"),
        (["--writers", "0"], "--writers must be at least 1"),
        (["--orders", "0"], "--orders must be at least 1"),
        (["--only", "append_single,no_such_figure"], "Unknown figure.*no_such_figure"),
        (["--only", ","], "--only names no figure"),
        (["--json", "/no/such/folder/bench.json"], "--json"),
        (["--events", "many"], "invalid int value"),
        (["--redis-url", "http://127.0.0.1/"], "--redis-url must be a redis://"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(args: list[str], message: str) -> None:
    # No database access is allowed here: the arguments are checked first.
    with pytest.raises(CommandError, match=message):
        call_command("benchmark", *args, stdout=StringIO(), stderr=StringIO())


def test_bad_arguments_exit_non_zero_without_a_traceback(worker_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "benchmark", "--only", "nope"],
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert "CommandError: Unknown figure(s) nope" in result.stderr
    assert "Traceback" not in result.stderr


BENCHMARK_REDIS_URL = os.environ.get("OUTBOX_TEST_REDIS_URL", "redis://127.0.0.1:6379/6")


def test_outbox_figure_drains_messages_into_a_redis_stream(transactional_db: None, tmp_path: Path) -> None:
    import redis

    client = redis.Redis.from_url(BENCHMARK_REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis unreachable at {BENCHMARK_REDIS_URL}: {exc}")
    path = tmp_path / "bench.json"

    out, _ = run_benchmark("--only", "outbox", "--redis-url", BENCHMARK_REDIS_URL, "--json", str(path), "--no-progress")

    document = json.loads(path.read_text())
    assert set(document) == {"outbox"}
    assert document["outbox"]["unit"] == "messages/s"
    assert document["outbox"]["value"] > 0
    assert any(line.startswith("outbox: ") and line.endswith(" messages/s") for line in out.splitlines())
    # 3 runs of 20 events stay (events are immutable); the temporary destination's rows and stream are gone.
    category = next(line.split("category ")[1] for line in out.splitlines() if "category Bench" in line)
    assert Event.objects.filter(category=category).count() == 3 * 20
    assert not OutboxMessage.objects.exists()
    assert not client.keys("eventsourcing-benchmark-*")
    client.close()


def test_outbox_figure_is_skipped_when_redis_is_unreachable(transactional_db: None, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"redis://:hunter2@127.0.0.1:{sock.getsockname()[1]}/0"
        path = tmp_path / "bench.json"

        out, _ = run_benchmark("--only", "outbox", "--redis-url", url, "--json", str(path), "--no-progress")

    assert "# outbox: skipped, Redis is unreachable at redis://:***@127.0.0.1" in out
    assert "hunter2" not in out
    assert json.loads(path.read_text()) == {}
    assert not Event.objects.exists()


def test_saga_figures_are_skipped_without_a_broker(transactional_db: None, tmp_path: Path) -> None:
    path = tmp_path / "bench.json"

    out, _ = run_benchmark("--only", ",".join(SAGA_FIGURES), "--orders", "3", "--json", str(path), "--no-progress")

    reason = "it needs a Celery broker, and tasks run in this process (set CELERY_BROKER_URL)"
    assert [line for line in out.splitlines() if ": skipped, " in line] == [
        f"# {name}: skipped, {reason}" for name in ("saga_orders", *SAGA_LATENCIES)
    ]
    assert json.loads(path.read_text()) == {}
    assert not Event.objects.exists()


@pytest.mark.celery
def test_saga_figures_run_orders_through_two_celery_workers(
    worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", worker_env["DATABASE_URL"])  # the workers' database: the test database
    path = tmp_path / "bench.json"

    out, err = run_benchmark(
        "--only", ",".join(SAGA_FIGURES), "--orders", "4", "--saga-rate", "10", "--json", str(path)
    )

    document = json.loads(path.read_text())
    assert document.keys() == SAGA_FIGURES
    assert document["saga_orders"]["unit"] == "orders/s"
    assert document["saga_orders"]["value"] > 0
    assert 0 < document["saga_p50_ms"]["value"] <= document["saga_p95_ms"]["value"]
    assert 0 < document["saga_paced_p50_ms"]["value"] <= document["saga_paced_p95_ms"]["value"]
    assert all(document[name]["unit"] == "ms" for name in SAGA_LATENCIES)
    lines = out.splitlines()
    for name in SAGA_FIGURES:
        assert any(line.startswith(f"{name}: ") for line in lines), name
        assert any(line.startswith(f"# {name} runs: ") for line in lines), name
    assert "starting 2 celery workers" in err
    # At 10 orders/s the 4th order of a paced run is placed 0.3 s after the first, not at once.
    paced_log = err.split("paced runs: 10 orders/s offered")[1].splitlines()
    paced_placing = [float(line.split("placed in ")[1].split("s")[0]) for line in paced_log if "placed in " in line]
    assert len(paced_placing) == 3
    assert all(seconds >= 0.3 for seconds in paced_placing)
    # A warm-up of 4 orders and 3 burst and 3 paced runs of 4 orders, each through the whole saga.
    assert OrderSummary.objects.filter(status="confirmed").count() == OrderSummary.objects.count() == 28
    assert SagaState.objects.filter(status=SagaStatus.COMPLETED).count() == 28
    queue = err.split("celery workers on queue ")[1].split()[0]
    assert not _processes_mentioning(queue)


def _processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains `text` (Linux /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:  # it exited meanwhile
            continue
    return found
