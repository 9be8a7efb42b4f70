"""Batch exports: CSV, JSON and FHIR R4, model output and clinician's decision side by side."""
from __future__ import annotations

import csv
import io

from sqlalchemy import select

from tests.fhir_check import by_url, resources, valid_bundle
from tests.support import seed_analysis, seed_batch
from triage.catalogue import DISCLAIMER, REFERENCE_LABEL_ORDER, UNTRAINED_WARNING, class_name, classes_of
from triage.exports import csv_columns
from triage.fhir import CLASS_SYSTEM
from triage.schema import Analysis, AuditEvent, Image, ImageStatus, Role

NOTE = '=HYPERLINK("http://evil.example","click"), said "x"'


def reviewed_batch(stack, trained: bool = False) -> dict:
    """Three analysed images (one decided, with an awkward note) and one that failed."""
    batch = seed_batch(stack.db, "Clinic, A")
    ids = {"melanoma": seed_analysis(stack.db, batch, top_class="melanoma", trained=trained, name="arm.jpg"),
           "eczema": seed_analysis(stack.db, batch, priority="review", top_class="eczema", trained=trained),
           "nevus": seed_analysis(stack.db, batch, priority="routine", top_class="melanocytic_nevi", trained=trained)}
    with stack.db.session() as s:
        s.add(Image(batch_id=batch, display_name="broken.jpg", sha256="f" * 64, store_key="0" * 64, size_bytes=1,
                    width=1, height=1, format="JPEG", stored_format="JPEG", status=ImageStatus.FAILED, error="could not be decoded"))
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
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"  # the charset named once
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
    arm = next(i for i in body["images"] if i["name"] == "arm.jpg")
    assert arm["analysis"]["top_class"] == "melanoma" and arm["analysis"]["probabilities"]["melanoma"] == 0.6
    assert arm["review"]["decision"] == "change" and arm["review"]["diagnosis_name"] == "Basal cell carcinoma"
    assert arm["review"]["note"] == NOTE  # JSON keeps the text as written
    # One shape for a result: the export's images are the batch API's, field for field.
    api = stack.client.get(f"/api/batches/{seeded['batch']}").get_json()
    assert body["images"] == api["images"] and body["classes"] == api["classes"]
    assert api["warning"] == body["warning"]


def test_fhir_bundle_is_valid_and_keeps_the_model_and_the_clinician_apart(sqlite_stack):
    stack = sqlite_stack
    batch = seed_batch(stack.db, "Clinic B")
    changed = seed_analysis(stack.db, batch, priority="review", top_class="eczema", name="changed.jpg")
    biopsy = seed_analysis(stack.db, batch, top_class="melanoma", name="biopsy.jpg")
    specialist = seed_analysis(stack.db, batch, top_class="bcc", name="specialist.jpg")
    waiting = seed_analysis(stack.db, batch, priority="routine", top_class="melanocytic_nevi", name="waiting.jpg")
    for analysis, decision in ((changed, {"decision": "change", "diagnosis": "melanoma", "note": NOTE}),
                               (biopsy, {"decision": "biopsy"}),
                               (specialist, {"decision": "specialist", "diagnosis": "scc"})):
        assert stack.client.post(f"/api/analyses/{analysis}/reviews", json=decision).status_code == 201
    response = export(stack, batch, "fhir")
    assert response.mimetype == "application/fhir+json"
    bundle = valid_bundle(response.get_data(as_text=True))
    urls = by_url(bundle)
    [report] = resources(bundle, "DiagnosticReport")
    [device] = resources(bundle, "Device")
    [clinician] = resources(bundle, "Practitioner")
    observations = resources(bundle, "Observation")
    assert bundle["type"] == "collection" and len(observations) == 4 + 3  # the model's four, the clinician's three
    model = {o["identifier"][1]["value"]: o for o in observations if o.get("device")}
    decided = {o["identifier"][0]["value"]: o for o in observations if o.get("performer")}

    # The model's output: preliminary, its own class as the value, the model as device and method.
    eczema = model[str(changed)]
    assert eczema["status"] == "preliminary" and eczema["valueCodeableConcept"]["coding"][0]["code"] == "eczema"
    assert urls[eczema["device"]["reference"]] is device and device["version"][0]["value"] == "demo-tiny-untrained@test"
    assert eczema["method"]["coding"][0]["code"] == "automated-image-classifier" and "performer" not in eczema
    probabilities = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"]
                     for c in eczema["component"] if c["code"]["coding"][0]["system"] == CLASS_SYSTEM}
    assert len(probabilities) == 10 and probabilities["eczema"] == 0.6
    assert abs(sum(probabilities.values()) - 1) < 1e-5
    assert DISCLAIMER in [n["text"] for n in eczema["note"]] and UNTRAINED_WARNING in [n["text"] for n in eczema["note"]]
    assert all(o["status"] == "preliminary" for o in model.values())

    # The clinician's decision: final, performed by the clinician, the chosen diagnosis as the value.
    melanoma = decided[str(_image_of(stack, changed))]
    assert melanoma["status"] == "final" and urls[melanoma["performer"][0]["reference"]] is clinician
    assert clinician["identifier"][0]["value"] == "admin" and "device" not in melanoma
    assert melanoma["valueCodeableConcept"]["coding"][0] == {"system": CLASS_SYSTEM, "code": "melanoma",
                                                             "display": "Melanoma"}
    assert urls[melanoma["derivedFrom"][0]["reference"]] is eczema
    assert _component(melanoma, "review-decision")["coding"][0]["code"] == "change"
    assert NOTE in [n["text"] for n in melanoma["note"]]
    # A referral's value is the referral; it names a suspected class only when the clinician chose one.
    referred = decided[str(_image_of(stack, biopsy))]
    assert referred["valueCodeableConcept"]["coding"][0]["code"] == "biopsy"
    assert _component(referred, "suspected-class") is None
    suspected = decided[str(_image_of(stack, specialist))]
    assert suspected["valueCodeableConcept"]["coding"][0]["code"] == "specialist"
    assert _component(suspected, "suspected-class")["coding"][0]["code"] == "scc"

    # The report follows the decisions: preliminary while one photograph awaits a clinician.
    assert {r["reference"] for r in report["result"]} == {e["fullUrl"] for e in bundle["entry"]
                                                           if e["resource"]["resourceType"] == "Observation"}
    assert report["status"] == "preliminary" and urls[report["resultsInterpreter"][0]["reference"]] is clinician
    assert [c["coding"][0]["code"] for c in report["conclusionCode"]] == ["melanoma"]  # the change; not the suspicion
    conclusion = report["conclusion"]
    assert "decided on 3 of 4" in conclusion and "changed.jpg: Melanoma, changed from the model's Eczema." in conclusion
    assert "biopsy.jpg: Referred for biopsy." in conclusion
    assert f"specialist.jpg: Referred to a specialist, suspected {class_name('scc')}." in conclusion
    assert "1 await a clinician's decision" in conclusion
    assert DISCLAIMER in conclusion and UNTRAINED_WARNING in conclusion

    assert stack.client.post(f"/api/analyses/{waiting}/reviews", json={"decision": "confirm"}).status_code == 201
    bundle = valid_bundle(export(stack, batch, "fhir").get_data(as_text=True))
    [report] = resources(bundle, "DiagnosticReport")
    assert report["status"] == "final" and "await" not in report["conclusion"]
    confirmed = next(o for o in resources(bundle, "Observation")
                     if o.get("performer") and o["identifier"][0]["value"] == str(_image_of(stack, waiting)))
    assert confirmed["valueCodeableConcept"]["coding"][0]["code"] == "melanocytic_nevi"


