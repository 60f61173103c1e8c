"""Settings of the example project, read from the environment with django-environ.

With no environment at all this is the embedded default: a SQLite file beside
`manage.py` and no message broker. `DATABASE_URL` and `CELERY_BROKER_URL` switch
to PostgreSQL and a real Celery broker.
"""

import secrets
from pathlib import Path
from urllib.parse import urlsplit

import environ

from project.shop.outbox import outbox_settings

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env(
    DEBUG=(bool, False),
    ALLOWED_HOSTS=(list, ["127.0.0.1", "localhost", "testserver"]),
)


def _secret_key() -> str:
    """Use SECRET_KEY from the environment, else a random key kept in a local, ignored file.

    Nothing secret lives in the repository, and a fresh clone still runs.
    """
    if key := env.str("SECRET_KEY", default=""):
        return key
    key_file = BASE_DIR / ".secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env("DEBUG")
ALLOWED_HOSTS = env("ALLOWED_HOSTS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "eventsourcing_app",
    "project.shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "project.wsgi.application"

DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Writers wait for each other instead of failing with "database is locked":
    # WAL lets readers run beside the one writer, IMMEDIATE takes the write lock at
    # BEGIN (so positions are handed out in commit order), and the timeout is how
    # long a writer waits for that lock.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Tests use a file beside the database, not memory, so that worker processes can share it.
    DATABASES["default"]["TEST"] = {"NAME": str(Path(DATABASES["default"]["NAME"]).with_suffix(".test.sqlite3"))}

elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A query running longer than this is cancelled: with COMMAND_TIMEOUT, the hard limit of a command.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("options", "-c statement_timeout=60s")
    # Keep connections across requests (Django's default, 0, opens one per request: a few ms each).
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # Let psycopg prepare the event store's statements after 5 runs on a connection (Django
    # turns preparing off for transaction-mode poolers; see docs/event-store.md). PREPARE_THRESHOLD=0
    # turns it off again, e.g. behind a PgBouncer older than 1.21.
    DATABASES["default"]["OPTIONS"].setdefault("prepare_threshold", env.int("PREPARE_THRESHOLD", default=5) or None)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Sessions are read from the cache first (one query less per session-authenticated request).
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise looks there first; collectstatic fills it for production.
# The admin renders under runserver with DEBUG=0 and no collectstatic step.
WHITENOISE_USE_FINDERS = True

# Embedded default: with no broker, tasks run in-process, right after the commit that queued them.
CELERY_TASK_ALWAYS_EAGER = not env.str("CELERY_BROKER_URL", default="")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or "memory://localhost/"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Workers keep their database connections across tasks, as web processes do across requests: without
# this, Celery's Django fixup closes them around every task, and each task pays for a new connection
# (and loses its prepared statements). project/celery.py still drops a broken or CONN_MAX_AGE-old one.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
# The queue tasks go to (and workers consume by default): one per deployment sharing a broker.
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_TASK_DEFAULT_QUEUE", default="celery")


def _default_cache_url(broker_url: str) -> str:
    """Every process (web, writers, workers) must share the cache once tasks go through a broker.

    The async projections' "a run is queued" marks live there: a per-process
    cache would swallow the nudges of every append after a process's first.
    A Redis broker lends its server, one database up, so `cache.clear()`
    cannot flush the queues. Other brokers: set CACHE_URL.
    """
    parts = urlsplit(broker_url)
    if parts.scheme not in ("redis", "rediss"):
        return "locmemcache://"
    return parts._replace(path=f"/{int(parts.path.strip('/') or 0) + 1}").geturl()


CACHES = {"default": env.cache_url("CACHE_URL", default=_default_cache_url(env.str("CELERY_BROKER_URL", default="")))}
if CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
    # The same backend, with one Redis client per pool instead of one per call (see project/cache.py).
    CACHES["default"]["BACKEND"] = "project.cache.RedisCache"
CELERY_BEAT_SCHEDULE = {
    # The safety net under the on-commit nudges: a lost nudge or a dead worker's projection waits at most this.
    "poll-projections": {"task": "eventsourcing_app.poll_projections", "schedule": 10.0},
    "poll-sagas": {"task": "eventsourcing_app.poll_sagas", "schedule": 10.0},
    "fire-saga-timeouts": {"task": "eventsourcing_app.fire_saga_timeouts", "schedule": 5.0},
    "cleanup-idempotency-records": {"task": "eventsourcing_app.cleanup_idempotency_records", "schedule": 3600.0},
    # Outbox: retries whose backoff has passed and lost nudges are picked up within 10 s (a poll that waited
    # longer than that in the queue is dropped: the next one does the same job); delivered rows are pruned hourly.
    "process-outbox": {"task": "eventsourcing_app.process_outbox", "schedule": 10.0, "options": {"expires": 10.0}},
    "cleanup-outbox": {"task": "eventsourcing_app.cleanup_outbox", "schedule": 3600.0},
    # Message ids the shop's consumers handled, kept OUTBOX_CONSUMER_RETENTION_SECONDS (30 days) against redelivery.
    "cleanup-processed-messages": {"task": "eventsourcing_app.cleanup_processed_messages", "schedule": 86400.0},
}
# A task stuck past this is killed (prefork pool) and, acks_late + reject_on_worker_lost, redelivered.
# No soft limit on run_projection: its SoftTimeLimitExceeded would look like a poison event.
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_ANNOTATIONS = {
    "eventsourcing_app.run_projection": {"time_limit": 120},
    "eventsourcing_app.run_saga": {"time_limit": 120},
}

EVENTSOURCING = {
    # A popular SKU collects a reservation per order: its Inventory loads from a recent snapshot.
    "SNAPSHOT_EVERY": {"Order": 50, "Inventory": 20},
    "COMMAND_THROTTLE_RATE": env.str("COMMAND_THROTTLE_RATE", default="") or None,
    "BENCHMARK_PROJECTION": "order_summary",
    "BENCHMARK_EVENTS": "project.shop.benchmarking.order_events",
    "BENCHMARK_SAGA": "project.shop.benchmarking.OrderFulfillmentWorkload",
    # How soon another worker takes over the projection of a worker that died.
    "PROJECTION_LEASE_SECONDS": env.int("PROJECTION_LEASE_SECONDS", default=30),
    # Suppliers are an ordinary model: their creates, updates and deletes become shop.Supplier.* events.
    "OUTBOX_CAPTURE_MODELS": ["shop.Supplier"],
}

REST_FRAMEWORK = {
    # The example project accepts HTTP Basic and session authentication on every /api/ endpoint.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.BasicAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "EXCEPTION_HANDLER": "eventsourcing_app.api.problems.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "eventsourcing_app demo shop API",
    "DESCRIPTION": "Commands over HTTP, and the event store's read endpoints.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# The example shop: payments over this total are declined; confirmed/cancelled orders go to this webhook.
SHOP_PAYMENT_LIMIT = env.str("SHOP_PAYMENT_LIMIT", default="1000.00")
# Seconds the fulfilment saga waits for a payment decision before it cancels the order.
SHOP_PAYMENT_TIMEOUT = env.float("SHOP_PAYMENT_TIMEOUT", default=300.0)
SHOP_WEBHOOK_URL = env.str("SHOP_WEBHOOK_URL", default="")
SHOP_WEBHOOK_SECRET = env.str("SHOP_WEBHOOK_SECRET", default="")
# Confirmed and cancelled orders go to the shop.order_notification task, and to SHOP_WEBHOOK_URL when set.
EVENTSOURCING.update(outbox_settings(webhook_url=SHOP_WEBHOOK_URL, webhook_secret=SHOP_WEBHOOK_SECRET))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # pika (the RabbitMQ outbox publisher) logs every connection step at INFO.
    "loggers": {"pika": {"level": "WARNING"}},
}
