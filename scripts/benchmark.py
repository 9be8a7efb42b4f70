"""Throughput benchmark: the model's limit, the reference app's way, and our pipeline end to end.

Run by hand, on a quiet machine (figures from a busy one say little):

    python -m scripts.benchmark                                  # ResNet152, random weights, 2,000 photos
    python -m scripts.benchmark --backbone tiny --images 20      # a quick check that everything runs
    python -m scripts.benchmark --model /models/best_resnet152.h5   # a real weights file with its card

Measured side by side in one run, on the same model:
 1. the limit: the compiled forward pass on preprocessed tensors, at its best batch size;
 2. the reference way: one `model.predict` call per image, as the reference app classifies;
 3. the pipeline: real JPEG files (0.5 to 4 megapixels) uploaded over HTTP, through Redis and the
    worker, until the last analysis is in the database.
Also latency from upload to stored result (idle, and under a steady load), the worker's memory,
where the time goes, and reduced precision against float32. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCENES = 24  # distinct generated scenes; every photo is one of them, flipped and marked to be unique
MIN_MEGAPIXELS, MAX_MEGAPIXELS = 0.5, 4.0
JPEG_QUALITY = 90
IDLE_GAP_S = 0.5  # pause before each idle-latency sample, so the system is idle again
LIMIT_GAIN, REFERENCE_GAIN = 0.9, 2.0  # targets: pipeline >= 0.9 x limit and >= 2 x reference
OUTSIDE_NETWORK_MS = 12.0  # target: CPU per photograph outside the network, from HTTP request to stored result
LATENCY_ALLOWANCE_MS = 150.0  # target: idle p50 <= batch-1 forward + this
MEMORY_CAP_MB, MEMORY_GROWTH = 2048.0, 0.05


# ------------------------------------------------------------------------------------ arguments

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", choices=("resnet152", "efficientnet-lite0", "tiny"), default="resnet152",
                   help="demo model to build (random weights) when --model is not given")
    p.add_argument("--model", type=Path, help="an existing weights file with its .card.json")
    p.add_argument("--images", type=int, default=2000, help="photos in the end-to-end throughput run")
    p.add_argument("--idle-samples", type=int, default=20, help="single uploads on an idle system")
    p.add_argument("--load-images", type=int, default=200, help="uploads in the steady-load run")
    p.add_argument("--load-share", type=float, default=0.7,
                   help="steady load as a share of the measured pipeline throughput")
    p.add_argument("--sample-images", type=int, default=32, help="photos for the in-process measurements")
    p.add_argument("--reference-images", type=int, default=48, help="images for the model.predict loop")
    p.add_argument("--min-images", type=int, default=64, help="images per batch size when finding the limit")
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32", help="batch sizes tried for the limit")
    p.add_argument("--limit-streams", default="1,2", help="forward passes at once tried for the limit")
    p.add_argument("--precisions", default=None,
                   help="reduced precisions compared with float32 (default: bfloat16, and mixed_float16 on a GPU)")
    p.add_argument("--files-per-request", type=int, default=20, help="files per upload request")
    p.add_argument("--uploaders", type=int, default=2, help="upload requests in flight at once")
    # The pipeline's own settings, defaulting to what the worker would use.
    p.add_argument("--batch-max-size", type=int, default=None)
    p.add_argument("--batch-max-wait-ms", type=int, default=None)
    p.add_argument("--decode-threads", type=int, default=None)
    p.add_argument("--prefetch", choices=("on", "off"), default=None)
    p.add_argument("--forward-lanes", type=int, default=None)
    p.add_argument("--network-threads", type=int, default=None,
                   help="threads per forward pass, in the worker and in this process's own measurements")
    p.add_argument("--precision", default="float32", help="the worker's precision in the pipeline runs")
    p.add_argument("--explanations", action="store_true", help="pipeline with Grad-CAM on (the targets assume off)")
    p.add_argument("--workdir", type=Path, default=ROOT / "var" / "benchmark",
                   help="models and photos are cached here; each run gets its own folder")
    p.add_argument("--json", type=Path, default=None, help="where to write the figures (default: in the run folder)")
    p.add_argument("--keep", action="store_true", help="keep the run's database and image store")
    args = p.parse_args(argv)
    # Batch 1 gives the latency target; the pipeline's own batch size shows what batching alone costs.
    args.batch_sizes = sorted({1, pipeline_batch(args), *(int(b) for b in args.batch_sizes.split(",") if b.strip())})
    args.limit_streams = sorted({1, *(int(n) for n in args.limit_streams.split(",") if n.strip())})
    return args


# ------------------------------------------------------------------------------------ photos

@dataclass(frozen=True)
class PhotoSet:
    """Generated photographs on disk, made once and reused by later runs.

    Each is one of SCENES skin scenes at a size between 0.5 and 4 megapixels, flipped one of four
    ways and marked in one corner so that no two files have the same bytes (uploads of identical
    files would be answered as duplicates, not analysed).
    """
    folder: Path

    def paths(self, start: int, count: int) -> list[Path]:
        self.folder.mkdir(parents=True, exist_ok=True)
        indices = range(start, start + count)
        missing = [i for i in indices if not self.file(i).exists()]
        if missing:
            for scene in sorted({i % SCENES for i in missing}):  # each scene once, before the threads
                scene_pixels(scene)
            with ThreadPoolExecutor(os.cpu_count()) as pool:  # JPEG encoding releases the GIL
                list(pool.map(self.path, missing))
            scene_pixels.cache_clear()
        return [self.file(i) for i in indices]

    def file(self, index: int) -> Path:
        return self.folder / f"{index:05d}.jpg"

    def path(self, index: int) -> Path:
        out = self.file(index)
        if not out.exists():
            tmp = out.with_suffix(".part")
            tmp.write_bytes(photo_bytes(index))
            tmp.replace(out)
        return out


def scene_size(scene: int) -> tuple[int, int]:
    """Sizes spread evenly on a log scale from MIN to MAX megapixels; every fourth one portrait."""
    pixels = MIN_MEGAPIXELS * (MAX_MEGAPIXELS / MIN_MEGAPIXELS) ** (scene / (SCENES - 1)) * 1e6
    long_side, short_side = round(math.sqrt(pixels * 4 / 3)), round(math.sqrt(pixels * 3 / 4))
    return (short_side, long_side) if scene % 4 == 3 else (long_side, short_side)


@lru_cache(maxsize=SCENES)
def scene_pixels(scene: int) -> np.ndarray:
    from harness.imagegen import skin_photo

    width, height = scene_size(scene)
    return skin_photo(scene, width, height)


def photo_bytes(index: int) -> bytes:
    from harness.imagegen import encode

    scene, variant = index % SCENES, index // SCENES
    rgb = scene_pixels(scene)
    rgb = rgb[::-1] if variant & 1 else rgb
    rgb = rgb[:, ::-1] if variant & 2 else rgb
    rgb = np.ascontiguousarray(rgb)
    bits = np.array([(variant >> b) & 1 for b in range(16)], np.uint8) * 255
    rgb[:4, :64] = np.repeat(bits, 4)[None, :, None]  # 16 black or white cells: the variant number
    return encode(rgb, "JPEG", quality=JPEG_QUALITY)


# ------------------------------------------------------------------------------------ the model

def ensure_model(args) -> Path:
    """The weights file to measure: --model, or the demo model built once into the work folder."""
    if args.model is not None:
        return args.model
    path = args.workdir / "models" / f"demo_{args.backbone}.keras"
    if not path.exists() or not path.with_name(path.stem + ".card.json").exists():
        from model.demo import build_demo_model

        print(f"building the demo {args.backbone} model (random weights) in {path} ...", flush=True)
        build_demo_model(path, args.backbone)
    return path


def network_inputs(paths: list[Path], spec) -> np.ndarray:
    """The photographs as the worker feeds them to this model (its card's size and scaling)."""
    from triage.imaging import decode_rgb

    return np.stack([spec.tensor(decode_rgb(p.read_bytes())) for p in paths])


def tiled(tensors: np.ndarray, count: int) -> np.ndarray:
    reps = -(-count // len(tensors))
    return np.concatenate([tensors] * reps)[:count]


@dataclass
class Timed:
    images_per_s: float
    seconds: list[float]  # each call's wall time
    cpu_ms: float  # this process's CPU time per image, all threads


def rate(run, images_per_call: int, calls: int) -> Timed:
    """Images per second over `calls` calls after one untimed call (tracing, first-shape kernels).

    The CPU time per image comes with it: on a machine shared with other work the wall-clock rate
    drops, but the CPU an image costs barely moves, so it tells what the cores would allow."""
    run()
    seconds = []
    cpu = time.process_time()
    for _ in range(calls):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    cpu_ms = (time.process_time() - cpu) * 1000 / (images_per_call * calls)
    return Timed(images_per_call * calls / sum(seconds), seconds, cpu_ms)


def paired(runs: dict, images_per_call: int, calls: int) -> dict[str, float]:
    """Images per second of each run, timed in turn call by call (median), so that a busy spell on a
    shared machine hits every run alike and the ratios between them stay fair."""
    for run in runs.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(calls):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return {name: images_per_call / float(np.median(values)) for name, values in seconds.items()}


def measure_limit(classifier, tensors: np.ndarray, batch_sizes: list[int], min_images: int,
                  streams: list[int]) -> dict:
    """The fastest the network alone goes: every batch size, and each also as that many passes at once
    on as many threads (the worker runs forward_lanes passes side by side; the limit must include the
    best such arrangement, or the pipeline would be measured against less than the cores can do)."""
    timed: dict[tuple[int, int], Timed] = {}
    with ThreadPoolExecutor(max(streams)) as pool:  # TensorFlow lets go of the GIL while it computes
        for size in batch_sizes:
            batch = tiled(tensors, size)
            for n in streams:
                def passes(n=n, batch=batch):
                    return list(pool.map(classifier.predict, [batch] * n)) if n > 1 else classifier.predict(batch)

                timed[size, n] = rate(passes, size * n, max(3, -(-min_images // (size * n))))
                print(f"  limit: batch {size} x {n} at once: {timed[size, n].images_per_s:.2f} images/s", flush=True)
    best = max(timed, key=lambda key: timed[key].images_per_s)
    single = {size: t for (size, n), t in timed.items() if n == 1}
    return {"images_per_s": timed[best].images_per_s, "best_batch": best[0], "best_streams": best[1],
            "cpu_ms": timed[best].cpu_ms,
            "by_batch_size": {size: t.images_per_s for size, t in single.items()},
            "by_arrangement": {f"{size}x{n}": t.images_per_s for (size, n), t in timed.items()},
            "batch1_forward_ms": float(np.median(single[1].seconds) * 1000)}


def measure_reference(model, tensors: np.ndarray, count: int) -> dict:
    """The reference app's way: model.predict on one image at a time."""
    position = iter(range(count + 1))  # one more for the untimed first call, which builds predict's function

    def one() -> None:
        model.predict(tensors[next(position) % len(tensors)][None], verbose=0)

    timed = rate(one, 1, count)
    print(f"  reference: {timed.images_per_s:.2f} images/s", flush=True)
    return {"images_per_s": timed.images_per_s, "cpu_ms": timed.cpu_ms, "images": count}


def measure_explanation(classifier, tensors: np.ndarray, size: int) -> dict:
    """What Grad-CAM adds per image: its gradient-carrying pass and the PNG overlays, against a plain pass."""
    from model.gradcam import GradCam

    explainer = GradCam(classifier)
    batch = tiled(tensors, size)
    maps = explainer.scores_and_maps(batch)[1]
    speed = paired({"forward": lambda: classifier.predict(batch),
                    "gradient": lambda: explainer.scores_and_maps(batch),
                    "overlays": lambda: explainer.overlays(batch, maps)}, size, 5)
    forward, with_maps, overlays = speed["forward"], speed["gradient"], speed["overlays"]
    extra = 1000 / with_maps - 1000 / forward + 1000 / overlays
    print(f"  explanation: Grad-CAM pass {1000 / with_maps:.1f} ms per image against the forward pass's "
          f"{1000 / forward:.1f} ms, overlays {1000 / overlays:.1f} ms", flush=True)
    return {"batch": size, "forward_ms": 1000 / forward, "gradient_pass_ms": 1000 / with_maps,
            "overlay_ms": 1000 / overlays, "extra_ms": extra}


def measure_precision(path: Path, reference, tensors: np.ndarray, size: int, precision: str) -> dict:
    """Speed of a reduced precision against float32 at the limit's batch size, and their agreement."""
    from model.loader import load_classifier

    reduced = load_classifier(path, precision)
    batch = tiled(tensors, size)
    speed = paired({"float32": lambda: reference.predict(batch), precision: lambda: reduced.predict(batch)},
                   size, 5)
    want = np.concatenate([reference.predict(tensors[i:i + size]) for i in range(0, len(tensors), size)])
    got = np.concatenate([reduced.predict(tensors[i:i + size]) for i in range(0, len(tensors), size)])
    del reduced
    result = {"precision": precision, "images_per_s": speed[precision], "float32_images_per_s": speed["float32"],
              "speedup": speed[precision] / speed["float32"],
              "top1_identical": float((want.argmax(1) == got.argmax(1)).mean()),
              "max_probability_difference": float(np.abs(want - got).max()), "images": len(tensors)}
    print(f"  {precision}: {speed[precision]:.2f} images/s (float32 {speed['float32']:.2f})", flush=True)
    return result


def measure_model(path: Path, sample: list[Path], args) -> dict:
    """Everything measured inside this process, on preprocessed tensors: limit, reference, extras."""
    from model.loader import load_classifier

    classifier = load_classifier(path, threads_per_pass=network_threads(args))
    tensors = network_inputs(sample, classifier.input_spec)
    out = {"version": classifier.version, "trained": classifier.trained, "on_gpu": classifier.on_gpu,
           "input_size": classifier.input_size}
    out["limit"] = measure_limit(classifier, tensors, args.batch_sizes, args.min_images, args.limit_streams)
    out["reference"] = measure_reference(classifier.model, tensors, args.reference_images)
    out["explanation"] = measure_explanation(classifier, tensors, pipeline_batch(args))
    out["precision"] = [measure_precision(path, classifier, tensors, out["limit"]["best_batch"], p)
                        for p in reduced_precisions(args, classifier.on_gpu)]
    del classifier
    release_tensorflow()
    return out


def pipeline_overrides(args) -> dict:
    """The worker settings given on the command line (the others are the worker's defaults)."""
    return {k: v for k, v in dict(
        batch_max_size=args.batch_max_size, batch_max_wait_ms=args.batch_max_wait_ms,
        decode_threads=args.decode_threads, forward_lanes=args.forward_lanes, network_threads=args.network_threads,
        prefetch=None if args.prefetch is None else args.prefetch == "on").items() if v is not None}


def network_threads(args) -> int:
    """Threads per forward pass as the pipeline's worker will set them, so the limit is measured alike."""
    from triage.settings import Settings
    from worker.runtime import threads_per_pass

    return threads_per_pass(Settings(**pipeline_overrides(args)))


def pipeline_batch(args) -> int:
    """The largest batch the pipeline's worker will run (its setting, unless given here)."""
    from triage.settings import Settings

    return args.batch_max_size or Settings().batch_max_size


def reduced_precisions(args, on_gpu: bool) -> list[str]:
    if args.precisions is not None:
        return [p for p in args.precisions.split(",") if p.strip()]
    return ["bfloat16", "mixed_float16"] if on_gpu else ["bfloat16"]


def release_tensorflow() -> None:
    # The pipeline's worker needs the cores and memory; this process keeps only idle threads.
    import keras

    keras.backend.clear_session()
    gc.collect()


# ------------------------------------------------------------------------------------ the running system

@dataclass
class System:
    """Redis, the web (gunicorn) and one worker, as the run script starts them, on a fresh database."""
    run_dir: Path
    settings: object
    redis: object = None
    web: object = None
    worker: object = None
    token: str = ""
    _local: threading.local = field(default_factory=threading.local)

    @classmethod
    def start(cls, run_dir: Path, model_path: Path, args) -> "System":
        from harness.processes import RedisServer
        from triage.settings import Settings

        from harness.processes import free_port

        redis = RedisServer(run_dir / "redis").start()
        settings = Settings(data_dir=run_dir, redis_url=redis.url, model_path=model_path,
                            queue_name=f"bench-{uuid.uuid4().hex[:8]}", gradcam=args.explanations,
                            precision=args.precision, worker_metrics_port=free_port(), **pipeline_overrides(args))
        system = cls(run_dir, settings, redis=redis)
        try:
            system._boot()
        except BaseException:
            system.stop()
            raise
        return system

    def _boot(self) -> None:
        from harness.processes import WebServer, Worker
        from triage.migrate import upgrade

        upgrade(self.settings.database_url)
        self.token = api_token(self.settings)
        self.web = WebServer(self.settings, self.run_dir).start()
        self.worker = Worker(self.settings, self.run_dir, name="bench").start(timeout=900)

    def stop(self) -> None:
        for part in (self.worker, self.web, self.redis):
            if part is not None:
                part.stop()

    # --- uploads -------------------------------------------------------------------------------
    def upload(self, paths: list[Path]) -> list[int]:
        """One request with these files; returns the accepted image ids, in order."""
        import requests

        session = getattr(self._local, "session", None) or requests.Session()
        self._local.session = session
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
        response = session.post(self.web.url + "/api/batches", files=files, timeout=600,
                                headers={"Authorization": f"Bearer {self.token}"})
        response.raise_for_status()
        body = response.json()
        rejected = [f for f in body["files"] if f["status"] != "accepted"]
        if rejected:
            raise RuntimeError(f"the web did not accept every photo: {rejected[:3]}")
        return [f["image_id"] for f in body["files"]]

    # --- reading results -------------------------------------------------------------------------
    def wait_final(self, ids: list[int], timeout: float, interval: float) -> dict[int, str]:
        """Statuses once every image is analysed, needs a reshoot or failed."""
        from triage.schema import ImageStatus

        deadline = time.monotonic() + timeout
        while True:
            statuses = self.query_statuses(ids)
            if len(statuses) == len(ids) and all(s in ImageStatus.FINAL for s in statuses.values()):
                return statuses
            if time.monotonic() > deadline:
                waiting = sum(1 for s in statuses.values() if s not in ImageStatus.FINAL)
                raise TimeoutError(f"{waiting} of {len(ids)} images not finished after {timeout:.0f} s "
                                   f"(worker log: {self.worker.log})")
            self.check_alive()
            time.sleep(interval)

    def check_alive(self) -> None:
        if self.worker.proc.poll() is not None:
            raise RuntimeError(f"the worker exited:\n{self.worker.output()[-3000:]}")

    def query_statuses(self, ids: list[int]) -> dict[int, str]:
        from sqlalchemy import select

        from triage.schema import Image

        with self.db().session() as s:
            return dict(s.execute(select(Image.id, Image.status).where(Image.id.in_(ids))).all())

    def analyses(self, ids: list[int]) -> dict[int, tuple[float, dict]]:
        """image id -> (when its analysis was stored, as epoch seconds; its timings)."""
        from sqlalchemy import select

        from triage.schema import Analysis

        with self.db().session() as s:
            rows = s.execute(select(Analysis.image_id, Analysis.created_at, Analysis.timings)
                             .where(Analysis.image_id.in_(ids))).all()
        return {i: (created.replace(tzinfo=timezone.utc).timestamp(), timings or {}) for i, created, timings in rows}

    def db(self):
        if not hasattr(self, "_db"):
            from triage.db import Database

            self._db = Database(self.settings.database_url)
        return self._db

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time each part of the system has used so far (user + system, child processes included)."""
        table = process_table()
        children = self.worker.child_pids()
        return {"worker_model_process": sum(table.get(pid, (0, 0.0))[1] for pid in children),
                "worker_parent": table.get(self.worker.proc.pid, (0, 0.0))[1],
                "web": tree_cpu(table, self.web.proc.pid), "redis": tree_cpu(table, self.redis.proc.pid)}

    def write_metrics(self) -> dict[str, float]:
        """From the worker's Prometheus metrics: seconds spent writing batches, and images finished."""
        import requests
        from prometheus_client.parser import text_string_to_metric_families

        text = requests.get(f"http://127.0.0.1:{self.settings.worker_metrics_port}/metrics", timeout=10).text
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
        return {"write_s": sum(s.value for s in samples if s.name == "dermatriage_worker_write_seconds_sum"),
                "images": sum(s.value for s in samples if s.name == "dermatriage_worker_images_total")}

    def worker_rss_mb(self) -> float:
        """Resident memory of the worker's child processes, the ones that hold the model."""
        total_kb = 0
        for pid in self.worker.child_pids():
            status = Path(f"/proc/{pid}/status").read_text()
            total_kb += int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
        return total_kb / 1024


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used) for every process, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        table[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return table


def tree_cpu(table: dict[int, tuple[int, float]], root: int) -> float:
    """CPU seconds of a process and all its descendants (gunicorn's workers, say)."""
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += table.get(pid, (0, 0.0))[1]
        todo += [child for child, (parent, _) in table.items() if parent == pid]
    return total


def api_token(settings) -> str:
    """An admin and an API token, made with the commands an operator uses."""
    from harness.processes import child_env

    cli = [sys.executable, "-m", "scripts.cli"]
    env = child_env(settings)
    subprocess.run(cli + ["create-admin", "--username", "bench", "--password-stdin"], cwd=ROOT, env=env,
                   input="benchmark-password-not-secret\n", text=True, check=True, capture_output=True)
    out = subprocess.run(cli + ["create-token", "--username", "bench", "--name", "benchmark"], cwd=ROOT,
                         env=env, text=True, check=True, capture_output=True).stdout
    return out.strip().splitlines()[-1].split()[-1]


# ------------------------------------------------------------------------------------ pipeline runs

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
    cpu_before = system.cpu_seconds()
    started = time.time()
    try:
        with ThreadPoolExecutor(uploaders) as pool:
            ids = [i for chunk in pool.map(system.upload, chunks) for i in chunk]
        uploaded = time.time()
        statuses = system.wait_final(ids, timeout=600 + 10 * len(ids), interval=0.25)
    finally:
        memory.stop()
    cpu = {part: (used - cpu_before[part]) * 1000 / len(ids) for part, used in system.cpu_seconds().items()}
    stored = system.analyses(ids)
    times = sorted(t for t, _ in stored.values())
    seconds = times[-1] - started
    return {"images": len(ids), "statuses": count(statuses.values()), "seconds": seconds,
            "rss_settled_mb": memory.at(times[len(times) // 10]), "rss_settled_after": len(times) // 10,
            "cpu_ms": cpu, "cpu_ms_total": sum(cpu.values()),
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
            "preprocess_ms": mean("preprocess_ms"), "forward_ms": mean("forward_ms"),
            "explain_ms": mean("explain_ms"), "claim_ms": mean("claim_ms"), "write_ms": write_ms,
            "mean_batch": mean("batch_size"), "wall_ms": wall_s_per_image * 1000}


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


# ------------------------------------------------------------------------------------ report

def machine_info() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in read_lines("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    memory_kb = next((int(ln.split()[1]) for ln in read_lines("/proc/meminfo") if ln.startswith("MemTotal")), 0)
    import tensorflow as tf

    from model.loader import native_bfloat16

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(memory_kb / 1024 ** 2, 1),
            "bf16": native_bfloat16(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "load_average_start": os.getloadavg()[0],
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def targets(result: dict) -> dict:
    model, pipe = result["model"], result["pipeline"]
    run = pipe["throughput"]
    speed = run["images_per_s"]
    limit_ms = model["limit"]["batch1_forward_ms"] + LATENCY_ALLOWANCE_MS
    growth = pipe["rss_after_mb"] / pipe["rss_start_mb"] - 1
    settled = pipe["rss_after_mb"] / run["rss_settled_mb"] - 1
    return {
        "pipeline_over_limit": speed / model["limit"]["images_per_s"],
        "pipeline_over_reference": speed / model["reference"]["images_per_s"],
        # The same ratios from CPU time per image: what the cores would give with nothing else running.
        "cpu_pipeline_over_limit": model["limit"]["cpu_ms"] / run["cpu_ms_total"],
        "cpu_pipeline_over_reference": model["reference"]["cpu_ms"] / run["cpu_ms_total"],
        # Everything but the network: the pipeline's CPU per photograph less the limit's, which is the
        # network alone; the model process's share is what it spends beyond the network.
        "cpu_outside_network_ms": run["cpu_ms_total"] - model["limit"]["cpu_ms"],
        "cpu_outside_network_parts": {part: ms - (model["limit"]["cpu_ms"] if part == "worker_model_process" else 0)
                                      for part, ms in run["cpu_ms"].items()},
        "idle_p50_limit_ms": limit_ms,
        "memory_growth": growth,
        "memory_growth_settled": settled,
        "met": {"limit": speed >= LIMIT_GAIN * model["limit"]["images_per_s"],
                "reference": speed >= REFERENCE_GAIN * model["reference"]["images_per_s"],
                "idle_latency": pipe["idle_latency"]["p50_ms"] <= limit_ms,
                "outside_network": run["cpu_ms_total"] - model["limit"]["cpu_ms"] <= OUTSIDE_NETWORK_MS,
                "memory": pipe["rss_after_mb"] < MEMORY_CAP_MB and growth <= MEMORY_GROWTH,
                "memory_settled": pipe["rss_after_mb"] < MEMORY_CAP_MB and settled <= MEMORY_GROWTH},
    }


def render(result: dict) -> str:
    """The printed table: every figure the issue asks for, with its target where it has one."""
    sections = (header, throughput_section, cpu_section, latency_section, memory_section, breakdown_section,
                precision_section)
    return "\n\n".join("\n".join(section(result)) for section in sections)


def header(r: dict) -> list[str]:
    m, model, pipe = r["machine"], r["model"], r["pipeline"]
    return [
        "DermaTriage throughput benchmark",
        f"machine: {m['cpu']}, {m['cores']} cores{' (bfloat16 in hardware)' if m['bf16'] else ''}, "
        f"{m['memory_gb']} GB, Python {m['python']}, TensorFlow {m['tensorflow']}; "
        f"load average {m['load_average_start']:.1f} at start, {m['load_average_end']:.1f} at end",
        f"model: {model['version']}{'' if model['trained'] else ' (random weights)'}, "
        f"{'GPU' if model['on_gpu'] else 'CPU'}, input {model['input_size']} px",
        "pipeline: " + ", ".join(f"{k} {v}" for k, v in pipe["settings"].items()),
    ]


def row(label: str, *values: str) -> str:
    return f"{label:<66}" + "".join(f"{v:>11}" for v in values)


def throughput_section(r: dict) -> list[str]:
    limit, ref, run, t = r["model"]["limit"], r["model"]["reference"], r["pipeline"]["throughput"], r["targets"]
    batch = r["pipeline"]["settings"]["batch_max_size"]
    return [
        row("throughput", "images/s"),
        row(f"1. limit: compiled forward pass, best batch ({limit['best_batch']} x {limit['best_streams']} at once)",
            fmt(limit["images_per_s"], 2)),
        "   by batch size x passes at once: " + ", ".join(f"{k}: {v:.2f}" for k, v in limit["by_arrangement"].items()),
        row(f"   at the pipeline's largest batch ({batch})", fmt(limit["by_batch_size"].get(batch), 2)),
        row("2. reference: one model.predict per image", fmt(ref["images_per_s"], 2)),
        row(f"3. pipeline end to end ({run['images']} photos over HTTP)", fmt(run["images_per_s"], 2)),
        row("   pipeline once running (10th-90th percentile of results)", fmt(run["steady_images_per_s"], 2)),
        row("   uploads all answered after (s)", fmt(run["uploads_done_s"])),
        row(f"ratio 3/1 (target >= {LIMIT_GAIN:.2f})", fmt(t["pipeline_over_limit"], 2), verdict(t["met"]["limit"])),
        row(f"ratio 3/2 (target >= {REFERENCE_GAIN:.2f})", fmt(t["pipeline_over_reference"], 2),
            verdict(t["met"]["reference"])),
        "   outcomes: " + ", ".join(f"{k} {v}" for k, v in run["statuses"].items()),
    ]


def cpu_section(r: dict) -> list[str]:
    limit, ref, run, t = r["model"]["limit"], r["model"]["reference"], r["pipeline"]["throughput"], r["targets"]
    cores = r["machine"]["cores"]

    def allow(cpu_ms: float) -> str:
        return fmt(cores * 1000 / cpu_ms, 2)

    return [
        row("CPU time per image (moved less by other work than wall time)", "CPU ms", "cores fit"),
        row("1. limit", fmt(limit["cpu_ms"]), allow(limit["cpu_ms"])),
        row("2. reference", fmt(ref["cpu_ms"]), allow(ref["cpu_ms"])),
        row("3. pipeline, all its processes", fmt(run["cpu_ms_total"]), allow(run["cpu_ms_total"])),
        *(row(f"   {part.replace('_', ' ')}", fmt(ms)) for part, ms in run["cpu_ms"].items()),
        row("ratios 3/1 and 3/2 at these costs", fmt(t["cpu_pipeline_over_limit"], 2),
            fmt(t["cpu_pipeline_over_reference"], 2)),
        row(f"4. outside the network, 3 - 1 (target <= {OUTSIDE_NETWORK_MS:g})", fmt(t["cpu_outside_network_ms"]),
            verdict(t["met"]["outside_network"])),
        *(row(f"   {part.replace('_', ' ')}{' beyond the network' if part == 'worker_model_process' else ''}",
              fmt(ms)) for part, ms in t["cpu_outside_network_parts"].items()),
        f"   (cores fit = {cores} cores x 1000 / CPU ms: images/s if nothing else ran and no core ever waited;",
        "    on a busy machine CPU time grows too, as threads spin while they wait for a core)",
    ]


def latency_section(r: dict) -> list[str]:
    pipe, t, limit = r["pipeline"], r["targets"], r["model"]["limit"]
    idle, load = pipe["idle_latency"], pipe["steady_load"]
    parts = ", ".join(f"{k.removesuffix('_ms')} {fmt(v)}" for k, v in idle["parts_p50"].items())
    return [
        row("latency, upload to stored result", "p50 ms", "p95 ms"),
        row(f"idle, one image at a time (n={idle['samples']})", fmt(idle["p50_ms"]), fmt(idle["p95_ms"])),
        row(f"steady load, {load['images_per_s']:.1f} images/s ({load['share']:.0%} of 3, n={load['samples']})",
            fmt(load["p50_ms"]), fmt(load["p95_ms"])),
        f"   idle, parts (p50 ms): {parts}",
        f"   idle p50 target: batch-1 forward {limit['batch1_forward_ms']:.0f} ms + {LATENCY_ALLOWANCE_MS:.0f} ms "
        f"= {t['idle_p50_limit_ms']:.0f} ms: {verdict(t['met']['idle_latency'])}",
    ]


def memory_section(r: dict) -> list[str]:
    pipe, t = r["pipeline"], r["targets"]
    run = pipe["throughput"]
    settled_after = run["rss_settled_after"] + pipe["idle_latency"]["samples"]
    return [
        f"worker memory (VmRSS of the process holding the model), targets < {MEMORY_CAP_MB:.0f} MB and growth "
        f"<= {MEMORY_GROWTH:.0%}:",
        f"   {pipe['rss_start_mb']:.0f} MB at start (model loaded, every batch size warmed up), "
        f"{pipe['rss_after_mb']:.0f} MB after {pipe['rss_after_images']} images: "
        f"{t['memory_growth']:+.1%}, {verdict(t['met']['memory'])}",
        f"   {run['rss_settled_mb']:.0f} MB after {settled_after} images, so {t['memory_growth_settled']:+.1%} "
        f"over the rest of the run: {verdict(t['met']['memory_settled'])}",
    ]


def breakdown_section(r: dict) -> list[str]:
    pipe, explanation = r["pipeline"], r["model"]["explanation"]
    b = pipe["throughput"]["breakdown"]
    explained = pipe["settings"]["gradcam"]
    return [
        row("where the time goes (pipeline run, mean per image)", "ms"),
        row("   decode", fmt(b["decode_ms"])),
        row("   quality checks", fmt(b["quality_ms"])),
        row("   preprocess", fmt(b["preprocess_ms"])),
        row(f"   forward (its batch's time / its size; mean batch {b['mean_batch']:.1f})", fmt(b["forward_ms"])),
        *explanation_rows(b, explanation, explained),
        row("   database (claim + write)", fmt(b["claim_ms"] + b["write_ms"])),
        row("   wall time per image (1000 / throughput)", fmt(b["wall_ms"])),
        "   (decode, quality and preprocess run on threads beside the forward pass: the stages overlap)",
    ]


def explanation_rows(b: dict, explanation: dict, explained: bool) -> list[str]:
    if explained:
        return [row("   explanation (Grad-CAM overlays; its gradients are in the forward pass)",
                    fmt(b["explain_ms"]))]
    return [row(f"   explanation, off here; in-process at batch {explanation['batch']}:", ""),
            row("      Grad-CAM pass (forward and gradients; plain forward "
                f"{explanation['forward_ms']:.1f})", fmt(explanation["gradient_pass_ms"])),
            row("      heatmap overlays (PNG)", fmt(explanation["overlay_ms"]))]


def precision_section(r: dict) -> list[str]:
    model = r["model"]
    lines = [f"reduced precision (in-process, same images, batch {model['limit']['best_batch']}):"]
    lines += [f"   {p['precision']}: {p['images_per_s']:.2f} images/s against float32 {p['float32_images_per_s']:.2f}"
              f" = {p['speedup']:.2f} x; top-1 identical {p['top1_identical']:.0%} of {p['images']} images, "
              f"largest probability difference {p['max_probability_difference']:.4f}" for p in model["precision"]]
    if not model["trained"]:
        lines.append("   (random weights: check agreement on a trained model with --model)")
    return lines


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


# ------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = {"machine": machine_info()}
    from model.loader import configure_tensorflow

    configure_tensorflow(network_threads(args))  # before anything runs: TensorFlow takes it only then
    model_path = ensure_model(args)
    photos = PhotoSet(args.workdir / "photos")
    total = args.images + args.idle_samples + args.load_images
    print(f"generating {total} photos (0.5-4 MP, cached in {photos.folder}) ...", flush=True)
    photos.paths(0, total)
    print("measuring the model in this process ...", flush=True)
    result["model"] = measure_model(model_path, photos.paths(0, args.sample_images), args)
    result["pipeline"] = measure_pipeline(model_path, photos, args)
    result["machine"]["load_average_end"] = os.getloadavg()[0]
    result["targets"] = targets(result)
    print()
    print(render(result))
    out = args.json or Path(result["pipeline"]["run_dir"]) / "benchmark.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"\nfigures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
