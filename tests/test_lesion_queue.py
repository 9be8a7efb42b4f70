"""The review queue by patient and lesion: patients most urgent first with their lesions together, a
lesion's photographs beside its case, one decision per lesion. Real SQLite and PostgreSQL, uploads
through the API with a manifest, and a real worker where the analysis matters."""
from __future__ import annotations

import io
import json
import re
import threading
import time
from datetime import timedelta

from sqlalchemy import select, update

from harness import imagegen
from tests.support import csrf_token, seed_analysis
from triage.lesions import Photo, assess_lesion, patient_priority
from triage.reviews import open_cases
from triage.schema import Analysis, AuditEvent, CaseState, Image, ImageStatus, Lesion, Patient, Review, ReviewCase, utcnow


def upload(stack, rows: list[dict], seed: int, batch_id: int | None = None) -> dict:
    """Photographs named by a manifest (a row without patient is an unnamed photograph); {path: image id}."""
    files = [(io.BytesIO(imagegen.jpeg(seed + i)), row["path"]) for i, row in enumerate(rows)]
    manifest = [row for row in rows if row.get("patient")]
    url = f"/api/batches/{batch_id}/images" if batch_id else "/api/batches"
    response = stack.client.post(url, data={"files": files, "manifest": json.dumps(manifest)},
                                 content_type="multipart/form-data")
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["accepted"] == len(rows), body
    return {"batch_id": body["batch_id"], **{f["name"]: f["image_id"] for f in body["files"]}}


ROW = re.compile(r'<tr (?:class="patient-group" data-patient="(?P<patient>[^"]+)"'
                 r'|class="lesion-group" data-lesion="(?P<lesion>[^"]+)"'
                 r'|data-priority="[a-z]+" data-case="(?P<case>\d+)")')


def queue(client, **args) -> list[tuple[str, str]]:
    """The queue page's rows in order: ("patient", P) and ("lesion", L) headers, ("case", analysis id)."""
    html = client.get("/review", query_string=args).get_data(as_text=True)
    return [next((kind, value) for kind, value in m.groupdict().items() if value) for m in ROW.finditer(html)]


def seed_named(stack, image_id: int, priority: str, top_class: str, minute: int) -> int:
    """An analysis of an uploaded photograph, as the worker writes it: received `minute` minutes into the
    day, analysed, its case opened (with `regroup`)."""
    at = utcnow().replace(hour=8, minute=0, second=0, microsecond=0) + timedelta(minutes=minute)
    with stack.db.session() as s:
        s.execute(update(Image).where(Image.id == image_id).values(created_at=at, status=ImageStatus.ANALYSED))
    return seed_analysis(stack.db, 0, image_id=image_id, priority=priority, top_class=top_class, audit_share=1.0)


