"""Faults injected into real processes: every accepted image ends analysed, needing a reshoot, or failed
with a reason, exactly once. Real Redis, real worker processes, real databases; loopback only."""
from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import pytest

from harness import imagegen
from tests.faults import POISON_SIDE, TcpProxy, crashing_decoder_path, record, small_photos
from tests.support import RedisServer, Worker, wait_until
from triage.schema import ImageStatus

pytestmark = pytest.mark.slow

# Recovery within seconds instead of minutes, so the tests stay short.
FAST = dict(task_time_limit_s=20, visibility_timeout_s=60, stale_after_s=5, reconcile_every_s=2, gradcam=False)


def upload_in_requests(stack, files, per_request: int = 50, client=None) -> list[int]:
    ids = []
    for i in range(0, len(files), per_request):
        body = stack.upload(files[i:i + per_request], client=client).get_json()
        assert body["accepted"] == len(files[i:i + per_request]), body
        ids += [f["image_id"] for f in body["files"]]
    return ids


def analysed_count(stack) -> int:
    return len(stack.analysis_counts())


def assert_exactly_once(stack, ids, fault: str, injected: int, expect=ImageStatus.ANALYSED):
    statuses = stack.wait_final(timeout=240)
    counts = stack.analysis_counts()
    record(fault, injected, ids, statuses, counts)
    assert set(statuses) == set(ids)
    assert {s for s in statuses.values()} == {expect}, {i: s for i, s in statuses.items() if s != expect}
    assert set(counts) == set(ids) and set(counts.values()) == {1}


def test_sigkill_mid_batch_loses_nothing(make_stack, sqlite_url):
    stack = make_stack(sqlite_url, **FAST)
    ids = upload_in_requests(stack, small_photos(240))
    stack.start_scheduler()
    worker = stack.start_worker(name="crashy")
    kills = 0
    for _ in range(3):  # kill the process holding the model mid-batch; its parent starts another
        target = analysed_count(stack) + 15
        wait_until(lambda: analysed_count(stack) >= target, 120, 0.05, "progress before the next kill")
        for pid in worker.child_pids():
            os.kill(pid, signal.SIGKILL)
            kills += 1
    wait_until(lambda: analysed_count(stack) >= 100, 120, 0.1, "progress before killing the whole worker")
    worker.kill()  # parent and child at once, as a machine crash would
    kills += 1
    worker.start()
    assert_exactly_once(stack, ids, "SIGKILL worker mid-batch (3 children, 1 whole worker)", kills)
    assert kills >= 4


def test_poison_image_fails_alone_after_capped_attempts(make_stack, sqlite_url, tmp_path):
    stack = make_stack(sqlite_url, **FAST)
    poison = imagegen.encode(imagegen.skin_photo(99, POISON_SIDE, POISON_SIDE))
    body = stack.upload(small_photos(6) + [(poison, "poison.jpg")]).get_json()
    worker = stack.start_worker(env={"PYTHONPATH": f"{crashing_decoder_path(tmp_path)}:{os.getcwd()}"})
    statuses = stack.wait_final(body["batch_id"], timeout=240)
    poison_id = body["files"][-1]["image_id"]
    record("poison image crashing the decoder", 1, list(statuses), statuses, stack.analysis_counts())
    assert statuses.pop(poison_id) == ImageStatus.FAILED
    assert set(statuses.values()) == {ImageStatus.ANALYSED}
    api = stack.client.get(f"/api/batches/{body['batch_id']}").get_json()
    failed = next(i for i in api["images"] if i["id"] == poison_id)
    assert "Gave up after 3 attempts" in failed["error"] and failed["attempts"] == 3
    assert worker.output().count("exited with signal SIGABRT") + worker.output().count("signal 6") >= 3
    assert set(stack.analysis_counts().values()) == {1}


def test_redis_restart_mid_run_loses_nothing(make_stack, sqlite_url, tmp_path):
    broker = RedisServer(tmp_path / "redis").start()
    try:
        stack = make_stack(sqlite_url, redis_url=broker.url, **FAST)
        ids = upload_in_requests(stack, small_photos(120))
        stack.start_scheduler()
        worker = stack.start_worker()
        wait_until(lambda: analysed_count(stack) >= 20, 120, 0.05, "progress before the broker restart")
        broker.stop()  # queued jobs are gone with it: this Redis keeps nothing on disk
        during = stack.upload(small_photos(10, start=500)).get_json()
        assert during["accepted"] == 10  # accepted while the broker is down, left `received`
        time.sleep(2)
        broker.start()
        ids += [f["image_id"] for f in during["files"]]
        assert_exactly_once(stack, ids, "Redis stopped and restarted empty mid-run (uploads while down)", 1)
        assert worker.proc.poll() is None  # the same worker reconnected and kept consuming
    finally:
        broker.stop()


