"""Prometheus metrics per command type: a counter by outcome and a duration histogram."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram

from ..base import Command, CommandContext, CommandResult
from . import Middleware, Next
from .log import outcome_of

COMMANDS = Counter(
    "eventsourcing_commands_total", "Commands dispatched, by command type and outcome.", ["command_type", "outcome"]
)
DURATION = Histogram(
    "eventsourcing_command_duration_seconds",
    "Time to handle a command, by command type.",
    ["command_type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class MetricsMiddleware(Middleware):
    def __call__(self, command: Command, context: CommandContext, next_: Next) -> CommandResult:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return next_(command, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            DURATION.labels(command.command_type).observe(time.perf_counter() - started)
            COMMANDS.labels(command.command_type, outcome_of(error)).inc()
