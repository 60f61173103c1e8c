"""Django admin for the app: imports each module so `admin.autodiscover()` registers its ModelAdmins."""

from __future__ import annotations

from . import (
    outbox,  # noqa: F401  (registers OutboxMessage and ProcessedMessage admins)
    projections,  # noqa: F401  (registers Checkpoint and ProjectionDeadLetter admins)
    sagas,  # noqa: F401  (registers the SagaState admin)
    store,  # noqa: F401  (registers Stream, Event and Snapshot admins)
)
