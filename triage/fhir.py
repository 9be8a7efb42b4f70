"""A batch as a FHIR R4 Bundle (type collection), for hospital systems.

The model's output and the clinician's decision are different observations, as they are different
acts: the model's is `preliminary`, made by the model (its Device, and the method says it was an
automated classifier); the clinician's is `final`, performed by the clinician (a Practitioner), with
the diagnosis they settled on, or their referral or reshoot request, as its value, and derived from
the model's observation it judged. A photograph of a known patient's lesion has that Patient (the
clinic's pseudonym, nothing else) as its subject and the lesion's body site, in SNOMED CT where one
fits. There is a DiagnosticReport per patient in the batch, and one for the batch as before patients,
for the photographs without a patient and the refused files; each is final only when every photograph
it covers that the model classified has a clinician's decision, and its conclusion sums them up.
"""
from __future__ import annotations

import uuid

from .body_sites import SNOMED_CT, body_site_name, body_site_snomed
from .catalogue import class_name
from .schema import Decision

# Our own code systems: the classes are this model's labels, not SNOMED concepts, and saying so
# is safer than mapping them to codes a hospital system would take at face value.
CLASS_SYSTEM = "urn:dermatriage:skin-class"
FIELD_SYSTEM = "urn:dermatriage:field"
DECISION_SYSTEM = "urn:dermatriage:review-decision"
METHOD_SYSTEM = "urn:dermatriage:method"
# The namespace of one site's patient pseudonyms (Patient.identifier.system): two clinics may use one
# pseudonym for different people, so each site has its own.
PATIENT_SYSTEM = "urn:dermatriage:site:{site}:patient"
NAMESPACE = uuid.UUID("5b0e8d7e-3f6a-4c1e-9d55-0c7d2a6e9b41")  # stable resource ids across exports

# What each decision means in a clinical record (the case page's buttons say what to do; this says what was done).
DECISION_NAMES = {
    Decision.CONFIRM: "Model's class confirmed by a clinician",
    Decision.CHANGE: "Diagnosis changed by a clinician",
    Decision.RESHOOT: "Photograph to be retaken: it cannot be judged",
    Decision.BIOPSY: "Referred for biopsy",
    Decision.SPECIALIST: "Referred to a specialist",
}
# The decisions whose value is a diagnosis; the others' value is the referral or request itself.
DIAGNOSES = (Decision.CONFIRM, Decision.CHANGE)


def _urn(kind: str, key) -> str:
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, f'{kind}/{key}')}"


def _class_concept(slug: str) -> dict:
    name = class_name(slug) or slug  # an old row may name a class the catalogue has since renamed
    return {"coding": [{"system": CLASS_SYSTEM, "code": slug, "display": name}], "text": name}


def _decision_concept(decision: str) -> dict:
    name = DECISION_NAMES[decision]
    return {"coding": [{"system": DECISION_SYSTEM, "code": decision, "display": name}], "text": name}


def _field(code: str, text: str) -> dict:
    return {"coding": [{"system": FIELD_SYSTEM, "code": code, "display": text}], "text": text}


