"""The README's first command: scripts/run.sh starts web, worker and Flower, and Ctrl-C stops them."""
from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys

import pytest
import requests

from harness import imagegen
from tests.support import (ROOT, free_port, listening_addresses, session_cookie_values, sign_in_over_http,
                           wait_until)

pytestmark = pytest.mark.slow


def test_run_script_serves_analyses_and_stops_on_ctrl_c(tmp_path, redis_server, tiny_model_path, request):
    web_port, flower_port, metrics_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DERMATRIAGE_")}
    env.update(DERMATRIAGE_DATA_DIR=str(tmp_path / "var"), REDIS_URL=redis_server.url,
               DERMATRIAGE_MODEL_PATH=str(tiny_model_path), DERMATRIAGE_WEB_PORT=str(web_port),
               DERMATRIAGE_FLOWER_PORT=str(flower_port), DERMATRIAGE_WORKER_METRICS_PORT=str(metrics_port),
               DERMATRIAGE_QUEUE="run-script")
    log = tmp_path / "run.log"
    proc = subprocess.Popen(["bash", "scripts/run.sh"], cwd=ROOT, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    request.addfinalizer(lambda: _kill_group(proc))
    portal = f"http://127.0.0.1:{web_port}"
    wait_until(lambda: "Ctrl-C stops everything" in log.read_text(errors="replace"), 300, 1, "run.sh to start")
    password = re.search(r"password (\S+)\)", log.read_text()).group(1)
    wait_until(lambda: _get(f"http://127.0.0.1:{flower_port}/api/workers", ("admin", password)) == 200, 60,
               message="flower with the printed password")
    assert _get(f"http://127.0.0.1:{flower_port}/api/workers") == 401
    wait_until(lambda: _get(f"http://127.0.0.1:{metrics_port}/metrics") == 200, 120, 1, "the worker's model")
    # Flower's /metrics and the worker's answer without credentials: on this machine only.
    assert listening_addresses(flower_port) == {"127.0.0.1"} == listening_addresses(metrics_port)

    uploaded = _upload(portal, env, tmp_path)
    batch = uploaded["batch_id"]
    wait_until(lambda: _batch(portal, env, batch)["finished"], 60, 0.5, "the batch to be analysed")
    assert _batch(portal, env, batch)["counts"]["analysed"] == 3
    # No key in the source: the run script made one, owner-only, in the data dir; the portal signs with it.
    key_file = tmp_path / "var" / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    cookie = sign_in_over_http(portal, "ops", OPS_PASSWORD).cookies["dermatriage_session"]
    assert session_cookie_values(key_file.read_text().strip(), cookie)

    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends to the whole group
    assert proc.wait(60) is not None
    # Workers finish their batch before they exit; give the group the time a person would.
    try:
        wait_until(lambda: not _group(proc.pid), 30, 0.5, "every process of the group to exit")
    except AssertionError:
        raise AssertionError(f"processes left running: {_group(proc.pid, details=True)}") from None


def test_a_second_copy_on_ports_in_use_starts_nothing(tmp_path, redis_server):
    import socket

    with socket.socket() as taken:  # the portal's port, held as a running copy would hold it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DERMATRIAGE_")}
        env.update(DERMATRIAGE_DATA_DIR=str(tmp_path / "var"), REDIS_URL=redis_server.url,
                   DERMATRIAGE_WEB_PORT=str(port), DERMATRIAGE_FLOWER_PORT=str(free_port()),
                   DERMATRIAGE_WORKER_METRICS_PORT=str(free_port()))
        run = subprocess.run(["bash", "scripts/run.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=600, start_new_session=True)
    assert run.returncode == 1
    assert f"127.0.0.1:{port} is already in use: is DermaTriage already running?" in run.stderr
    # it stopped before anything: no database, no model, no worker or scheduler started
    assert not (tmp_path / "var" / "dermatriage.db").exists() and "celery" not in run.stderr + run.stdout


def test_every_variable_the_run_script_reads_is_set_on_embedded_defaults():
    """`set -u` stops the run script at an unset variable: each it reads is exported by `dermatriage env`,
    set by the script itself, or read with a default."""
    script = (ROOT / "scripts" / "run.sh").read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DERMATRIAGE_") and k != "REDIS_URL"}
    exported = subprocess.run([sys.executable, "-m", "scripts.cli", "env"], cwd=ROOT, env=env, capture_output=True,
                              text=True, check=True).stdout
    known = set(re.findall(r"^export (\w+)=", exported, re.M)) | set(re.findall(r"^\s*(?:export )?(\w+)=", script, re.M))
    read = set(re.findall(r"\$\{?(DERMATRIAGE_\w+|REDIS_URL)\b(?!:-)", script))
    assert read - known == set()


def _group(pgid: int, details: bool = False) -> list[str]:
    out = subprocess.run(["pgrep", "-a" if details else "-g", *(["-g"] if details else []), str(pgid)],
                         capture_output=True, text=True).stdout
    return out.split("\n") if details else out.split()


def _get(url, auth=None):
    try:
        return requests.get(url, auth=auth, timeout=2).status_code
    except requests.RequestException:
        return None


def _upload(portal, env, tmp_path) -> dict:
    files = [("files", (f"{i}.jpg", imagegen.jpeg(i), "image/jpeg")) for i in range(3)]
    response = requests.post(portal + "/api/batches", files=files, timeout=30,
                             headers=_headers(env))
    assert response.status_code == 201, response.text
    return response.json()


def _batch(portal, env, batch_id) -> dict:
    return requests.get(f"{portal}/api/batches/{batch_id}", headers=_headers(env),
                        timeout=10).json()


def _headers(env) -> dict:
    """An admin and an API token made with the commands an operator would use."""
    if "token" not in _TOKEN:
        cli = [sys.executable, "-m", "scripts.cli"]
        subprocess.run(cli + ["create-admin", "--username", "ops", "--password-stdin"], cwd=ROOT, env=env,
                       input=OPS_PASSWORD + "\n", text=True, check=True, capture_output=True)
        out = subprocess.run(cli + ["create-token", "--username", "ops", "--name", "run-script test"], cwd=ROOT,
                             env=env, text=True, check=True, capture_output=True).stdout
        _TOKEN["token"] = out.strip().splitlines()[-1].split()[-1]
    return {"Authorization": f"Bearer {_TOKEN['token']}"}


_TOKEN: dict[str, str] = {}
OPS_PASSWORD = "a-long-enough-password-1"


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
