"""The S3-compatible image store, against a local S3 server (moto) on loopback."""
from __future__ import annotations

import pytest

from harness import imagegen
from tests.support import free_port
from triage.schema import ImageStatus
from triage.store import S3ImageStore, sha256_hex


@pytest.fixture
def s3(monkeypatch):
    from moto.server import ThreadedMotoServer

    # Credentials a local server accepts; the worker process inherits them from the environment.
    for name, value in (("AWS_ACCESS_KEY_ID", "local"), ("AWS_SECRET_ACCESS_KEY", "local"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    store = S3ImageStore("s3://clinic-images/dermatriage", endpoint)
    store.client.create_bucket(Bucket="clinic-images")
    yield endpoint, store
    server.stop()


def test_put_get_exists_delete_and_entries(s3):
    _, store = s3
    key, created = store.put(b"first")
    assert key == sha256_hex(b"first") and created
    assert store.put(b"first") == (key, False)
    assert store.get(key) == b"first" and store.exists(key)
    assert [name for name, _ in store.entries()] == [key]
    store.remove(key)
    assert not store.exists(key)
    with pytest.raises(ValueError):
        store.get("../../etc/passwd")


def test_pipeline_keeps_images_and_heatmaps_in_the_bucket(s3, make_stack, sqlite_url):
    endpoint, store = s3
    stack = make_stack(sqlite_url, image_store_url="s3://clinic-images/dermatriage", s3_endpoint_url=endpoint)
    body = stack.upload([(imagegen.jpeg(1), "a.jpg"), (b"nope", "b.jpg")]).get_json()
    assert body["accepted"] == 1 and body["rejected"] == 1
    stack.start_worker()
    assert list(stack.wait_final(body["batch_id"]).values()) == [ImageStatus.ANALYSED]
    keys = {name for name, _ in store.entries()}
    assert len(keys) == 2  # the photograph and its heatmap, nothing for the rejected file
    api = stack.client.get(f"/api/batches/{body['batch_id']}").get_json()
    image = api["images"][0]
    assert stack.client.get(image["file_url"]).status_code == 200
    assert stack.client.get(image["analysis"]["heatmap_url"]).mimetype == "image/png"
    assert not stack.settings.image_store.exists()  # nothing went to the local folder
