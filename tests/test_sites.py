"""Sites: users join the one site by themselves, uploads choose their site, tokens are bound to their
user's sites as they are now, a site's admin manages only their site's users."""
from __future__ import annotations

import io
import subprocess
import sys

from sqlalchemy import select

from harness import imagegen
from tests.support import ROOT, child_env, csrf_token
from triage.schema import Batch, Role, Site, SiteMembership, User
from triage.sites import create_site, only_site, remove_membership, set_membership


def _ids(stack) -> dict[str, int]:
    with stack.db.session() as s:
        return dict(s.execute(select(User.username, User.id)).all())


def _bearer(stack, username: str):
    client = stack.app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {stack.issue_token(username)}"
    return client


def test_with_one_site_a_new_user_joins_it_with_their_role(sqlite_stack):
    stack = sqlite_stack
    stack.add_user("ulla", Role.UPLOADER)
    with stack.db.session() as s:
        site = only_site(s)
        assert s.get(Site, site).name == "Default site"
        roles = dict(s.execute(select(User.username, SiteMembership.role)
                               .join(SiteMembership, SiteMembership.user_id == User.id)).all())
    assert roles == {"admin": Role.ADMIN, "ulla": Role.UPLOADER}


def test_an_upload_goes_to_the_only_site_or_the_one_chosen(sqlite_stack):
    stack = sqlite_stack
    uploader2_id = stack.add_user("uploader2", Role.UPLOADER)
    with stack.db.session() as s:
        site_a, site_b = only_site(s), create_site(s, "Clinic B").id
        set_membership(s, uploader2_id, site_b, Role.UPLOADER)
    uploader2 = _bearer(stack, "uploader2")
    photo = lambda: {"files": [(io.BytesIO(imagegen.jpeg(3)), "x.jpg")]}  # noqa: E731
    refused = uploader2.post("/api/batches", data=photo(), content_type="multipart/form-data")
    assert refused.status_code == 400 and "several sites" in refused.get_json()["error"]
    assert uploader2.post("/api/batches", json={"name": "n"}).status_code == 400
    chosen = uploader2.post("/api/batches", data={**photo(), "site": str(site_b)}, content_type="multipart/form-data")
    assert chosen.status_code == 201
    empty = uploader2.post(f"/api/batches?site={site_a}", json={"name": "empty"})
    assert empty.status_code == 201
    assert uploader2.post("/api/batches", json={"name": "n", "site": 999}).status_code == 400
    with stack.db.session() as s:
        assert s.get(Batch, chosen.get_json()["batch_id"]).site_id == site_b
        assert s.get(Batch, empty.get_json()["batch_id"]).site_id == site_a
        remove_membership(s, uploader2_id, site_a)
    # One site left: no choice needed; a site not hers is refused like one that does not exist.
    assert uploader2.post("/api/batches", json={"name": "only"}).status_code == 201
    assert uploader2.post("/api/batches", json={"name": "n", "site": site_a}).status_code == 400
    # The page offers the choice to a user with several sites.
    with stack.db.session() as s:
        set_membership(s, uploader2_id, site_a, Role.UPLOADER)
    assert 'name="site"' in stack.login(username="uploader2").get("/").get_data(as_text=True)


def test_a_token_reaches_only_its_users_sites_as_they_are_now(stack):
    """On SQLite and PostgreSQL: removed from a site, the same token no longer reaches its batch."""
    reviewer1_id = stack.add_user("reviewer1", Role.REVIEWER)
    batch = stack.upload([(imagegen.jpeg(1), "a.jpg")]).get_json()["batch_id"]
    reviewer1 = _bearer(stack, "reviewer1")
    assert reviewer1.get(f"/api/batches/{batch}").status_code == 200
    assert reviewer1.get(f"/api/batches/{batch}/export.csv").status_code == 200
    with stack.db.session() as s:
        site = only_site(s)
        create_site(s, "Elsewhere")
        remove_membership(s, reviewer1_id, site)
    assert reviewer1.get(f"/api/batches/{batch}").status_code == 404
    # A reviewer nowhere now: refused exports whatever the batch, so the answer tells nothing of it.
    assert reviewer1.get(f"/api/batches/{batch}/export.csv").status_code == reviewer1.get("/api/batches/99999/export.csv").status_code
    assert reviewer1.get("/api/queue").status_code == 403  # a reviewer nowhere now
    with stack.db.session() as s:
        set_membership(s, reviewer1_id, site, Role.UPLOADER)
    assert reviewer1.get(f"/api/batches/{batch}").status_code == 200
    assert reviewer1.get(f"/api/batches/{batch}/export.csv").status_code == 403  # seen, but not a reviewer there


