"""The portal against a real Redis and real databases (no worker needed): ingest, limits, errors."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor

import redis
import requests
from PIL import Image as PILImage

from harness import imagegen
from tests.support import clinical_fields, csrf_token, free_port, seed_analysis, stored_files
from triage.imaging import RejectedImage, sanitize
from triage.schema import ImageStatus


def queue_length(stack) -> int:
    return redis.Redis.from_url(stack.settings.redis_url).llen(stack.settings.queue_name)


def test_accepted_files_are_stored_queued_and_enqueued_after_commit(stack):
    body = stack.upload([(imagegen.jpeg(1), "a.jpg"), (imagegen.jpeg(2), "b.jpg")]).get_json()
    ids = [f["image_id"] for f in body["files"]]
    assert stack.statuses() == {i: ImageStatus.QUEUED for i in ids}
    assert queue_length(stack) == 1  # one job names both: a batch's worth of images per job
    [message] = redis.Redis.from_url(stack.settings.redis_url).lrange(stack.settings.queue_name, 0, -1)
    args = json.loads(base64.b64decode(json.loads(message)["body"]))[0]  # Celery's body: [args, kwargs, embed]
    assert args == ids
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


def test_every_stored_file_is_named_by_the_sha256_of_its_own_bytes(sqlite_stack):
    """An upload is hashed once: a file with nothing to strip is stored under the hash it arrived with,
    one with metadata under the hash of what is left. Either way the name is the content's."""
    exif = PILImage.Exif()
    exif[0x0132] = "2026:11:24 10:00:00"
    buf = io.BytesIO()
    PILImage.fromarray(imagegen.skin_photo(10)).save(buf, "JPEG", exif=exif.tobytes())
    plain = imagegen.jpeg(11)
    body = sqlite_stack.upload([(plain, "plain.jpg"), (buf.getvalue(), "exif.jpg")]).get_json()
    assert body["accepted"] == 2
    files = stored_files(sqlite_stack)
    assert len(files) == 2
    assert all(f.name == hashlib.sha256(f.read_bytes()).hexdigest() for f in files)
    assert hashlib.sha256(plain).hexdigest() in {f.name for f in files}  # stored exactly as sent


def test_pages_show_small_thumbnails_and_link_the_photograph_itself(sqlite_stack):
    large = imagegen.jpeg(12, 3000, 2000)
    small = imagegen.encode(imagegen.skin_photo(13, 120, 90), "PNG")
    body = sqlite_stack.upload([(large, "large.jpg"), (small, "small.png")]).get_json()
    ids = {f["name"]: f["image_id"] for f in body["files"]}
    client = sqlite_stack.login()
    thumb = client.get(f"/images/{ids['large.jpg']}/thumb")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    assert PILImage.open(io.BytesIO(thumb.get_data())).size == (240, 160)  # shorter side 160, shape kept
    assert len(thumb.get_data()) < len(large) / 10
    assert PILImage.open(io.BytesIO(client.get(f"/images/{ids['small.png']}/thumb").get_data())).size == (120, 90)
    page = client.get(f"/batches/{body['batch_id']}").get_data(as_text=True)
    assert f'src="/images/{ids["large.jpg"]}/thumb"' in page and f'href="/images/{ids["large.jpg"]}/file"' in page
    assert client.get("/images/999999/thumb").status_code == 404


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


# --------------------------------------------------------------------------- bulk upload support

def test_an_empty_batch_can_be_made_first_and_filled_later(sqlite_stack):
    stack = sqlite_stack
    made = stack.client.post("/api/batches", json={"name": "Clinic B"})
    assert made.status_code == 201
    batch_id = made.get_json()["batch_id"]
    assert stack.client.get(f"/api/batches/{batch_id}?images=0").get_json()["total"] == 0
    added = stack.upload([(imagegen.jpeg(1), "day 1/a.jpg")], batch_id=batch_id).get_json()
    assert added["accepted"] == 1 and added["batch_id"] == batch_id
    assert stack.client.post("/api/batches", json=["not", "an", "object"]).status_code == 400


