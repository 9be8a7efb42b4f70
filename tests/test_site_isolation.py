"""Sites do not see each other: every route that takes a row's id, walked as a member of another site
(signed in, and with an API token) with the real ids of site A's rows, answers 404 and writes nothing;
every page that lists things leaves site A's data out. A route added later without a place in this
walk fails the test."""
from __future__ import annotations

import io
import json
import re

import pytest
from sqlalchemy import func, select

from harness import imagegen
from tests.support import csrf_token, seed_analysis
from triage.schema import AuditEvent, Image, Lesion, Patient, RejectedFile, Review, ReviewCase, Role, User
from triage.sites import create_site, only_site, set_membership

# Names of site A's things that must never reach a member of site B.
A_BATCH, A_IMAGE, A_PATIENT, A_LESION = "Alpha clinic batch", "alpha-photo.jpg", "PAT-ALPHA-7", "LES-ALPHA-3"
# Route arguments that name a row of a site's data: the walk fills them with site A's ids.
DATA_IDS = {"batch_id", "image_id", "analysis_id", "case_id", "lesion_id", "patient_id"}
# Routes with other ids, each with its own test of reach (tests/test_sites.py): users and sites are
# managed by admins (a site's admin reaches only their users; sites are the deployment admin's), and a
# token id names one of the user's own tokens.
OTHER_ID_ROUTES = {"admin.update", "admin.sign_out_everywhere", "admin.site_member", "account.revoke"}


@pytest.fixture
def world(sqlite_stack):
    """Site A (the default site) with a batch, an image of a named patient's lesion, its analysis with a
    heatmap and its case; site B with a reviewer, an uploader and an admin of its own."""
    stack = sqlite_stack
    manifest = json.dumps([{"path": A_IMAGE, "patient": A_PATIENT, "lesion": A_LESION, "body_site": "back"}])
    answer = stack.client.post("/api/batches", content_type="multipart/form-data", data={
        "name": A_BATCH, "files": [(io.BytesIO(imagegen.jpeg(1)), A_IMAGE)], "manifest": manifest})
    assert answer.status_code == 201, answer.get_json()
    batch_id, image_id = answer.get_json()["batch_id"], answer.get_json()["files"][0]["image_id"]
    with stack.db.session() as s:
        image = s.get(Image, image_id)
        store_key, site_a = image.store_key, only_site(s)
        lesion = s.get(Lesion, image.lesion_id)
        lesion_id, patient_id = lesion.id, lesion.patient_id
    analysis_id = seed_analysis(stack.db, batch_id, image_id=image_id, heatmap_key=store_key)
    with stack.db.session() as s:
        site_b = create_site(s, "Clinic B").id
    stack.add_user("reviewer_a", Role.REVIEWER)  # made while there are two sites: no site of its own yet
    for name, role in (("reviewer_b", Role.REVIEWER), ("uploader_b", Role.UPLOADER), ("admin_b", Role.ADMIN)):
        stack.add_user(name, Role.UPLOADER)
    with stack.db.session() as s:
        ids = dict(s.execute(select(Patient.external_id, Patient.id)).all())
        users = dict(s.execute(select(User.username, User.id)).all())
        set_membership(s, users["reviewer_a"], site_a, Role.REVIEWER)
        set_membership(s, users["reviewer_b"], site_b, Role.REVIEWER)
        set_membership(s, users["uploader_b"], site_b, Role.UPLOADER)
        set_membership(s, users["admin_b"], site_b, Role.ADMIN)
        case_id = s.scalar(select(ReviewCase.id).where(ReviewCase.analysis_id == analysis_id))
    assert ids[A_PATIENT] == patient_id
    return dict(stack=stack, site_a=site_a, site_b=site_b, batch_id=batch_id, image_id=image_id,
                analysis_id=analysis_id, case_id=case_id, lesion_id=lesion_id, patient_id=patient_id,
                users=users)


def _url(rule, world) -> str:
    values = {name: world[name] for name in rule.arguments if name in DATA_IDS}
    if "fmt" in rule.arguments:
        values["fmt"] = "csv"
    missing = set(rule.arguments) - set(values)
    assert not missing, f"{rule.rule}: the site walk does not know how to fill {missing}; add it here"
    return re.sub(r"<(?:[a-z]+:)?(\w+)>", lambda m: str(values[m.group(1)]), rule.rule)


def _bodies(world) -> dict:
    """A valid request body for each kind of POST, so that only the site can make it fail."""
    return {"json": {"decision": "confirm", "sha256": ["0" * 64], "names": [A_IMAGE],
                     "files": [{"name": "notes.txt", "size": 3, "reason": "not a photograph"}]},
            "form": {"decision": "confirm"}}


def _counts(stack) -> dict:
    with stack.db.session() as s:
        counts = {table.__name__: s.scalar(select(func.count()).select_from(table))
                  for table in (Review, Image, RejectedFile, Patient, Lesion)}
        # Signing in is audited; nothing else may be.
        counts["AuditEvent"] = s.scalar(select(func.count()).select_from(AuditEvent)
                                        .where(AuditEvent.action.not_like("auth.%")))
        return counts


def _data_routes(app):
    return [r for r in app.url_map.iter_rules() if set(r.arguments) & DATA_IDS]


def _walk(world, client, csrf: str | None) -> set[str]:
    """Every method of every data route, as `client`; returns the endpoints walked."""
    stack = world["stack"]
    walked = set()
    for rule in _data_routes(stack.app):
        url = _url(rule, world)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            headers = {"X-CSRFToken": csrf} if csrf else {}
            if method == "GET":
                response = client.get(url, headers=headers)
            elif url.startswith("/api/") and not url.endswith("/images"):
                response = client.open(url, method=method, json=_bodies(world)["json"], headers=headers)
            else:
                data = {**_bodies(world)["form"], "files": [(io.BytesIO(imagegen.jpeg(9)), "sneak.jpg")]}
                if csrf:
                    data["csrf_token"] = csrf
                response = client.open(url, method=method, data=data, content_type="multipart/form-data",
                                       headers=headers)
            assert response.status_code == 404, (method, url, response.status_code)
            walked.add(rule.endpoint)
    return walked


