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
import tempfile
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
    """A private redis-server on a spare port, so tests never touch a shared instance.

    `persistent` keeps an append-only file, as the deployments do: a restart finds the queued jobs."""

    def __init__(self, workdir: Path, port: int | None = None, persistent: bool = False):
        self.port = port or free_port()
        self.workdir = workdir
        self.persistent = persistent
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (scripts/test.sh installs it)"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "yes" if self.persistent else "no",
                                      "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_until(lambda: _pings(client), 10, message="redis-server to start")
        return self

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class PostgresServer:
    """A private PostgreSQL cluster on a spare port (initdb, pg_ctl), which a test may kill and restart.

    As root, the cluster runs as the `postgres` user, which PostgreSQL requires."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dermatriage-pg-"))
        self.bindir = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))[-1])
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/test"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_owner, str(self.bindir / tool), *args], check=True, capture_output=True)

    def start(self) -> "PostgresServer":
        if not (self.dir / "PG_VERSION").exists():
            if self.as_owner:
                shutil.chown(self.dir, "postgres")
            self._run("initdb", "-D", str(self.dir), "-A", "trust", "-U", "postgres")
            self._pg_ctl_start()
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "test")
        else:
            self._pg_ctl_start()  # after a kill: crash recovery replays the write-ahead log
        return self

    def _pg_ctl_start(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir), "-l", str(self.dir / "server.log"), "-w", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would; its backends end when they notice."""
        pid = int((self.dir / "postmaster.pid").read_text().split()[0])
        backends = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(_alive(int(p)) for p in [pid, *backends]), 30, 0.2, "PostgreSQL's processes to end")
        # In a container nobody may reap the dead postmaster, and PostgreSQL takes a zombie for a live one.
        for lock in ("postmaster.pid", f".s.PGSQL.{self.port}.lock"):
            (self.dir / lock).unlink(missing_ok=True)

    def stop(self) -> None:
        if (self.dir / "postmaster.pid").exists():
            subprocess.run([*self.as_owner, str(self.bindir / "pg_ctl"), "-D", str(self.dir), "-m", "immediate",
                            "stop"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process is alive (a zombie is not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


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


class CeleryProcess:
    """A real Celery process (worker, scheduler or Flower) in its own process group, logging to a file."""

    kind = "celery"
    marker = ""  # what its log says once it is up

    def __init__(self, settings: Settings, logdir: Path, name: str | None = None,
                 env: dict[str, str] | None = None):
        self.settings = settings
        self.name = name or f"w{uuid.uuid4().hex[:8]}"
        self.log = logdir / f"{self.kind}-{self.name}.log"
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 120) -> "CeleryProcess":
        env = child_env(self.settings, DERMATRIAGE_WORKER_NAME=self.name, **self.extra_env)
        since = len(self.output())  # a restarted process appends to the same log
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=env, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self._alive_and(self.marker, since), timeout, 0.3, f"{self.kind} {self.name} ({self.log})")
        return self

    def _alive_and(self, marker: str, since: int) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.kind} exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
        return marker in self.output()[since:]

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole process group, as a machine crash would."""
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


class Worker(CeleryProcess):
    """A real Celery worker process (prefork, one child holding the model)."""

    kind = "worker"

    def command(self) -> list[str]:
        return [str(VENV_BIN / "celery"), "-A", "worker.app", "worker", "--pool", "prefork", "--concurrency", "1",
                "-Q", self.settings.queue_name, "-n", f"{self.name}@%h", "--without-mingle", "--without-gossip",
                "--loglevel", "INFO"]

    def start(self, wait_model: bool = True, timeout: float = 120) -> "Worker":
        self.marker = "ready (warm-up" if wait_model else " ready."
        return super().start(timeout)

    def child_pids(self) -> list[int]:
        """The prefork children (the processes that hold the model and run jobs)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]


class Scheduler(CeleryProcess):
    """The deployment's one Celery beat, which sends the reconcile job (as scripts/run.sh runs it)."""

    kind = "scheduler"
    marker = "beat: Starting"

    def command(self) -> list[str]:
        return [str(VENV_BIN / "celery"), "-A", "worker.app", "beat", "--schedule",
                str(self.log.with_suffix(".schedule")), "--loglevel", "INFO"]


class Flower(CeleryProcess):
    """Flower on a spare loopback port, as scripts/run.sh runs it."""

    kind = "flower"
    marker = "Visit me at"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.port = free_port()

    def command(self) -> list[str]:
        return [str(VENV_BIN / "celery"), "-A", "worker.app", "flower", f"--port={self.port}", "--address=127.0.0.1",
                "--logging=info"]


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