def test_missing_says_what_a_batch_lacks_by_hash_and_by_name(sqlite_stack):
    stack = sqlite_stack
    held, other = imagegen.jpeg(1), imagegen.jpeg(2)
    batch_id = stack.upload([(held, "visit/room 1/a.jpg")]).get_json()["batch_id"]
    image_id = stack.statuses().popitem()[0]
    ask = {"sha256": [hashlib.sha256(held).hexdigest(), hashlib.sha256(other).hexdigest().upper()],
           "names": ["visit/room 1/a.jpg", "visit\\room 1\\b.jpg"]}
    answer = stack.client.post(f"/api/batches/{batch_id}/missing", json=ask)
    assert answer.status_code == 200
    assert answer.get_json() == {
        "batch_id": batch_id,
        "missing": {"sha256": [hashlib.sha256(other).hexdigest()], "names": ["visit\\room 1\\b.jpg"]},
        "present": {"sha256": {hashlib.sha256(held).hexdigest(): {"image_id": image_id, "name": "visit/room 1/a.jpg"}},
                    "names": {"visit/room 1/a.jpg": image_id}}}
    # A name is compared as the upload would store it: a Windows path finds its stored twin.
    windows = stack.client.post(f"/api/batches/{batch_id}/missing", json={"names": ["visit\\room 1\\a.jpg"]})
    assert windows.get_json()["present"]["names"] == {"visit\\room 1\\a.jpg": image_id}
    for bad in ({"sha256": ["xyz"]}, {"sha256": "not a list"}, {"names": [1]}, {"names": ["a"] * 10_001}):
        refused = stack.client.post(f"/api/batches/{batch_id}/missing", json=bad)
        assert refused.status_code == 400 and refused.get_json()["error"]
    assert stack.client.post(f"/api/batches/{batch_id}/missing", data="nonsense").status_code == 400
    assert stack.client.post("/api/batches/999/missing", json={"names": []}).status_code == 404


def test_upload_limits_are_published_for_uploaders(make_stack, sqlite_url):
    stack = make_stack(sqlite_url, max_files_per_request=7, max_request_bytes=9_000_000, max_file_bytes=3_000_000)
    limits = stack.client.get("/api/uploads/limits").get_json()
    assert limits["max_files_per_request"] == 7 and limits["max_request_bytes"] == 9_000_000
    assert limits["max_file_bytes"] == 3_000_000 and ".jpg" in limits["extensions"] and ".txt" not in limits["extensions"]
    page = stack.login().get("/").get_data(as_text=True)
    assert 'data-max-files="7"' in page and 'data-max-file-bytes="3000000"' in page


def test_the_upload_page_can_preselect_a_batch_and_the_form_adds_to_it(sqlite_stack):
    stack = sqlite_stack
    batch_id = stack.upload([(imagegen.jpeg(1), "a.jpg")]).get_json()["batch_id"]
    browser = stack.login()
    page = browser.get(f"/?batch={batch_id}").get_data(as_text=True)
    assert f'<option value="{batch_id}" selected>' in page
    assert f'href="/?batch={batch_id}"' in browser.get(f"/batches/{batch_id}").get_data(as_text=True)
    response = browser.post("/upload", data={
        "batch": str(batch_id), "csrf_token": csrf_token(browser, "/"),
        "files": [(io.BytesIO(imagegen.jpeg(2)), "b.jpg"), (io.BytesIO(imagegen.jpeg(1)), "again.jpg")]},
        content_type="multipart/form-data")
    assert "1 accepted, 1 duplicate, 0 rejected" in response.get_data(as_text=True)
    assert len(stack.statuses(batch_id)) == 2


