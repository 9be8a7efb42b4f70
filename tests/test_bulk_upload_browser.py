"""Bulk upload in a real headless Chromium: a folder tree dropped on the page (a real drag and drop of a
folder from disk, through the DevTools protocol), progress to 100%, a state per file, retries, and a
second drop of the same folder, in a new tab, that sends only what the batch lacks."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select

from harness import imagegen
from tests.conftest import ARTIFACTS
from tests.support import FlakyProxy, batch_image_names, files_received, photo_folder
from triage.imaging import UNREADABLE
from tests.browsing import csp_errors, sign_in
from triage.schema import Batch

pytestmark = pytest.mark.browser


def make_folder(root: Path, photos: int) -> list[str]:
    return photo_folder(root, photos, ["room 1", "room 1/close-ups", "room 2/follow-up/week 2"], first_seed=300)


def drop_folder(page, folder: Path) -> None:
    """Drag a folder from disk and drop it on the drop zone, as a person would from a file manager."""
    box = page.locator("#dropzone").bounding_box()
    point = {"x": box["x"] + box["width"] / 2, "y": box["y"] + box["height"] / 2}
    cdp = page.context.new_cdp_session(page)
    data = {"items": [], "files": [str(folder)], "dragOperationsMask": 1}
    for kind in ("dragEnter", "dragOver", "drop"):
        cdp.send("Input.dispatchDragEvent", {"type": kind, **point, "data": data})
    cdp.detach()


def file_states(page) -> dict[str, str]:
    return dict(page.eval_on_selector_all(
        "#bulk-files tr", "rows => rows.map(r => [r.cells[0].textContent, r.cells[2].textContent])"))


def wait_for_rows(page, count: int) -> None:
    page.wait_for_function("n => document.querySelectorAll('#bulk-files tr').length === n", arg=count,
                           timeout=30_000, polling=200)


def not_taken(page) -> dict[str, str]:
    """The batch page's list of the files its uploads refused or skipped: name -> why."""
    return dict(page.eval_on_selector_all(
        "#rejected-files tbody tr", "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent])"))


def wait_until_done(page) -> None:
    page.wait_for_function("() => document.getElementById('bulk-summary').textContent.startsWith('This upload:')",
                           timeout=60_000, polling=200)


def test_a_dropped_folder_goes_up_with_progress_and_a_state_per_file(browser, sqlite_stack, tmp_path):
    stack = sqlite_stack
    web = stack.start_web()
    folder = tmp_path / "clinic day"
    photos = make_folder(folder, 16)
    # First in name order, so in the first request: a photograph and a copy of it under another name.
    (folder / "aa").mkdir()
    (folder / "aa" / "a.jpg").write_bytes(imagegen.jpeg(1, 64, 48))
    (folder / "aa" / "b.jpg").write_bytes(imagegen.jpeg(1, 64, 48))
    (folder / "room 2" / "notes.txt").write_text("not a photograph")
    (folder / "room 2" / "scan.jpg").write_text("a text file named like a photograph")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    expected = sorted(photos + ["clinic day/aa/a.jpg"])
    # The first two upload requests are refused as if the server were busy: they must be tried again.
    proxy = FlakyProxy(web.url, busy={1, 2}).start()
    page = browser.new_page()
    refused = csp_errors(page)
    try:
        sign_in(page, proxy.url)
        page.fill("input[name=name]", "Dropped folder")
        drop_folder(page, folder)
        wait_for_rows(page, 20)  # 18 photographs, the text file and the fake photograph; .DS_Store ignored
        assert re.fullmatch(r"19 photographs \(\d+ kB\) and 1 other files chosen\.", page.inner_text("#chosen"))
        assert set(file_states(page).values()) == {"waiting", "skipped: not a JPEG, PNG or WEBP file; not sent"}
        page.click("form.upload button[type=submit]")
        wait_until_done(page)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "bulk-upload-dropped.png"), full_page=True)

        assert page.inner_text("#bulk-percent") == "100%"
        assert page.eval_on_selector("#bulk-progress", "bar => bar.value") == 1
        summary = page.inner_text("#bulk-summary")
        assert summary.startswith("This upload: 17 accepted, 1 duplicate, 2 rejected") and "19 of 19 files" in summary
        states = file_states(page)
        assert {name: states[name] for name in expected} == {name: "accepted" for name in expected}
        assert states["clinic day/aa/b.jpg"] == "duplicate: same file as clinic day/aa/a.jpg"
        assert states["clinic day/room 2/scan.jpg"] == f"rejected: {UNREADABLE}"
        assert states["clinic day/room 2/notes.txt"] == "skipped: not a JPEG, PNG or WEBP file; not sent"
        assert ".DS_Store" not in " ".join(states)
        assert sorted(proxy.spoiled) == [(1, "busy"), (2, "busy")] and proxy.uploads >= 4

        with stack.db.session() as s:
            batch_id, name = s.execute(select(Batch.id, Batch.name)).one()
        assert name == "Dropped folder"
        assert batch_image_names(stack.db, batch_id) == expected  # folder-relative names, nested folders kept
        assert files_received(stack.db, batch_id) == {"accepted": 17, "duplicate": 1, "rejected": 1}

        # Once a worker has analysed them, the page opens the batch, which lists every photograph under
        # its path in the folder, and this upload's problems.
        stack.start_worker()
        page.wait_for_url(re.compile(rf"/batches/{batch_id}$"), timeout=120_000)
        shown = page.eval_on_selector_all("table.images td.name", "cells => cells.map(c => c.textContent)")
        assert sorted(shown) == expected
        report = page.inner_text("#upload-report")
        assert report.startswith("This upload: 17 accepted, 1 duplicate, 2 rejected")
        assert "clinic day/aa/b.jpg: duplicate — same file as clinic day/aa/a.jpg" in report
        assert "lesion-000.jpg" not in report and "scan.jpg" not in report  # the batch lists those itself
        assert not_taken(page) == {"clinic day/room 2/scan.jpg": f"rejected: {UNREADABLE}",
                                   "clinic day/room 2/notes.txt": "skipped: Not a JPEG, PNG or WEBP file; not sent."}
        page.screenshot(path=str(ARTIFACTS / "bulk-upload-batch.png"), full_page=True)
        assert refused == []
    finally:
        page.close()
        proxy.stop()