def test_the_queue_is_by_patient_most_urgent_first_and_regroups_after_a_decision(make_stack, database_url):
    stack = make_stack(database_url, review_audit_share=1.0)
    ids = upload(stack, [
        {"path": "a-mole.jpg", "patient": "P-10", "lesion": "L-1", "body_site": "back"},
        {"path": "a-mole-2.jpg", "patient": "P-10", "lesion": "L-1"},
        {"path": "a-spot.jpg", "patient": "P-10", "lesion": "L-2", "body_site": "face"},
        {"path": "b-rash.jpg", "patient": "P-20", "lesion": "L-3"},
        {"path": "loose-1.jpg"}, {"path": "loose-2.jpg"}], seed=10)
    # Unnamed photographs are each their own lesion of an unnamed patient, ordered as ever.
    loose_urgent = seed_named(stack, ids["loose-1.jpg"], "urgent", "melanoma", 0)
    mole = seed_named(stack, ids["a-mole.jpg"], "routine", "melanocytic_nevi", 1)
    spot = seed_named(stack, ids["a-spot.jpg"], "urgent", "bcc", 2)
    mole_2 = seed_named(stack, ids["a-mole-2.jpg"], "routine", "melanocytic_nevi", 3)
    rash = seed_named(stack, ids["b-rash.jpg"], "review", "eczema", 4)
    loose_review = seed_named(stack, ids["loose-2.jpg"], "review", "eczema", 5)
    reviewer = stack.login()

    # P-10 is urgent (its spot), waiting since 08:01: after the unnamed urgent photograph of 08:00, before
    # every review. Its urgent lesion first, then the mole's two photographs together.
    assert queue(reviewer) == [
        ("case", str(loose_urgent)),
        ("patient", "P-10"), ("lesion", "L-2"), ("case", str(spot)), ("lesion", "L-1"), ("case", str(mole)),
        ("case", str(mole_2)),
        ("patient", "P-20"), ("lesion", "L-3"), ("case", str(rash)),
        ("case", str(loose_review))]
    html = reviewer.get("/review").get_data(as_text=True)
    assert re.search(r'data-patient="P-10">\s*<th[^>]*>Patient <b class="patient">P-10</b> · '
                     r'<span class="priority urgent">urgent</span> · 2 lesions', html)
    assert 'data-lesion="L-1" data-lesion-priority="routine" data-lesion-state="complete"' in html
    # The filtered views keep a patient's cases together too, in one index's order.
    assert [v for k, v in queue(reviewer, priority="routine") if k == "case"] == [str(mole), str(mole_2)]

    # Deciding the urgent spot leaves P-10 with routine photographs only: the patient moves behind the reviews.
    assert stack.client.post(f"/api/analyses/{spot}/reviews", json={"decision": "biopsy"}).status_code == 201
    assert [v for k, v in queue(reviewer) if k == "case"] == [
        str(loose_urgent), str(rash), str(loose_review), str(mole), str(mole_2)]
    assert [v for k, v in queue(reviewer, status="decided") if k == "case"] == [str(spot)]


def test_one_decision_settles_the_lesion_and_is_recorded_as_such(sqlite_stack):
    stack = sqlite_stack
    ids = upload(stack, [{"path": "m1.jpg", "patient": "P-1", "lesion": "L-1"},
                         {"path": "m2.jpg", "patient": "P-1", "lesion": "L-1"},
                         {"path": "m3.jpg", "patient": "P-1", "lesion": "L-1"},
                         {"path": "other.jpg", "patient": "P-1", "lesion": "L-2"}], seed=30)
    first = seed_named(stack, ids["m1.jpg"], "urgent", "melanoma", 0)
    second = seed_named(stack, ids["m2.jpg"], "review", "melanocytic_nevi", 1)
    third = seed_named(stack, ids["m3.jpg"], "routine", "melanocytic_nevi", 2)
    other = seed_named(stack, ids["other.jpg"], "review", "eczema", 3)
    with stack.db.session() as s:  # the routine one decided already keeps its own decision
        s.execute(update(ReviewCase).where(ReviewCase.analysis_id == third)
                  .values(state=CaseState.DECIDED, decision="confirm", decided_at=utcnow()))
    reviewer = stack.login()
    page = reviewer.get(f"/review/{second}").get_data(as_text=True)
    assert f'data-settles="{first}"' in page and "One decision per lesion" in page

    token = csrf_token(reviewer, f"/review/{second}")
    response = reviewer.post(f"/review/{second}/decision", data={"decision": "specialist", "diagnosis": "melanoma",
                                                                "note": "Compare both views.", "csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == f"/review/{other}"
    with stack.db.session() as s:
        reviews = {r.analysis_id: r for r in s.scalars(select(Review))}
        states = dict(s.execute(select(ReviewCase.analysis_id, ReviewCase.state)).all())
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.action == "review.decide")).all()
    made, settled = reviews[second], reviews[first]
    assert (made.decision, made.diagnosis, made.settled_by_id) == ("specialist", "melanoma", None)
    assert (settled.decision, settled.diagnosis, settled.settled_by_id, settled.note) == (
        "specialist", "melanoma", made.id, None)
    assert set(reviews) == {first, second}  # not the decided photograph, nor the other lesion
    assert states == {first: CaseState.DECIDED, second: CaseState.DECIDED, third: CaseState.DECIDED,
                      other: CaseState.PENDING}
    assert event.target_id == second and event.details["settled"] == [{"analysis_id": first, "review_id": settled.id}]
    assert "P-1" not in str(event.details) and "L-1" not in str(event.details)
    page = reviewer.get(f"/review/{first}").get_data(as_text=True)
    assert "decision, made on another of its photographs" in page  # its history says whose decision it is


