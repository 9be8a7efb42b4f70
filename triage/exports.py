"""Exports of a batch: the model's output and the clinician's decision side by side.

CSV for spreadsheets, JSON for scripts, and a FHIR R4 Bundle (a DiagnosticReport with one Observation
per image, the class probabilities as components) for hospital systems. Every export carries the
disclaimer, and the untrained-model warning whenever an untrained model produced any of its results.
Each lists the classes its analyses have (their models' labels), never a fixed set.
"""
from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime

from sqlalchemy import select

from .catalogue import DISCLAIMER, UNTRAINED_WARNING, class_name, classes_of, named_probabilities
from .reviews import decisions_on
from .schema import Analysis, Batch, Image, utcnow

# Our own code systems: the classes are this model's labels, not SNOMED concepts, and saying so
# is safer than mapping them to codes a hospital system would take at face value.
CLASS_SYSTEM = "urn:dermatriage:skin-class"
FIELD_SYSTEM = "urn:dermatriage:field"
DECISION_SYSTEM = "urn:dermatriage:review-decision"
NAMESPACE = uuid.UUID("5b0e8d7e-3f6a-4c1e-9d55-0c7d2a6e9b41")  # stable resource ids across exports
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet would run such a cell as a formula


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") + "Z" if moment else None


def batch_export(session, batch_id: int) -> dict | None:
    """Everything an export needs, as plain data: one entry per image, latest analysis and decision."""
    batch = session.get(Batch, batch_id)
    if batch is None:
        return None
    images = session.scalars(select(Image).where(Image.batch_id == batch_id).order_by(Image.id)).all()
    latest = {}
    for analysis in session.scalars(select(Analysis).join(Image).where(Image.batch_id == batch_id)
                                    .order_by(Analysis.id)):
        latest[analysis.image_id] = analysis
    # The latest decision on each analysis: later ones overwrite earlier ones.
    decisions = {review.analysis_id: (review, username)
                 for review, username in decisions_on(session, [a.id for a in latest.values()])}
    entries = [_entry(image, latest.get(image.id), decisions) for image in images]
    untrained = any(e["model"] and not e["model"]["trained"] for e in entries)
    # The classes the batch's analyses have, in catalogue order: one model's labels, or the union of
    # several when models changed while the batch was analysed.
    classes = classes_of(slug for e in entries if e["model"] for slug in e["model"]["probabilities"] or {})
    return {"batch": {"id": batch.id, "name": batch.name, "created_at": _iso(batch.created_at)},
            "exported_at": _iso(utcnow()), "disclaimer": DISCLAIMER,
            "model_untrained": untrained, "warning": UNTRAINED_WARNING if untrained else None,
            "classes": [{"slug": c.slug, "name": c.display_name, "severity": c.severity} for c in classes],
            "images": entries}


def _entry(image: Image, analysis: Analysis | None, decisions: dict) -> dict:
    entry = {"image_id": image.id, "file_name": image.display_name, "status": image.status,
             "sha256": image.sha256, "received_at": _iso(image.created_at), "error": image.error,
             "model": None, "review": None}
    if analysis is None:
        return entry
    entry["model"] = {
        "analysis_id": analysis.id, "version": analysis.model_version, "trained": analysis.model_trained,
        "outcome": analysis.outcome, "top_class": analysis.top_class, "confidence": analysis.confidence,
        "top_class_name": class_name(analysis.top_class),
        "probabilities": analysis.probabilities, "classes": named_probabilities(analysis.probabilities),
        "risk_level": analysis.risk_level,
        "priority": analysis.priority, "reasons": analysis.reasons, "recommendations": analysis.recommendations,
        "analysed_at": _iso(analysis.created_at),
    }
    if analysis.id in decisions:
        review, username = decisions[analysis.id]
        entry["review"] = {
            "decision": review.decision, "diagnosis": review.diagnosis,
            "diagnosis_name": class_name(review.diagnosis),
            "note": review.note, "reviewer": username, "decided_at": _iso(review.created_at),
        }
    return entry


# --- CSV -----------------------------------------------------------------------------------------

def csv_columns(slugs: list[str]) -> list[str]:
    """The header: a probability column `p_<slug>` for each class of the export, between fixed columns."""
    return (["image_id", "file_name", "status", "model_version", "model_trained", "model_top_class",
             "model_top_class_name", "model_confidence", "risk_level", "priority"]
            + [f"p_{slug}" for slug in slugs]
            + ["model_reasons", "review_decision", "review_diagnosis", "review_diagnosis_name", "reviewer",
               "reviewed_at", "review_note", "error", "warning", "disclaimer"])