@pytest.mark.parametrize("by", ["sha256", "name"])
def test_dropping_the_folder_again_in_a_new_tab_sends_only_what_is_missing(browser, sqlite_stack, tmp_path, by):
    stack = sqlite_stack
    web = stack.start_web()
    folder = tmp_path / f"visit by {by}"
    names = make_folder(folder, 25)  # three requests of at most ten
    # Every upload request after the first is refused, so the first tab gets only so far.
    proxy = FlakyProxy(web.url, busy=set(range(2, 10_000))).start()
    context = browser.new_context()
    try:
        first = context.new_page()
        sign_in(first, proxy.url)
        drop_folder(first, folder)
        wait_for_rows(first, 25)
        first.click("form.upload button[type=submit]")
        first.wait_for_function("() => document.querySelector('#bulk-files tr[data-state=accepted]') !== null",
                                timeout=30_000, polling=200)
        first.close()  # the tab is closed mid-way; the other requests were still being retried
        with stack.db.session() as s:
            batch_id = s.scalar(select(Batch.id))
        arrived = set(batch_image_names(stack.db, batch_id))
        assert 0 < len(arrived) < len(names)

        proxy.busy.clear()
        second = context.new_page()
        if by == "name":  # as on a plain-http LAN address, where browsers offer no crypto.subtle
            second.add_init_script("Object.defineProperty(Crypto.prototype, 'subtle', {get: () => undefined})")
        second.goto(proxy.url + "/")
        assert second.evaluate("Boolean(window.crypto.subtle)") is (by == "sha256")
        drop_folder(second, folder)
        wait_for_rows(second, 25)
        # The page remembers which batch this folder went into and proposes it.
        assert second.eval_on_selector("#batch", "select => select.value") == str(batch_id)
        assert f"went into batch #{batch_id}" in second.inner_text("#bulk-status")
        second.click("form.upload button[type=submit]")
        wait_until_done(second)
        second.screenshot(path=str(ARTIFACTS / f"bulk-upload-resumed-by-{by}.png"), full_page=True)
        states = file_states(second)
        already = {n for n, state in states.items() if state.startswith("already in the batch")}
        assert already == arrived
        assert {n for n, state in states.items() if state == "accepted"} == set(names) - arrived
        assert second.inner_text("#bulk-percent") == "100%"
        # What was there already is said to be: not counted as accepted again.
        assert re.search(rf"{25 - len(arrived)} accepted, {len(arrived)} already in the batch, 0 duplicate, 0 rejected",
                         second.inner_text("#bulk-summary"))
        assert batch_image_names(stack.db, batch_id) == names
        assert files_received(stack.db, batch_id) == {"accepted": 25, "duplicate": 0, "rejected": 0}  # none sent twice
        second.close()
    finally:
        context.close()
        proxy.stop()