def test_two_workers_writing_one_patient_at_once_leave_the_queue_grouped(make_stack, database_url):
    """A transaction opening a case of a patient while another one's is still uncommitted: the second
    waits for the first (the patient's row lock on PostgreSQL, the write lock on SQLite) and then sees
    its case, so both cases end with the patient's one rank."""
    stack = make_stack(database_url, review_audit_share=1.0)
    ids = upload(stack, [{"path": "a.jpg", "patient": "P-1", "lesion": "L-1"},
                         {"path": "b.jpg", "patient": "P-1", "lesion": "L-2"}], seed=50)
    urgent = seed_analysis(stack.db, 0, image_id=ids["a.jpg"], priority="urgent", audit_share=None)
    routine = seed_analysis(stack.db, 0, image_id=ids["b.jpg"], priority="routine", top_class="bkl",
                            audit_share=None)
    first_open = threading.Event()
    errors = []

    def slow_first():
        try:
            with stack.db.session() as s:
                open_cases(s, [urgent], 1.0)
                first_open.set()
                time.sleep(1.0)  # still uncommitted while the second transaction starts
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
            first_open.set()

    thread = threading.Thread(target=slow_first)
    thread.start()
    assert first_open.wait(10)
    with stack.db.session() as s:
        open_cases(s, [routine], 1.0)
    thread.join()
    assert not errors, errors
    with stack.db.session() as s:
        keys = set(s.execute(select(ReviewCase.patient_rank, ReviewCase.patient_since, ReviewCase.patient_key)).all())
        ranks = dict(s.execute(select(ReviewCase.analysis_id, ReviewCase.lesion_rank)).all())
    assert len(keys) == 1 and next(iter(keys))[0] == 0  # one patient, urgent
    assert ranks == {urgent: 0, routine: 2}


def _photos(stack, lesion_external_id: str) -> list[Photo]:
    """The rule's input read straight from SQL, to check what the pages show against."""
    with stack.db.session() as s:
        rows = s.execute(select(Image, Analysis).join(Lesion, Lesion.id == Image.lesion_id)
                         .outerjoin(Analysis, Analysis.image_id == Image.id)
                         .where(Lesion.external_id == lesion_external_id).order_by(Image.id, Analysis.id)).all()
    latest = {image.id: (image, analysis) for image, analysis in rows}
    return [Photo(image.id, image.batch_id, image.created_at, image.status,
                  a.priority if a and a.outcome == "analysed" else None,
                  a.probabilities if a and a.outcome == "analysed" else None,
                  a.top_class if a and a.outcome == "analysed" else None,
                  (a.thresholds or {}).get("malignant_threshold", 0.3) if a else 0.3,
                  (a.quality or {}) if a else {}) for image, a in latest.values()]


