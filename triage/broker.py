"""A Redis client for the status and heartbeat paths (Celery keeps its own connections)."""
from __future__ import annotations

import redis

TIMEOUT_S = 2  # a status page must answer, and a heartbeat thread go on, while the broker is down


def redis_client(url: str) -> redis.Redis:
    """A client with its own connection pool: build one per process and keep it (redis-py reconnects
    after an outage and after a fork by itself)."""
    return redis.Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
