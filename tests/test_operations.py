"""Operations: worker heartbeat in health and status, Flower behind auth, the compose file, graceful stop."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys

import pytest
import requests
import yaml

from harness import imagegen
from tests.support import ROOT, VENV_BIN, child_env, free_port, listening_addresses, wait_until
from triage.schema import ImageStatus


def test_health_status_and_metrics_report_the_loaded_model(make_stack, sqlite_url):
    metrics_port = free_port()
    stack = make_stack(sqlite_url, worker_metrics_port=metrics_port)
    name = f"ops-{free_port()}"  # heartbeats of other tests' workers may still be on the shared Redis
    worker = stack.start_worker(name=name)

    def mine(workers):
        return [w for w in workers if w["node"] == name]

    def loaded():
        report = stack.client.get("/health").get_json()
        return report["model_ready"] and [w for w in mine(report.get("workers", [])) if w["model_loaded"]]

    [seen] = wait_until(loaded, 180, message="the worker's heartbeat with its model loaded")
    assert seen["model_version"].startswith("demo-tiny-untrained@") and seen["model_trained"] is False
    status = subprocess.run([sys.executable, "-m", "scripts.cli", "status"], cwd=ROOT, capture_output=True,
                            text=True, env=child_env(stack.settings), timeout=60)
    report = json.loads(status.stdout)
    assert status.returncode == 0 and mine(report["workers"])[0]["model_version"] == seen["model_version"]

    body = stack.upload([(imagegen.jpeg(i), f"{i}.jpg") for i in range(3)]).get_json()
    stack.wait_final(body["batch_id"])
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert 'dermatriage_worker_images_total{outcome="analysed"} 3.0' in text
    assert "dermatriage_worker_end_to_end_seconds_count 3.0" in text
    assert "dermatriage_worker_inference_seconds_count" in text
    assert f'dermatriage_worker_model_info{{trained="false",version="{seen["model_version"]}"}} 1.0' in text
    # They answer without credentials, so by default they listen on this machine only.
    assert listening_addresses(metrics_port) == {"127.0.0.1"}
    worker.stop()


def test_flower_requires_credentials(sqlite_stack):
    settings = sqlite_stack.settings
    port = free_port()
    proc = subprocess.Popen([str(VENV_BIN / "celery"), "-A", "worker.app", "flower", f"--port={port}",
                             "--address=127.0.0.1", "--basic-auth=admin:s3cret-for-test"],
                            cwd=ROOT, env=child_env(settings), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            try:
                return requests.get(url + "/api/workers", timeout=1).status_code
            except requests.RequestException:
                return None

        assert wait_until(up, 30, message="flower") == 401
        assert requests.get(url + "/api/tasks", timeout=5).status_code == 401
        assert requests.get(url + "/api/workers", auth=("admin", "wrong"), timeout=5).status_code == 401
        assert requests.get(url + "/api/workers", auth=("admin", "s3cret-for-test"), timeout=5).status_code == 200
        # Flower's own metrics and health check ignore its basic auth: why it listens on loopback only
        # (scripts/run.sh; compose publishes it on the host's loopback; tests/test_run_script.py).
        assert requests.get(url + "/metrics", timeout=5).status_code == 200
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_compose_command_exists_in_the_project():
    from scripts.cli import main as cli_main  # noqa: F401  (the module the commands run)

    services = _compose()["services"]
    assert {"redis", "postgres", "migrate", "web", "worker", "flower"} <= set(services)
    assert "--appendonly" in services["redis"]["command"] and "noeviction" in services["redis"]["command"]
    cli_commands = subprocess.run([sys.executable, "-m", "scripts.cli", "--help"], cwd=ROOT, capture_output=True,
                                  text=True).stdout
    for name, service in services.items():
        command = service.get("command")
        if command is None or name in ("redis", "postgres"):
            continue
        words = command if isinstance(command, list) else shlex.split(command)
        text = " ".join(words)
        if "scripts.cli" in text:
            assert words[words.index("scripts.cli") + 1] in cli_commands, name
        if "-A worker.app" in text:
            assert (ROOT / "worker" / "app.py").exists()
        if "web.wsgi:app" in text:
            assert (ROOT / "web" / "wsgi.py").exists()
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]


def test_compose_and_run_script_run_one_scheduler_of_their_own_and_no_worker_embeds_one():
    services = _compose()["services"]
    schedulers = [name for name, service in services.items() if "beat" in service.get("command", [])]
    assert schedulers == ["scheduler"] and services["scheduler"].get("restart", "unless-stopped") != "no"
    assert not any("--beat" in service.get("command", []) for service in services.values())
    run = (ROOT / "scripts" / "run.sh").read_text()
    assert "--beat" not in run and 'supervise "$VENV/bin/celery" -A worker.app beat' in run


def test_compose_publishes_only_the_portal_beyond_this_machine_and_makes_the_secret_key():
    services = _compose()["services"]
    published = {name: service["ports"] for name, service in services.items() if service.get("ports")}
    assert published == {"web": ["8000:8000"], "flower": ["127.0.0.1:5555:5555"]}
    assert services["secret"]["command"][-1] == "ensure-secret-key"
    assert services["web"]["depends_on"]["secret"] == {"condition": "service_completed_successfully"}
    lines = (ROOT / ".env.example").read_text().splitlines()
    assert "# DERMATRIAGE_SECRET_KEY=" in lines and "DERMATRIAGE_SECRET_KEY=" not in lines  # optional now


@pytest.mark.skipif(subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
                    if shutil.which("docker") else True, reason="no docker compose client on this machine")
def test_compose_file_validates(tmp_path):
    env = tmp_path / ".env"
    env.write_text("POSTGRES_PASSWORD=x\nDERMATRIAGE_SECRET_KEY=y\nDERMATRIAGE_FLOWER_PASSWORD=z\n")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    result = subprocess.run(["docker", "compose", "config", "-q"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_stopped_worker_finishes_its_batch_and_loses_nothing(make_stack, sqlite_url):
    stack = make_stack(sqlite_url, gradcam=True)
    files = [(imagegen.jpeg(i, 320, 240), f"{i}.jpg") for i in range(60)]
    body = stack.upload(files).get_json()
    worker = stack.start_worker(name="graceful")
    wait_until(lambda: len(stack.analysis_counts()) >= 5, 60, 0.05, "the first batches")
    os.killpg(worker.proc.pid, signal.SIGTERM)  # what a deployment's stop sends
    worker.proc.wait(60)
    log = worker.output()
    assert "Warm shutdown" in log and "ERROR" not in log.split("Warm shutdown")[1]
    statuses = stack.statuses(body["batch_id"])
    assert ImageStatus.PROCESSING not in statuses.values()  # nothing left half-done
    worker.start()
    assert set(stack.wait_final(body["batch_id"]).values()) == {ImageStatus.ANALYSED}
    assert set(stack.analysis_counts().values()) == {1}


def test_a_worker_that_stops_consuming_exits_to_be_restarted(make_stack, sqlite_url):
    stack = make_stack(sqlite_url, consume_stall_s=3)
    worker = stack.start_worker(name="stuck")
    celery = stack.app.extensions["dermatriage"].celery
    # The symptom of the known failure: alive, connected, but no longer consuming its queue.
    celery.control.cancel_consumer(stack.settings.queue_name, destination=["stuck@" + os.uname().nodename],
                                   reply=True, timeout=5)
    body = stack.upload([(imagegen.jpeg(1), "a.jpg")]).get_json()
    assert worker.proc.wait(30) == 75
    assert "has stopped consuming" in worker.output()
    worker.start()  # what the supervisor does
    assert set(stack.wait_final(body["batch_id"]).values()) == {ImageStatus.ANALYSED}


def test_the_watchdog_ignores_a_busy_worker_and_a_broker_outage(redis_server):
    from worker.watchdog import ConsumeWatchdog

    exits = []
    client_queue = "watched"
    dog = ConsumeWatchdog(redis_server.url, client_queue, stall_s=0, busy=lambda: False, exit_process=exits.append)
    assert not dog.stalled()  # empty queue
    dog.client.rpush(client_queue, "job")
    assert dog.stalled()
    dog.busy = lambda: True
    assert not dog.stalled()
    outage = ConsumeWatchdog(f"redis://127.0.0.1:{free_port()}/0", client_queue, 0, busy=lambda: False)
    assert not outage.stalled()
    dog.client.delete(client_queue)


def test_web_metrics_need_a_token_and_report_the_state(sqlite_stack):
    stack = sqlite_stack
    stack.upload([(imagegen.jpeg(1), "a.jpg"), (b"not an image", "b.jpg")])
    anonymous = stack.app.test_client().get("/metrics")
    assert anonymous.status_code in (302, 401)
    text = stack.client.get("/metrics").get_data(as_text=True)
    assert 'dermatriage_images{status="queued"} 1.0' in text
    assert "dermatriage_queue_depth 1.0" in text
    assert 'dermatriage_web_files_total{result="rejected"}' in text


def test_admins_see_a_link_to_flower_and_reviewers_do_not(sqlite_stack):
    stack = sqlite_stack
    admin_page = stack.login().get("/").get_data(as_text=True)
    assert f'href="{stack.settings.flower_url}"' in admin_page
    stack.add_user("rev", "reviewer")
    reviewer_page = stack.login(stack.app.test_client(), "rev").get("/").get_data(as_text=True)
    assert "Flower" not in reviewer_page


def test_commands_on_a_database_behind_this_version_say_to_migrate_and_change_nothing(tmp_path, redis_server):
    from alembic.script import ScriptDirectory

    from triage.migrate import alembic_config, upgrade
    from triage.settings import Settings

    url = f"sqlite:///{tmp_path / 'behind.db'}"
    env = child_env(Settings(data_dir=tmp_path, database_url=url, redis_url=redis_server.url))

    def cli(*args, stdin=""):
        return subprocess.run([sys.executable, "-m", "scripts.cli", *args], cwd=ROOT, env=env, input=stdin,
                              capture_output=True, text=True, timeout=120)

    def create_admin():
        return cli("create-admin", "--username", "boss", "--password-stdin", stdin="boss-passphrase-123\n")

    fresh = create_admin()  # an operator who creates the first admin before ever starting the system
    assert fresh.returncode == 1 and "Traceback" not in fresh.stderr
    assert "has no schema yet" in fresh.stderr and "dermatriage migrate" in fresh.stderr
    status = cli("status")
    assert status.returncode == 1
    assert "has no schema yet" in json.loads(status.stdout)["database"]["error"]

    script = ScriptDirectory.from_config(alembic_config(url))
    head = script.get_current_head()
    previous = script.get_revision(head).down_revision
    upgrade(url, previous)  # a database left at the version before this one
    behind = cli("create-token", "--username", "boss")
    assert behind.returncode == 1 and "Traceback" not in behind.stderr
    assert f"is at schema {previous}, and this version needs {head}" in behind.stderr

    assert cli("migrate").returncode == 0
    made = create_admin()
    assert made.returncode == 0, made.stderr
    assert cli("create-token", "--username", "boss").stdout.startswith("dt_")
