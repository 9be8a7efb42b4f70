"""Background duties and when each last did its work, so a duty that silently stopped is seen.

Every duty records its last successful run in Redis (one hash per deployment queue), from whichever
process does it. `/health` and the portal's metrics read the record: a duty is overdue once twice its
interval has passed without a success. A duty that has never run since the portal first looked is
given a longer start-up grace (a worker loading a large model takes a while).

The duties, and who does them:
- scheduler: the Celery beat process sent the reconcile job (it is its own supervised process);
- reconciler: re-enqueued images whose job was lost;
- notifications: re-sent notification jobs that were lost (the notifications of urgent cases);
- orphan_sweep: removed stored files that no row names;
- heartbeats: a model process published its heartbeat;
- consume_watchdog: a worker's main process checked that it still consumes its queue.
"""
from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import dataclass
from typing import Callable

import redis

from . import heartbeat
from .settings import Settings

log = logging.getLogger(__name__)
PREFIX = "dermatriage:duties:"
STARTUP_GRACE_S = 180.0  # a duty never seen is overdue only this long after the portal first looked


@dataclass(frozen=True)
class Duty:
    name: str
    what: str
    every_s: Callable[[Settings], float]  # 0 = switched off

    def overdue_after_s(self, settings: Settings) -> float:
        return 2 * self.every_s(settings)


def watchdog_every_s(settings: Settings) -> float:
    """How often the consume watchdog checks (0 when it is switched off)."""
    return max(1.0, settings.consume_stall_s / 4) if settings.consume_stall_s > 0 else 0.0


DUTIES = (
    Duty("scheduler", "sends the reconcile job on time", lambda s: s.reconcile_every_s),
    Duty("reconciler", "re-enqueues images whose job was lost", lambda s: s.reconcile_every_s),
    Duty("notifications", "re-sends notification jobs that were lost", lambda s: s.reconcile_every_s),
    Duty("orphan_sweep", "removes stored files that no row names", lambda s: s.reconcile_every_s),
    Duty("heartbeats", "model processes report that they are alive", lambda s: heartbeat.EVERY_S),
    Duty("consume_watchdog", "worker main processes check that they still consume", watchdog_every_s),
)
NAMES = tuple(d.name for d in DUTIES)


def _key(queue: str) -> str:
    return PREFIX + queue  # one record per deployment (its analysis queue)


def record(client: redis.Redis, queue: str, name: str, node: str | None = None) -> None:
    """Note that `name` just did its work. Never raises: a broker outage shows in /health by itself."""
    assert name in NAMES, name
    entry = {"at": time.time(), "node": node or socket.gethostname()}
    try:
        client.hset(_key(queue), name, json.dumps(entry))
    except redis.RedisError as exc:
        log.debug("could not record duty %s: %s", name, exc)


def report(client: redis.Redis, settings: Settings, now: float | None = None) -> dict[str, dict]:
    """Each duty's last success, its age, its interval and whether it is overdue. Raises RedisError."""
    now = time.time() if now is None else now
    key = _key(settings.queue_name)
    client.hsetnx(key, "_since", json.dumps({"at": now}))  # when the portal first looked
    raw = {k.decode(): json.loads(v) for k, v in client.hgetall(key).items()}
    since = raw.pop("_since")["at"]
    found = {}
    for duty in DUTIES:
        every = duty.every_s(settings)
        entry = raw.get(duty.name)
        if not every:
            found[duty.name] = {"on": False, "what": duty.what, "overdue": False}
            continue
        if entry:
            age = now - entry["at"]
            overdue = age > duty.overdue_after_s(settings)
            found[duty.name] = {"on": True, "what": duty.what, "every_s": every, "last_success_at": entry["at"],
                                "age_s": round(age, 1), "node": entry["node"], "overdue": overdue}
        else:
            waited = now - since
            found[duty.name] = {"on": True, "what": duty.what, "every_s": every, "last_success_at": None,
                                "age_s": None, "overdue": waited > max(STARTUP_GRACE_S, duty.overdue_after_s(settings))}
    return found
