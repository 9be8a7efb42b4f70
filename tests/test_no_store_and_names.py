"""What signed-in pages leave behind and how names show (issue 19): every signed-in page, the one that shows
a new API token above all, is `Cache-Control: no-store`; a file's name keeps its characters but loses
bidirectional overrides and other control characters, at ingest and, for rows stored before, wherever it
is shown."""
from __future__ import annotations

import io
import re

from sqlalchemy import select

from harness import imagegen
from tests.support import csrf_token, seed_analysis
from triage.names import display_name
from triage.schema import Image, RejectedFile

OVERRIDE = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: `lesion<RLO>gpj.exe.jpg` displays as an .exe
HIDDEN = re.compile("[\u0000-\u001f\u007f-\u009f\u061c\u200b\u200e\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069\ufeff]")


def test_display_names_keep_their_characters_and_lose_those_that_change_the_display():
    assert display_name(f"lesion{OVERRIDE}gpj.exe.jpg") == "lesiongpj.exe.jpg"
    assert display_name("clinic\u2067 24 Nov\u2069/a\u200eb\u200b.jpg\u2028") == "clinic 24 Nov/ab.jpg"
    assert display_name("tab\there\x00\x7f\x85.jpg") == "tabhere.jpg"
    # Every script keeps its letters, and the joiners that are part of their spelling (and of emoji).
    for name in ("Übersicht/Läsion 7.jpg", "病変 3.jpg", "کتاب\u200cها.jpg", "👨\u200d⚕️ visit/ज्\u200dञ.png",
                 "photo (1) – copy.jpeg"):
        assert display_name(name) == name
    assert display_name("room 2\\lesion.jpg") == "room 2/lesion.jpg" and display_name(OVERRIDE) == "unnamed"


def test_names_are_cleaned_at_ingest_and_rows_from_before_wherever_they_show(sqlite_stack):
    stack = sqlite_stack
    body = stack.upload([(imagegen.jpeg(1), f"visit/lesion{OVERRIDE}gpj.exe.jpg"),
                         (imagegen.jpeg(2), "visit/کتاب\u200cها.jpg"),
                         (b"not a photograph", f"visit/notes{OVERRIDE}txt.jpg")]).get_json()
    batch = body["batch_id"]
    assert [f["name"] for f in body["files"]] == ["visit/lesiongpj.exe.jpg", "visit/کتاب\u200cها.jpg",
                                                  "visit/notestxt.jpg"]
    with stack.db.session() as s:
        stored = s.scalars(select(Image.display_name)).all() + s.scalars(select(RejectedFile.name)).all()
        # Rows recorded before names were cleaned at ingest, as they may be in a database today.
        s.add(RejectedFile(batch_id=batch, name=f"old{OVERRIDE}fdp.exe.jpg", size_bytes=3, kind="rejected",
                           reason="Not an image."))
    assert not any(HIDDEN.search(name) for name in stored)
    analysis = seed_analysis(stack.db, batch, name=f"old/lesion{OVERRIDE}gpj.exe.jpg")
    browser = stack.login()
    shown = {
        "batch page": browser.get(f"/batches/{batch}").get_data(as_text=True),
        "case page": browser.get(f"/review/{analysis}").get_data(as_text=True),
        "queue": browser.get("/review").get_data(as_text=True),
        "batch JSON": stack.client.get(f"/api/batches/{batch}").get_data(as_text=True),
        "queue JSON": stack.client.get("/api/queue").get_data(as_text=True),
        "CSV": stack.client.get(f"/api/batches/{batch}/export.csv").get_data(as_text=True),
        "JSON export": stack.client.get(f"/api/batches/{batch}/export.json").get_data(as_text=True),
    }
    for where, text in shown.items():
        assert OVERRIDE not in text and "\\u202e" not in text, where
    for where in ("batch page", "case page", "queue", "CSV"):
        assert "old/lesiongpj.exe.jpg" in shown[where], where
    for where in ("batch page", "batch JSON", "CSV"):
        assert "oldfdp.exe.jpg" in shown[where] and "visit/notestxt.jpg" in shown[where], where
    assert "visit/کتاب\u200cها.jpg" in shown["batch page"]


def test_every_signed_in_page_and_the_new_token_are_never_cached(sqlite_stack):
    stack = sqlite_stack
    batch = stack.upload([(imagegen.jpeg(1), "a.jpg")]).get_json()["batch_id"]
    analysis = seed_analysis(stack.db, batch)
    browser = stack.login()
    pages = ["/", f"/batches/{batch}", "/review", f"/review/{analysis}", "/account", "/admin/users",
             "/admin/audit", "/admin/notifications", f"/api/batches/{batch}", "/api/queue", "/api/classes",
             "/api/uploads/limits", f"/api/batches/{batch}/export.csv", "/no-such-page"]
    for path in pages:
        assert browser.get(path).headers.get("Cache-Control") == "no-store", path
    for path in (f"/api/batches/{batch}", "/api/queue", "/metrics"):  # signed in with a token
        assert stack.client.get(path).headers.get("Cache-Control") == "no-store", path
    created = browser.post("/account/tokens", data={"name": "laptop", "csrf_token": csrf_token(browser, "/account")})
    assert created.status_code == 201 and 'id="new-token"' in created.get_data(as_text=True)
    assert created.headers["Cache-Control"] == "no-store"
    uploaded = browser.post("/upload", content_type="multipart/form-data", data={
        "files": [(io.BytesIO(imagegen.jpeg(2)), "b.jpg")], "csrf_token": csrf_token(browser)})
    assert uploaded.status_code == 200 and uploaded.headers["Cache-Control"] == "no-store"
