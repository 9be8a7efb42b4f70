"""What a request needs, built once per process by the app factory."""
from __future__ import annotations

from dataclasses import dataclass

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


def services() -> Services:
    return current_app.extensions["dermatriage"]
