"""Exports of a batch: the model's output and the clinician's decision side by side.

CSV for spreadsheets, JSON for scripts, and a FHIR R4 Bundle for hospital systems (`triage.fhir`).
Every export carries the disclaimer, and the untrained-model warning whenever an untrained model
produced any of its results. Each lists the classes its analyses have (their models' labels), never a
fixed set, the files the batch's uploads refused, and what the clinic said about each photograph
(pseudonymous patient and lesion, body site, age, sex, skin type, note).
"""
from __future__ import annotations

import csv
import io

from .catalogue import DISCLAIMER
from .results import batch_results, iso
from .schema import utcnow

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet would run such a cell as a formula
# What the clinic said about each photograph at upload (`triage.results.clinical_view`), by the same names.
CLINICAL_COLUMNS = ["patient", "lesion", "body_site", "body_site_name", "age", "sex", "fitzpatrick", "clinical_note"]


def batch_export(session, batch_id: int) -> dict | None:
    """Everything an export needs, as plain data: the batch's results as the page and the API show
    them (`triage.results`), and when they were exported."""
    results = batch_results(session, batch_id)
    return None if results is None else {**results, "exported_at": iso(utcnow())}


# --- CSV -----------------------------------------------------------------------------------------

def csv_columns(slugs: list[str]) -> list[str]:
    """The header: a probability column `p_<slug>` for each class of the export, between fixed columns."""
    return (["image_id", "file_name", "status"] + CLINICAL_COLUMNS
            + ["model_version", "model_trained", "model_top_class", "model_top_class_name", "model_confidence",
               "risk_level", "priority"]
            + [f"p_{slug}" for slug in slugs]
            + ["model_reasons", "review_decision", "review_diagnosis", "review_diagnosis_name", "reviewer",
               "reviewed_at", "review_note", "error", "warning", "disclaimer"])


def _cell(value) -> str:
    """Text as a spreadsheet will show it: never a formula (file names, clinical and review notes come
    from users)."""
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
        analysis, review = entry["analysis"] or {}, entry["review"] or {}
        probabilities = analysis.get("probabilities") or {}
        row = ([entry["id"], entry["name"], entry["status"]] + [entry[c] for c in CLINICAL_COLUMNS]
               + [analysis.get("model_version"), analysis.get("model_trained"), analysis.get("top_class"),
                  analysis.get("top_class_name"), _number(analysis.get("confidence")), analysis.get("risk_level"),
                  analysis.get("priority")]
               + [_number(probabilities.get(slug)) for slug in slugs]
               + [" | ".join(analysis.get("reasons") or []), review.get("decision"), review.get("diagnosis"),
                  review.get("diagnosis_name"), review.get("reviewer"), review.get("decided_at"),
                  review.get("note"), entry["error"], analysis.get("warning"), DISCLAIMER])
        writer.writerow([_cell(v) for v in row])
    for refused in export["rejected_files"]:  # a row each, so the sheet accounts for every file sent
        writer.writerow([_cell(v) for v in _refused_row(refused, slugs)])
    return out.getvalue()


def _refused_row(refused: dict, slugs: list[str]) -> list:
    columns = csv_columns(slugs)
    row = dict.fromkeys(columns)
    row.update(file_name=refused["name"], status=refused["kind"], error=refused["reason"], disclaimer=DISCLAIMER)
    return [row[c] for c in columns]


def _number(value) -> str | None:
    return None if value is None else f"{value:.6f}"