def test_the_bar_counts_files_answered_not_bytes_sent(browser, sqlite_stack, tmp_path):
    """Every byte is sent and no answer has come: the bar stays at 0%. It moves as the server answers,
    and reaches 100% with the last answer. Dropped again, a folder already in the batch says so."""
    stack = sqlite_stack
    web = stack.start_web()
    folder = tmp_path / "held"
    make_folder(folder, 25)  # requests of 10, 10 and 5 files
    page = browser.new_page()
    held = []

    def hold(route):  # the request has been sent in full; its answer waits
        held.append(route)

    uploads = re.compile(r"/api/batches/\d+/images$")
    page.route(uploads, hold)
    sign_in(page, web.url)
    drop_folder(page, folder)
    wait_for_rows(page, 25)
    page.click("form.upload button[type=submit]")
    while len(held) < 3:
        page.wait_for_timeout(100)
    page.wait_for_timeout(500)
    assert page.inner_text("#bulk-percent") == "0%" and "— 0 of 25 files" in page.inner_text("#bulk-summary")

    first = held.pop(0)
    sent = first.request.post_data_buffer.count(b'filename="')
    first.continue_()
    page.wait_for_function("n => document.getElementById('bulk-summary').textContent.endsWith(n + ' of 25 files')",
                           arg=sent, timeout=30_000, polling=100)
    assert page.inner_text("#bulk-percent") == f"{sent * 100 // 25}%"
    for route in held:
        route.continue_()
    wait_until_done(page)
    assert page.inner_text("#bulk-percent") == "100%"
    assert page.inner_text("#bulk-summary").startswith("This upload: 25 accepted, 0 duplicate, 0 rejected")
    assert len(batch_image_names(stack.db, 1)) == 25

    # The same folder again, into the same batch: nothing is sent, and the page says why.
    page.unroute(uploads, hold)
    drop_folder(page, folder)
    page.wait_for_function("() => document.getElementById('bulk-summary').textContent.startsWith('Chosen:')",
                           timeout=30_000, polling=100)
    page.click("form.upload button[type=submit]")
    wait_until_done(page)
    assert page.inner_text("#bulk-summary").startswith("This upload: 0 accepted, 25 already in the batch, 0 duplicate")
    assert page.inner_text("#bulk-status").startswith("All 25 photographs were already in the batch; nothing new was added.")
    page.close()


def test_refused_and_skipped_files_stay_with_the_batch_for_everyone(browser, sqlite_stack, tmp_path):
    """A folder with nothing to analyse: the batch it made is empty, and says why, after a reload and
    to another user, on its page and in the recent batches."""
    stack = sqlite_stack
    stack.add_user("rita", "reviewer")
    web = stack.start_web()
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "scan.jpg").write_text("a text file named like a photograph")
    (folder / "notes.txt").write_text("not a photograph")
    expected = {"scans/scan.jpg": f"rejected: {UNREADABLE}", "scans/notes.txt": "skipped: Not a JPEG, PNG or WEBP file; not sent."}
    first, second = browser.new_context(), browser.new_context()
    try:
        page = first.new_page()
        refused = csp_errors(page)
        sign_in(page, web.url)
        page.fill("input[name=name]", "Nothing to analyse")
        drop_folder(page, folder)
        wait_for_rows(page, 2)
        page.click("form.upload button[type=submit]")
        wait_until_done(page)
        assert "Nothing new was added." in page.inner_text("#bulk-status")
        with stack.db.session() as s:
            batch_id = s.scalar(select(Batch.id))
        page.click(f"text=Open batch #{batch_id}")
        page.wait_for_url(re.compile(rf"/batches/{batch_id}$"))
        page.reload()
        assert not_taken(page) == expected
        assert refused == []

        other = second.new_page()
        sign_in(other, web.url, "rita")
        row = other.locator(f'tr[data-batch="{batch_id}"]')
        assert row.locator("td.not-taken").inner_text() == "2 rejected or skipped"
        row.locator("td.not-taken a").click()
        other.wait_for_url(re.compile(rf"/batches/{batch_id}#rejected-files$"))
        assert not_taken(other) == expected
        assert other.locator("#rejected-files").is_visible()
        other.screenshot(path=str(ARTIFACTS / "batch-rejected-files.png"), full_page=True)
    finally:
        first.close()
        second.close()
