"""The portal in a real headless Chromium: sign in, upload, watch the batch fill in, review, export."""
from __future__ import annotations

import csv
import io
import re

from datetime import timedelta

import pytest
from sqlalchemy import select

from harness import imagegen
from tests.conftest import ARTIFACTS
from tests.browsing import csp_errors, sign_in
from tests.support import PASSWORD, seed_analysis, seed_batch
from triage.schema import Analysis, AuditEvent, Review, utcnow

pytestmark = pytest.mark.browser


def test_upload_three_photographs_and_a_text_file(browser, sqlite_stack, tmp_path):
    stack = sqlite_stack
    web = stack.start_web()
    stack.start_worker()
    files = []
    for seed in (1, 2, 3):
        path = tmp_path / f"lesion-{seed}.jpg"
        path.write_bytes(imagegen.jpeg(seed))
        files.append(str(path))
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image")
    files.append(str(notes))

    page = browser.new_page()
    sign_in(page, web.url)
    assert "not a diagnosis" in page.inner_text(".disclaimer")
    page.fill("input[name=name]", "Browser batch")
    page.set_input_files("#files", files)
    page.click("form.upload button[type=submit]")  # not the header's sign-out button
    page.wait_for_selector("text=3 accepted, 0 duplicate, 1 rejected")
    assert "notes.jpg" in page.inner_text(".upload-results")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "batch-uploaded.png"), full_page=True)

    # The page follows progress until every image is done, then loads the batch's own URL.
    page.wait_for_url(re.compile(r"/batches/\d+$"), timeout=30_000)
    page.wait_for_function("document.querySelectorAll('tr[data-status=analysed]').length === 3",
                           timeout=60_000, polling=500)
    assert page.locator(".untrained").is_visible()
    assert page.locator("tr[data-status=analysed] img.thumb").count() == 3
    page.screenshot(path=str(ARTIFACTS / "batch-analysed.png"), full_page=True)
    page.close()


def test_review_a_folder_with_the_keyboard_and_export_the_decision(browser, make_stack, sqlite_url, tmp_path):
    # Every image is urgent when the malignant threshold is 0: the untrained model's output is noise anyway.
    stack = make_stack(sqlite_url, malignant_threshold=0.0, review_audit_share=0.0)
    stack.add_user("rita", "reviewer")
    web = stack.start_web()
    stack.start_worker()
    folder = tmp_path / "clinic-visit"
    folder.mkdir()
    for seed in range(1, 5):
        (folder / f"lesion-{seed}.jpg").write_bytes(imagegen.jpeg(seed))
    (folder / "notes.txt").write_text("not an image")
    ARTIFACTS.mkdir(exist_ok=True)

    page = browser.new_page(accept_downloads=True)
    refused = csp_errors(page)
    page.goto(web.url + "/")
    page.wait_for_url(re.compile(r"/login"))
    page.screenshot(path=str(ARTIFACTS / "sign-in.png"))
    sign_in(page, web.url, "rita")
    page.fill("input[name=name]", "Folder from clinic")
    page.set_input_files("#folder", str(folder))
    page.click("form.upload button[type=submit]")  # not the header's sign-out button
    page.wait_for_selector("text=4 accepted, 0 duplicate, 1 rejected")
    page.wait_for_url(re.compile(r"/batches/\d+$"), timeout=90_000)
    batch_url = page.url
    assert page.inner_text('[data-progress="analysed"]') == "4" and page.inner_text('[data-progress="reviewed"]') == "0"
    page.screenshot(path=str(ARTIFACTS / "batch-progress.png"), full_page=True)

    page.click("text=Review queue")
    page.wait_for_selector("table.queue")
    queue = [int(c) for c in page.eval_on_selector_all("tr[data-priority=urgent]",
                                                       "rows => rows.map(r => r.dataset.case)")]
    assert len(queue) == 4
    page.screenshot(path=str(ARTIFACTS / "review-queue.png"), full_page=True)
    page.click("tr[data-priority=urgent] >> nth=0 >> a.open-case")
    page.wait_for_url(re.compile(rf"/review/{queue[0]}$"))
    assert page.locator(".untrained.banner").is_visible()
    assert page.locator("table.probabilities tbody tr").count() == 10
    assert not page.locator("img.heatmap").is_visible()
    page.keyboard.press("h")  # the heatmap overlay, on and off
    assert page.locator("img.heatmap").is_visible()
    page.screenshot(path=str(ARTIFACTS / "case-heatmap.png"), full_page=True)
    page.keyboard.press("h")
    assert not page.locator("img.heatmap").is_visible()
    page.screenshot(path=str(ARTIFACTS / "case.png"), full_page=True)

    page.keyboard.press("t")  # into the note; keys typed there are text, not shortcuts
    page.keyboard.type("Checked in the browser: confirm")
    page.keyboard.press("Escape")
    page.keyboard.press("c")
    page.wait_for_url(re.compile(rf"/review/{queue[1]}$"))  # straight on to the next case
    page.keyboard.press("n")
    page.wait_for_url(re.compile(rf"/review/{queue[2]}$"))
    assert "d change diagnosis" in page.inner_text(".shortcuts")  # the keys listed are the buttons' own
    page.keyboard.press("d")  # a change to the model's own class is stopped here, with the reason
    assert page.locator("#decision-hint").is_visible() and "press d again" in page.inner_text("#decision-hint")
    assert page.url.endswith(f"/review/{queue[2]}")
    model_class = page.get_attribute("#diagnosis", "data-model-class")
    digit = next(k for k in "1234567890"
                 if page.get_attribute(f'#diagnosis option[data-key="{k}"]', "value") != model_class)
    page.keyboard.press(digit)
    changed_to = page.input_value("#diagnosis")
    page.keyboard.press("d")
    page.wait_for_url(re.compile(rf"/review/{queue[3]}$"))

    page.goto(batch_url)
    assert page.inner_text('[data-progress="reviewed"]') == "2"
    with page.expect_download() as download:
        page.click("text=CSV")
    rows = list(csv.DictReader(io.StringIO(download.value.path().read_text())))
    decided = sorted((r for r in rows if r["review_decision"]), key=lambda r: r["review_decision"])
    assert [(r["review_decision"], r["reviewer"], r["review_note"]) for r in decided] == [
        ("change", "rita", ""), ("confirm", "rita", "Checked in the browser: confirm")]
    assert decided[0]["review_diagnosis"] == changed_to != decided[0]["model_top_class"]
    assert decided[1]["review_diagnosis"] == decided[1]["model_top_class"] and decided[1]["warning"]
    assert refused == []  # no script or style was blocked by the CSP
    page.close()


