"""The Celery app of the example project: `celery -A project worker -B`."""

import os
from typing import Any

from celery import Celery
from celery.signals import task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
def _refresh_old_connections(task: Any = None, **_: Any) -> None:
    """Treat each task like a request: drop a connection that is broken or past CONN_MAX_AGE.

    Workers keep their connections across tasks (CELERY_DB_REUSE_MAX), so a task
    does not pay for a new connection (and lose its prepared statements); this
    check, and CONN_HEALTH_CHECKS, keep a reused connection from failing a task
    after a database restart. Tasks run eagerly run inside the caller's
    transaction, whose connection is not the task's to close.
    """
    if task is not None and getattr(task.request, "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()
