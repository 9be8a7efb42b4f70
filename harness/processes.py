"""The real processes a test or a benchmark starts: a private Redis, Celery workers, gunicorn.

Shared by the test suite and the scripts (benchmarks), which never import `tests`.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from triage.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


class RedisServer:
    """A private redis-server on a spare port, so tests never touch a shared instance."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.port = port or free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (scripts/test.sh installs it)"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_until(lambda: _pings(client), 10, message="redis-server to start")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _pings(client) -> bool:
    try:
        return client.ping()
    except redis.RedisError:
        return False


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that reproduce `settings` in a child process."""
    env = {}
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if value is not None:
            env[field.validation_alias.choices[0]] = str(value)
    return env


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DERMATRIAGE_")}
    env.update(settings_env(settings))
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}, **extra)
    return env


class Worker:
    """A real Celery worker process (prefork, one child holding the model)."""

    def __init__(self, settings: Settings, logdir: Path, name: str | None = None, beat: bool = False,
                 env: dict[str, str] | None = None):
        self.settings = settings
        self.name = name or f"w{uuid.uuid4().hex[:8]}"
        self.log = logdir / f"worker-{self.name}.log"
        self.beat = beat
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None

    def start(self, wait_model: bool = True, timeout: float = 120) -> "Worker":
        cmd = [str(VENV_BIN / "celery"), "-A", "worker.app", "worker", "--pool", "prefork", "--concurrency", "1",
               "-Q", self.settings.queue_name, "-n", f"{self.name}@%h", "--without-mingle", "--without-gossip",
               "--loglevel", "INFO"]
        if self.beat:
            cmd += ["--beat", "--schedule", str(self.log.with_suffix(".beat"))]
        env = child_env(self.settings, DERMATRIAGE_WORKER_NAME=self.name, **self.extra_env)
        since = len(self.output())  # a restarted worker appends to the same log
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        marker = "ready (warm-up" if wait_model else " ready."
        wait_until(lambda: self._alive_and(marker, since), timeout, 0.3, f"worker {self.name} ({self.log})")
        return self

    def _alive_and(self, marker: str, since: int) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
        return marker in self.output()[since:]

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def child_pids(self) -> list[int]:
        """The prefork children (the processes that hold the model and run jobs)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def kill(self) -> None:
        """SIGKILL the whole worker, parent and child, as a machine crash would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class WebServer:
    """The portal under gunicorn, as the run script starts it, on a spare port."""

    def __init__(self, settings: Settings, logdir: Path):
        self.settings = settings
        self.port = free_port()
        self.log = logdir / f"web-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "WebServer":
        import requests

        cmd = [str(VENV_BIN / "gunicorn"), "--workers", "2", "--threads", "4", "--bind",
               f"127.0.0.1:{self.port}", "web.wsgi:app"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(self.settings), stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"web exited:\n{self.log.read_text()[-3000:]}")
            try:
                return requests.get(self.url + "/health", timeout=1).status_code in (200, 503)
            except requests.RequestException:
                return False

        wait_until(up, 30, message="the web server")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