def to_fhir(export: dict) -> dict:
    """The Bundle: per analysed photograph the model's Observation and, once decided, the clinician's; a
    Patient (its identifier alone) per patient and a DiagnosticReport per patient; a DiagnosticReport for
    what belongs to no patient (photographs uploaded without one, refused files); a Device per model
    version and a Practitioner per clinician."""
    devices, practitioners, patients, observations = {}, {}, {}, []
    groups: dict[str | None, _Group] = {}  # by patient pseudonym; None for photographs without a patient
    for image in export["images"]:
        pseudonym = image["patient"]
        if pseudonym and pseudonym not in patients:
            patients[pseudonym] = _patient(pseudonym, export["batch"])
        group = groups.setdefault(pseudonym, _Group(patients[pseudonym]["fullUrl"] if pseudonym else None))
        group.images.append(image)
        model = image["analysis"]
        if model is None:
            continue
        if model["model_version"] not in devices:
            devices[model["model_version"]] = _device(model)
        model_url = _urn("observation", model["id"])
        observations.append({"fullUrl": model_url, "resource": _model_observation(
            image, model, devices[model["model_version"]]["fullUrl"], export, group.subject)})
        group.results.append({"reference": model_url})
        review = image["review"]
        if review is None:
            continue
        if review["reviewer"] not in practitioners:
            practitioners[review["reviewer"]] = _practitioner(review["reviewer"])
        practitioner_url = practitioners[review["reviewer"]]["fullUrl"]
        decision_url = _urn("decision", review["id"])
        observations.append({"fullUrl": decision_url, "resource": _decision_observation(
            image, review, model_url, practitioner_url, export, group.subject)})
        group.results.append({"reference": decision_url})
        group.interpreters.setdefault(practitioner_url)  # a dict keeps them once, in order
    # The export's own id: the batch report's, as before patients; it names the Bundle either way.
    export_url = _urn("report", f"{export['batch']['id']}/{export['exported_at']}")
    entries = (_reports(export, groups, export_url) + list(patients.values()) + observations
               + list(devices.values()) + list(practitioners.values()))
    return {"resourceType": "Bundle", "type": "collection", "timestamp": export["exported_at"],
            "identifier": {"system": "urn:ietf:rfc:3986", "value": export_url}, "entry": entries}


class _Group:
    """The photographs one DiagnosticReport covers: one patient's in the batch, or those without a patient."""

    def __init__(self, subject: str | None):
        self.subject = subject  # the Patient's fullUrl, None for photographs without a patient
        self.images: list[dict] = []
        self.results: list[dict] = []
        self.interpreters: dict[str, None] = {}


def _reports(export: dict, groups: dict, export_url: str) -> list[dict]:
    """The batch's report when it needs one, then a report per patient, in the order of their photographs."""
    reports = []
    if _needs_batch_report(export, groups):
        reports.append({"fullUrl": export_url, "resource": _report(export, groups.get(None) or _Group(None))})
    for pseudonym, group in groups.items():
        if pseudonym:
            reports.append({"fullUrl": _urn("report", f"{export_url}/{pseudonym}"),
                            "resource": _report(export, group, pseudonym)})
    return reports


def _needs_batch_report(export: dict, groups: dict) -> bool:
    """A report without a subject, as before patients, for what belongs to no patient: photographs
    uploaded without one and the files the uploads refused; and for a batch with no patient at all, so
    that every export has a report (an empty batch included)."""
    return None in groups or bool(export.get("rejected_files")) or not groups


def assigner_for(batch: dict) -> dict:
    """Who assigned a patient's pseudonym: the batch's site (the clinic), by display."""
    return {"display": batch["site"]["name"]}


def patient_system_for(batch: dict) -> str:
    """The namespace a batch's pseudonyms are unique in: its site's."""
    return PATIENT_SYSTEM.format(site=batch["site"]["id"])


def _patient(pseudonym: str, batch: dict) -> dict:
    """The clinic's pseudonym and nothing else: no name, birth date or sex, so the export adds nothing
    that identifies the patient. The same identifier gives the same resource id in every export."""
    system = patient_system_for(batch)
    identifier = {"system": system, "value": pseudonym, "assigner": assigner_for(batch)}
    return {"fullUrl": _urn("patient", f"{system}|{pseudonym}"),
            "resource": {"resourceType": "Patient", "identifier": [identifier]}}


