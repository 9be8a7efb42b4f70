"""The pipeline runs on the running system: idle latency, throughput over HTTP, steady load, the
worker's memory through a run, and where the time goes."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np

from scripts.benchmark.photos import PhotoSet
from scripts.benchmark.system import System

IDLE_GAP_S = 0.5  # pause before each idle-latency sample, so the system is idle again


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "samples": 0}
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95)),
            "samples": len(values)}


def idle_latency(system: System, paths: list[Path]) -> dict:
    """One photo at a time on an otherwise idle system: upload start to stored result, and its parts."""
    latencies, parts = [], []
    for path in paths:
        time.sleep(IDLE_GAP_S)
        sent = time.time()
        [image_id] = system.upload([path])
        answered = time.time()
        system.wait_final([image_id], 120, 0.05)  # the stored time comes from the row, not the poll
        stored = system.analyses([image_id]).get(image_id)
        if stored is not None:
            latencies.append((stored[0] - sent) * 1000)
            parts.append(dict(stored[1], upload_ms=(answered - sent) * 1000, total_ms=latencies[-1]))
    return {**percentiles(latencies), "parts_p50": latency_parts(parts)}


def latency_parts(parts: list[dict]) -> dict:
    """Median of each part of a lone image's latency; `other` is what no part accounts for: the job's
    trip through Redis, the claim, the wait for a batch to fill, the write."""
    names = ("upload_ms", "decode_ms", "quality_ms", "preprocess_ms", "forward_ms")
    out = {name: float(np.median([p.get(name, 0.0) for p in parts])) if parts else None for name in names}
    if parts:
        out["other_ms"] = float(np.median([p["total_ms"] - sum(p.get(n, 0.0) for n in names) for p in parts]))
    return out


def throughput(system: System, paths: list[Path], files_per_request: int, uploaders: int) -> dict:
    """Every photo uploaded over HTTP (several requests in flight); timed until the last result is stored."""
    chunks = [paths[i:i + files_per_request] for i in range(0, len(paths), files_per_request)]
    writes_before = system.write_metrics()
    memory = MemorySampler(system).start()
    cpu_before, threads_before = system.cpu_seconds(), system.model_thread_seconds()
    started = time.time()
    try:
        with ThreadPoolExecutor(uploaders) as pool:
            ids = [i for chunk in pool.map(system.upload, chunks) for i in chunk]
        uploaded = time.time()
        statuses = system.wait_final(ids, timeout=600 + 10 * len(ids), interval=0.25)
        system.wait_drained()  # the CPU counted below includes the jobs that found their images taken
    finally:
        memory.stop()
    cpu = {part: (used - cpu_before[part]) * 1000 / len(ids) for part, used in system.cpu_seconds().items()}
    threads_ms = {part: (used - threads_before[part]) * 1000 / len(ids)
                  for part, used in system.model_thread_seconds().items()}
    stored = system.analyses(ids)
    times = sorted(t for t, _ in stored.values())
    seconds = times[-1] - started
    return {"images": len(ids), "statuses": count(statuses.values()), "seconds": seconds,
            "rss_settled_mb": memory.at(times[len(times) // 10]), "rss_settled_after": len(times) // 10,
            "cpu_ms": cpu, "cpu_ms_total": sum(cpu.values()), "cpu_ms_network_threads": threads_ms["network"],
            "cpu_ms_model_threads": threads_ms,
            "rss_samples": [(round(t - started, 1), round(mb, 1)) for t, mb in memory.samples],
            "images_per_s": len(ids) / seconds, "uploads_done_s": uploaded - started,
            "steady_images_per_s": steady_rate(times),
            "breakdown": breakdown(stored, seconds / len(ids), writes_before, system.write_metrics())}


class MemorySampler:
    """The worker's resident memory once a second in the background, to tell one-off growth at the
    start of a run (new batch shapes, allocator pools of the decoding threads) from a steady leak."""

    def __init__(self, system: System):
        self.system = system
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._done.wait(1.0):
            self.samples.append((time.time(), self.system.worker_rss_mb()))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        self.samples.append((time.time(), self.system.worker_rss_mb()))

    def at(self, when: float) -> float:
        """The first sample taken at or after `when`."""
        return next((mb for t, mb in self.samples if t >= when), self.samples[-1][1])


def steady_rate(stored_times: list[float]) -> float | None:
    """Results per second between the 10th and 90th percentile of storing times: the pipeline once
    running, without its start (first uploads, first batch) and its tail."""
    if len(stored_times) < 10:
        return None
    low, high = int(len(stored_times) * 0.1), int(len(stored_times) * 0.9)
    span = stored_times[high] - stored_times[low]
    return (high - low) / span if span > 0 else None


def count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def breakdown(stored: dict[int, tuple[float, dict]], wall_s_per_image: float, writes_before: dict,
              writes_after: dict) -> dict:
    """Mean milliseconds per image in each stage, from the analyses' timings and (for the writes, which
    no row holds) the worker's metrics before and after the run."""
    timings = [t for _, t in stored.values()]

    def mean(key: str) -> float:
        values = [t[key] for t in timings if key in t]
        return float(np.mean(values)) if values else 0.0

    written = writes_after["images"] - writes_before["images"]
    write_ms = (writes_after["write_s"] - writes_before["write_s"]) * 1000 / max(1, written)
    return {"decode_ms": mean("decode_ms"), "quality_ms": mean("quality_ms"),
            "preprocess_ms": mean("preprocess_ms"), "prepare_cpu_ms": mean("prepare_cpu_ms"), "forward_ms": mean("forward_ms"),
            "explain_ms": mean("explain_ms"), "claim_ms": mean("claim_ms"), "write_ms": write_ms,
            "mean_batch": mean("batch_size"), "wall_ms": wall_s_per_image * 1000,
            "working_copy_share": mean("working_copy")}


