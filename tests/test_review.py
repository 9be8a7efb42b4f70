"""The review queue, the case page and decisions, on analyses written straight to SQL (no worker)."""
from __future__ import annotations

import random
import re
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from harness import imagegen
from tests.support import csrf_token, seed_analysis, seed_batch
from triage.catalogue import BY_SLUG, DISCLAIMER, REFERENCE_LABEL_ORDER, UNTRAINED_WARNING
from triage.reviews import Cursor, QueueFilter, open_cases, queue_page
from triage.schema import Analysis, AuditEvent, CaseState, Review, ReviewCase, Role, utcnow


def seed_mix(stack, batch_id=None, start=None):
    """Two urgent, two review and two routine cases, received a minute apart in a shuffled order."""
    batch_id = batch_id or seed_batch(stack.db)
    start = start or utcnow() - timedelta(hours=1)
    plan = [("routine", 0), ("urgent", 1), ("review", 2), ("urgent", 3), ("routine", 4), ("review", 5)]
    return {(priority, minute): seed_analysis(stack.db, batch_id, priority=priority,
                                              received_at=start + timedelta(minutes=minute),
                                              audit_share=stack.settings.review_audit_share)
            for priority, minute in plan}


def queue_ids(client, **args) -> list[int]:
    html = client.get("/review", query_string=args).get_data(as_text=True)
    return [int(i) for i in re.findall(r'data-case="(\d+)"', html)]


def test_queue_is_urgent_then_review_then_oldest_first(make_stack, database_url):
    stack = make_stack(database_url, review_audit_share=0.0)
    ids = seed_mix(stack)
    reviewer = stack.login()
    expected = [ids["urgent", 1], ids["urgent", 3], ids["review", 2], ids["review", 5]]
    assert queue_ids(reviewer) == expected  # routine cases were not drawn: share 0
    assert queue_ids(reviewer, status="skipped") == [ids["routine", 0], ids["routine", 4]]


def test_routine_cases_drawn_for_audit_come_last(make_stack, sqlite_url):
    stack = make_stack(sqlite_url, review_audit_share=1.0)
    ids = seed_mix(stack)
    html = stack.login().get("/review").get_data(as_text=True)
    assert [int(i) for i in re.findall(r'data-case="(\d+)"', html)] == [
        ids["urgent", 1], ids["urgent", 3], ids["review", 2], ids["review", 5], ids["routine", 0], ids["routine", 4]]
    assert html.count("<small>(audit)</small>") == 2


def test_routine_cases_are_drawn_for_audit_at_the_configured_share(make_stack, sqlite_url):
    stack = make_stack(sqlite_url, review_audit_share=0.25)
    batch = seed_batch(stack.db)
    ids = [seed_analysis(stack.db, batch, priority="routine", top_class="melanocytic_nevi", audit_share=None)
           for _ in range(400)]
    with stack.db.session() as s:
        draw = random.Random(7).random
        assert len(open_cases(s, ids, stack.settings.review_audit_share, draw=draw)) == 400
        states = s.execute(select(ReviewCase.state, ReviewCase.audit_sample)).all()
    drawn = [state for state, sampled in states if sampled]
    assert all(state == CaseState.PENDING for state in drawn)
    assert sum(1 for state, _ in states if state == CaseState.SKIPPED) == 400 - len(drawn)
    assert 70 <= len(drawn) <= 130  # 25% of 400, within about 3.5 standard deviations


def test_filters_by_batch_class_priority_status_and_reviewer(sqlite_stack):
    stack = sqlite_stack
    rita = stack.add_user("rita", Role.REVIEWER)
    first, second = seed_batch(stack.db, "first"), seed_batch(stack.db, "second")
    melanoma = seed_analysis(stack.db, first, priority="urgent", top_class="melanoma")
    bcc = seed_analysis(stack.db, second, priority="urgent", top_class="bcc")
    unsure = seed_analysis(stack.db, second, priority="review", top_class="eczema")
    reviewer = stack.login(username="rita")
    assert queue_ids(reviewer, batch=second) == [bcc, unsure]
    assert queue_ids(reviewer, **{"class": "melanoma"}) == [melanoma]
    assert queue_ids(reviewer, priority="review") == [unsure]
    decide(reviewer, bcc, "confirm")
    assert queue_ids(reviewer) == [melanoma, unsure]
    assert queue_ids(reviewer, status="decided") == [bcc]
    assert queue_ids(reviewer, status="decided", reviewer=rita) == [bcc]
    assert queue_ids(reviewer, status="decided", reviewer=stack.admin_id) == []
    assert queue_ids(reviewer, status="nonsense", priority="bogus") == [melanoma, unsure]  # ignored, not an error


