"""Files an upload refused, or the uploader skipped, are recorded with their batch on the server
(metadata only) and shown wherever the batch is: its page, its JSON, the exports, the recent batches."""
from __future__ import annotations

import csv
import hashlib
import io

import pytest
from sqlalchemy import select
from werkzeug.datastructures import FileStorage

from harness import imagegen
from tests.fhir_check import resources, valid_bundle
from tests.support import stored_files
from triage.imaging import UNREADABLE
from triage.schema import AuditEvent, Batch, Image, RejectedFile, Role

PAGE = b"<html><script>alert(1)</script></html>"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def refusals(stack, batch_id: int) -> list[tuple]:
    with stack.db.session() as s:
        return [tuple(r) for r in s.execute(
            select(RejectedFile.name, RejectedFile.kind, RejectedFile.size_bytes, RejectedFile.sha256,
                   RejectedFile.reason, RejectedFile.uploaded_by_id)
            .where(RejectedFile.batch_id == batch_id).order_by(RejectedFile.id))]


def test_rejected_files_are_recorded_in_their_batch_and_shown_everywhere(make_stack, database_url):
    stack = make_stack(database_url, max_file_bytes=200_000)
    big = imagegen.encode(imagegen.skin_photo(1, 1000, 800), "PNG")
    assert len(big) > 200_000
    good = imagegen.jpeg(1)
    body = stack.upload([(good, "visit/good.jpg"), (PAGE, "visit/page.jpg"), (PAGE, "visit/copy of page.jpg"),
                         (big, "visit/big.png")]).get_json()
    batch_id = body["batch_id"]
    assert (body["accepted"], body["rejected"]) == (1, 3)
    assert "sha256" not in body["files"][1] and "size" not in body["files"][1]  # the answer is as before
    too_large = body["files"][3]["reason"]
    assert "larger than the limit" in too_large
    expected = [("visit/page.jpg", "rejected", len(PAGE), sha(PAGE), UNREADABLE, stack.admin_id),
                ("visit/copy of page.jpg", "rejected", len(PAGE), sha(PAGE), UNREADABLE, stack.admin_id),
                ("visit/big.png", "rejected", len(big), sha(big), too_large, stack.admin_id)]
    assert refusals(stack, batch_id) == expected
    assert len(stack.statuses(batch_id)) == 1 and len(stored_files(stack)) == 1  # never the refused bytes

    # Sent again (a resumed upload), the same file under the same name is the same refusal.
    again = stack.upload([(PAGE, "visit/page.jpg"), (PAGE, "visit/renamed.jpg")], batch_id=batch_id).get_json()
    assert again["rejected"] == 2
    assert [r[0] for r in refusals(stack, batch_id)] == [e[0] for e in expected] + ["visit/renamed.jpg"]

    # Anyone who may see the batch sees them: its JSON, and its page for another user.
    api = stack.client.get(f"/api/batches/{batch_id}").get_json()
    listed = {(f["name"], f["kind"], f["reason"]) for f in api["rejected_files"]}
    assert ("visit/big.png", "rejected", too_large) in listed and len(listed) == 4
    assert all(f["uploader"] == "admin" and f["at"].endswith("Z") and "bytes" not in f for f in api["rejected_files"])
    stack.add_user("ulla", Role.UPLOADER)
    ulla = stack.login(username="ulla")
    page = ulla.get(f"/batches/{batch_id}").get_data(as_text=True)
    assert "4 files not taken into this batch" in page and "visit/copy of page.jpg" in page and too_large in page
    assert f'<a href="/batches/{batch_id}#rejected-files">4 rejected or skipped</a>' in ulla.get("/").get_data(as_text=True)

    # And the exports: a CSV row each, a list in the JSON, a sentence in the FHIR report's conclusion.
    rows = list(csv.DictReader(io.StringIO(stack.client.get(f"/api/batches/{batch_id}/export.csv").get_data(as_text=True))))
    assert [(r["file_name"], r["status"], r["error"]) for r in rows if r["status"] == "rejected"] == [
        (name, "rejected", reason) for name, _, _, _, reason, _ in expected] + [("visit/renamed.jpg", "rejected", UNREADABLE)]
    exported = stack.client.get(f"/api/batches/{batch_id}/export.json").get_json()
    assert [f["name"] for f in exported["rejected_files"]] == [f["name"] for f in api["rejected_files"]]
    bundle = valid_bundle(stack.client.get(f"/api/batches/{batch_id}/export.fhir").get_data(as_text=True))
    [report] = resources(bundle, "DiagnosticReport")
    assert f"4 files were not taken into the batch: visit/page.jpg ({UNREADABLE})" in report["conclusion"]


