"""The app's models."""

from .commands import CommandPermission, IdempotencyRecord
from .outbox import OutboxMessage, OutboxStatus, ProcessedMessage
from .projections import Checkpoint, CheckpointStatus, ProjectionDeadLetter
from .sagas import FINAL_SAGA_STATUSES, SagaState, SagaStatus
from .store import Event, Snapshot, Stream

__all__ = [
    "FINAL_SAGA_STATUSES",
    "Checkpoint",
    "CheckpointStatus",
    "CommandPermission",
    "Event",
    "IdempotencyRecord",
    "OutboxMessage",
    "OutboxStatus",
    "ProcessedMessage",
    "ProjectionDeadLetter",
    "SagaState",
    "SagaStatus",
    "Snapshot",
    "Stream",
]
