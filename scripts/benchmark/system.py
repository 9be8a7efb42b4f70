"""The running system the pipeline runs measure: Redis, the web (gunicorn) and one Celery worker, and
the CPU time and memory of each, read from /proc."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path

from scripts.benchmark.arguments import ROOT, pipeline_overrides


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
    def wait_drained(self, timeout: float = 120) -> None:
        """Until the worker has taken every job off the queue and run it: the jobs whose images a job
        before them already analysed still cost CPU, after the last result is stored."""
        import redis

        client = redis.Redis.from_url(self.settings.redis_url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # kombu keeps a job taken but not yet acknowledged in this hash
            if client.llen(self.settings.queue_name) == 0 and client.hlen("unacked") == 0:
                return
            time.sleep(0.1)

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

    def model_thread_seconds(self) -> dict[str, float]:
        """CPU time of the threads of the processes that hold the model, by part: "network" is
        TensorFlow's own threads (tf_...), its computing as it runs in the pipeline beside everything
        else; "prepare", "lane" and "write" are the worker's named pools (worker.runtime); "job" is the
        rest, the job's own thread (Celery's, which is also the first lane) above all."""
        parts = dict.fromkeys(("network", "prepare", "lane", "write", "job"), 0.0)
        for pid in self.worker.child_pids():
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    name = (task / "comm").read_text().strip()
                    seconds = stat_cpu(task / "stat")[1]
                except OSError:  # the thread ended while we looked
                    continue
                part = "network" if name.startswith("tf_") else name if name in parts else "job"
                parts[part] += seconds
        return parts

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
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            table[int(stat.parent.name)] = stat_cpu(stat)
        except OSError:  # the process ended while we looked
            continue
    return table


def stat_cpu(stat: Path) -> tuple[int, float]:
    """(parent pid, CPU seconds, user + system) from a process's or thread's /proc stat file."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