def test_a_referral_names_a_class_only_when_the_clinician_picks_one(browser, sqlite_stack):
    stack = sqlite_stack
    batch = seed_batch(stack.db, "Referrals")
    plain, suspected, confirmed = (seed_analysis(stack.db, batch, top_class="eczema", received_at=utcnow() + timedelta(seconds=i))
                                   for i in range(3))
    web = stack.start_web()
    page = browser.new_page()
    refused = csp_errors(page)
    sign_in(page, web.url)
    page.goto(f"{web.url}/review/{plain}")
    assert page.input_value("#diagnosis") == ""  # the list starts on no class, not on the model's
    page.keyboard.press("b")
    page.wait_for_url(re.compile(rf"/review/{suspected}$"))
    # The next case opens with word that the decision was kept, numbered as the batch page numbers it.
    assert page.inner_text(".notice.saved") == f"Saved: #{_image_of(stack, plain)} referred for biopsy."
    page.select_option("#diagnosis", "melanoma")
    page.keyboard.press("Escape")
    page.keyboard.press("s")
    page.wait_for_url(re.compile(rf"/review/{confirmed}$"))
    assert page.inner_text(".notice.saved") == (f"Saved: #{_image_of(stack, suspected)} referred to a specialist, "
                                                "suspected Melanoma.")
    assert page.inner_text("h1").startswith(f"Case #{_image_of(stack, confirmed)} ")
    page.select_option("#diagnosis", "psoriasis_lichen_planus")  # then c: confirming another class makes no sense
    page.keyboard.press("Escape")
    page.keyboard.press("c")
    assert page.locator("#confirm-hint").is_visible() and page.url.endswith(f"/review/{confirmed}")
    page.select_option("#diagnosis", "")
    page.keyboard.press("Escape")
    page.keyboard.press("c")
    page.wait_for_url(re.compile(r"/review\?done=1$"))
    assert page.inner_text(".notice.saved") == f"Saved: #{_image_of(stack, confirmed)} confirmed as Eczema."

    with stack.db.session() as s:
        decided = s.execute(select(Review.analysis_id, Review.decision, Review.diagnosis).order_by(Review.id)).all()
        audited = s.scalars(select(AuditEvent.details).where(AuditEvent.action == "review.decide")
                            .order_by(AuditEvent.id)).all()
    assert [tuple(r) for r in decided] == [(plain, "biopsy", None), (suspected, "specialist", "melanoma"),
                                           (confirmed, "confirm", "eczema")]
    assert [d["diagnosis"] for d in audited] == [None, "melanoma", "eczema"]
    rows = {int(r["image_id"]): r for r in csv.DictReader(io.StringIO(
        stack.client.get(f"/api/batches/{batch}/export.csv").get_data(as_text=True)))}
    referral = rows[_image_of(stack, plain)]
    assert (referral["review_decision"], referral["review_diagnosis"], referral["review_diagnosis_name"]) == ("biopsy", "", "")
    assert refused == []
    page.close()


