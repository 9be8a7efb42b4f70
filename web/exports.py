"""Batch exports: CSV, JSON and a FHIR R4 Bundle, each with the disclaimer (reviewers and admins)."""
from __future__ import annotations

import json

from flask import Blueprint, Response, abort

from triage.exports import batch_export, to_csv
from triage.fhir import to_fhir
from triage.schema import Role
from triage.sites import batch_in

from .auth import audit, my_sites, requires
from .services import services

bp = Blueprint("exports", __name__)
FORMATS = {
    "csv": ("text/csv", "csv", to_csv),  # Flask adds the charset to every text/* type
    "json": ("application/json", "json", lambda export: json.dumps(export, indent=1)),
    "fhir": ("application/fhir+json", "fhir.json", lambda export: json.dumps(to_fhir(export), indent=1)),
}


@bp.get("/api/batches/<id:batch_id>/export.<fmt>")
@requires(Role.REVIEWER)
def export(batch_id: int, fmt: str):
    if fmt not in FORMATS:
        abort(404, f"Exports come as {', '.join(FORMATS)}.")
    mimetype, suffix, render = FORMATS[fmt]
    with services().db.session() as s:
        batch = batch_in(s, batch_id, my_sites(s))  # another site's batch is answered as if absent
        if batch is None:
            abort(404, f"Batch {batch_id} does not exist.")
        if batch_in(s, batch_id, my_sites(s, Role.REVIEWER)) is None:
            abort(403, "Exports need the reviewer role at the batch's site.")
        data = batch_export(s, batch_id)
        if data is None:
            abort(404, f"Batch {batch_id} does not exist.")
        # Who took patient data out of the system, and which: part of the audit trail.
        audit(s, "batch.export", ("batch", batch_id), site=batch.site_id, format=fmt, images=len(data["images"]))
    response = Response(render(data), mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="batch-{batch_id}.{suffix}"'
    response.headers["Cache-Control"] = "no-store"
    return response