def test_a_site_admin_manages_only_their_sites_users(sqlite_stack):
    stack = sqlite_stack
    with stack.db.session() as s:
        site_a, site_b = only_site(s), create_site(s, "Clinic B").id
    for name in ("uploader_a", "uploader_b", "uploader_ab", "admin_b"):
        stack.add_user(name, Role.UPLOADER)
    ids = _ids(stack)
    with stack.db.session() as s:
        set_membership(s, ids["uploader_a"], site_a, Role.UPLOADER)
        set_membership(s, ids["uploader_b"], site_b, Role.UPLOADER)
        set_membership(s, ids["uploader_ab"], site_a, Role.UPLOADER)
        set_membership(s, ids["uploader_ab"], site_b, Role.UPLOADER)
        set_membership(s, ids["admin_b"], site_b, Role.ADMIN)
    admin_b = stack.login(username="admin_b")
    page = admin_b.get("/admin/users").get_data(as_text=True)
    assert 'data-user="uploader_b"' in page and 'data-user="uploader_ab"' in page
    assert 'data-user="uploader_a"' not in page and 'data-user="admin"' not in page

    def post(path, **data):
        return admin_b.post(path, data={**data, "csrf_token": csrf_token(admin_b, "/admin/users")})

    # A user of site A only, the deployment's admin: as if absent.
    assert post(f"/admin/users/{ids['uploader_a']}", role="reviewer", active="0").status_code == 404
    assert post(f"/admin/users/{stack.admin_id}", role="reviewer").status_code == 404
    assert post(f"/admin/users/{ids['uploader_a']}/sign-out").status_code == 404
    # uploader_b's role at site B, and switching that user off: their only site is admin_b's.
    assert post(f"/admin/users/{ids['uploader_b']}", role="reviewer", active="1").status_code == 302
    assert post(f"/admin/users/{ids['uploader_b']}", active="0").status_code == 302
    # uploader_ab is at site A too: a role at B yes, switching off (which reaches A) no.
    assert post(f"/admin/users/{ids['uploader_ab']}", role="reviewer").status_code == 302
    assert post(f"/admin/users/{ids['uploader_ab']}", active="0").status_code == 403
    # A new user made by the site's admin is theirs, at their site; an admin made so is the site's only.
    assert post("/admin/users", username="newb", role="admin", password="long-enough-passphrase").status_code == 302
    assert post("/admin/users", username="x2", role="uploader", password="long-enough-passphrase",
                site=str(site_a)).status_code == 404
    with stack.db.session() as s:
        roles = {(u, site): r for u, site, r in s.execute(
            select(User.username, SiteMembership.site_id, SiteMembership.role)
            .join(SiteMembership, SiteMembership.user_id == User.id))}
        newb, uploader_b, uploader_ab = (s.scalar(select(User).where(User.username == n)) for n in ("newb", "uploader_b", "uploader_ab"))
        assert (newb.role, uploader_b.active, uploader_ab.active) == (Role.REVIEWER, False, True)
    assert roles[("uploader_b", site_b)] == Role.REVIEWER and roles[("uploader_ab", site_b)] == Role.REVIEWER
    assert roles[("uploader_ab", site_a)] == Role.UPLOADER and roles[("newb", site_b)] == Role.ADMIN
    assert ("newb", site_a) not in roles
    # The sites page is the deployment admin's: create a site, add a member.
    assert admin_b.get("/admin/sites").status_code == 404
    admin = stack.login()
    token = csrf_token(admin, "/admin/sites")
    assert admin.post("/admin/sites", data={"name": "Clinic C", "csrf_token": token}).status_code == 302
    with stack.db.session() as s:
        site_c = s.scalar(select(Site.id).where(Site.name == "Clinic C"))
    assert admin.post(f"/admin/sites/{site_c}/members", data={"username": "uploader_a", "role": "reviewer",
                                                              "csrf_token": token}).status_code == 302
    assert "uploader_a: reviewer" in admin.get("/admin/sites").get_data(as_text=True)


def test_create_site_and_add_to_site_commands(sqlite_stack, tmp_path):
    stack = sqlite_stack
    stack.add_user("carl", Role.UPLOADER)
    env = child_env(stack.settings)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "scripts.cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    assert cli("create-site", "Clinic North").returncode == 0
    assert cli("create-site", "Clinic North").returncode != 0  # names are unique
    done = cli("add-to-site", "--username", "carl", "--site", "Clinic North", "--role", "reviewer")
    assert done.returncode == 0, done.stderr
    assert cli("add-to-site", "--username", "nobody", "--site", "Clinic North").returncode != 0
    with stack.db.session() as s:
        site = s.scalar(select(Site.id).where(Site.name == "Clinic North"))
        assert s.scalar(select(SiteMembership.role).where(SiteMembership.site_id == site)) == Role.REVIEWER


def test_a_manifest_for_an_existing_batch_is_checked_at_that_batchs_site(sqlite_stack):
    stack = sqlite_stack
    uploader2_id = stack.add_user("uploader2", Role.UPLOADER)
    with stack.db.session() as s:
        site_b = create_site(s, "Clinic B").id
        set_membership(s, uploader2_id, site_b, Role.UPLOADER)
        other = create_site(s, "Clinic C").id
    uploader2 = _bearer(stack, "uploader2")
    batch = uploader2.post("/api/batches", json={"name": "b", "site": site_b}).get_json()["batch_id"]
    check = {"files": ["a.jpg"], "manifest": "path,patient,lesion,body_site\na.jpg,P-1,L-1,back\n"}
    assert uploader2.post("/api/uploads/manifest", json=check).status_code == 400  # two sites, none named
    assert uploader2.post("/api/uploads/manifest", json={**check, "batch": batch}).status_code == 200
    admin = stack.client
    elsewhere = admin.post("/api/batches", json={"name": "c", "site": other}).get_json()["batch_id"]
    assert uploader2.post("/api/uploads/manifest", json={**check, "batch": elsewhere}).status_code == 404
    assert uploader2.post("/api/uploads/manifest", json={**check, "batch": "x"}).status_code == 404
