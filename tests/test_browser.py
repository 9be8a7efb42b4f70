"""The portal in a real headless Chromium: upload photographs, watch the batch page fill in."""
from __future__ import annotations

import re
import shutil

import pytest

from tests import imagegen
from tests.conftest import ARTIFACTS

pytestmark = pytest.mark.browser
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "Debian's chromium is not installed (scripts/test.sh installs it)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


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
    page.goto(web.url + "/")
    assert "not a diagnosis" in page.inner_text(".disclaimer")
    page.fill("input[name=name]", "Browser batch")
    page.set_input_files("input[name=files]", files)
    page.click("button[type=submit]")
    page.wait_for_selector("text=3 accepted, 0 duplicate, 1 rejected")
    assert "notes.jpg" in page.inner_text(".upload-results")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "batch-uploaded.png"), full_page=True)

    # The page refreshes itself until every image is done, landing on the batch's own URL.
    page.wait_for_url(re.compile(r"/batches/\d+$"), timeout=30_000)
    page.wait_for_function("document.querySelectorAll('tr[data-status=analysed]').length === 3",
                           timeout=60_000, polling=500)
    assert page.locator(".untrained").is_visible()
    assert page.locator("tr[data-status=analysed] img.thumb").count() == 3
    page.screenshot(path=str(ARTIFACTS / "batch-analysed.png"), full_page=True)
    page.close()