def decide(client, analysis_id: int, decision: str, query: str = "", **form):
    token = csrf_token(client, f"/review/{analysis_id}")
    return client.post(f"/review/{analysis_id}/decision{query}",
                       data={"decision": decision, "csrf_token": token, **form})


def test_keyset_pages_walk_the_queue_forwards_and_back(database_url, make_stack):
    stack = make_stack(database_url, review_audit_share=0.0)
    batch = seed_batch(stack.db)
    start = utcnow() - timedelta(days=1)
    for i in range(130):
        seed_analysis(stack.db, batch, priority=("urgent", "review")[i % 2], received_at=start + timedelta(seconds=i))
    with stack.db.session() as s:
        everything = [r["analysis_id"] for r in queue_page(s, QueueFilter(), size=500).rows]
        pages, page = [], queue_page(s, QueueFilter())
        while True:
            pages.append(page)
            if not page.next_cursor:
                break
            page = queue_page(s, QueueFilter(), after=Cursor.decode(page.next_cursor))
        back = queue_page(s, QueueFilter(), before=Cursor.decode(pages[2].prev_cursor))
        first_again = queue_page(s, QueueFilter(), before=Cursor.decode(back.prev_cursor))
    assert [len(p.rows) for p in pages] == [50, 50, 30]
    assert [r["analysis_id"] for p in pages for r in p.rows] == everything and len(set(everything)) == 130
    assert pages[0].prev_cursor is None and pages[2].next_cursor is None
    assert back.rows == pages[1].rows and back.next_cursor == pages[1].next_cursor
    assert first_again.rows == pages[0].rows and first_again.prev_cursor is None
    priorities = [r["priority"] for r in pages[0].rows + pages[1].rows]
    assert priorities == ["urgent"] * 65 + ["review"] * 35  # urgent first, across the page boundary