def test_database_outage_tasks_retry_and_finish(make_stack, pg_server_url):
    from tests.support import create_pg_database, drop_pg_database

    url = create_pg_database(pg_server_url)
    try:
        stack = make_stack(url, **{**FAST, "gradcam": True})  # heatmaps make the run last past the cut
        parts = urlsplit(url)
        proxy = TcpProxy(parts.port or 5432, parts.hostname).start()
        via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
        ids = upload_in_requests(stack, small_photos(400))
        stack.start_scheduler()
        worker = Worker(stack.settings.model_copy(update={"database_url": via_proxy}), stack.tmp)
        stack.workers.append(worker)
        worker.start()
        wait_until(lambda: analysed_count(stack) >= 10, 120, 0.05, "progress before the outage")
        proxy.cut()
        time.sleep(4)
        assert analysed_count(stack) < len(ids)  # the outage really fell in the middle of the run
        proxy.start()
        assert_exactly_once(stack, ids, "PostgreSQL cut off for 4 s mid-run", 1)
        assert "OperationalError" in worker.output()  # and the worker really met it
    finally:
        stack.close()
        drop_pg_database(pg_server_url, url)


def test_load_twenty_uploaders_two_workers_counts_reconcile(make_stack, database_url):
    stack = make_stack(database_url, gradcam=False, batch_max_size=16)
    stack.start_worker(name="one")
    stack.start_worker(name="two")
    uploaders, per_uploader = 20, 60

    def uploader(k: int) -> list[int]:
        client = stack.app.test_client()
        return upload_in_requests(stack, small_photos(per_uploader, start=k * 1000), 20, client)

    with ThreadPoolExecutor(uploaders) as pool:
        ids = [i for chunk in pool.map(uploader, range(uploaders)) for i in chunk]
    assert len(ids) == len(set(ids)) == uploaders * per_uploader
    backend = stack.settings.database_url.split(":")[0].split("+")[0]
    assert_exactly_once(stack, ids, f"load: 20 uploaders, 2 workers ({backend})", 0)
    logs = [w.output() for w in stack.workers]
    assert all("succeeded" in log for log in logs)  # both workers took a share



def test_web_killed_during_an_upload_leaves_no_orphans(make_stack, sqlite_url):
    import threading

    import requests
    from sqlalchemy import func, select

    from triage.schema import Image
    from worker.orphans import sweep_orphans

    stack = make_stack(sqlite_url, **FAST)
    web = stack.start_web()
    files = small_photos(300)
    store = stack.app.extensions["dermatriage"].store
    headers = {"Authorization": f"Bearer {stack.token}"}

    def send():
        try:
            requests.post(web.url + "/api/batches", headers=headers, timeout=120,
                          files=[("files", (name, data, "image/jpeg")) for data, name in files])
        except requests.RequestException:
            pass  # the server died under it: that is the point

    sender = threading.Thread(target=send)
    sender.start()
    wait_until(lambda: len(list(store.entries())) >= 20, 60, 0.02, "the upload to be half stored")
    os.killpg(web.proc.pid, signal.SIGKILL)
    web.proc.wait(10)
    sender.join(30)

    with stack.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 0  # one transaction: all or nothing
    stored = len(list(store.entries()))
    assert stored >= 20  # files written before the commit that never came...
    assert sweep_orphans(stack.db, store, grace_s=0) == stored  # ...are what the reconciler sweeps
    assert list(store.entries()) == []

    web = stack.start_web()
    again = requests.post(web.url + "/api/batches", headers=headers, timeout=120,
                          files=[("files", (name, data, "image/jpeg")) for data, name in files]).json()
    assert again["accepted"] == len(files)
    stack.start_worker()
    assert_exactly_once(stack, [f["image_id"] for f in again["files"]],
                        "web server SIGKILLed mid-upload, then the upload repeated", 1)
