"""Detects a worker that is alive but no longer consuming (a known Celery failure mode after broker
reconnects): jobs wait in its queue, it runs nothing, and nothing reaches it. It then exits so its
supervisor (compose `restart:`, systemd, scripts/run.sh) starts a fresh one; its claims are released
by the next process on the node and its unacknowledged jobs come back through the reconciler."""
from __future__ import annotations

import logging
import os
import threading
import time

import redis

from triage.broker import redis_client

log = logging.getLogger(__name__)
EXIT_CODE = 75  # EX_TEMPFAIL: try again


class ConsumeWatchdog:
    def __init__(self, redis_url: str, queue: str, stall_s: float, busy, exit_process=os._exit,
                 checked=lambda client: None):
        self.client = redis_client(redis_url)
        self.queue = queue
        self.stall_s = stall_s
        self.busy = busy  # () -> bool: is the worker running or holding a job right now?
        self.exit_process = exit_process
        self.checked = checked  # (client) -> None, after each check that found the worker consuming
        self.last_received = time.monotonic()

    def received(self) -> None:
        self.last_received = time.monotonic()

    def stalled(self) -> bool:
        if self.busy() or time.monotonic() - self.last_received < self.stall_s:
            return False
        try:
            return self.client.llen(self.queue) > 0
        except redis.RedisError:
            return False  # a broker outage is not a stall; the consumer reconnects by itself

    def start(self, every_s: float) -> threading.Thread:
        def watch():
            while True:
                time.sleep(every_s)
                if self.stalled():
                    log.critical("jobs are waiting in %r but none has reached this worker for %.0fs: "
                                 "it has stopped consuming; exiting so it is restarted",
                                 self.queue, self.stall_s)
                    logging.shutdown()
                    self.exit_process(EXIT_CODE)
                self.checked(self.client)

        thread = threading.Thread(target=watch, name="dermatriage-consume-watchdog", daemon=True)
        thread.start()
        return thread