def _component(observation: dict, code: str) -> dict | None:
    found = [c["valueCodeableConcept"] for c in observation["component"] if c["code"]["coding"][0]["code"] == code]
    return found[0] if found else None


def _image_of(stack, analysis_id: int) -> int:
    with stack.db.session() as s:
        return s.get(Analysis, analysis_id).image_id


def test_a_trained_models_export_has_no_untrained_warning(sqlite_stack):
    stack = sqlite_stack
    seeded = reviewed_batch(stack, trained=True)
    text = export(stack, seeded["batch"], "csv").get_data(as_text=True)
    assert UNTRAINED_WARNING not in text and DISCLAIMER in text
    body = export(stack, seeded["batch"], "json").get_json()
    assert body["model_untrained"] is False and body["warning"] is None
    fhir = export(stack, seeded["batch"], "fhir").get_data(as_text=True)
    valid_bundle(fhir)
    assert UNTRAINED_WARNING not in fhir and DISCLAIMER in fhir


def test_the_untrained_warning_follows_the_results_shown_everywhere(sqlite_stack):
    """Worked out once: an image analysed by the demo model and again by a trained one shows the trained
    result, so neither the page, the API nor any export warns; the other way round, all of them do."""
    stack = sqlite_stack
    for first, then, warned in ((False, True, False), (True, False, True)):
        batch = seed_batch(stack.db)
        earlier = seed_analysis(stack.db, batch, trained=first, model_version=f"first-{first}")
        seed_analysis(stack.db, batch, trained=then, model_version=f"then-{then}", image_id=_image_of(stack, earlier))
        api = stack.client.get(f"/api/batches/{batch}").get_json()
        polled = stack.client.get(f"/api/batches/{batch}?images=0").get_json()
        assert (api["warning"] == UNTRAINED_WARNING) is warned and polled["warning"] == api["warning"]
        assert (api["images"][0]["analysis"]["warning"] == UNTRAINED_WARNING) is warned
        assert (UNTRAINED_WARNING in stack.client.get(f"/batches/{batch}").get_data(as_text=True)) is warned
        assert export(stack, batch, "json").get_json()["model_untrained"] is warned
        for fmt in ("csv", "fhir"):
            assert (UNTRAINED_WARNING in export(stack, batch, fmt).get_data(as_text=True)) is warned, fmt


def test_exports_are_for_reviewers_audited_and_refuse_unknown_batches(sqlite_stack):
    stack = sqlite_stack
    seeded = reviewed_batch(stack)
    stack.add_user("ulla", Role.UPLOADER)
    assert stack.login(username="ulla").get(f"/api/batches/{seeded['batch']}/export.csv").status_code == 403
    assert stack.client.get("/api/batches/999/export.csv").status_code == 404
    assert stack.client.get(f"/api/batches/{seeded['batch']}/export.xml").status_code == 404
    valid_bundle(export(stack, seeded["batch"], "fhir").get_data(as_text=True))
    with stack.db.session() as s:
        events = s.execute(select(AuditEvent.actor_id, AuditEvent.target_id, AuditEvent.details)
                           .where(AuditEvent.action == "batch.export")).all()
    assert events == [(stack.admin_id, seeded["batch"], {"format": "fhir", "images": 4, "via": "token"})]