def steady_load(system: System, paths: list[Path], per_second: float) -> dict:
    """One photo per request at a constant rate; latency from each request's start to its stored result."""
    sent: dict[int, float] = {}

    def send(path: Path) -> None:
        at = time.time()
        [image_id] = system.upload([path])
        sent[image_id] = at

    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:  # so a slow request does not hold up the ones after it
        sends = []
        for i, path in enumerate(paths):
            time.sleep(max(0.0, start + i / per_second - time.monotonic()))
            sends.append(pool.submit(send, path))
        for done in sends:
            done.result()
    system.wait_final(list(sent), timeout=600 + 10 * len(sent), interval=0.1)
    stored = system.analyses(list(sent))
    latencies = [(stored[i][0] - at) * 1000 for i, at in sent.items() if i in stored]
    return {"images_per_s": per_second, **percentiles(latencies)}


def measure_pipeline(model_path: Path, photos: PhotoSet, args) -> dict:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = args.workdir / f"run-{stamp}"
    n, k = args.images, args.idle_samples
    print(f"starting redis, web and worker in {run_dir} ...", flush=True)
    system = System.start(run_dir, model_path, args)
    try:
        out = {"run_dir": str(run_dir), "settings": pipeline_settings(system.settings)}
        out["rss_start_mb"] = system.worker_rss_mb()
        print(f"  idle latency ({k} single uploads) ...", flush=True)
        out["idle_latency"] = idle_latency(system, photos.paths(n, k))
        print(f"  throughput ({n} photos over HTTP) ...", flush=True)
        out["throughput"] = throughput(system, photos.paths(0, n), args.files_per_request, args.uploaders)
        time.sleep(1)
        out["rss_after_mb"], out["rss_after_images"] = system.worker_rss_mb(), n + k
        per_second = args.load_share * out["throughput"]["images_per_s"]
        print(f"  steady load ({args.load_images} photos at {per_second:.1f}/s) ...", flush=True)
        out["steady_load"] = steady_load(system, photos.paths(n + k, args.load_images), per_second)
        out["steady_load"]["share"] = args.load_share
        return out
    finally:
        system.stop()
        if not args.keep:
            remove_tree(run_dir / "images")


def pipeline_settings(settings) -> dict:
    from worker.runtime import threads_per_pass

    names = ("batch_max_size", "batch_max_wait_ms", "decode_threads", "prefetch", "forward_lanes", "precision",
             "gradcam")
    out = {name: getattr(settings, name) for name in names}
    out["network_threads"] = threads_per_pass(settings)
    out["database"] = settings.database_url.split(":")[0]
    return out


def remove_tree(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