def test_a_queue_page_never_counts_and_is_one_index_range_scan(sqlite_stack):
    from sqlalchemy import event

    stack = sqlite_stack
    seed_mix(stack)
    reviewer = stack.login()
    engine = stack.app.extensions["dermatriage"].db.engine
    seen = []

    def remember(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", remember)
    try:
        page = reviewer.get("/review?priority=urgent")
    finally:
        event.remove(engine, "before_cursor_execute", remember)
    assert page.status_code == 200
    assert not [s for s, _ in seen if "count(" in s.lower()]  # no counting, of anything
    [(seek, parameters)] = [(s, p) for s, p in seen if s.lstrip().startswith("SELECT review_cases.id")
                            and "ORDER BY review_cases.patient_rank" in s]  # the queue by patient
    with stack.db.session() as s:
        plan = " ".join(str(row[-1]) for row in
                        s.connection().exec_driver_sql("EXPLAIN QUERY PLAN " + seek, parameters).all())
    assert "USING COVERING INDEX ix_review_cases_queue" in plan and "TEMP B-TREE" not in plan, plan


def test_the_case_page_shows_the_models_output_in_full(sqlite_stack):
    stack = sqlite_stack
    store = stack.app.extensions["dermatriage"].store
    photo_key, _ = store.put(imagegen.jpeg(1))
    heatmap_key, _ = store.put(imagegen.encode(imagegen.skin_photo(2, 224, 224), "PNG"))
    batch = seed_batch(stack.db, "Clinic A")
    analysis = seed_analysis(stack.db, batch, priority="urgent", top_class="melanoma", name="left-arm.jpg",
                             store_key=photo_key, heatmap_key=heatmap_key)
    page = stack.login().get(f"/review/{analysis}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert UNTRAINED_WARNING in html and 'class="untrained banner" role="alert"' in html and DISCLAIMER in html
    assert "left-arm.jpg" in html and "Clinic A" in html
    assert f'src="/images/{_image_of(stack, analysis)}/file"' in html
    assert 'id="show-heatmap"' in html and 'class="heatmap"' in html
    for slug in REFERENCE_LABEL_ORDER:  # a bar for every class of the (demo) model
        assert f"<th scope=\"row\">{BY_SLUG[slug].display_name}</th>" in html
    assert len(re.findall(r'<rect class="fill" x="0" y="0" width="[\d.]+"', html)) == 10
    assert 'width="60.0"' in html  # melanoma's 60% bar
    assert html.count("<li>") >= 3 and "Seeded as urgent." in html and "Seeded advice." in html
    assert "Sharpness is 18 (minimum 6.0)." in html and "≥ 6" in html and "≤ 230" in html and "marginal" in html
    assert "demo-tiny-untrained@test" in html
    assert 'data-key="c"' in html and 'data-key="n"' not in html  # no next case: it is the only one
    # The CSP forbids inline code: every script is a file, and nothing carries a style or handler.
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert not re.search(r"\s(style|on[a-z]+)=", html)
    assert stack.client.get(f"/images/{_image_of(stack, analysis)}/heatmap").mimetype == "image/png"


def _image_of(stack, analysis_id: int) -> int:
    with stack.db.session() as s:
        return s.get(Analysis, analysis_id).image_id


def test_a_decision_is_kept_beside_the_model_output_and_leads_to_the_next_case(stack):
    ids = seed_mix(stack)
    reviewer = stack.login()
    first, after = ids["urgent", 1], ids["urgent", 3]
    with stack.db.session() as s:
        before = s.get(Analysis, first).probabilities
    response = decide(reviewer, first, "change", diagnosis="bcc", note="Pearly edge; looks like BCC.")
    assert response.status_code == 302 and response.headers["Location"] == f"/review/{after}"
    response = decide(reviewer, first, "biopsy", diagnosis="bcc")  # a second opinion: a new row
    assert response.headers["Location"] == f"/review/{after}"
    with stack.db.session() as s:
        reviews = s.scalars(select(Review).where(Review.analysis_id == first).order_by(Review.id)).all()
        analysis = s.get(Analysis, first)
        case = s.scalar(select(ReviewCase).where(ReviewCase.analysis_id == first))
        audit = s.scalars(select(AuditEvent).where(AuditEvent.action == "review.decide")).all()
    assert [(r.decision, r.diagnosis, r.note) for r in reviews] == [
        ("change", "bcc", "Pearly edge; looks like BCC."), ("biopsy", "bcc", None)]
    assert analysis.top_class == "melanoma" and analysis.probabilities == before  # the model's output stays
    assert (case.state, case.decision, case.reviewer_id) == (CaseState.DECIDED, "biopsy", stack.admin_id)
    assert [(e.actor_id, e.target_id, e.details["decision"]) for e in audit] == [
        (stack.admin_id, first, "change"), (stack.admin_id, first, "biopsy")]
    page = reviewer.get(f"/review/{first}").get_data(as_text=True)
    assert "Pearly edge; looks like BCC." in page and "Decisions so far" in page


def test_decisions_that_make_no_sense_are_refused(sqlite_stack):
    stack = sqlite_stack
    analysis = seed_analysis(stack.db, seed_batch(stack.db), top_class="melanoma")
    reviewer = stack.login()
    assert decide(reviewer, analysis, "change", diagnosis="melanoma").status_code == 400  # that is confirming
    assert decide(reviewer, analysis, "change").status_code == 400
    assert decide(reviewer, analysis, "confirm", diagnosis="bcc").status_code == 400  # confirm adopts the model's
    assert decide(reviewer, analysis, "delete").status_code == 400
    assert decide(reviewer, analysis, "biopsy", diagnosis="not-a-class").status_code == 400
    assert decide(reviewer, analysis, "confirm", note="x" * 4001).status_code == 400
    assert decide(reviewer, 999_999, "confirm").status_code in (400, 404)
    with stack.db.session() as s:
        assert s.scalar(select(Review.id)) is None
    stack.add_user("ulla", Role.UPLOADER)
    uploader = stack.login(username="ulla")
    assert uploader.post(f"/review/{analysis}/decision", data={"decision": "confirm",
                                                               "csrf_token": csrf_token(uploader, "/")}).status_code == 403


def test_each_decision_moves_on_keeping_the_filter_until_the_queue_is_empty(make_stack, sqlite_url):
    stack = make_stack(sqlite_url, review_audit_share=0.0)
    ids = seed_mix(stack)
    reviewer = stack.login()
    response = decide(reviewer, ids["review", 2], "reshoot", query="?priority=review")
    assert response.headers["Location"] == f"/review/{ids['review', 5]}?priority=review"
    response = decide(reviewer, ids["review", 5], "specialist", query="?priority=review")
    assert response.headers["Location"] == "/review?done=1&priority=review"
    assert "No more cases match this filter" in reviewer.get(response.headers["Location"]).get_data(as_text=True)
    # Going forward wraps round: from the last urgent case, the first one is next.
    page = reviewer.get(f"/review/{ids['urgent', 3]}").get_data(as_text=True)
    assert f'href="/review/{ids["urgent", 1]}"' in page and 'data-key="n"' in page
    with stack.db.session() as s:
        decisions = dict(s.execute(select(Review.analysis_id, Review.diagnosis)).all())
    assert decisions == {ids["review", 2]: None, ids["review", 5]: None}


def test_the_json_api_takes_decisions_with_a_token(sqlite_stack):
    stack = sqlite_stack
    ids = seed_mix(stack)
    listed = stack.client.get("/api/queue?priority=urgent").get_json()
    assert [c["analysis_id"] for c in listed["cases"]] == [ids["urgent", 1], ids["urgent", 3]]
    made = stack.client.post(f"/api/analyses/{ids['urgent', 1]}/reviews", json={"decision": "confirm"})
    assert made.status_code == 201 and made.get_json()["next_analysis_id"] == ids["urgent", 3]
    refused = stack.client.post(f"/api/analyses/{ids['urgent', 3]}/reviews", json={"decision": ["x"]})
    assert refused.status_code == 400


def test_reanalysis_supersedes_the_older_case_in_whichever_order_they_open(sqlite_stack):
    stack = sqlite_stack
    batch = seed_batch(stack.db)
    first = seed_analysis(stack.db, batch, priority="urgent")
    image = _image_of(stack, first)
    again = seed_analysis(stack.db, batch, priority="review", image_id=image, model_version="v2")
    # An older analysis whose case opens after a newer one's (its transaction committed later).
    other = seed_analysis(stack.db, batch, priority="urgent", audit_share=None)
    newer = seed_analysis(stack.db, batch, priority="urgent", image_id=_image_of(stack, other), model_version="v2")
    with stack.db.session() as s:
        assert [c["analysis_id"] for c in open_cases(s, [other, newer], 0.0)] == [other]  # newer has one
        assert open_cases(s, [other], 0.0) == []  # opening twice opens nothing
        states = dict(s.execute(select(ReviewCase.analysis_id, ReviewCase.state)).all())
    assert states == {first: CaseState.SUPERSEDED, again: CaseState.PENDING,
                      other: CaseState.SUPERSEDED, newer: CaseState.PENDING}


def test_reading_the_queue_opens_no_case(sqlite_stack):
    """Cases are opened by the worker with the analysis, never by a page view: an analysis without one
    (which the worker and migration 0003 never leave) is not in the queue, and cannot be decided."""
    stack = sqlite_stack
    orphan = seed_analysis(stack.db, seed_batch(stack.db), priority="urgent", audit_share=None)
    reviewer = stack.login()
    assert queue_ids(reviewer) == [] and stack.client.get("/api/queue").get_json()["cases"] == []
    assert reviewer.get(f"/review/{orphan}").status_code == 404
    assert stack.client.post(f"/api/analyses/{orphan}/reviews", json={"decision": "confirm"}).status_code == 400
    with stack.db.session() as s:
        assert s.scalar(select(ReviewCase.id)) is None and s.scalar(select(Review.id)) is None


def test_batch_progress_counts_reviews(sqlite_stack):
    stack = sqlite_stack
    batch = seed_batch(stack.db)
    one = seed_analysis(stack.db, batch)
    seed_analysis(stack.db, batch, priority="review")
    stack.client.post(f"/api/analyses/{one}/reviews", json={"decision": "confirm"})
    body = stack.client.get(f"/api/batches/{batch}").get_json()
    assert body["progress"] == {"received": 2, "queued": 2, "analysed": 2, "reviewed": 1}
    assert body["images"][0]["review"]["decision"] == "confirm"
    assert body["images"][0]["review"]["reviewer"] == "admin" and body["images"][1]["review"] is None
    page = stack.client.get(f"/batches/{batch}").get_data(as_text=True)
    assert '<b data-progress="reviewed">1</b>' in page and 'data-bar="reviewed"' in page


def test_the_audit_log_is_for_admins_and_cannot_be_changed(database_url, make_stack):
    stack = make_stack(database_url)
    stack.upload([(imagegen.jpeg(1), "a.jpg")])
    admin = stack.login()
    page = admin.get("/admin/audit")
    html = page.get_data(as_text=True)
    for action in ("settings.changed", "auth.login", "batch.upload"):
        assert f'data-action="{action}"' in html
    assert admin.get("/admin/audit?action=batch.upload").get_data(as_text=True).count("data-action=") == 1
    # The action filter matches a prefix (literally: `%` and `_` are not wildcards).
    by_prefix = admin.get("/admin/audit?action=batch").get_data(as_text=True)
    assert sorted(re.findall(r'data-action="([^"]+)"', by_prefix)) == ["batch.create", "batch.upload"]
    assert admin.get("/admin/audit?action=%25").get_data(as_text=True).count("data-action=") == 0
    token = csrf_token(admin, "/admin/audit")
    for method in ("post", "put", "delete", "patch"):  # no way to write, even with a valid CSRF token
        assert getattr(admin, method)("/admin/audit", data={"csrf_token": token}).status_code == 405
    stack.add_user("rita", Role.REVIEWER)
    assert stack.login(username="rita").get("/admin/audit").status_code == 403
    for statement in ("UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"):
            with stack.db.session() as s:
                s.execute(text(statement))
    with stack.db.session() as s:
        assert s.scalar(select(AuditEvent.action).where(AuditEvent.action == "batch.upload")) == "batch.upload"


def test_a_settings_change_is_logged_once(make_stack, sqlite_url, tmp_path):
    same = dict(data_dir=tmp_path / "var", queue_name="analysis-settings-test")
    make_stack(sqlite_url, review_audit_share=0.1, **same)
    make_stack(sqlite_url, review_audit_share=0.1, **same)  # same settings: nothing new
    changed = make_stack(sqlite_url, review_audit_share=0.3, secret_key="another-secret-key-123", **same)
    with changed.db.session() as s:
        events = s.scalars(select(AuditEvent.details).where(AuditEvent.action == "settings.changed")
                           .order_by(AuditEvent.id)).all()
    assert len(events) == 2
    assert events[0]["first"] is True and events[0]["values"]["review_audit_share"] == "0.1"
    assert events[1]["changed"] == {"review_audit_share": {"from": "0.1", "to": "0.3"}}
    assert "secret_key" not in events[1]["values"] and "another-secret-key-123" not in str(events)


def test_logged_settings_leave_out_secrets_and_mask_passwords_in_urls():
    from triage.audit import settings_snapshot
    from triage.settings import Settings

    snapshot = settings_snapshot(Settings(database_url="postgresql+psycopg://dt:pg-pass@db/dt",
                                          redis_url="redis://:redis-pass@cache:6379/0",
                                          secret_key="k" * 40, flower_password="flower-pass"))
    assert snapshot["database_url"] == "postgresql+psycopg://dt:***@db/dt"
    assert snapshot["redis_url"] == "redis://:***@cache:6379/0"
    assert not any(word in str(snapshot) for word in ("pg-pass", "redis-pass", "k" * 40, "flower-pass"))


@pytest.mark.parametrize("n", [100_000])
def test_the_queue_stays_fast_with_100000_analyses(make_stack, sqlite_url, n):
    stack = make_stack(sqlite_url, review_audit_share=0.1)
    _bulk_cases(stack, n)
    reviewer = stack.login()
    import time

    timings = {}
    for label, query in (("first page", ""), ("batch", "?batch=7"), ("class", "?class=bcc"),
                         ("priority", "?priority=routine"), ("decided", "?status=decided")):
        started = time.perf_counter()
        response = reviewer.get("/review" + query)
        timings[label] = time.perf_counter() - started
        assert response.status_code == 200
    html = reviewer.get("/review").get_data(as_text=True)
    later = re.search(r'rel="next" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    started = time.perf_counter()
    assert reviewer.get(later).status_code == 200
    timings["a later page"] = time.perf_counter() - started
    assert max(timings.values()) < 0.5, timings  # a page view under half a second


def _bulk_cases(stack, n: int) -> None:
    """n analysed images with analyses and cases, written by SQLite itself (a recursive CTE)."""
    series = f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) "
    slugs = REFERENCE_LABEL_ORDER
    top = "CASE i % 10 " + " ".join(f"WHEN {k} THEN '{s}'" for k, s in enumerate(slugs)) + " END"
    priority = "CASE i % 4 WHEN 0 THEN 'urgent' WHEN 1 THEN 'review' ELSE 'routine' END"
    at = "datetime('2026-01-01', '+' || i || ' seconds')"
    with stack.db.session() as s:
        s.execute(text(series + "INSERT INTO batches (id, name, created_at, site_id) SELECT i, 'b' || i, '2026-01-01', "
                       "(SELECT min(id) FROM sites) FROM n WHERE i <= 100"))
        s.execute(text(series + "INSERT INTO images (id, batch_id, display_name, sha256, store_key, size_bytes, "
                       "width, height, format, stored_format, status, attempts, created_at, updated_at) SELECT i, i % 100 + 1, "
                       f"i || '.jpg', printf('%064d', i), printf('%064d', 0), 1, 1, 1, 'JPEG', 'JPEG', 'analysed', 1, {at}, "
                       f"{at} FROM n"))
        s.execute(text(series + "INSERT INTO analyses (id, image_id, model_version, model_trained, outcome, "
                       "probabilities, top_class, confidence, top3, risk_level, priority, reasons, recommendations, "
                       f"quality, thresholds, timings, created_at) SELECT i, i, 'm', 0, 'analysed', '{{}}', {top}, "
                       f"0.5, '[]', 'low', {priority}, '[]', '[]', '{{}}', '{{}}', '{{}}', {at} FROM n"))
        # Photographs without a lesion: each its own lesion of an unnamed patient (keys 0, ranks its own).
        rank = "CASE i % 4 WHEN 0 THEN 0 WHEN 1 THEN 1 ELSE 2 END"
        s.execute(text(series + "INSERT INTO review_cases (analysis_id, image_id, batch_id, priority, "
                       "priority_rank, top_class, received_at, state, audit_sample, created_at, patient_key, "
                       "lesion_key, patient_rank, patient_since, lesion_rank) SELECT i, i, "
                       f"i % 100 + 1, {priority}, {rank}, {top}, {at}, "
                       "CASE WHEN i % 4 < 2 OR i % 40 = 2 THEN 'pending' ELSE 'skipped' END, i % 40 = 2, "
                       f"{at}, 0, 0, {rank}, {at}, {rank} FROM n"))
    with stack.db.session() as s:
        decided = s.execute(update(ReviewCase).where(ReviewCase.id % 7 == 0, ReviewCase.state == "pending")
                            .values(state="decided", decision="confirm", reviewer_id=stack.admin_id,
                                    decided_at=utcnow()))
        assert decided.rowcount > 1000
