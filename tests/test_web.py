"""The portal against a real Redis and real databases (no worker needed): ingest, limits, errors."""
from __future__ import annotations

import io

import redis
from PIL import Image as PILImage

from tests import imagegen
from tests.support import csrf_token, free_port
from triage.schema import ImageStatus


def stored_files(stack) -> list:
    root = stack.settings.image_store
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def queue_length(stack) -> int:
    return redis.Redis.from_url(stack.settings.redis_url).llen(stack.settings.queue_name)


def test_accepted_files_are_stored_queued_and_enqueued_after_commit(stack):
    body = stack.upload([(imagegen.jpeg(1), "a.jpg"), (imagegen.jpeg(2), "b.jpg")]).get_json()
    ids = [f["image_id"] for f in body["files"]]
    assert stack.statuses() == {i: ImageStatus.QUEUED for i in ids}
    assert queue_length(stack) == 2
    assert len(stored_files(stack)) == 2


def test_rejected_files_leave_no_row_and_no_file(stack):
    bad = [(b"", "empty.jpg"), (b"<html><script>alert(1)</script></html>", "page.jpg"),
           (imagegen.jpeg(3)[:4000], "truncated.jpg")]
    body = stack.upload(bad + [(imagegen.jpeg(4), "good.jpg")]).get_json()
    reasons = {f["name"]: f.get("reason", "") for f in body["files"]}
    assert body["accepted"] == 1 and body["rejected"] == 3
    assert "empty" in reasons["empty.jpg"]
    assert "not a readable image" in reasons["page.jpg"]
    assert "truncated" in reasons["truncated.jpg"] or "decoded" in reasons["truncated.jpg"]
    assert len(stack.statuses()) == 1 and len(stored_files(stack)) == 1


def test_duplicates_in_a_batch_are_reported_not_stored_twice(stack):
    photo = imagegen.jpeg(5)
    body = stack.upload([(photo, "one.jpg"), (photo, "again.jpg")]).get_json()
    assert [f["status"] for f in body["files"]] == ["accepted", "duplicate"]
    again = stack.upload([(photo, "third.jpg")], batch_id=body["batch_id"]).get_json()
    assert again["files"][0] == {"name": "third.jpg", "status": "duplicate",
                                 "image_id": body["files"][0]["image_id"],
                                 "reason": "The same file is already in this batch."}
    other_batch = stack.upload([(photo, "elsewhere.jpg")]).get_json()
    assert other_batch["accepted"] == 1  # another batch may hold the same photograph
    assert len(stored_files(stack)) == 1  # content-addressed: one file on disk


def test_client_filenames_are_display_names_only(sqlite_stack):
    names = ["../../etc/passwd.jpg", "/abs/path.jpg", "nul\x00byte.jpg", "ü" * 2000 + ".jpg", "C:\\x\\y.jpg"]
    body = sqlite_stack.upload([(imagegen.jpeg(i), n) for i, n in enumerate(names)]).get_json()
    assert body["accepted"] == len(names)
    shown = [f["name"] for f in body["files"]]
    assert shown[0] == "../../etc/passwd.jpg" and "\x00" not in shown[2] and len(shown[3]) <= 1024
    for path in stored_files(sqlite_stack):
        assert path.parent.parent.parent == sqlite_stack.settings.image_store and len(path.name) == 64


