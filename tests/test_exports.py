"""Batch exports: CSV, JSON and FHIR R4, model output and clinician's decision side by side."""
from __future__ import annotations

import csv
import io
import json

from sqlalchemy import select

from tests.support import seed_analysis, seed_batch
from triage.catalogue import DISCLAIMER, REFERENCE_LABEL_ORDER, UNTRAINED_WARNING, classes_of
from triage.exports import CLASS_SYSTEM, csv_columns
from triage.schema import AuditEvent, Image, ImageStatus, Role

NOTE = '=HYPERLINK("http://evil.example","click"), said "x"'


def reviewed_batch(stack, trained: bool = False) -> dict:
    """Three analysed images (one decided, with an awkward note) and one that failed."""
    batch = seed_batch(stack.db, "Clinic, A")
    ids = {"melanoma": seed_analysis(stack.db, batch, top_class="melanoma", trained=trained, name="arm.jpg"),
           "eczema": seed_analysis(stack.db, batch, priority="review", top_class="eczema", trained=trained),
           "nevus": seed_analysis(stack.db, batch, priority="routine", top_class="melanocytic_nevi", trained=trained)}
    with stack.db.session() as s:
        s.add(Image(batch_id=batch, display_name="broken.jpg", sha256="f" * 64, store_key="0" * 64, size_bytes=1,
                    width=1, height=1, format="JPEG", status=ImageStatus.FAILED, error="could not be decoded"))
    made = stack.client.post(f"/api/analyses/{ids['melanoma']}/reviews",
                             json={"decision": "change", "diagnosis": "bcc", "note": NOTE})
    assert made.status_code == 201
    return {"batch": batch, **ids}


def export(stack, batch: int, fmt: str):
    response = stack.client.get(f"/api/batches/{batch}/export.{fmt}")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def test_csv_has_model_and_decision_side_by_side_and_no_formulas(sqlite_stack):
    stack = sqlite_stack
    seeded = reviewed_batch(stack)
    response = export(stack, seeded["batch"], "csv")
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == f'attachment; filename="batch-{seeded["batch"]}.csv"'
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    # A probability column for each class the analyses have: the demo model's ten, in catalogue order.
    assert list(rows[0]) == csv_columns([c.slug for c in classes_of(REFERENCE_LABEL_ORDER)]) and len(rows) == 4
    arm = next(r for r in rows if r["file_name"] == "arm.jpg")
    assert (arm["model_top_class"], arm["p_melanoma"], arm["priority"]) == ("melanoma", "0.600000", "urgent")
    assert (arm["review_decision"], arm["review_diagnosis"], arm["reviewer"]) == ("change", "bcc", "admin")
    assert (arm["model_top_class_name"], arm["review_diagnosis_name"]) == ("Melanoma", "Basal cell carcinoma")
    assert arm["review_note"] == "'" + NOTE  # a spreadsheet shows it as text instead of running it
    assert arm["reviewed_at"].endswith("Z")
    unreviewed = [r for r in rows if r["file_name"] != "arm.jpg" and r["status"] == "analysed"]
    assert len(unreviewed) == 2 and all(r["review_decision"] == "" for r in unreviewed)
    broken = next(r for r in rows if r["file_name"] == "broken.jpg")
    assert broken["status"] == "failed" and broken["error"] == "could not be decoded" and broken["p_bcc"] == ""
    assert all(r["disclaimer"] == DISCLAIMER for r in rows)
    assert [r["warning"] for r in rows if r["model_version"]] == [UNTRAINED_WARNING] * 3


def test_json_export_carries_disclaimer_untrained_flag_and_decisions(sqlite_stack):
    stack = sqlite_stack
    seeded = reviewed_batch(stack)
    body = export(stack, seeded["batch"], "json").get_json()
    assert body["disclaimer"] == DISCLAIMER and body["model_untrained"] is True
    assert body["warning"] == UNTRAINED_WARNING and body["batch"]["name"] == "Clinic, A"
    arm = next(i for i in body["images"] if i["file_name"] == "arm.jpg")
    assert arm["model"]["top_class"] == "melanoma" and arm["model"]["probabilities"]["melanoma"] == 0.6
    assert arm["review"]["decision"] == "change" and arm["review"]["diagnosis_name"] == "Basal cell carcinoma"
    assert arm["review"]["note"] == NOTE  # JSON keeps the text as written


