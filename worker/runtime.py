"""What one worker process holds: settings, database, image store and the loaded model.

Built lazily inside the process that runs tasks (the prefork child), never in the parent, so
TensorFlow is never initialised before a fork.
"""
from __future__ import annotations

import logging
import os
import socket
from functools import cached_property

from model.quality import QualityThresholds
from triage.db import Database
from triage.risk import RiskThresholds
from triage.settings import Settings, get_settings
from triage.store import open_store

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.db = Database(settings.database_url)
        self.store = open_store(settings)
        self.quality_thresholds = QualityThresholds.from_settings(settings)
        self.risk_thresholds = RiskThresholds.from_settings(settings)
        # The claim owner: one per worker (its prefork parent), stable across child restarts. Set
        # DERMATRIAGE_WORKER_NAME to keep it stable across whole-worker restarts too.
        self.node = os.environ.get("DERMATRIAGE_WORKER_NAME") or f"{socket.gethostname()}-{os.getppid()}"

    @cached_property
    def classifier(self):
        from model.loader import load_classifier

        classifier = load_classifier(self.settings.model_path)
        log.info("model %s ready (warm-up %.2fs)", classifier.version, classifier.warm_up())
        return classifier

    @cached_property
    def explainer(self):
        if not self.settings.gradcam:
            return None
        from model.gradcam import GradCam

        return GradCam(self.classifier)


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime(get_settings())
    return _runtime
