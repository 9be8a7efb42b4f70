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
from functools import cached_property, lru_cache

from model.quality import QualityThresholds
from triage.db import Database
from triage.risk import RiskThresholds
from triage.settings import Settings, get_settings
from triage.store import open_store

log = logging.getLogger(__name__)
PR_SET_NAME = 15  # prctl(2)


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
        classifier = load_classifier(self.settings.model_path, self.settings.precision,
                                     threads_per_pass(self.settings))
        warm = classifier.warm_up(self.batch_sizes, at_once=self.settings.forward_lanes)
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
        return _named_pool(threads, "prepare") if threads > 0 else None

    @cached_property
    def background(self) -> ThreadPoolExecutor:
        """Threads for a job's other lanes (see tasks._run_batches), which claim and prepare batches
        while the job's own thread has one in the network."""
        return _named_pool(max(1, self.settings.forward_lanes - 1), "lane")

    @cached_property
    def writer(self) -> ThreadPoolExecutor:
        """One thread that writes results, one batch after another in the order they came out."""
        return _named_pool(1, "write")


def _named_pool(threads: int, name: str) -> ThreadPoolExecutor:
    """Threads named for their part, in Python and for the operating system too (`top -H`, /proc), as
    TensorFlow names its own (tf_...): an operator, and the benchmark, can see which part uses the CPU."""
    return ThreadPoolExecutor(threads, thread_name_prefix=name, initializer=_name_os_thread, initargs=(name,))


def _name_os_thread(name: str) -> None:
    """The calling thread's name as the kernel shows it (15 bytes at most); nothing without glibc."""
    libc = _libc()
    if libc is not None:
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def threads_per_pass(settings: Settings) -> int:
    """How many threads one forward pass may use on a CPU: the cores this process may run on, shared
    out among the forward lanes (DERMATRIAGE_NETWORK_THREADS overrides).

    TensorFlow's default gives every pass every core. With two lanes on two cores, that is four
    threads for two cores, and a thread that finds no work spins before it sleeps: measured with
    Lite0 at batch 8, two passes at once ran 232 images/s at 8.1 ms of CPU each; with one thread per
    pass, 265 images/s at 7.4 ms. On an accelerator the setting changes nothing that matters."""
    if settings.network_threads:
        return settings.network_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // settings.forward_lanes)


# glibc's mallopt parameters: the size from which a block gets a mapping of its own, and how much free
# memory at the top of a heap makes free() hand it back at once.
_M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD = -1
_MAPPED_FROM = 32 << 20  # the largest value glibc's own sliding threshold reaches on 64-bit systems
_KEPT_FREE = 1 << 30


@lru_cache(maxsize=1)
def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc: its allocator has its own policy
        return None


def settle_memory() -> None:
    """Keep the worker fast and its memory flat, in the process that holds the model.

    Decoded photographs (1 to 12 MB) and the network's activations (up to 25 MB a layer at batch 8) are
    freed as fast as they are made, so the heaps must keep such blocks for reuse: each page handed back
    and touched again costs the kernel a fault and a page of zeros. Measured over 400 photographs with
    two lanes: with a 1 MB mapping threshold (each large block mapped and unmapped) the network ran 13%
    slower; with glibc's default, which trims a heap as soon as 128 kB lie free at its top, there were
    5,700 page faults and 15 ms of kernel time per photograph; with neither, 170 faults and 2 ms, and
    9% more photographs per second. Blocks up to 32 MB therefore come from the heaps and stay there
    while the worker is busy; `release_memory` gives the free pages back when a job ends.
    OpenCV's own threads are turned off too: images are already prepared side by side on the pool.
    """
    import cv2

    cv2.setNumThreads(1)
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _MAPPED_FROM)
        libc.mallopt(_M_TRIM_THRESHOLD, _KEPT_FREE)


def release_memory() -> None:
    """Hand the free pages of every heap back to the system (glibc's malloc_trim walks them all)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime(get_settings())
    return _runtime