def test_fhir_bundle_is_valid_and_says_what_the_model_and_the_clinician_said(sqlite_stack):
    from fhir.resources.R4B.bundle import Bundle

    stack = sqlite_stack
    seeded = reviewed_batch(stack)
    response = export(stack, seeded["batch"], "fhir")
    assert response.mimetype == "application/fhir+json"
    bundle = json.loads(response.get_data(as_text=True))
    Bundle.model_validate(bundle)  # the structure: required elements, types, cardinalities
    assert not list(_empty(bundle))  # FHIR JSON forbids empty arrays, objects and strings
    resources = [e["resource"] for e in bundle["entry"]]
    [report] = [r for r in resources if r["resourceType"] == "DiagnosticReport"]
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    [device] = [r for r in resources if r["resourceType"] == "Device"]
    assert bundle["type"] == "collection" and len(observations) == 3  # the failed image has no result
    urls = {e["fullUrl"] for e in bundle["entry"]}
    assert {ref["reference"] for ref in report["result"]} <= urls and len(report["result"]) == 3
    assert report["status"] == "preliminary"  # two images are still unreviewed
    assert DISCLAIMER in report["conclusion"] and UNTRAINED_WARNING in report["conclusion"]
    assert device["version"][0]["value"] == "demo-tiny-untrained@test"
    decided = next(o for o in observations if o["valueCodeableConcept"]["coding"][0]["code"] == "melanoma")
    probabilities = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"]
                     for c in decided["component"] if c["code"]["coding"][0]["system"] == CLASS_SYSTEM}
    assert len(probabilities) == 10 and probabilities["melanoma"] == 0.6
    assert abs(sum(probabilities.values()) - 1) < 1e-5
    fields = {c["code"]["coding"][0]["code"]: c for c in decided["component"]
              if c["code"]["coding"][0]["system"] != CLASS_SYSTEM}
    assert fields["priority"]["valueString"] == "urgent"
    assert fields["review-decision"]["valueCodeableConcept"]["coding"][0]["code"] == "change"
    assert fields["review-diagnosis"]["valueCodeableConcept"]["coding"][0]["code"] == "bcc"
    assert decided["status"] == "final" and decided["performer"] == [{"display": "admin"}]
    notes = [n["text"] for n in decided["note"]]
    assert DISCLAIMER in notes and UNTRAINED_WARNING in notes and NOTE in notes
    assert all(o["status"] == "preliminary" for o in observations if o is not decided)


def test_a_trained_models_export_has_no_untrained_warning(sqlite_stack):
    stack = sqlite_stack
    seeded = reviewed_batch(stack, trained=True)
    text = export(stack, seeded["batch"], "csv").get_data(as_text=True)
    assert UNTRAINED_WARNING not in text and DISCLAIMER in text
    body = export(stack, seeded["batch"], "json").get_json()
    assert body["model_untrained"] is False and body["warning"] is None
    fhir = export(stack, seeded["batch"], "fhir").get_data(as_text=True)
    assert UNTRAINED_WARNING not in fhir and DISCLAIMER in fhir


def test_exports_are_for_reviewers_audited_and_refuse_unknown_batches(sqlite_stack):
    stack = sqlite_stack
    seeded = reviewed_batch(stack)
    stack.add_user("ulla", Role.UPLOADER)
    assert stack.login(username="ulla").get(f"/api/batches/{seeded['batch']}/export.csv").status_code == 403
    assert stack.client.get("/api/batches/999/export.csv").status_code == 404
    assert stack.client.get(f"/api/batches/{seeded['batch']}/export.xml").status_code == 404
    export(stack, seeded["batch"], "fhir")
    with stack.db.session() as s:
        events = s.execute(select(AuditEvent.actor_id, AuditEvent.target_id, AuditEvent.details)
                           .where(AuditEvent.action == "batch.export")).all()
    assert events == [(stack.admin_id, seeded["batch"], {"format": "fhir", "images": 4, "via": "token"})]


def _empty(value, path="$"):
    if value in ([], {}, "", None):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _empty(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _empty(item, f"{path}[{index}]")
