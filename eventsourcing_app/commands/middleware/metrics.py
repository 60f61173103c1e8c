"""Prometheus metrics per command type: a counter by outcome and a duration histogram."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from ..base import Command, CommandContext, CommandResult
from . import Middleware, Next, measured

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
        def observe(outcome: str, seconds: float) -> None:
            DURATION.labels(command.command_type).observe(seconds)
            COMMANDS.labels(command.command_type, outcome).inc()

        return measured(command, context, next_, observe)
