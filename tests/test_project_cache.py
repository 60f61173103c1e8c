"""The example project's Redis cache backend: Django's, with one client per connection pool."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from project.cache import RedisCache

REDIS_URL = os.environ.get("CACHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
KEYS = ["mark", "session", "a", "counter"]


@pytest.fixture
def cache() -> Iterator[RedisCache]:
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    backend = RedisCache(REDIS_URL, {"KEY_PREFIX": f"test-{uuid.uuid4().hex[:8]}"})
    yield backend
    backend.delete_many(KEYS)  # not clear(): that would flush the whole Redis database
    backend.close()


def test_every_operation_works_as_with_djangos_backend(cache: RedisCache) -> None:
    assert cache.add("mark", 1, timeout=60) is True
    assert cache.add("mark", 2, timeout=60) is False  # the nudges' "a run is queued" mark relies on this
    assert cache.get("mark") == 1
    cache.set("session", {"_auth_user_id": "7"}, timeout=60)
    assert cache.get("session") == {"_auth_user_id": "7"}
    assert cache.incr("mark") == 2
    cache.delete("mark")
    assert cache.get("mark", "gone") == "gone"


def test_one_client_serves_every_call(cache: RedisCache) -> None:
    client = cache._cache.get_client()
    cache.set("a", "b")
    assert cache._cache.get_client("a", write=True) is client
    assert cache._cache.get_client("a") is client


def test_threads_share_the_client_safely(cache: RedisCache) -> None:
    """redis.Redis is thread-safe (connections come from the pool), so one client may serve threads at once."""
    cache.set("counter", 0)
    errors: list[Exception] = []

    def bump() -> None:
        try:
            for _ in range(200):
                cache.incr("counter")
        except Exception as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert cache.get("counter") == 800