def _report(export: dict, group: _Group, pseudonym: str | None = None) -> dict:
    """The report on one patient's photographs in the batch, or (without a pseudonym) the batch's report
    on the photographs without a patient."""
    batch = export["batch"]
    analysed = [i for i in group.images if i["analysis"] and i["analysis"]["top_class"]]
    decided = [i for i in analysed if i["review"]]
    if pseudonym is None:
        identifier = {"system": "urn:dermatriage:batch", "value": str(batch["id"])}
    else:  # one report per patient per batch
        identifier = {"system": "urn:dermatriage:batch-patient", "value": f"{batch['id']}/{pseudonym}"}
    report = {
        "resourceType": "DiagnosticReport",
        "identifier": [identifier],
        # Final once a clinician has decided on every photograph the model classified; until then the
        # report holds machine output that nobody has judged yet.
        "status": "final" if analysed and len(decided) == len(analysed) else "preliminary",
        "code": {"text": f"Dermatology photograph triage: batch {batch['name']}"},
        "effectiveDateTime": batch["created_at"],
        "issued": export["exported_at"],
        "conclusion": _conclusion(export, group.images, analysed, decided, batch_wide=pseudonym is None),
    }
    if group.subject:
        report["subject"] = {"reference": group.subject}
    # The diagnoses clinicians settled on; a referral's suspected class is not one.
    diagnoses = sorted({i["review"]["diagnosis"] for i in decided if i["review"]["decision"] in DIAGNOSES})
    if diagnoses:  # FHIR JSON has no empty arrays
        report["conclusionCode"] = [_class_concept(slug) for slug in diagnoses]
    if group.interpreters:
        report["resultsInterpreter"] = [{"reference": url} for url in group.interpreters]
    if group.results:
        report["result"] = group.results
    return report


def _conclusion(export: dict, images: list[dict], analysed: list[dict], decided: list[dict], batch_wide: bool) -> str:
    """What the clinicians decided, photograph by photograph, what is still open, then the disclaimer;
    the batch's report also names the files its uploads refused."""
    parts = [f"A clinician has decided on {len(decided)} of {len(analysed)} classified photographs."]
    parts += [f"{image['name']}: {_decision_text(image)}." for image in decided]
    if len(decided) < len(analysed):
        parts.append(f"{len(analysed) - len(decided)} await a clinician's decision; for those there is only "
                     "the model's output.")
    rejected = (export.get("rejected_files") or []) if batch_wide else []
    if rejected:
        parts.append(f"{len(rejected)} files were not taken into the batch: "
                     + "; ".join(f"{r['name']} ({r['reason']})" for r in rejected) + ".")
    parts.append(export["disclaimer"])
    # The untrained warning where this report's own results come from an untrained model.
    warning = next((i["analysis"]["warning"] for i in images if i["analysis"] and i["analysis"]["warning"]), None)
    if warning:
        parts.append(warning)
    return " ".join(parts)


def _decision_text(image: dict) -> str:
    review, model_class = image["review"], image["analysis"]["top_class_name"]
    if review["decision"] == Decision.CONFIRM:
        return f"{review['diagnosis_name']}, the model's class, confirmed"
    if review["decision"] == Decision.CHANGE:
        return f"{review['diagnosis_name']}, changed from the model's {model_class}"
    suspected = review["diagnosis_name"]
    return DECISION_NAMES[review["decision"]] + (f", suspected {suspected}" if suspected else "")


def _device(model: dict) -> dict:
    resource = {"resourceType": "Device", "status": "active",
                "deviceName": [{"name": "DermaTriage skin-condition classifier", "type": "model-name"}],
                "version": [{"value": model["model_version"]}]}
    if model["warning"]:
        resource["note"] = [{"text": model["warning"]}]
    return {"fullUrl": _urn("device", model["model_version"]), "resource": resource}


def _practitioner(username: str) -> dict:
    resource = {"resourceType": "Practitioner",
                "identifier": [{"system": "urn:dermatriage:user", "value": username}],
                "name": [{"text": username}]}
    return {"fullUrl": _urn("practitioner", username), "resource": resource}


def _body_site_concept(slug: str) -> dict:
    """Where the lesion is: its SNOMED CT body structure when the site has one, else the label as text."""
    label = body_site_name(slug) or slug
    coded = body_site_snomed(slug)
    if coded is None:
        return {"text": label}
    code, display = coded
    return {"coding": [{"system": SNOMED_CT, "code": code, "display": display}], "text": label}


