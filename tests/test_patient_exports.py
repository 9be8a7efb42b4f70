"""Exports per patient: photographs uploaded with a manifest and analysed by a real worker export a FHIR
Patient per patient (its pseudonym alone), Observations with that subject and the lesion's body site,
and a DiagnosticReport per patient per batch; the CSV and the JSON carry patient, lesion and body site.
A photograph without a patient exports as before."""
from __future__ import annotations

import csv
import io
import json

from harness import imagegen
from tests.fhir_check import by_url, resources, valid_bundle
from triage.body_sites import SNOMED_CT
from triage.schema import ImageStatus

NOTE = "=SUM(A1) raised, itchy"  # a clinic's note a spreadsheet would run as a formula
ROWS = [
    {"path": "visit/a.jpg", "patient": "P-0001", "lesion": "L-1", "body_site": "back", "age": 54, "sex": "female",
     "fitzpatrick": "II", "note": NOTE},
    {"path": "visit/b.jpg", "patient": "P-0001", "lesion": "L-1"},
    {"path": "visit/c.jpg", "patient": "P-0001", "lesion": "L-2", "body_site": "other"},
    {"path": "visit/d.jpg", "patient": "P-0002", "lesion": "L-3", "body_site": "upper arm"},
]  # visit/loose.jpg has no row: its own lesion of an unnamed patient


def upload_with_manifest(stack, names: list[str], rows: list[dict], seed: int = 1) -> dict:
    data = {"files": [(io.BytesIO(imagegen.jpeg(seed + i)), name) for i, name in enumerate(names)],
            "manifest": json.dumps(rows)}
    response = stack.client.post("/api/batches", data=data, content_type="multipart/form-data")
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["accepted"] == len(names)
    return response.get_json()


