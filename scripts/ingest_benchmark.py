"""Ingest throughput: photographs per second the portal accepts, under gunicorn as scripts/run.sh starts it.

Makes distinct JPEGs of about 200 KB, starts a private Redis and the portal (gunicorn, 2 workers x 4
threads, SQLite, local image folder), and uploads them with `dermatriage upload`: all from one
uploader, then the same number split across eight uploaders running at once. Each round starts on
an empty data folder, so no file is found already stored. No analysis worker runs: this measures
taking images in (hash, decode with every block checked, metadata stripped, durable write, rows, jobs on Redis).

    python -m scripts.ingest_benchmark                 # 1200 images, 3 rounds of each
    python -m scripts.ingest_benchmark --images 400 --rounds 1 --uploaders 1,4,8

The client runs on the same machine and takes its share of the CPU, as it would on a one-box
install. The rate is images accepted divided by the time from the first uploader starting to send
until the last one finishes (hashing and start-up before that are left out). On a machine shared
with other work the rate says little, so the CPU time spent per image is printed too (gunicorn's
processes, Redis, and the uploaders while sending), with the rate the machine's cores would allow
at that cost if nothing else ran.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from harness import imagegen
from harness.processes import RedisServer, WebServer
from triage.auth import create_user, issue_token
from triage.db import Database
from triage.migrate import upgrade
from triage.schema import Role
from triage.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SIDE = (1400, 1050)  # with quality 92 this scene encodes to about 200 KB
BASES = 8


def make_images(folder: Path, count: int, seed: int) -> int:
    """`count` JPEGs of distinct content (a few base scenes, each copy with its own noise patch, so no two
    files hash or store alike); returns their total size."""
    folder.mkdir(parents=True, exist_ok=True)
    bases = [imagegen.skin_photo(seed * 100 + i, *SIDE) for i in range(BASES)]
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(count):
        pixels = bases[i % BASES].copy()
        y, x = rng.integers(0, SIDE[1] - 32), rng.integers(0, SIDE[0] - 32)
        pixels[y:y + 32, x:x + 32] = rng.integers(60, 200, (32, 32, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=92)
        (folder / f"img-{i:05d}.jpg").write_bytes(buf.getvalue())
        total += buf.tell()
    return total


def split(images: list[Path], folders: list[Path]) -> None:
    """Hard links into one folder per uploader: each sends its own share."""
    for folder in folders:
        folder.mkdir(parents=True)
    for i, image in enumerate(images):
        os.link(image, folders[i % len(folders)] / image.name)


def portal(work: Path, redis_url: str) -> tuple[WebServer, str]:
    settings = Settings(data_dir=work / "var", redis_url=redis_url, queue_name="ingest-benchmark")
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    with db.session() as s:
        user = create_user(s, "bench", "a-long-enough-password", Role.UPLOADER)
        token = issue_token(s, user, "benchmark")[1]
    db.dispose()
    return WebServer(settings, work).start(), token


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def gunicorn_pids(web: WebServer) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(web.proc.pid)], capture_output=True, text=True).stdout.split()
    return [web.proc.pid] + [int(pid) for pid in children]


def one_round(images: list[Path], uploaders: int, redis: RedisServer, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="ingest-bench-", dir=args.work) as tmp:
        work = Path(tmp)
        folders = [work / f"uploader-{n}" for n in range(uploaders)]
        split(images, folders)
        web, token = portal(work, redis.url)
        try:
            env = {**os.environ, "DERMATRIAGE_TOKEN": token, "PYTHONPATH": str(ROOT)}
            server_pids = gunicorn_pids(web) + [redis.proc.pid]
            server_cpu = cpu_seconds(server_pids)
            runs = [subprocess.Popen([sys.executable, "-m", "scripts.upload", str(folder), "--server", web.url,
                                      "--quiet", "--new-batch", "--state", str(work / f"state-{n}.json"),
                                      "--report", str(work / f"report-{n}.json")] + args.upload_args,
                                     cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
                    for n, folder in enumerate(folders)]
            codes = [run.wait() for run in runs]
            server_cpu = cpu_seconds(server_pids) - server_cpu
            reports = [json.loads((work / f"report-{n}.json").read_text()) for n in range(uploaders)]
        finally:
            web.stop()
    if any(codes):
        raise SystemExit(f"an uploader failed: exit codes {codes}")
    accepted = sum(r["counts"]["accepted"] for r in reports)
    seconds = max(r["finished_at"] for r in reports) - min(r["upload_started_at"] for r in reports)
    return {"accepted": accepted, "seconds": seconds, "rate": accepted / seconds,
            "mb": sum(r["sent_bytes"] for r in reports) / 1e6,
            "server_ms": server_cpu / accepted * 1000,
            "client_ms": sum(r["cpu_seconds_sending"] for r in reports) / accepted * 1000}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--uploaders", default="1,8", help="comma-separated uploader counts (default 1,8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each; the median is reported")
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench", help="scratch folder")
    parser.add_argument("upload_args", nargs="*", help="extra options for every uploader, after --")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    source = args.work / f"images-{args.images}"
    if not source.exists():
        print(f"making {args.images} JPEGs...", flush=True)
        size = make_images(source.with_suffix(".tmp"), args.images, seed=7)
        source.with_suffix(".tmp").rename(source)
        print(f"  average {size / args.images / 1000:.0f} KB", flush=True)
    images = sorted(source.glob("*.jpg"))
    mean_kb = sum(p.stat().st_size for p in images) / len(images) / 1000
    redis = RedisServer(args.work / "redis").start()
    try:
        print(f"{len(images)} JPEGs of {mean_kb:.0f} KB on average; {os.cpu_count()} CPUs; "
              f"gunicorn 2 workers x 4 threads; SQLite", flush=True)
        for uploaders in [int(n) for n in args.uploaders.split(",")]:
            rates = []
            for _ in range(args.rounds):
                result = one_round(images, uploaders, redis, args)
                rates.append(result["rate"])
                cost = result["server_ms"] + result["client_ms"]
                print(f"  {uploaders} uploader(s): {result['accepted']} accepted in {result['seconds']:.2f} s "
                      f"= {result['rate']:.0f} images/s ({result['mb'] / result['seconds']:.1f} MB/s); CPU per image: "
                      f"portal and Redis {result['server_ms']:.1f} ms + uploaders {result['client_ms']:.1f} ms "
                      f"= {cost:.1f} ms, so {os.cpu_count()} idle cores allow {os.cpu_count() * 1000 / cost:.0f} images/s",
                      flush=True)
            # On a shared machine the best round is the one least disturbed by other work.
            print(f"{uploaders} uploader(s): median {statistics.median(rates):.0f} images/s, best {max(rates):.0f} "
                  f"(rounds: {', '.join(f'{r:.0f}' for r in rates)})", flush=True)
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
