"""Checking a FHIR R4 export: fhir.resources validates every resource's structure; what the library
leaves out (references that resolve inside the Bundle to a resource of the right type, FHIR JSON's ban
on empty values, status codes from their required value sets) is checked here."""
from __future__ import annotations

import json

# Required bindings the library does not enforce (it checks a code's syntax, not its value set).
STATUSES = {
    "Observation": {"registered", "preliminary", "final", "amended", "corrected", "cancelled",
                    "entered-in-error", "unknown"},
    "DiagnosticReport": {"registered", "partial", "preliminary", "final", "amended", "corrected", "appended",
                         "cancelled", "entered-in-error", "unknown"},
    "Device": {"active", "inactive", "entered-in-error", "unknown"},
}
# The resource types a reference may point to, where the export uses it (the library checks a reference's
# syntax, not what it resolves to).
TARGETS = {
    ("Observation", "subject"): {"Patient"},
    ("Observation", "device"): {"Device"},
    ("Observation", "performer"): {"Practitioner"},
    ("Observation", "derivedFrom"): {"Observation"},
    ("DiagnosticReport", "subject"): {"Patient"},
    ("DiagnosticReport", "result"): {"Observation"},
    ("DiagnosticReport", "resultsInterpreter"): {"Practitioner"},
}


def valid_bundle(text: str) -> dict:
    """The Bundle an export sent, validated; fails the test on the first fault."""
    from fhir.resources.R4B.bundle import Bundle

    bundle = json.loads(text)
    Bundle.model_validate(bundle)  # each entry's resource as its own type: required elements, types, cardinalities
    assert not list(_empty(bundle)), list(_empty(bundle))
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(urls)) == len(urls)
    assert set(_references(bundle)) <= set(urls), set(_references(bundle)) - set(urls)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] in STATUSES:
            assert resource["status"] in STATUSES[resource["resourceType"]], resource
        _check_targets(resource, by_url(bundle))
    return bundle


def _check_targets(resource: dict, urls: dict[str, dict]) -> None:
    for (kind, element), allowed in TARGETS.items():
        if resource["resourceType"] != kind or element not in resource:
            continue
        value = resource[element]
        for reference in value if isinstance(value, list) else [value]:
            target = urls[reference["reference"]]["resourceType"]
            assert target in allowed, f"{kind}.{element} points to a {target}, not a {' or '.join(sorted(allowed))}"


def resources(bundle: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def by_url(bundle: dict) -> dict[str, dict]:
    return {e["fullUrl"]: e["resource"] for e in bundle["entry"]}


def _references(value):
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value["reference"]
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


def _empty(value, path="$"):
    if value in ([], {}, "", None):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _empty(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _empty(item, f"{path}[{index}]")
