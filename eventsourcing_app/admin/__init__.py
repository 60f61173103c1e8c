"""Django admin for the app: imports each module so `admin.autodiscover()` registers its ModelAdmins."""

from __future__ import annotations

from . import (
    projections,  # noqa: F401  (registers Checkpoint and ProjectionDeadLetter admins)
    store,  # noqa: F401  (registers Stream, Event and Snapshot admins)
)
