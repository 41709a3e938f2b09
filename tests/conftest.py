"""Fixtures shared by every test folder. Keep each small; add new ones with small edits."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

REDIS_TEST_URL = os.environ.get("CANDGEN_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")


def _redis_unreachable(url: str) -> str | None:
    """Why Redis at `url` cannot be used, or None when it answers PING."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        client.ping()
        client.close()
        return None
    except redis.RedisError as e:
        return str(e)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """`redis://.../14?prefix=candgen-test-<uuid>`: a unique key prefix on the test db, whose keys are deleted
    afterwards. When Redis is unreachable the test FAILS under CI=true and is SKIPPED otherwise."""
    import redis

    why = _redis_unreachable(REDIS_TEST_URL)
    if why is not None:
        msg = f"Redis at {REDIS_TEST_URL} is unreachable ({why})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{msg}; CI=true requires it")
        pytest.skip(f"{msg}; start redis-server or set CANDGEN_TEST_REDIS_URL (CI=true turns this into a failure)")
    prefix = f"candgen-test-{uuid.uuid4().hex[:12]}"
    yield f"{REDIS_TEST_URL}?prefix={prefix}"
    client = redis.Redis.from_url(REDIS_TEST_URL, socket_timeout=2)
    keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i:i + 500])
    client.close()