def test_the_batch_page_and_the_queue_fit_a_tablet(browser, make_stack, sqlite_url):
    """At 768 px wide (a tablet held upright) nothing scrolls sideways: risk, priority and the decision
    stay on screen. Long folder paths, a decision with a class, an unanalysed photograph."""
    stack = make_stack(sqlite_url, review_audit_share=1.0)
    batch = seed_batch(stack.db, "Clinic A, dermatology outpatients, 24 November")
    analyses = [seed_analysis(stack.db, batch, top_class=top, priority=priority,
                              name=f"clinic 24 Nov/room 2/follow-up week 2/lesion-{i:03d}-close-up-left-forearm.jpg")
                for i, (top, priority) in enumerate((("melanoma", "urgent"), ("seborrheic_keratoses", "review"),
                                                     ("melanocytic_nevi", "routine")))]
    assert stack.client.post(f"/api/analyses/{analyses[0]}/reviews",
                             json={"decision": "specialist", "diagnosis": "bcc"}).status_code == 201
    stack.upload([(imagegen.jpeg(1), "clinic 24 Nov/room 3/a-photograph-still-waiting-for-the-worker.jpg")],
                 batch_id=batch)
    web = stack.start_web()
    page = browser.new_page(viewport={"width": 768, "height": 1024})
    sign_in(page, web.url)
    for path, cells in ((f"/batches/{batch}", "table.images td.risk, table.images td.priority, table.images td.review"),
                        ("/review?status=pending", "table.queue td"), ("/review?status=decided", "table.queue td")):
        page.goto(web.url + path)
        assert page.evaluate("document.documentElement.scrollWidth") <= 768, path
        rights = page.eval_on_selector_all(cells, "cells => cells.map(c => c.getBoundingClientRect().right)")
        assert rights and max(rights) <= 768, (path, max(rights))
    page.goto(f"{web.url}/batches/{batch}")
    page.screenshot(path=str(ARTIFACTS / "batch-tablet.png"), full_page=True)
    page.goto(f"{web.url}/review")
    page.screenshot(path=str(ARTIFACTS / "queue-tablet.png"), full_page=True)
    page.close()


def _image_of(stack, analysis_id: int) -> int:
    with stack.db.session() as s:
        return s.get(Analysis, analysis_id).image_id


def test_signed_out_browser_is_sent_to_sign_in_and_admin_pages_render(browser, sqlite_stack):
    stack = sqlite_stack
    stack.upload([(imagegen.jpeg(1), "a.jpg")])
    web = stack.start_web()
    page = browser.new_page()
    refused = csp_errors(page)
    not_found = []
    page.on("response", lambda r: not_found.append(r.url) if r.status == 404 else None)
    page.goto(web.url + "/review")
    page.wait_for_url(re.compile(r"/login\?next=/review$"))
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "wrong password")
    page.click("button[type=submit]")
    assert "Wrong username or password." in page.inner_text("[role=alert]")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(web.url + "/review")
    for path, name in (("/admin/users", "admin-users.png"), ("/admin/audit", "audit-log.png"),
                       ("/account", "account.png")):
        page.goto(web.url + path)
        page.screenshot(path=str(ARTIFACTS / name), full_page=True)
    assert page.locator("text=Create token").is_visible()
    page.click("text=Sign out")
    page.wait_for_url(re.compile(r"/login$"))
    page.goto(web.url + "/")
    page.wait_for_url(re.compile(r"/login\?next=/$"))
    assert refused == [] and not_found == []
    # Every page names its icon, and it is there for a browser signed in or not (Chromium fetches icons
    # outside the page's own requests, so they are checked here).
    icon = page.get_attribute("link[rel=icon]", "href")
    signed_out = browser.new_page()
    for url in (web.url + icon, web.url + "/favicon.ico"):
        answer = signed_out.goto(url)
        assert answer.ok and answer.headers["content-type"].startswith("image/svg+xml") and "<svg" in answer.text()
    signed_out.close()
    page.close()