def test_folder_paths_are_the_names_on_the_batch_queue_and_case_pages(sqlite_stack):
    stack = sqlite_stack
    name = "clinic 24 Nov/room 2/follow-up/lesion <3>.jpg"
    shown = "clinic 24 Nov/room 2/follow-up/lesion &lt;3&gt;.jpg"
    body = stack.upload([(imagegen.jpeg(1), name)]).get_json()
    assert body["files"][0]["name"] == name
    assert shown in stack.client.get(f"/batches/{body['batch_id']}").get_data(as_text=True)
    analysis_id = seed_analysis(stack.db, body["batch_id"], image_id=body["files"][0]["image_id"])
    assert shown in stack.client.get("/review").get_data(as_text=True)
    assert shown in stack.client.get(f"/review/{analysis_id}").get_data(as_text=True)


def test_over_the_limits_over_real_http_is_a_clear_4xx_never_a_500(make_stack, sqlite_url):
    stack = make_stack(sqlite_url, max_files_per_request=3, max_request_bytes=1_000_000, max_file_bytes=200_000)
    web = stack.start_web()
    headers = {"Authorization": f"Bearer {stack.token}"}

    def post(files, path="/api/batches"):
        return requests.post(web.url + path, files=[("files", f) for f in files], headers=headers, timeout=60)

    too_big = post([("a.jpg", os.urandom(1_500_000))])
    assert too_big.status_code == 413 and "larger than the server accepts" in too_big.json()["error"]
    too_many = post([(f"{i}.jpg", imagegen.jpeg(i, 64, 48)) for i in range(4)])
    assert too_many.status_code == 400 and "Too many files" in too_many.json()["error"]
    many_parts = post([(f"{i}.jpg", b"x") for i in range(80)])  # more form parts than any request may have
    assert many_parts.status_code == 413
    one_big = post([("big.png", imagegen.encode(imagegen.skin_photo(1, 900, 700), "PNG")), ("ok.jpg", imagegen.jpeg(2, 64, 48))])
    assert one_big.status_code == 201
    assert [f["status"] for f in one_big.json()["files"]] == ["rejected", "accepted"]
    unknown = post([("a.jpg", imagegen.jpeg(3, 64, 48))], "/api/batches/999/images")
    assert unknown.status_code == 404
    assert " 500 " not in web.log.read_text()


def test_the_same_folder_uploaded_twice_at_once_is_stored_once(sqlite_stack):
    """Two uploaders race to add the same files to one batch: each file is accepted once, and the
    other copy is a duplicate whichever request gets there first."""
    stack = sqlite_stack
    web = stack.start_web()
    batch_id = stack.client.post("/api/batches", json={"name": "race"}).get_json()["batch_id"]
    photos = [(f"{i}.jpg", imagegen.jpeg(i, 320, 240)) for i in range(12)]
    headers = {"Authorization": f"Bearer {stack.token}"}

    def send(order):
        return requests.post(f"{web.url}/api/batches/{batch_id}/images", headers=headers, timeout=60,
                             files=[("files", photos[i]) for i in order]).json()["files"]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, [range(12), reversed(range(12)), range(0, 12, 2), range(1, 12, 2)]))
    verdicts = [f["status"] for answer in answers for f in answer]
    assert verdicts.count("accepted") == 12 and verdicts.count("duplicate") == 24
    assert len(stack.statuses(batch_id)) == 12
    assert len(stored_files(stack)) == 12