def export(stack, batch: int, fmt: str):
    response = stack.client.get(f"/api/batches/{batch}/export.{fmt}")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def test_exports_per_patient_with_lesion_and_body_site(make_stack, database_url):
    # Every routine case is drawn for audit, so every analysis can be decided.
    stack = make_stack(database_url, review_audit_share=1.0)
    names = [r["path"] for r in ROWS] + ["visit/loose.jpg"]
    batch = upload_with_manifest(stack, names, ROWS)["batch_id"]
    stack.start_worker()
    assert set(stack.wait_final(batch).values()) == {ImageStatus.ANALYSED}
    images = {i["name"]: i for i in stack.client.get(f"/api/batches/{batch}").get_json()["images"]}
    decided = images["visit/a.jpg"]["analysis"]["id"]
    assert stack.client.post(f"/api/analyses/{decided}/reviews", json={"decision": "confirm"}).status_code == 201
    # The decision settles lesion L-1, so b.jpg may have one too: the export follows whatever the API shows.
    images = {i["name"]: i for i in stack.client.get(f"/api/batches/{batch}").get_json()["images"]}
    reviewed = [n for n in names if images[n]["review"]]
    assert "visit/a.jpg" in reviewed and set(reviewed) <= {"visit/a.jpg", "visit/b.jpg"}

    bundle = valid_bundle(export(stack, batch, "fhir").get_data(as_text=True))
    urls = by_url(bundle)
    # A Patient per patient: the clinic's pseudonym, in its site's namespace, assigned by the site; nothing else.
    site = json.loads(export(stack, batch, "json").get_data(as_text=True))["batch"]["site"]
    assert site["name"] == "Default site"
    patients = {p["identifier"][0]["value"]: url for url, p in urls.items() if p["resourceType"] == "Patient"}
    assert sorted(patients) == ["P-0001", "P-0002"]
    for pseudonym, url in patients.items():
        assert urls[url] == {"resourceType": "Patient", "identifier": [
            {"system": f"urn:dermatriage:site:{site['id']}:patient", "value": pseudonym,
             "assigner": {"display": "Default site"}}]}

    # Each photograph's Observations: the model's and, once decided, the clinician's.
    observations = {}
    for url, resource in urls.items():
        if resource["resourceType"] == "Observation":
            observations.setdefault(int(resource["identifier"][0]["value"]), []).append(url)
    by_name = {name: observations[image["id"]] for name, image in images.items()}
    assert [len(by_name[n]) for n in names] == [2 if n in reviewed else 1 for n in names]
    for row in ROWS:
        for url in by_name[row["path"]]:
            assert urls[url]["subject"] == {"reference": patients[row["patient"]]}
    back = {"coding": [{"system": SNOMED_CT, "code": "77568009", "display": "Structure of back of trunk"}],
            "text": "Back"}
    for url in by_name["visit/a.jpg"] + by_name["visit/b.jpg"]:  # b.jpg's lesion is at the back too
        assert urls[url]["bodySite"] == back
    assert urls[by_name["visit/c.jpg"][0]]["bodySite"] == {"text": "Other"}  # no code rather than a guessed one
    assert urls[by_name["visit/d.jpg"][0]]["bodySite"]["coding"][0]["code"] == "40983000"
    for url in by_name["visit/a.jpg"]:
        assert f"Clinic's note at upload: {NOTE}" in [n["text"] for n in urls[url]["note"]]
    loose = urls[by_name["visit/loose.jpg"][0]]
    assert "subject" not in loose and "bodySite" not in loose  # as before patients

    # A DiagnosticReport per patient, its results that patient's Observations; one for the rest.
    reports = {r.get("subject", {}).get("reference"): r for r in resources(bundle, "DiagnosticReport")}
    assert set(reports) == {patients["P-0001"], patients["P-0002"], None}
    first = reports[patients["P-0001"]]
    assert {r["reference"] for r in first["result"]} == set(
        by_name["visit/a.jpg"] + by_name["visit/b.jpg"] + by_name["visit/c.jpg"])
    assert first["identifier"] == [{"system": "urn:dermatriage:batch-patient", "value": f"{batch}/P-0001"}]
    assert first["status"] == "preliminary" and f"decided on {len(reviewed)} of 3" in first["conclusion"]
    assert urls[first["resultsInterpreter"][0]["reference"]]["resourceType"] == "Practitioner"
    second = reports[patients["P-0002"]]
    assert [r["reference"] for r in second["result"]] == by_name["visit/d.jpg"] and "resultsInterpreter" not in second
    unnamed = reports[None]
    assert [r["reference"] for r in unnamed["result"]] == by_name["visit/loose.jpg"]
    assert unnamed["identifier"] == [{"system": "urn:dermatriage:batch", "value": str(batch)}]
    assert "decided on 0 of 1" in unnamed["conclusion"]
    assert bundle["identifier"]["value"] in urls and urls[bundle["identifier"]["value"]] is unnamed

    # CSV: the clinical columns, a formula-like note shown as text; the loose photograph's left empty.
    rows = {r["file_name"]: r for r in csv.DictReader(io.StringIO(export(stack, batch, "csv").get_data(as_text=True)))}
    clinical = ("patient", "lesion", "body_site", "body_site_name", "age", "sex", "fitzpatrick", "clinical_note")
    assert [rows["visit/a.jpg"][c] for c in clinical] == ["P-0001", "L-1", "back", "Back", "54", "female", "2",
                                                          "'" + NOTE]
    assert [rows["visit/d.jpg"][c] for c in clinical[:4]] == ["P-0002", "L-3", "upper_arm", "Upper arm"]
    assert [rows["visit/loose.jpg"][c] for c in clinical] == [""] * len(clinical)
    # JSON: the same fields, as the API has them, the note as written.
    exported = {i["name"]: i for i in export(stack, batch, "json").get_json()["images"]}
    assert exported == images
    assert {c: exported["visit/a.jpg"][c] for c in clinical} == {
        "patient": "P-0001", "lesion": "L-1", "body_site": "back", "body_site_name": "Back", "age": 54,
        "sex": "female", "fitzpatrick": 2, "clinical_note": NOTE}

    # A later batch of the same patient's lesion: its own report, the same Patient, no batch report.
    later = upload_with_manifest(stack, ["again/a.jpg"], [{"path": "again/a.jpg", "patient": "P-0001",
                                                           "lesion": "L-1"}], seed=9)["batch_id"]
    stack.wait_final(later)
    again = valid_bundle(export(stack, later, "fhir").get_data(as_text=True))
    [report] = resources(again, "DiagnosticReport")
    [patient] = [e["fullUrl"] for e in again["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert patient == patients["P-0001"] and report["subject"] == {"reference": patient}
    assert report["identifier"][0]["value"] == f"{later}/P-0001"
