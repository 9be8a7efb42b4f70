"""What a request needs, built once per process by the app factory."""
from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery
from flask import current_app

from triage.db import Database
from triage.settings import Settings
from triage.store import ImageStore


@dataclass
class Services:
    settings: Settings
    db: Database
    store: ImageStore
    celery: Celery
    redis: redis.Redis  # status pages' client, one pool per process


def services() -> Services:
    return current_app.extensions["dermatriage"]
