"""A model of another label set, end to end: a tiny model whose card names PAD-UFES-20's six classes
goes through upload, a real worker and every page, API answer and export, which list exactly those
six by name; a clinician still decides with the keyboard and may name any catalogue class."""
from __future__ import annotations

import csv
import io
import json
import re

import pytest
from sqlalchemy import select

from harness import imagegen
from tests.browsing import csp_errors, sign_in
from tests.fhir_check import resources, valid_bundle
from tests.support import seed_analysis, seed_batch
from triage.catalogue import CLASSES, REFERENCE_LABEL_ORDER, class_name, classes_of
from triage.exports import csv_columns
from triage.fhir import CLASS_SYSTEM
from triage.schema import Analysis, ImageStatus, Review

# PAD-UFES-20's codes in the card's output order (alphabetical by code: ACK, BCC, MEL, NEV, SCC, SEK),
# which is not the catalogue's order: the pages must follow the catalogue, the worker the card.
PAD_LABELS = ["actinic_keratosis", "bcc", "melanoma", "melanocytic_nevi", "scc", "seborrheic_keratoses"]
PAD_IN_CATALOGUE_ORDER = [c.slug for c in classes_of(PAD_LABELS)]
PAD_NAMES = {class_name(s) for s in PAD_LABELS}
# The Kaggle set's classes this model does not have: none of them may show up as a result.
KAGGLE_ONLY_NAMES = [class_name(s) for s in REFERENCE_LABEL_ORDER if s not in PAD_LABELS]
OTHER_SLUGS = [c.slug for c in CLASSES if c.slug not in PAD_LABELS]


@pytest.fixture(scope="module")
def pad_model_path(tmp_path_factory):
    from model.demo import build_demo_model

    path = tmp_path_factory.mktemp("pad-model") / "pad_ufes_20_tiny.keras"
    card = build_demo_model(path, backbone="tiny", labels=PAD_LABELS)
    assert card.labels == PAD_LABELS
    return path


def assert_no_kaggle_only_class(text: str, where: str) -> None:
    shown = [name for name in KAGGLE_ONLY_NAMES if name in text]
    assert not shown, f"{where} shows classes the model does not have: {shown}"


def test_a_model_of_six_pad_ufes_20_classes_end_to_end(make_stack, database_url, pad_model_path):
    # Every routine case is drawn for audit, so every analysis has a case in the queue.
    stack = make_stack(database_url, model_path=pad_model_path, review_audit_share=1.0)
    photos = [(imagegen.jpeg(seed), f"pad/lesion-{seed}.jpg") for seed in (1, 2, 3)]
    body = stack.upload(photos).get_json()
    batch_id = body["batch_id"]
    stack.start_worker()
    assert sorted(stack.wait_final(batch_id).values()) == [ImageStatus.ANALYSED] * 3
    with stack.db.session() as s:
        analyses = s.scalars(select(Analysis).order_by(Analysis.id)).all()
    assert all(set(a.probabilities) == set(PAD_LABELS) for a in analyses)
    assert all(a.top_class in PAD_LABELS and a.priority in ("urgent", "review", "routine") for a in analyses)
    top_classes = {a.top_class for a in analyses}

    # The JSON API: each analysis's own six classes, named.
    api = stack.client.get(f"/api/batches/{batch_id}").get_json()
    for image in api["images"]:
        named = image["analysis"]["classes"]
        assert sorted(c["slug"] for c in named) == sorted(PAD_LABELS)
        assert all(c["name"] == class_name(c["slug"]) for c in named)
        assert [c["probability"] for c in named] == sorted((c["probability"] for c in named), reverse=True)
        assert image["analysis"]["top_class_name"] == class_name(image["analysis"]["top_class"])
    assert_no_kaggle_only_class(json.dumps(api), "the batch API")

    # The batch page: the six classes by name for every image.
    reviewer = stack.login()
    page = reviewer.get(f"/batches/{batch_id}").get_data(as_text=True)
    listed = re.findall(r'<li data-class="([a-z_]+)">([^<:]+):', page)
    assert len(listed) == 3 * 6 and {slug for slug, _ in listed} == set(PAD_LABELS)
    assert all(name == class_name(slug) for slug, name in listed)
    assert_no_kaggle_only_class(page, "the batch page")

    # The queue: its class filter offers the classes that occur, nothing of the Kaggle set.
    queue = reviewer.get("/review").get_data(as_text=True)
    filter_html = re.search(r'<select name="class">(.*?)</select>', queue, re.S).group(1)
    offered = re.findall(r'<option value="([a-z_]+)"', filter_html)
    assert offered == [s for s in PAD_IN_CATALOGUE_ORDER if s in top_classes]
    assert_no_kaggle_only_class(queue, "the queue")
    cases = [int(i) for i in re.findall(r'data-case="(\d+)"', queue)]
    assert sorted(cases) == [a.id for a in analyses]
    one_class = next(iter(top_classes))
    filtered = reviewer.get("/review", query_string={"class": one_class}).get_data(as_text=True)
    assert sorted(int(i) for i in re.findall(r'data-case="(\d+)"', filtered)) == sorted(
        a.id for a in analyses if a.top_class == one_class)
    api_queue = stack.client.get("/api/queue").get_json()
    assert {c["top_class_name"] for c in api_queue["cases"]} <= PAD_NAMES and len(api_queue["cases"]) == 3

    # The case page: six bars, the six classes on the keys 1-6 in catalogue order, any other class
    # choosable from the list without a key.
    first = analyses[0]
    case = reviewer.get(f"/review/{first.id}").get_data(as_text=True)
    bars = re.findall(r'<th scope="row">([^<]+)</th>', case)
    assert sorted(bars) == sorted(PAD_NAMES) and len(re.findall(r'<rect class="fill"', case)) == 6
    keyed = re.findall(r'<option value="([a-z_]+)" data-key="(\d)"', case)
    assert keyed == list(zip(PAD_IN_CATALOGUE_ORDER, "123456"))
    unkeyed = re.findall(r'<option value="([a-z_]+)">', case)
    assert unkeyed == OTHER_SLUGS
    assert "keys <kbd>1</kbd>–<kbd>6</kbd>" in case
    findings = case[case.index('aria-label="Model output"'):]
    assert_no_kaggle_only_class(findings, "the case page's model output")

    # Decisions as the `d` button sends them: a change to another of the model's classes, and to a
    # catalogue class the model does not have (the clinician may name any).
    other_model_class = next(s for s in PAD_LABELS if s != first.top_class)
    changes = {first.id: other_model_class, analyses[1].id: "dermatofibroma"}
    for analysis_id, diagnosis in changes.items():
        made = stack.client.post(f"/api/analyses/{analysis_id}/reviews",
                                 json={"decision": "change", "diagnosis": diagnosis})
        assert made.status_code == 201, made.get_json()

    # The exports: the six classes (columns, lists, FHIR components), by name; decisions named too.
    rows = list(csv.DictReader(io.StringIO(stack.client.get(f"/api/batches/{batch_id}/export.csv")
                                           .get_data(as_text=True))))
    assert list(rows[0]) == csv_columns(PAD_IN_CATALOGUE_ORDER)
    assert all(r["model_top_class_name"] == class_name(r["model_top_class"]) for r in rows)
    decided = {int(r["image_id"]): r for r in rows if r["review_decision"]}
    assert sorted(r["review_diagnosis_name"] for r in decided.values()) == sorted(
        class_name(s) for s in changes.values())
    exported = stack.client.get(f"/api/batches/{batch_id}/export.json").get_json()
    assert [c["slug"] for c in exported["classes"]] == PAD_IN_CATALOGUE_ORDER
    assert [c["name"] for c in exported["classes"]] == [class_name(s) for s in PAD_IN_CATALOGUE_ORDER]
    assert all({c["slug"] for c in i["analysis"]["classes"]} == set(PAD_LABELS) for i in exported["images"])
    csv_text = stack.client.get(f"/api/batches/{batch_id}/export.csv").get_data(as_text=True)
    for text, where in ((csv_text, "the CSV export"), (json.dumps(exported), "the JSON export")):
        assert_no_kaggle_only_class(text, where)
    _check_fhir(stack, batch_id, changes)


