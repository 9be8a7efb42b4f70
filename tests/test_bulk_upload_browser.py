"""Bulk upload in a real headless Chromium: a folder tree dropped on the page (a real drag and drop of a
folder from disk, through the DevTools protocol), progress to 100%, a state per file, retries, and a
second drop of the same folder, in a new tab, that sends only what the batch lacks."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select

from tests import imagegen
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
        assert f"clinic day/room 2/scan.jpg: rejected — {UNREADABLE}" in report
        assert "clinic day/room 2/notes.txt: skipped" in report and "lesion-000.jpg" not in report
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
        assert re.search(rf"25 accepted, 0 duplicate, 0 rejected \({len(arrived)} already in the batch\)",
                         second.inner_text("#bulk-summary"))
        assert batch_image_names(stack.db, batch_id) == names
        assert files_received(stack.db, batch_id) == {"accepted": 25, "duplicate": 0, "rejected": 0}  # none sent twice
        second.close()
    finally:
        context.close()
        proxy.stop()