def test_limits_give_clear_4xx_and_store_nothing(make_stack, sqlite_url):
    # The request limit sits between one 700 kB JPEG (a request that fits) and two 1.5 MB PNGs (one that does not).
    stack = make_stack(sqlite_url, max_files_per_request=2, max_request_bytes=1_000_000, max_file_bytes=100_000)
    too_many = stack.upload([(imagegen.jpeg(i, 320, 240), f"{i}.jpg") for i in range(3)])
    assert too_many.status_code == 400 and "Too many files" in too_many.get_json()["error"]
    big = imagegen.encode(imagegen.skin_photo(1, 1200, 900), "PNG")
    too_big_request = stack.upload([(big, "a.png"), (big + b"x", "b.png")])
    assert too_big_request.status_code == 413 and "larger" in too_big_request.get_json()["error"]
    one_too_big = stack.upload([(imagegen.jpeg(1, 1600, 1200, quality=98), "big.jpg"),
                                (imagegen.jpeg(2, 320, 240), "small.jpg")]).get_json()
    assert [f["status"] for f in one_too_big["files"]] == ["rejected", "accepted"]
    assert "larger than the limit" in one_too_big["files"][0]["reason"]
    empty = stack.client.post("/api/batches", data={}, content_type="multipart/form-data")
    assert empty.status_code == 400
    assert len(stored_files(stack)) == 1


def test_stored_image_has_no_gps_or_camera_metadata(sqlite_stack):
    exif = PILImage.Exif()
    exif[0x0132] = "2026:11:24 10:00:00"
    exif[0xA431] = "SERIAL-12345"
    exif.get_ifd(0x8825)[2] = (51.0, 30.0, 0.0)
    buf = io.BytesIO()
    PILImage.fromarray(imagegen.skin_photo(9)).save(buf, "JPEG", exif=exif.tobytes())
    body = sqlite_stack.upload([(buf.getvalue(), "gps.jpg")]).get_json()
    served = sqlite_stack.client.get(f"/images/{body['files'][0]['image_id']}/file")
    assert served.status_code == 200 and served.mimetype == "image/jpeg"
    data = served.get_data()
    assert b"Exif" not in data and b"SERIAL-12345" not in data
    assert not PILImage.open(io.BytesIO(data)).getexif()


def test_broker_outage_keeps_rows_received_for_the_reconciler(make_stack, sqlite_url):
    stack = make_stack(sqlite_url, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    response = stack.upload([(imagegen.jpeg(1), "a.jpg")])
    assert response.status_code == 201 and response.get_json()["accepted"] == 1
    assert list(stack.statuses().values()) == [ImageStatus.RECEIVED]
    health = stack.client.get("/health")
    assert health.status_code == 503 and health.get_json()["redis"]["ok"] is False


def test_pages_headers_and_errors(stack):
    body = stack.upload([(imagegen.jpeg(1), "a.jpg")]).get_json()
    page = stack.client.get(f"/batches/{body['batch_id']}")
    # An unfinished batch polls its progress from the JSON API (static/batch.js) instead of refreshing.
    poll = f'data-poll="/api/batches/{body["batch_id"]}?images=0"'
    assert page.status_code == 200 and poll in page.get_data(as_text=True)
    progress = stack.client.get(f"/api/batches/{body['batch_id']}?images=0").get_json()
    assert "images" not in progress and progress["finished"] is False
    assert progress["progress"] == {"received": 1, "queued": 1, "analysed": 0, "reviewed": 0}
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert stack.client.get("/batches/999").status_code == 404
    missing = stack.client.get("/api/batches/999")
    assert missing.status_code == 404 and "does not exist" in missing.get_json()["error"]
    health = stack.client.get("/health").get_json()
    assert health["ok"] and health["redis"]["queue_depth"] == 1


def test_form_upload_shows_the_batch_and_names_rejected_files(sqlite_stack):
    browser = sqlite_stack.login()  # a signed-in browser session: its form posts carry a CSRF token
    response = browser.post("/upload", data={
        "name": "Clinic A", "csrf_token": csrf_token(browser, "/"),
        "files": [(io.BytesIO(imagegen.jpeg(1)), "ok.jpg"), (io.BytesIO(b"GIF89a not really"), "anim.gif")]},
        content_type="multipart/form-data")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "Clinic A" in html and "1 accepted" in html and "1 rejected" in html
    assert "anim.gif" in html


def test_the_web_app_never_imports_tensorflow():
    import subprocess
    import sys

    from tests.support import ROOT

    code = ("import sys, web.app, web.auth, web.review, web.exports, web.admin, web.account; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'model')]; "
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
