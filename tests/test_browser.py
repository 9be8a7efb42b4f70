"""The portal in a real headless Chromium: sign in, upload, watch the batch fill in, review, export."""
from __future__ import annotations

import csv
import io
import re

import pytest

from tests import imagegen
from tests.conftest import ARTIFACTS
from tests.browsing import csp_errors, sign_in
from tests.support import PASSWORD

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


def test_signed_out_browser_is_sent_to_sign_in_and_admin_pages_render(browser, sqlite_stack):
    stack = sqlite_stack
    stack.upload([(imagegen.jpeg(1), "a.jpg")])
    web = stack.start_web()
    page = browser.new_page()
    refused = csp_errors(page)
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
    assert refused == []
    page.close()