def test_ingest_refuses_a_damaged_jpeg_exactly_when_a_full_size_decode_does():
    """Ingest decodes the JPEGs it stores unchanged at an eighth of their size (triage.imaging): libjpeg still reads
    every block of every scan, so a truncated or damaged file is refused as a full decode would."""
    photo = imagegen.skin_photo(4, 640, 480)
    refused = 0
    for params in ({"quality": 90}, {"quality": 90, "progressive": True}, {"quality": 90, "subsampling": 0}):
        data = imagegen.encode(photo, "JPEG", **params)
        rng = random.Random(1)
        variants = [data[:cut] for cut in range(300, len(data), len(data) // 30)]
        for _ in range(60):
            damaged = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                damaged[rng.randrange(600, len(data) - 2)] = rng.randrange(256)
            variants.append(bytes(damaged))
        for variant in variants:
            full_size = _decodes_at_full_size(variant)
            try:
                sanitize(variant, 50_000_000)
                accepted = True
            except RejectedImage:
                accepted = False
            assert accepted == full_size
            refused += not accepted
    assert refused >= 60  # the damage really was of the kind a decoder notices


def _decodes_at_full_size(data: bytes) -> bool:
    try:
        PILImage.open(io.BytesIO(data)).load()
        return True
    except Exception:
        return False


def test_a_file_another_request_added_meanwhile_becomes_a_duplicate(stack, monkeypatch):
    """The lookup before decoding found nothing, but by the insert another request had added the same
    bytes: the unique (batch, sha256) key turns this file into a duplicate, on either database."""
    import web.ingest

    photo = imagegen.jpeg(1)
    first = stack.upload([(photo, "a.jpg")]).get_json()
    monkeypatch.setattr(web.ingest, "known_hashes", lambda *args: {})  # as if looked up before the other commit
    again = stack.upload([(photo, "b.jpg"), (imagegen.jpeg(2), "c.jpg")], batch_id=first["batch_id"]).get_json()
    assert [f["status"] for f in again["files"]] == ["duplicate", "accepted"]
    assert again["files"][0]["image_id"] == first["files"][0]["image_id"]
    assert len(stack.statuses()) == 2 and len(stored_files(stack)) == 2


def test_a_multi_picture_jpeg_is_stored_and_served_as_the_jpeg_it_is(sqlite_stack):
    """Many phones save portrait photographs as MPO: a JPEG with further pictures after it. Its first
    picture is stored, as JPEG, and served as JPEG; the format sent is kept beside the one stored."""
    stack = sqlite_stack
    first, second = imagegen.skin_photo(1, 320, 240), imagegen.skin_photo(2, 320, 240)
    mpo = imagegen.encode(first, "MPO", save_all=True, append_images=[PILImage.fromarray(second)])
    assert PILImage.open(io.BytesIO(mpo)).format == "MPO"
    png = imagegen.encode(second, "PNG")
    body = stack.upload([(mpo, "portrait.jpg"), (png, "plain.png")]).get_json()
    images = {i["name"]: i for i in stack.client.get(f"/api/batches/{body['batch_id']}").get_json()["images"]}
    assert (images["portrait.jpg"]["format"], images["portrait.jpg"]["stored_format"]) == ("MPO", "JPEG")
    assert (images["plain.png"]["format"], images["plain.png"]["stored_format"]) == ("PNG", "PNG")
    served = stack.client.get(images["portrait.jpg"]["file_url"])
    assert served.status_code == 200 and served.mimetype == "image/jpeg"
    assert served.data[:2] == b"\xff\xd8" and PILImage.open(io.BytesIO(served.data)).format == "JPEG"
    assert stack.client.get(images["plain.png"]["file_url"]).mimetype == "image/png"


# --------------------------------------------------------------------------- patients and lesions

def upload_with_manifest(stack, files: list[tuple[bytes, str]], rows, batch_id=None):
    import json

    data = {"files": [(io.BytesIO(content), name) for content, name in files],
            "manifest": rows if isinstance(rows, str) else json.dumps(rows)}
    url = f"/api/batches/{batch_id}/images" if batch_id else "/api/batches"
    return stack.client.post(url, data=data, content_type="multipart/form-data")


def test_per_file_fields_are_stored_and_shown_where_the_image_is(stack):
    from triage.schema import AuditEvent

    rows = [{"path": "day/a.jpg", "patient": "P-0042", "lesion": "L-7", "body_site": "upper arm", "age": 54,
             "sex": "female", "fitzpatrick": "II", "note": "raised, itchy"},
            {"path": "day/b.jpg", "patient": "P-0042", "lesion": "L-7"}]
    body = upload_with_manifest(stack, [(imagegen.jpeg(1), "day/a.jpg"), (imagegen.jpeg(2), "day/b.jpg"),
                                        (imagegen.jpeg(3), "day/c.jpg")], rows).get_json()
    assert body["accepted"] == 3, body
    assert clinical_fields(stack.db) == {
        "day/a.jpg": ("P-0042", "L-7", "upper_arm", 54, "female", 2, "raised, itchy"),
        "day/b.jpg": ("P-0042", "L-7", "upper_arm", None, None, None, None),
        "day/c.jpg": (None,) * 7}  # unnamed: its own lesion of an unnamed patient, as before
    # A later batch photographs the same lesion again: the same lesion row, its body site kept.
    again = upload_with_manifest(stack, [(imagegen.jpeg(4), "d.jpg")],
                                 [{"path": "d.jpg", "patient": "P-0042", "lesion": "L-7", "age": 55}]).get_json()
    assert again["accepted"] == 1 and clinical_fields(stack.db)["d.jpg"][:4] == ("P-0042", "L-7", "upper_arm", 55)

    images = {i["name"]: i for i in stack.client.get(f"/api/batches/{body['batch_id']}").get_json()["images"]}
    assert {k: images["day/a.jpg"][k] for k in ("patient", "lesion", "body_site", "body_site_name", "age", "sex",
                                                "fitzpatrick", "clinical_note")} == {
        "patient": "P-0042", "lesion": "L-7", "body_site": "upper_arm", "body_site_name": "Upper arm", "age": 54,
        "sex": "female", "fitzpatrick": 2, "clinical_note": "raised, itchy"}
    assert images["day/c.jpg"]["patient"] is None and images["day/c.jpg"]["lesion"] is None
    html = stack.client.get(f"/batches/{body['batch_id']}").get_data(as_text=True)
    assert 'data-patient="P-0042" data-lesion="L-7"' in html and "Upper arm" in html and "raised, itchy" in html
    assert "Fitzpatrick II" in html
    # The identifiers and the note are never in the audit log.
    with stack.db.session() as s:
        details = str(s.query(AuditEvent.details).all())
    assert "P-0042" not in details and "L-7" not in details and "itchy" not in details


def test_the_case_page_shows_patient_lesion_and_body_site(sqlite_stack):
    stack = sqlite_stack
    body = upload_with_manifest(stack, [(imagegen.jpeg(1), "a.jpg")], [
        {"path": "a.jpg", "patient": "P-9", "lesion": "L-9", "body_site": "back", "age": 70, "sex": "male",
         "fitzpatrick": 5, "note": "bleeds"}]).get_json()
    analysis = seed_analysis(stack.db, body["batch_id"], image_id=body["files"][0]["image_id"])
    html = stack.login().get(f"/review/{analysis}").get_data(as_text=True)
    for shown in ('<b class="patient">P-9</b>', '<b class="lesion">L-9</b>', "Back", "age 70", "male",
                  "Fitzpatrick V", "Note: bleeds"):  # skin types as clinicians write them
        assert shown in html


def test_a_bad_field_refuses_that_file_alone_storing_nothing_for_it(stack):
    rows = [{"path": "ok.jpg", "patient": "P-1", "lesion": "L-1", "body_site": "back"},
            {"path": "bad.jpg", "patient": "P-1", "lesion": "L-2", "age": 130},
            {"path": "named.jpg", "patient": "Given Family", "lesion": "L-3"}]
    response = upload_with_manifest(stack, [(imagegen.jpeg(1), "ok.jpg"), (imagegen.jpeg(2), "bad.jpg"),
                                            (imagegen.jpeg(3), "named.jpg")], rows)
    assert response.status_code == 201
    files = {f["name"]: f for f in response.get_json()["files"]}
    assert files["ok.jpg"]["status"] == "accepted"
    assert files["bad.jpg"] == {"name": "bad.jpg", "status": "rejected", "reason":
                                "Not taken: row 2 (age): is not an age: give a whole number of years from 0 to 120."}
    assert files["named.jpg"]["status"] == "rejected" and "never a name" in files["named.jpg"]["reason"]
    assert "Given" not in response.get_data(as_text=True)  # a problem never repeats the value
    assert list(clinical_fields(stack.db)) == ["ok.jpg"] and len(stored_files(stack)) == 1
    with stack.db.session() as s:  # a lesion of a refused file is not recorded either
        from triage.schema import Lesion
        assert [l.external_id for l in s.query(Lesion).all()] == ["L-1"]


def test_a_manifest_wrong_as_a_whole_rejects_the_request_storing_nothing(stack):
    from sqlalchemy import func, select

    from triage.schema import Batch

    photos = [(imagegen.jpeg(1), "a.jpg"), (imagegen.jpeg(2), "b.jpg")]
    conflicting = [{"path": "a.jpg", "patient": "P-1", "lesion": "L-1"},
                   {"path": "b.jpg", "patient": "P-2", "lesion": "L-1", "sex": "x"},
                   {"path": "gone.jpg", "patient": "P-3", "lesion": "L-3"}]
    response = upload_with_manifest(stack, photos, conflicting)
    assert response.status_code == 422
    problems = [p["text"] for p in response.get_json()["problems"]]
    assert problems == ["row 2 (sex): is not one of female, male, other, unknown.",
                        "row 2 (patient): gives its lesion another patient than row 1: a lesion belongs to one patient.",
                        "row 3 (path): names no photograph of the folder (the path is relative to the folder that "
                        "holds the manifest)."]
    assert "nothing was uploaded" in response.get_json()["error"]
    assert upload_with_manifest(stack, photos, "not json").status_code == 422
    with stack.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Batch)) == 0  # not even the new batch
    assert clinical_fields(stack.db) == {} and stored_files(stack) == []

    # Against what is recorded: L-1 is P-1's at the back; another request cannot give it to P-2 or the chest.
    first = upload_with_manifest(stack, photos[:1], [{"path": "a.jpg", "patient": "P-1", "lesion": "L-1",
                                                      "body_site": "back"}])
    assert first.status_code == 201
    later = upload_with_manifest(stack, photos[1:], [{"path": "b.jpg", "patient": "P-2", "lesion": "L-1",
                                                      "body_site": "chest"}], batch_id=first.get_json()["batch_id"])
    assert later.status_code == 422
    assert [p["column"] for p in later.get_json()["problems"]] == ["patient", "body_site"]
    assert list(clinical_fields(stack.db)) == ["a.jpg"] and len(stored_files(stack)) == 1