def test_an_upload_whose_every_file_is_rejected_says_why_its_batch_is_empty(sqlite_stack):
    stack = sqlite_stack
    body = stack.upload([(PAGE, "notes.jpg"), (b"", "empty.jpg")]).get_json()
    assert body["accepted"] == 0
    home = stack.login().get("/").get_data(as_text=True)
    assert f'<a href="/batches/{body["batch_id"]}#rejected-files">2 rejected or skipped</a>' in home
    page = stack.client.get(f"/batches/{body['batch_id']}").get_data(as_text=True)
    assert "notes.jpg" in page and "The file is empty." in page


def test_rejections_are_written_with_the_upload_or_not_at_all(sqlite_stack):
    """The audit event fails to be written: the upload's images, its refusals and its files all go."""
    from web.ingest import ingest

    stack = sqlite_stack
    with stack.db.session() as s:
        batch = Batch(name="doomed")
        s.add(batch)
        s.flush()
        batch_id = batch.id

    def broken_audit(session, summary):
        raise RuntimeError("the audit log could not be written")

    files = [FileStorage(io.BytesIO(imagegen.jpeg(1)), "a.jpg"), FileStorage(io.BytesIO(PAGE), "b.jpg")]
    with stack.app.app_context(), pytest.raises(RuntimeError):
        ingest(stack.app.extensions["dermatriage"], batch_id, files, record=broken_audit, uploader_id=stack.admin_id)
    assert refusals(stack, batch_id) == [] and stack.statuses(batch_id) == {} and stored_files(stack) == []


def test_the_uploader_reports_the_files_it_did_not_send(database_url, make_stack):
    stack = make_stack(database_url)
    batch_id = stack.client.post("/api/batches", json={"name": "folder"}).get_json()["batch_id"]
    report = {"files": [{"name": "visit\\notes.txt", "size": 120, "reason": "Not a JPEG, PNG or WEBP file; not sent."},
                        {"name": "visit/scan.tiff", "size": 5_000_000_000}]}
    answer = stack.client.post(f"/api/batches/{batch_id}/skipped", json=report)
    assert answer.status_code == 200 and answer.get_json()["recorded"] == 2
    assert stack.client.post(f"/api/batches/{batch_id}/skipped", json=report).get_json()["recorded"] == 0
    assert refusals(stack, batch_id) == [
        ("visit/notes.txt", "skipped", 120, None, "Not a JPEG, PNG or WEBP file; not sent.", stack.admin_id),
        ("visit/scan.tiff", "skipped", 5_000_000_000, None, "Not sent: not a JPEG, PNG or WEBP file.", stack.admin_id)]
    listed = stack.client.get(f"/api/batches/{batch_id}").get_json()["rejected_files"]
    assert [(f["name"], f["kind"]) for f in listed] == [("visit/notes.txt", "skipped"), ("visit/scan.tiff", "skipped")]
    with stack.db.session() as s:
        events = s.scalars(select(AuditEvent.details).where(AuditEvent.action == "batch.skip")).all()
    assert [(e["reported"], e["recorded"]) for e in events] == [(2, 2), (2, 0)]

    for bad in ({"files": "x"}, {"files": [{"name": "a"}]}, {"files": [{"name": "a", "size": True}]},
                {"files": [{"name": "a", "size": -1}]}, {"files": [{"name": 3, "size": 1}]},
                {"files": [{"name": "a", "size": 1, "reason": ["x"]}]}, {"files": ["a"]},
                {"files": [{"name": "a", "size": 1}] * 10_001}, ["files"]):
        refused = stack.client.post(f"/api/batches/{batch_id}/skipped", json=bad)
        assert refused.status_code == 400 and refused.get_json()["error"], bad
    assert stack.client.post(f"/api/batches/{batch_id}/skipped", data="nonsense").status_code == 400
    assert stack.client.post("/api/batches/999/skipped", json={"files": []}).status_code == 404
    with stack.db.session() as s:
        assert s.scalar(select(Image.id)) is None  # a report of skipped files adds no image
