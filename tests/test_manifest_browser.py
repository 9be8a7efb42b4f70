"""The portal's uploader with a folder's manifest.csv, in a real headless Chromium: a wrong manifest
lists every problem and uploads nothing; corrected, the photographs go up with their fields."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.browsing import csp_errors, sign_in
from tests.support import photo_folder
from tests.test_bulk_upload_browser import drop_folder, wait_for_rows, wait_until_done
from triage.schema import Batch, Image, Lesion, Patient

pytestmark = pytest.mark.browser


def test_a_bad_manifest_shows_every_problem_and_uploads_nothing(browser, sqlite_stack, tmp_path):
    stack = sqlite_stack
    web = stack.start_web()
    folder = tmp_path / "clinic day"
    photo_folder(folder, 3, ["room"], first_seed=700)
    manifest = folder / "manifest.csv"
    manifest.write_text("path,patient,lesion,body_site,age\n"
                        "room/lesion-000.jpg,P-1,L-1,back,40\n"
                        "room/lesion-001.jpg,P-2,L-1,back,abc\n"
                        "room/gone.jpg,Given Family,L-3,,\n")
    page = browser.new_page()
    refused = csp_errors(page)
    try:
        sign_in(page, web.url)
        drop_folder(page, folder)
        wait_for_rows(page, 3)  # the manifest is read, not listed as a file
        page.click("form.upload button[type=submit]")
        page.wait_for_selector("#manifest-problems:not([hidden])", timeout=30_000)
        problems = page.eval_on_selector_all("#manifest-problems li", "items => items.map(i => i.textContent)")
        assert problems == [f"clinic day/manifest.csv {p}" for p in (
            "row 3 (age): is not an age: give a whole number of years from 0 to 120.",
            "row 3 (patient): gives its lesion another patient than row 2: a lesion belongs to one patient.",
            "row 4 (path): names no photograph of the folder (the path is relative to the folder that holds the "
            "manifest).",
            "row 4 (patient): contains a space; use the clinic's pseudonymous code (such as P-0042), never a name.")]
        assert "nothing was uploaded" in page.inner_text("#manifest-problems h2")
        with stack.db.session() as s:
            assert s.scalar(select(func.count()).select_from(Batch)) == 0
            assert s.scalar(select(func.count()).select_from(Image)) == 0

        # Corrected and dropped again: every photograph goes up, the named ones with their fields.
        manifest.write_text("path,patient,lesion,body_site,age\n"
                            "room/lesion-000.jpg,P-1,L-1,back,40\n"
                            "room/lesion-001.jpg,P-1,L-1,back,\n")
        drop_folder(page, folder)
        page.wait_for_selector("#manifest-problems", state="hidden", timeout=30_000)
        page.click("form.upload button[type=submit]")
        wait_until_done(page)
        with stack.db.session() as s:
            stored = dict(s.execute(select(Image.display_name, Patient.external_id)
                                    .outerjoin(Lesion, Lesion.id == Image.lesion_id)
                                    .outerjoin(Patient, Patient.id == Lesion.patient_id)).all())
        assert stored == {"clinic day/room/lesion-000.jpg": "P-1", "clinic day/room/lesion-001.jpg": "P-1",
                          "clinic day/room/lesion-002.jpg": None}
        assert refused == []
    finally:
        page.close()


def test_a_user_of_two_sites_uploads_a_folder_with_its_manifest_to_the_site_chosen(browser, sqlite_stack,
                                                                                    tmp_path):
    from triage.schema import Role
    from triage.sites import create_site, only_site, set_membership

    stack = sqlite_stack
    web = stack.start_web()
    uploader2 = stack.add_user("uploader2", Role.UPLOADER)
    with stack.db.session() as s:
        assert only_site(s) is not None  # the user also belongs to the default site: two sites to choose from
        second = create_site(s, "Clinic B").id
        set_membership(s, uploader2, second, Role.UPLOADER)
    folder = tmp_path / "north"
    photo_folder(folder, 2, ["room"], first_seed=720)
    (folder / "manifest.csv").write_text("path,patient,lesion,body_site\nroom/lesion-000.jpg,P-7,L-7,back\n")
    page = browser.new_page()
    try:
        sign_in(page, web.url, username="uploader2")
        page.select_option("select#site", str(second))
        drop_folder(page, folder)
        wait_for_rows(page, 2)
        page.click("form.upload button[type=submit]")
        wait_until_done(page)
        with stack.db.session() as s:
            assert list(s.scalars(select(Batch.site_id))) == [second]
            assert list(s.scalars(select(Patient.site_id))) == [second]  # the pseudonym is the second site's
            assert s.scalar(select(func.count()).select_from(Image)) == 2
    finally:
        page.close()
