"""Sagas: processes that coordinate aggregates through commands, and compensate when a step fails."""

from .base import SKIP, STOP, Saga, SagaInstance, Step, on
from .manager import SagaManager, checkpoint_name
from .registry import SagaNotFoundError, register, saga_registry

__all__ = [
    "SKIP",
    "STOP",
    "Saga",
    "SagaInstance",
    "SagaManager",
    "SagaNotFoundError",
    "Step",
    "checkpoint_name",
    "on",
    "register",
    "saga_registry",
]