def _check_fhir(stack, batch_id: int, changes: dict[int, str]) -> None:
    text = stack.client.get(f"/api/batches/{batch_id}/export.fhir").get_data(as_text=True)
    bundle = valid_bundle(text)
    observations = resources(bundle, "Observation")
    model = [o for o in observations if o.get("device")]
    assert len(model) == 3 and len(observations) == 3 + len(changes)
    for observation in model:
        codings = [c["code"]["coding"][0] for c in observation["component"]
                   if c["code"]["coding"][0]["system"] == CLASS_SYSTEM]
        assert sorted(c["code"] for c in codings) == sorted(PAD_LABELS)
        assert all(c["display"] == class_name(c["code"]) for c in codings)
    diagnoses = [o["valueCodeableConcept"]["coding"][0] for o in observations if o.get("performer")]
    assert sorted((d["code"], d["display"]) for d in diagnoses) == sorted(
        (s, class_name(s)) for s in changes.values())
    assert_no_kaggle_only_class(text, "the FHIR export")


@pytest.mark.browser
def test_deciding_with_the_keyboard_on_a_six_class_case(browser, sqlite_stack):
    stack = sqlite_stack
    batch = seed_batch(stack.db, "PAD-UFES-20 clinic")
    first = seed_analysis(stack.db, batch, priority="review", top_class="actinic_keratosis", labels=PAD_LABELS)
    second = seed_analysis(stack.db, batch, priority="review", top_class="seborrheic_keratoses", labels=PAD_LABELS)
    web = stack.start_web()
    page = browser.new_page()
    refused = csp_errors(page)
    sign_in(page, web.url)
    page.goto(f"{web.url}/review/{first}")
    assert page.locator("table.probabilities tbody tr").count() == 6
    assert page.locator('#diagnosis option[data-key="7"]').count() == 0  # six classes, six keys

    # Key 1 is melanoma (catalogue order), not the model's class: then d records the change.
    page.keyboard.press("1")
    assert page.input_value("#diagnosis") == "melanoma"
    page.keyboard.press("d")
    page.wait_for_url(re.compile(rf"/review/{second}$"))

    # A class the model does not have, chosen from the list; Escape leaves the list, d decides.
    page.select_option("#diagnosis", "dermatofibroma")
    page.keyboard.press("Escape")
    page.keyboard.press("d")
    page.wait_for_url(re.compile(r"/review\?done=1$"))
    with stack.db.session() as s:
        decided = s.execute(select(Review.analysis_id, Review.decision, Review.diagnosis).order_by(Review.id)).all()
    assert [tuple(r) for r in decided] == [(first, "change", "melanoma"), (second, "change", "dermatofibroma")]
    assert refused == []
    page.close()
