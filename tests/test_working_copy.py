"""The working copy: the portal's reduced decode of a JPEG, which the worker reads instead of decoding
the photograph again. It must be exactly what the worker's own decode gives, be used only when the
model's decoding is the copy's, and never be needed: missing, damaged or foreign, it costs a decode."""
from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from harness import imagegen
from model.preprocess import InputSpec
from triage import working_copy
from triage.db import Database
from triage.imaging import REDUCED_SIDE, decode_reduced, sanitize
from triage.migrate import upgrade
from triage.schema import Analysis, Batch, Image as ImageRow, ImageStatus
from triage.store import ImageStore
from worker.orphans import sweep_orphans
from worker.pipeline import pixels

LIMIT = 50_000_000
REDUCED = InputSpec(224, "efficientnet_lite", "reduced")


def png(width: int = 640, height: int = 480) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(imagegen.skin_photo(3, width, height)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("size", [(1600, 1200), (700, 500), (300, 240), (64, 48)],
                         ids=["eighth", "half", "just-above", "smaller-than-the-side"])
def test_a_jpeg_keeps_exactly_the_workers_decode(size):
    clean = sanitize(imagegen.jpeg(7, *size), LIMIT)
    rgb, own = clean.working
    expected_rgb, expected_own = decode_reduced(clean.data, REDUCED_SIDE)
    assert own == expected_own == size
    assert rgb.shape == expected_rgb.shape and np.array_equal(rgb, expected_rgb)
    assert min(rgb.shape[:2]) >= min(REDUCED_SIDE, *size)
    # Packed and unpacked, it is what the model's own read of the stored file gives.
    copy_rgb, copy_own = working_copy.unpack(working_copy.pack(rgb, own))
    read_rgb, read_own = REDUCED.read(clean.data)
    assert copy_own == read_own and np.array_equal(copy_rgb, read_rgb)


def test_files_that_are_re_encoded_keep_no_copy():
    # The stored bytes are new (a PNG, or an upright re-encoding of a turned JPEG): the worker decodes them.
    assert sanitize(png(), LIMIT).working is None
    assert sanitize(imagegen.jpeg(1), LIMIT, working=False).working is None  # DERMATRIAGE_WORKING_COPY=false
    turned = Image.fromarray(imagegen.skin_photo(4, 640, 480))
    exif = turned.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    turned.save(buf, "JPEG", exif=exif)
    assert sanitize(buf.getvalue(), LIMIT).working is None


def test_a_copy_that_is_damaged_or_made_by_another_decoder_is_refused():
    blob = working_copy.pack(np.full((10, 20, 3), 200, np.uint8), (40, 20))
    assert working_copy.unpack(blob)[1] == (40, 20)
    foreign = blob.replace(working_copy.DECODER, working_copy.DECODER[:-1] + b"?")
    zeroed = blob[:-100] + bytes(100)  # what a power cut can leave of a file never forced to disk
    for bad, why in ((blob[:-1], "truncated"), (b"", "not a working copy"), (b"\xff\xd8\xff" + blob, "not a"),
                     (foreign, "another decoder"), (zeroed, "checksum")):
        with pytest.raises(ValueError, match=why):
            working_copy.unpack(bad)


def test_the_store_keeps_the_copy_beside_its_photograph_and_deletes_them_together(tmp_path):
    store = ImageStore(tmp_path / "images")
    key, created = store.put(b"photograph", working=b"copy")
    assert created and store.get_working(key) == b"copy"
    assert store.working_path(key).parent == store.path(key).parent
    again, created = store.put(b"photograph", working=b"copy 2")  # a second upload of the same file
    assert again == key and not created and store.get_working(key) == b"copy 2"
    store.delete(key)  # undoing an upload whose row was never committed
    assert not store.exists(key) and store.get_working(key) is None
    assert list(store.entries()) == []


def stored_jpeg(store: ImageStore, seed: int = 1) -> tuple[str, bytes]:
    clean = sanitize(imagegen.jpeg(seed, 900, 700), LIMIT)
    key, _ = store.put(clean.data, working=working_copy.pack(*clean.working))
    return key, clean.data


def test_the_worker_reads_the_copy_when_its_model_decodes_as_the_copy_was_made(tmp_path):
    store = ImageStore(tmp_path / "images")
    key, data = stored_jpeg(store)
    (rgb, own), from_copy = pixels(key, store, REDUCED)
    assert from_copy and store.get_working(key) is None  # read once, then removed
    expected_rgb, expected_own = REDUCED.read(data)
    assert own == expected_own and np.array_equal(rgb, expected_rgb)
    # Again without the copy (a retry): the photograph is decoded, to the same pixels.
    (again, _), from_copy = pixels(key, store, REDUCED)
    assert not from_copy and np.array_equal(again, rgb)


@pytest.mark.parametrize("spec", [InputSpec(224, "resnet_caffe", "full"), InputSpec(300, "resnet_caffe", "reduced")],
                         ids=["full-decoding", "larger-input"])
def test_a_model_fed_other_pixels_decodes_the_photograph(tmp_path, spec):
    assert not spec.reads_working_copy
    store = ImageStore(tmp_path / "images")
    key, data = stored_jpeg(store)
    (rgb, _), from_copy = pixels(key, store, spec)
    assert not from_copy and np.array_equal(rgb, spec.read(data)[0])
    assert store.get_working(key) is None  # nothing else needs it


def test_a_damaged_copy_costs_only_a_decode(tmp_path):
    store = ImageStore(tmp_path / "images")
    key, data = stored_jpeg(store)
    store.working_path(key).write_bytes(store.get_working(key)[:1000])  # a crash before it reached the disk
    (rgb, _), from_copy = pixels(key, store, REDUCED)
    assert not from_copy and np.array_equal(rgb, REDUCED.read(data)[0])


def test_the_sweeper_keeps_the_copies_of_waiting_images_only(tmp_path, sqlite_url):
    upgrade(sqlite_url)
    db, store = Database(sqlite_url), ImageStore(tmp_path / "images")
    keys = {status: store.put(status.encode(), working=b"copy")[0]
            for status in (ImageStatus.QUEUED, ImageStatus.PROCESSING, ImageStatus.ANALYSED)}
    with db.session() as s:
        batch = Batch(name="b")
        s.add(batch)
        s.flush()
        for status, key in keys.items():
            s.add(ImageRow(batch_id=batch.id, display_name=f"{status}.jpg", sha256=key, store_key=key,
                           size_bytes=1, width=1, height=1, format="JPEG", stored_format="JPEG", status=status))
    old = time.time() - 7200
    for key in keys.values():
        os.utime(store.working_path(key), (old, old))

    assert sweep_orphans(db, store, grace_s=3600) == 1
    assert store.get_working(keys[ImageStatus.QUEUED]) and store.get_working(keys[ImageStatus.PROCESSING])
    assert store.get_working(keys[ImageStatus.ANALYSED]) is None
    assert all(store.exists(key) for key in keys.values())
    db.dispose()


def test_uploads_through_the_portal_are_analysed_from_their_copies(sqlite_stack):
    store = sqlite_stack.app.extensions["dermatriage"].store
    body = sqlite_stack.upload([(imagegen.jpeg(seed, 800, 600), f"p{seed}.jpg") for seed in (1, 2)]
                               + [(png(), "p3.png"), (b"not an image", "notes.jpg")]).get_json()
    assert body["accepted"] == 3 and body["rejected"] == 1
    with sqlite_stack.db.session() as s:
        kinds = dict(s.execute(select(ImageRow.store_key, ImageRow.stored_format)).all())
    assert {key: store.get_working(key) is not None for key in kinds} == {
        key: kind == "JPEG" for key, kind in kinds.items()}
    assert sum(name.endswith(".work") for name, _ in store.entries()) == 2  # none for the refused file

    sqlite_stack.start_worker()
    assert set(sqlite_stack.wait_final(body["batch_id"]).values()) == {ImageStatus.ANALYSED}
    by_format: dict[str, set] = {}
    with sqlite_stack.db.session() as s:
        for kind, timings in s.execute(select(ImageRow.stored_format, Analysis.timings)
                                       .join(Analysis, Analysis.image_id == ImageRow.id)):
            by_format.setdefault(kind, set()).add(timings["working_copy"])
    assert by_format == {"JPEG": {True}, "PNG": {False}}
    assert all(store.get_working(key) is None for key in kinds)


def test_a_photograph_and_its_name_are_on_disk_before_put_returns_and_its_copy_is_not_forced(tmp_path, monkeypatch):
    # What os.fsync is asked to force, by path: the photograph, then the folder that names it; the
    # working copy is a cache and is never forced (a lost copy costs a decode).
    forced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        forced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    store = ImageStore(tmp_path / "images")
    key, _ = store.put(b"photograph", working=b"copy")
    folder = str(store.path(key).parent)
    assert len(forced) == 2 and os.path.dirname(forced[0]) == folder and forced[1] == folder
    assert not any(path.endswith(".work") for path in forced)


def test_a_portal_told_to_keep_no_copies_keeps_none(make_stack, sqlite_url):
    # DERMATRIAGE_WORKING_COPY=false, for a model decoded at full size, which would never read them.
    stack = make_stack(sqlite_url, working_copy=False)
    assert stack.upload([(imagegen.jpeg(5, 800, 600), "p5.jpg")]).get_json()["accepted"] == 1
    with stack.db.session() as s:
        [key] = s.scalars(select(ImageRow.store_key)).all()
    store = stack.app.extensions["dermatriage"].store
    assert store.exists(key) and store.get_working(key) is None
    assert [name for name, _ in store.entries()] == [key]