def _about_the_lesion(observation: dict, image: dict, subject: str | None) -> dict:
    """Whose lesion the photograph shows, where it is and what the clinic noted at upload, when known: a
    photograph uploaded without them is exported as before."""
    if subject:
        observation["subject"] = {"reference": subject}
    if image["body_site"]:
        observation["bodySite"] = _body_site_concept(image["body_site"])
    if image["clinical_note"]:
        observation["note"].append({"text": f"Clinic's note at upload: {image['clinical_note']}"})
    return observation


def _model_observation(image: dict, model: dict, device_url: str, export: dict, subject: str | None) -> dict:
    components = [{"code": _class_concept(named["slug"]),
                   "valueQuantity": {"value": round(named["probability"], 6), "unit": "probability",
                                     "system": "http://unitsofmeasure.org", "code": "1"}}
                  for named in model["classes"]]
    if model["risk_level"]:
        components.append({"code": _field("risk-level", "Risk level"), "valueString": model["risk_level"]})
    components.append({"code": _field("priority", "Triage priority"), "valueString": model["priority"]})
    notes = [{"text": export["disclaimer"]}]
    if model["warning"]:
        notes.append({"text": model["warning"]})
    notes += [{"text": f"Model reason: {r}"} for r in model["reasons"] or []]
    observation = {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:dermatriage:image", "value": str(image["id"])},
                       {"system": "urn:dermatriage:analysis", "value": str(model["id"])}],
        # Machine output that no clinician has made final: it stays preliminary whatever they decide.
        "status": "preliminary",
        "code": {"text": "Skin condition class probabilities from a dermatology photograph (automated)"},
        "effectiveDateTime": image["received_at"],
        "issued": model["analysed_at"],
        "device": {"reference": device_url},
        "method": {"coding": [{"system": METHOD_SYSTEM, "code": "automated-image-classifier",
                               "display": "Automated image classifier"}],
                   "text": f"Automated image classifier, model {model['model_version']}"},
        "note": notes,
    }
    if components:
        observation["component"] = components
    if model["top_class"]:
        observation["valueCodeableConcept"] = _class_concept(model["top_class"])
    else:
        observation["dataAbsentReason"] = {"text": "The image did not pass the quality checks: retake it."}
    return _about_the_lesion(observation, image, subject)


def _decision_observation(image: dict, review: dict, model_url: str, practitioner_url: str, export: dict,
                          subject: str | None) -> dict:
    decision = review["decision"]
    components = [{"code": _field("review-decision", "Clinician's decision"),
                   "valueCodeableConcept": _decision_concept(decision)}]
    if decision in DIAGNOSES:
        value = _class_concept(review["diagnosis"])
    else:
        value = _decision_concept(decision)
        if review["diagnosis"]:  # a referral names a suspected class only when the clinician chose one
            components.append({"code": _field("suspected-class", "Clinician's suspected class"),
                               "valueCodeableConcept": _class_concept(review["diagnosis"])})
    notes = [{"text": export["disclaimer"]}]
    if review["note"]:
        notes.append({"authorReference": {"reference": practitioner_url}, "time": review["decided_at"],
                      "text": review["note"]})
    observation = {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:dermatriage:image", "value": str(image["id"])},
                       {"system": "urn:dermatriage:review", "value": str(review["id"])}],
        "status": "final",
        "code": {"coding": [{"system": FIELD_SYSTEM, "code": "clinician-decision",
                             "display": "Clinician's decision on a dermatology photograph"}],
                 "text": "Clinician's decision on a dermatology photograph"},
        "effectiveDateTime": image["received_at"],
        "issued": review["decided_at"],
        "performer": [{"reference": practitioner_url, "display": review["reviewer"]}],
        "valueCodeableConcept": value,
        "derivedFrom": [{"reference": model_url}],
        "component": components,
        "note": notes,
    }
    return _about_the_lesion(observation, image, subject)
