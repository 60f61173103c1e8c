"""Settings of processes started by the outbox tests: the example project's, plus a recording destination.

`DJANGO_SETTINGS_MODULE=tests.outbox_settings` with `OUTBOX_TEST_FILE=<path>` gives a
Celery worker or `manage.py process_outbox` the destination "recorder", whose
RecordingPublisher (tests/outbox_publishers.py) writes deliveries to that file.
"""

import os

from project.settings import *  # noqa: F403
from project.settings import EVENTSOURCING as PROJECT_EVENTSOURCING

EVENTSOURCING = {
    **PROJECT_EVENTSOURCING,
    "OUTBOX_DESTINATIONS": {
        "recorder": {
            "PUBLISHER": "tests.outbox_publishers.RecordingPublisher",
            "OPTIONS": {"path": os.environ["OUTBOX_TEST_FILE"]},
        }
    },
    "OUTBOX_ROUTES": [],
}