def test_the_manifest_check_answers_fields_or_every_problem(sqlite_stack):
    client = sqlite_stack.client
    text = "path,patient,lesion,body_site,age\nroom/a.jpg,P-1,L-1,back,40\n"
    good = client.post("/api/uploads/manifest", json={"files": ["room/a.jpg", "room/b.jpg"], "manifest": text})
    assert good.status_code == 200
    assert good.get_json() == {"files": {"room/a.jpg": {"patient": "P-1", "lesion": "L-1", "body_site": "back",
                                                        "age": 40}}, "named": 1}
    bad = client.post("/api/uploads/manifest", json={"files": ["room/a.jpg"], "manifest": text + "x.jpg,P 2,L-2,,\n"})
    assert bad.status_code == 422 and [p["row"] for p in bad.get_json()["problems"]] == [3, 3]
    layout = client.post("/api/uploads/manifest", json={"files": ["P-1/L-1/a.jpg"], "layout": "patient/lesion"})
    assert layout.get_json()["files"] == {"P-1/L-1/a.jpg": {"patient": "P-1", "lesion": "L-1"}}
    both = client.post("/api/uploads/manifest", json={"files": [], "manifest": text, "layout": "patient/lesion"})
    assert both.status_code == 422 and "one or the other" in both.get_json()["problems"][0]["message"]
    assert client.post("/api/uploads/manifest", json={"files": "a.jpg", "manifest": text}).status_code == 400