def test_a_real_worker_fills_the_queue_by_patient_and_one_decision_settles_a_lesion(make_stack, database_url):
    stack = make_stack(database_url, review_audit_share=1.0)  # every case in the queue, routine ones too
    first = upload(stack, [
        {"path": "visit1/a-mole-1.jpg", "patient": "P-10", "lesion": "L-1", "body_site": "back"},
        {"path": "visit1/a-mole-2.jpg", "patient": "P-10", "lesion": "L-1", "body_site": "back"},
        {"path": "visit1/a-spot.jpg", "patient": "P-10", "lesion": "L-2", "body_site": "face"},
        {"path": "visit1/b-rash.jpg", "patient": "P-20", "lesion": "L-3", "body_site": "forearm"},
        {"path": "visit1/loose.jpg"}], seed=70)
    stack.start_worker()
    assert set(stack.wait_final(first["batch_id"]).values()) == {ImageStatus.ANALYSED}
    # A later visit photographs the mole again: the earlier photographs are its history.
    later = upload(stack, [{"path": "visit2/a-mole-3.jpg", "patient": "P-10", "lesion": "L-1"}], seed=80)
    stack.wait_final(later["batch_id"])
    reviewer = stack.login()

    # The rule, worked out from the rows the worker wrote, against what the queue shows.
    assessed = {lesion: assess_lesion(_photos(stack, lesion)) for lesion in ("L-1", "L-2", "L-3")}
    assert assessed["L-1"].visit_batch_id == later["batch_id"] and assessed["L-1"].shown_first == (
        later["visit2/a-mole-3.jpg"],)
    assert assessed["L-1"].earlier_ids == (first["visit1/a-mole-1.jpg"], first["visit1/a-mole-2.jpg"])
    patients = {"P-10": patient_priority([assessed["L-1"], assessed["L-2"]]), "P-20": assessed["L-3"].priority}
    rows = queue(reviewer)
    html = reviewer.get("/review").get_data(as_text=True)
    for lesion, a in assessed.items():
        assert f'data-lesion="{lesion}" data-lesion-priority="{a.priority}" data-lesion-state="{a.state}"' in html
    # Each patient's rows together, with each lesion's cases together under its header.
    order = [v for k, v in rows if k == "patient"]
    assert sorted(order) == ["P-10", "P-20"]
    with stack.db.session() as s:
        case_of = {image: str(analysis) for image, analysis in s.execute(select(Analysis.image_id, Analysis.id))}
    groups, current = {}, None
    for kind, value in rows:
        if kind == "patient":
            current = value
        elif kind == "case" and value == case_of[first["visit1/loose.jpg"]]:
            current = None
        elif kind == "case":
            groups.setdefault(current, []).append(value)
    mole_and_spot = [first[p] for p in ("visit1/a-mole-1.jpg", "visit1/a-mole-2.jpg", "visit1/a-spot.jpg")]
    assert sorted(groups["P-10"]) == sorted(case_of[i] for i in mole_and_spot + [later["visit2/a-mole-3.jpg"]])
    assert groups["P-20"] == [case_of[first["visit1/b-rash.jpg"]]]
    # The more urgent patient first (a tie goes to the one waiting longer: P-10's photographs came first).
    rank = ("urgent", "review", "routine").index
    expected_first = "P-10" if rank(patients["P-10"]) <= rank(patients["P-20"]) else "P-20"
    assert order[0] == expected_first, (patients, rows)

    # The case page of the new photograph shows the lesion's earlier photographs, oldest first, and
    # not the other lesion's; deciding it settles every pending photograph of the mole.
    mole_3 = int(case_of[later["visit2/a-mole-3.jpg"]])
    page = reviewer.get(f"/review/{mole_3}").get_data(as_text=True)
    earlier = page.split('class="lesion-photos earlier"')[1].split("</ol>")[0]
    assert re.findall(r'data-image="(\d+)"', earlier) == [str(first["visit1/a-mole-1.jpg"]),
                                                          str(first["visit1/a-mole-2.jpg"])]
    assert f'data-image="{first["visit1/a-spot.jpg"]}"' not in page
    made = stack.client.post(f"/api/analyses/{mole_3}/reviews", json={"decision": "confirm"})
    assert made.status_code == 201
    with stack.db.session() as s:
        states = dict(s.execute(select(Image.id, ReviewCase.state).join(ReviewCase, ReviewCase.image_id == Image.id)).all())
        settled = s.scalars(select(Review.analysis_id).where(Review.settled_by_id.is_not(None))).all()
    moles = [first["visit1/a-mole-1.jpg"], first["visit1/a-mole-2.jpg"], later["visit2/a-mole-3.jpg"]]
    assert all(states[m] == CaseState.DECIDED for m in moles)
    assert states[first["visit1/a-spot.jpg"]] == states[first["visit1/b-rash.jpg"]] == CaseState.PENDING
    assert sorted(settled) == sorted(int(case_of[m]) for m in moles[:2])
    assert stack.client.get("/review").status_code == 200
