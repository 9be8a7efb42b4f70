"""What one worker process holds: settings, database, image store and the loaded model.

Built lazily inside the process that runs tasks (the prefork child), never in the parent, so
TensorFlow is never initialised before a fork.
"""
from __future__ import annotations

import ctypes
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
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

        settle_memory()
        classifier = load_classifier(self.settings.model_path, self.settings.precision)
        warm = classifier.warm_up(self.batch_sizes)
        log.info("model %s ready (warm-up %.2fs, %s)", classifier.version, warm, classifier.precision)
        return classifier

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes warmed up at start: every one a job can run, so no job meets a new shape (its
        first call is slow, and the kernels it sets up grow the worker's memory mid-run). Above 16 only
        powers of two and the largest, to keep start-up short."""
        largest = self.settings.batch_max_size
        sizes = {n for n in range(1, largest + 1) if n <= 16 or n & (n - 1) == 0}
        return tuple(sorted(sizes | {largest}))

    @cached_property
    def explainer(self):
        if not self.settings.gradcam:
            return None
        from model.gradcam import GradCam

        return GradCam(self.classifier)

    @cached_property
    def pool(self) -> ThreadPoolExecutor | None:
        """Threads that prepare one batch's images side by side (None: in the job's own thread)."""
        threads = self.settings.decode_threads
        return ThreadPoolExecutor(threads, thread_name_prefix="prepare") if threads > 0 else None

    @cached_property
    def background(self) -> ThreadPoolExecutor:
        """One thread that claims and prepares the next batch while the network runs this one."""
        return ThreadPoolExecutor(1, thread_name_prefix="prefetch")

    @cached_property
    def writer(self) -> ThreadPoolExecutor:
        """One thread that writes results, one batch after another in the order they came out."""
        return ThreadPoolExecutor(1, thread_name_prefix="write")


# glibc's mallopt parameter for the size from which each allocation gets its own mapping.
_M_MMAP_THRESHOLD = -3
_LARGE_BUFFER = 1 << 20


def settle_memory() -> None:
    """Keep the worker's memory flat over a long run, in the process that holds the model.

    Decoded photographs are megabytes each. glibc raises its mapping threshold to the size of the last
    large block freed, after which such buffers come from per-thread heaps that it rarely gives back:
    with several preparing threads the worker grew by about 230 MB (18%) over its first few hundred
    images. A fixed threshold returns every buffer of a megabyte or more to the system when it is freed.
    OpenCV's own threads are turned off too: images are already prepared side by side on the pool.
    """
    import cv2

    cv2.setNumThreads(1)
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _LARGE_BUFFER)
    except (OSError, AttributeError):  # not glibc: its allocator has its own policy
        pass


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime(get_settings())
    return _runtime