def _cell(value) -> str:
    """Text as a spreadsheet will show it: never a formula (file names and notes come from users)."""
    if value is None:
        return ""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def to_csv(export: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    slugs = [c["slug"] for c in export["classes"]]
    writer.writerow(csv_columns(slugs))
    for entry in export["images"]:
        model, review = entry["model"] or {}, entry["review"] or {}
        probabilities = model.get("probabilities") or {}
        row = ([entry["image_id"], entry["file_name"], entry["status"], model.get("version"),
                model.get("trained"), model.get("top_class"), model.get("top_class_name"),
                _number(model.get("confidence")), model.get("risk_level"), model.get("priority")]
               + [_number(probabilities.get(slug)) for slug in slugs]
               + [" | ".join(model.get("reasons") or []), review.get("decision"), review.get("diagnosis"),
                  review.get("diagnosis_name"), review.get("reviewer"), review.get("decided_at"),
                  review.get("note"), entry["error"],
                  UNTRAINED_WARNING if model and not model.get("trained") else None, DISCLAIMER])
        writer.writerow([_cell(v) for v in row])
    return out.getvalue()


def _number(value) -> str | None:
    return None if value is None else f"{value:.6f}"


# --- FHIR R4 -------------------------------------------------------------------------------------

def _urn(kind: str, key) -> str:
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, f'{kind}/{key}')}"


def _class_concept(slug: str) -> dict:
    name = class_name(slug) or slug  # an old row may name a class the catalogue has since renamed
    return {"coding": [{"system": CLASS_SYSTEM, "code": slug, "display": name}], "text": name}


def _field(code: str, text: str) -> dict:
    return {"coding": [{"system": FIELD_SYSTEM, "code": code, "display": text}], "text": text}


def to_fhir(export: dict) -> dict:
    """A FHIR R4 Bundle (type collection): one DiagnosticReport for the batch, one Observation and one
    Device (the model version) per analysed image."""
    batch = export["batch"]
    entries, results, devices = [], [], {}
    for image in export["images"]:
        model = image["model"]
        if model is None:
            continue
        if model["version"] not in devices:
            devices[model["version"]] = _device(model)
        url = _urn("observation", model["analysis_id"])
        results.append({"reference": url})
        entries.append({"fullUrl": url, "resource": _observation(image, model, devices[model["version"]]["fullUrl"],
                                                                  export)})
    report_url = _urn("report", f"{batch['id']}/{export['exported_at']}")
    all_reviewed = bool(entries) and all(i["review"] for i in export["images"] if i["model"])
    conclusion = export["disclaimer"] + (" " + export["warning"] if export["warning"] else "")
    report = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": "urn:dermatriage:batch", "value": str(batch["id"])}],
        "status": "final" if all_reviewed else "preliminary",
        "code": {"text": f"Automated dermatology photograph triage: batch {batch['name']}"},
        "effectiveDateTime": batch["created_at"],
        "issued": export["exported_at"],
        "conclusion": conclusion,
    }
    if results:  # FHIR JSON has no empty arrays
        report["result"] = results
    bundle_entries = [{"fullUrl": report_url, "resource": report}] + entries + list(devices.values())
    return {"resourceType": "Bundle", "type": "collection", "timestamp": export["exported_at"],
            "identifier": {"system": "urn:ietf:rfc:3986", "value": report_url},
            "entry": bundle_entries}


def _device(model: dict) -> dict:
    resource = {"resourceType": "Device", "status": "active",
                "deviceName": [{"name": "DermaTriage skin-condition classifier", "type": "model-name"}],
                "version": [{"value": model["version"]}]}
    if not model["trained"]:
        resource["note"] = [{"text": UNTRAINED_WARNING}]
    return {"fullUrl": _urn("device", model["version"]), "resource": resource}


def _observation(image: dict, model: dict, device_url: str, export: dict) -> dict:
    review = image["review"]
    components = []
    for named in model["classes"]:
        components.append({"code": _class_concept(named["slug"]),
                           "valueQuantity": {"value": round(named["probability"], 6), "unit": "probability",
                                             "system": "http://unitsofmeasure.org", "code": "1"}})
    if model["risk_level"]:
        components.append({"code": _field("risk-level", "Risk level"), "valueString": model["risk_level"]})
    components.append({"code": _field("priority", "Triage priority"), "valueString": model["priority"]})
    notes = [{"text": export["disclaimer"]}]
    if not model["trained"]:
        notes.append({"text": UNTRAINED_WARNING})
    notes += [{"text": f"Model reason: {r}"} for r in model["reasons"] or []]
    if review:
        components.append({"code": _field("review-decision", "Clinician's decision"),
                           "valueCodeableConcept": {"coding": [{"system": DECISION_SYSTEM,
                                                                "code": review["decision"]}],
                                                    "text": review["decision"]}})
        if review["diagnosis"]:
            components.append({"code": _field("review-diagnosis", "Clinician's diagnosis"),
                               "valueCodeableConcept": _class_concept(review["diagnosis"])})
        if review["note"]:
            notes.append({"authorString": review["reviewer"], "time": review["decided_at"],
                          "text": review["note"]})
    observation = {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:dermatriage:image", "value": str(image["image_id"])}],
        "status": "final" if review else "preliminary",
        "code": {"text": "Skin condition class probabilities from a dermatology photograph"},
        "effectiveDateTime": image["received_at"],
        "issued": model["analysed_at"],
        "device": {"reference": device_url},
        "component": components,
        "note": notes,
    }
    if model["top_class"]:
        observation["valueCodeableConcept"] = _class_concept(model["top_class"])
    else:
        observation["dataAbsentReason"] = {"text": "The image did not pass the quality checks: retake it."}
    if review:
        observation["performer"] = [{"display": review["reviewer"]}]
    return observation