def test_every_route_with_an_id_of_another_sites_row_answers_404_and_writes_nothing(world):
    stack = world["stack"]
    routes = _data_routes(stack.app)
    assert len(routes) >= 11  # pages, files, heatmaps, exports, the case, decisions, the uploaders' API
    before = _counts(stack)
    browser = stack.login(username="reviewer_b")
    walked = _walk(world, browser, csrf_token(browser, "/account"))
    assert walked == {r.endpoint for r in routes}
    token_client = stack.app.test_client()
    token_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {stack.issue_token('reviewer_b')}"
    assert _walk(world, token_client, None) == walked
    # Another site's admin and uploader fare no better.
    admin_b = stack.login(username="admin_b")
    assert _walk(world, admin_b, csrf_token(admin_b, "/account")) == walked
    assert _counts(stack) == before  # no decision, image, refusal, audit event, patient or lesion written


def test_every_id_taking_route_is_in_the_walk_or_named_here(world):
    """A new route that takes an id must join the walk above (or OTHER_ID_ROUTES with its own test)."""
    app = world["stack"].app
    with_ids = {r.endpoint for r in app.url_map.iter_rules() if any(a.endswith("_id") for a in r.arguments)}
    assert with_ids == {r.endpoint for r in _data_routes(app)} | OTHER_ID_ROUTES


def test_a_member_of_site_a_reaches_the_same_routes(world):
    """The walk is not vacuous: with the same ids, site A's reviewer gets the pages and files."""
    stack = world["stack"]
    reviewer_a = stack.login(username="reviewer_a")
    for url in (f"/batches/{world['batch_id']}", f"/api/batches/{world['batch_id']}",
                f"/images/{world['image_id']}/file", f"/images/{world['image_id']}/heatmap",
                f"/review/{world['analysis_id']}", f"/api/batches/{world['batch_id']}/export.json"):
        assert reviewer_a.get(url).status_code == 200, url
    assert A_PATIENT in reviewer_a.get(f"/api/batches/{world['batch_id']}").get_data(as_text=True)


def test_lists_leave_out_another_sites_data(world):
    stack = world["stack"]
    secrets = (A_BATCH, A_IMAGE, A_PATIENT, A_LESION)
    reviewer_b, admin_b = stack.login(username="reviewer_b"), stack.login(username="admin_b")
    pages = {reviewer_b: ["/", f"/?batch={world['batch_id']}", "/review", "/review?status=decided",
                   f"/review?batch={world['batch_id']}", "/api/queue", f"/api/queue?batch={world['batch_id']}",
                   "/metrics", "/account"],
             admin_b: ["/admin/users", "/admin/audit", "/admin/audit?action=batch"]}
    for client, urls in pages.items():
        for url in urls:
            response = client.get(url)
            assert response.status_code == 200, url
            text = response.get_data(as_text=True)
            assert not [s for s in secrets if s in text], (url, [s for s in secrets if s in text])
    assert stack.login(username="reviewer_a").get("/review").get_data(as_text=True).count(A_IMAGE) >= 1
    assert reviewer_b.get("/api/queue").get_json()["cases"] == []
    metrics = reviewer_b.get("/metrics").get_data(as_text=True)
    assert 'dermatriage_images{status="queued"} 0.0' in metrics and 'dermatriage_analyses{priority="urgent"}' not in metrics
    # The audit log of site B's admin holds nothing of site A's uploads; the deployment's admin sees them.
    assert "<td>batch.upload</td>" not in admin_b.get("/admin/audit").get_data(as_text=True)
    assert "<td>batch.upload</td>" in stack.login().get("/admin/audit").get_data(as_text=True)
    # Pages of the deployment's admin alone answer 404 to a site's admin.
    assert admin_b.get("/admin/sites").status_code == 404 and admin_b.get("/admin/notifications").status_code == 404


def test_patient_and_lesion_ids_are_the_sites_own(world):
    """Site B may use site A's pseudonyms for its own people: no conflict is reported (which would reveal
    site A's records) and B's rows are B's."""
    stack = world["stack"]
    token = stack.issue_token("uploader_b")
    rows = [{"path": "b.jpg", "patient": "PAT-BETA-7", "lesion": A_LESION}]
    check = stack.app.test_client().post("/api/uploads/manifest", json={"files": ["b.jpg"], "manifest":
                                         "path,patient,lesion,body_site\nb.jpg,PAT-BETA-7," + A_LESION + ",forearm\n"},
                                         headers={"Authorization": f"Bearer {token}"})
    assert check.status_code == 200, check.get_json()
    answer = stack.app.test_client().post("/api/batches", content_type="multipart/form-data",
                                          headers={"Authorization": f"Bearer {token}"},
                                          data={"files": [(io.BytesIO(imagegen.jpeg(5)), "b.jpg")],
                                                "manifest": json.dumps(rows)})
    assert answer.status_code == 201, answer.get_json()
    with stack.db.session() as s:
        lesions = s.execute(select(Lesion.site_id, Patient.external_id).join(Patient, Patient.id == Lesion.patient_id)
                            .where(Lesion.external_id == A_LESION).order_by(Lesion.site_id)).all()
    assert lesions == [(world["site_a"], A_PATIENT), (world["site_b"], "PAT-BETA-7")]
