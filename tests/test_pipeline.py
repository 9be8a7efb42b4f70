"""End to end: uploads through the web app, jobs on a real Redis, a real worker process, rows in SQL."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from harness import imagegen
from tests.support import wait_until
from triage.catalogue import REFERENCE_LABEL_ORDER, UNTRAINED_WARNING
from triage.jobs import enqueue_analysis
from triage.schema import Analysis, Image, ImageStatus, ReviewCase


def three_photos_and_a_text_file():
    photos = [(imagegen.jpeg(seed), f"clinic/day1/lesion-{seed}.jpg") for seed in (1, 2, 3)]
    return photos + [(b"patient notes, not an image\n", "notes.jpg")]


def test_upload_analyse_and_read_back(stack):
    response = stack.upload(three_photos_and_a_text_file())
    assert response.status_code == 201
    body = response.get_json()
    by_name = {f["name"]: f for f in body["files"]}
    assert body["accepted"] == 3 and body["rejected"] == 1
    assert by_name["notes.jpg"]["status"] == "rejected"
    assert "not a readable image" in by_name["notes.jpg"]["reason"]
    assert by_name["clinic/day1/lesion-1.jpg"]["status"] == "accepted"

    stack.start_worker()
    statuses = stack.wait_final(body["batch_id"])
    assert sorted(statuses.values()) == [ImageStatus.ANALYSED] * 3

    with stack.db.session() as s:
        rows = s.scalars(select(Analysis)).all()
        assert len(rows) == 3
        for a in rows:
            assert set(a.probabilities) == set(REFERENCE_LABEL_ORDER)
            assert sum(a.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
            assert a.top_class == max(a.probabilities, key=a.probabilities.get)
            assert a.confidence == pytest.approx(a.probabilities[a.top_class])
            assert [c for c, _ in a.top3][0] == a.top_class and len(a.top3) == 3
            assert a.risk_level in ("high", "medium", "low")
            assert a.priority in ("urgent", "review", "routine")
            assert a.reasons and a.recommendations
            assert a.quality["passed"] is True and a.quality["checks"]
            assert set(a.thresholds) >= {"malignant_threshold", "min_confidence", "max_entropy"}
            assert {"decode_ms", "quality_ms", "forward_ms", "batch_size"} <= set(a.timings)
            assert a.model_trained is False and a.model_version.startswith("demo-tiny-untrained@")
            assert a.heatmap_key and stack.app.extensions["dermatriage"].store.exists(a.heatmap_key)
        # The worker opened each case with its analysis: no page has been viewed.
        cases = dict(s.execute(select(ReviewCase.analysis_id, ReviewCase.priority)).all())
        assert cases == {a.id: a.priority for a in rows}

    api = stack.client.get(f"/api/batches/{body['batch_id']}").get_json()
    assert api["counts"][ImageStatus.ANALYSED] == 3 and api["finished"] is True
    assert api["warning"] == UNTRAINED_WARNING
    assert all(img["analysis"]["probabilities"] for img in api["images"])
    page = stack.client.get(f"/batches/{body['batch_id']}").get_data(as_text=True)
    assert len(re.findall(r'<tr id="image-\d+" data-status="analysed"', page)) == 3
    assert "UNTRAINED DEMO MODEL" in page and "not a diagnosis" in page
    assert 'http-equiv="refresh"' not in page and "data-poll" not in page  # a finished batch stops polling
    heatmap = stack.client.get(api["images"][0]["analysis"]["heatmap_url"])
    assert heatmap.status_code == 200 and heatmap.mimetype == "image/png"


def test_rerunning_a_job_changes_nothing(sqlite_stack):
    stack = sqlite_stack
    body = stack.upload([(imagegen.jpeg(7), "a.jpg")]).get_json()
    worker = stack.start_worker()
    stack.wait_final(body["batch_id"])
    image_id = body["files"][0]["image_id"]
    with stack.db.session() as s:
        before = s.get(Image, image_id).updated_at

    enqueue_analysis(stack.app.extensions["dermatriage"].celery, [image_id, image_id])
    wait_until(lambda: worker.output().count("succeeded") >= 3, 30, message="the repeated jobs to run")
    assert stack.analysis_counts() == {image_id: 1}
    with stack.db.session() as s:
        image = s.get(Image, image_id)
        assert image.status == ImageStatus.ANALYSED and image.attempts == 1 and image.updated_at == before


def test_quality_gate_failure_is_needs_reshoot_with_reason(sqlite_stack):
    stack = sqlite_stack
    tiny = imagegen.encode(imagegen.shrunk(imagegen.skin_photo(3), 150))
    body = stack.upload([(tiny, "small.jpg"), (imagegen.jpeg(4), "fine.jpg")]).get_json()
    stack.start_worker()
    stack.wait_final(body["batch_id"])
    api = stack.client.get(f"/api/batches/{body['batch_id']}").get_json()
    small, fine = api["images"]
    assert small["status"] == ImageStatus.NEEDS_RESHOOT
    assert "too small" in small["error"]
    assert small["analysis"]["probabilities"] is None and small["analysis"]["priority"] == "reshoot"
    assert fine["status"] == ImageStatus.ANALYSED


@pytest.mark.slow
def test_real_resnet152_architecture_end_to_end(make_stack, sqlite_url, tmp_path):
    from model.demo import build_demo_model

    weights = tmp_path / "demo_resnet152.keras"
    card = build_demo_model(weights, backbone="resnet152")
    stack = make_stack(sqlite_url, model_path=weights, gradcam=True)
    body = stack.upload([(imagegen.jpeg(11, 1600, 1200), "large.jpg"), (imagegen.jpeg(12), "b.jpg")]).get_json()
    stack.start_worker(timeout=240)
    assert sorted(stack.wait_final(body["batch_id"], timeout=180).values()) == [ImageStatus.ANALYSED] * 2
    with stack.db.session() as s:
        rows = s.scalars(select(Analysis)).all()
    assert {a.model_version for a in rows} == {card.model_version}
    assert all(a.heatmap_key for a in rows)
    assert all(abs(sum(a.probabilities.values()) - 1) < 1e-5 for a in rows)


def test_near_duplicates_are_flagged_across_batches(sqlite_stack):
    stack = sqlite_stack
    photo = imagegen.skin_photo(21, 800, 600)
    first = stack.upload([(imagegen.encode(photo), "visit1.jpg")]).get_json()
    smaller_copy = imagegen.encode(imagegen.shrunk(photo, 640), "JPEG", quality=70)
    second = stack.upload([(smaller_copy, "visit2.jpg"), (imagegen.jpeg(22), "other.jpg")]).get_json()
    stack.start_worker()
    stack.wait_final()
    original = first["files"][0]["image_id"]
    api = stack.client.get(f"/api/batches/{second['batch_id']}").get_json()
    copy, other = api["images"]
    assert copy["near_duplicate_of"] == original
    assert other["near_duplicate_of"] is None
    page = stack.client.get(f"/batches/{second['batch_id']}").get_data(as_text=True)
    assert f"Near-duplicate of image #{original}" in page
