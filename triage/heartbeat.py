"""Worker heartbeats in Redis: which workers are alive, with which model loaded.

Each worker process that holds a model refreshes a key with a short expiry; a worker that dies
simply disappears from the list. The web and `dermatriage status` read the list.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Callable

import redis

from .broker import redis_client

PREFIX = "dermatriage:workers:"
EVERY_S = 10
TTL_S = 3 * EVERY_S


def publish(client: redis.Redis, node: str, info: dict) -> None:
    client.set(PREFIX + node, json.dumps({**info, "node": node, "seen_at": time.time()}), ex=TTL_S)


def announce(redis_url: str, node: str, info: dict) -> None:
    """One heartbeat now, if the broker answers (a process starting up says that it is)."""
    try:
        publish(redis_client(redis_url), node, info)
    except redis.RedisError:
        pass


def start(redis_url: str, node: str, info: dict,
          after: Callable[[redis.Redis], None] = lambda client: None) -> threading.Thread:
    """Refresh this worker's heartbeat every few seconds from a daemon thread (survives broker outages);
    `after` runs after each heartbeat that reached the broker."""
    client = redis_client(redis_url)

    def beat():
        while True:
            try:
                publish(client, node, info)
                after(client)
            except redis.RedisError:
                pass  # the broker is down; the heartbeat resumes with it
            time.sleep(EVERY_S)

    thread = threading.Thread(target=beat, name="dermatriage-heartbeat", daemon=True)
    thread.start()
    return thread


def workers(client: redis.Redis) -> list[dict]:
    found = []
    for key in sorted(client.scan_iter(PREFIX + "*")):
        raw = client.get(key)
        if raw:
            info = json.loads(raw)
            info["age_s"] = round(time.time() - info.pop("seen_at"), 1)
            found.append(info)
    return found
