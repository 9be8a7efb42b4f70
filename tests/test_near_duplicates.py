"""The worker's near-duplicate lookup: a copy of the stored hashes kept in the process, extended by id.

It must answer exactly what a full scan of every stored hash answers (`triage.phash.nearest`: the
closest within the distance, ties to the lowest id, never itself), at 200,000 stored hashes; follow
rows that PostgreSQL shows out of id order; and never point at a row that is gone. Its speed is
measured by `python -m scripts.near_duplicate_benchmark`; the test below only keeps a generous bound,
as tests/test_review.py does for the queue.
"""
from __future__ import annotations

import itertools
import statistics
import time

import numpy as np
import pytest
from sqlalchemy import delete, insert, select

from tests.support import create_pg_database, drop_pg_database
from triage.db import Database
from triage.migrate import upgrade
from triage.phash import HashIndex, nearest
from triage.schema import Batch, Image, ImageStatus, utcnow
from triage.settings import Settings
from worker.near_duplicates import StoredHashes, find_near_duplicates

CONFIGURED = Settings.model_fields["near_duplicate_distance"].default
_serial = itertools.count()


@pytest.fixture
def pg_db(pg_server_url):
    url = create_pg_database(pg_server_url)
    upgrade(url)
    database = Database(url)
    yield database
    database.dispose()
    drop_pg_database(pg_server_url, url)


def add_hashed(db, hashes: list[int | None], batch_id: int | None = None) -> list[int]:
    """Images with these perceptual hashes (None: no hash), in one transaction; their ids in order."""
    with db.session() as s:
        batch_id = batch_id or _batch(s)
        rows = [dict(batch_id=batch_id, display_name="x.jpg", sha256=f"{next(_serial):064x}", store_key="0" * 64,
                     size_bytes=1, width=300, height=300, format="JPEG", stored_format="JPEG",
                     status=ImageStatus.QUEUED, phash=None if h is None else f"{h:016x}") for h in hashes]
        return list(s.scalars(insert(Image).returning(Image.id, sort_by_parameter_order=True), rows))


def add_many_to_sqlite(db, hashes: list[int]) -> None:
    """As `add_hashed`, for hundreds of thousands: straight to the driver (seconds, not a minute)."""
    now = utcnow().isoformat(" ")
    with db.session() as s:
        batch_id = _batch(s)
        s.connection().exec_driver_sql(
            "INSERT INTO images (batch_id, display_name, sha256, store_key, size_bytes, width, height, format, "
            "stored_format, phash, status, attempts, created_at, updated_at) "
            "VALUES (?, 'x.jpg', ?, ?, 1, 300, 300, 'JPEG', 'JPEG', ?, 'queued', 0, ?, ?)",
            [(batch_id, f"{next(_serial):064x}", "0" * 64, f"{h:016x}", now, now) for h in hashes])


def _batch(s) -> int:
    batch = Batch(name="hashes")
    s.add(batch)
    s.flush()
    return batch.id


def full_scan(db, image_ids: list[int], max_distance: int) -> dict[int, int]:
    """What the worker did before: every stored hash read and compared, `nearest` for each image."""
    with db.session() as s:
        known = s.execute(select(Image.id, Image.phash).where(Image.phash.is_not(None))).all()
    ids = np.array([i for i, _ in known], np.int64)
    hashes = np.array([int(h, 16) for _, h in known], np.uint64)
    at = {int(i): k for k, i in enumerate(ids)}
    found = {i: nearest(ids, hashes, at[i], max_distance) for i in image_ids if i in at}
    return {i: m for i, m in found.items() if m is not None}


def lookup(db, image_ids: list[int], max_distance: int = CONFIGURED, copy: StoredHashes | None = None) -> dict:
    with db.session() as s:
        if copy is not None:
            return copy.find(s, image_ids, max_distance)
        return find_near_duplicates(s, image_ids, max_distance)


def flipped(value: int, bits: int, rng: np.random.Generator) -> int:
    """`value` with `bits` distinct bits flipped: exactly that far from it."""
    for bit in rng.choice(64, bits, replace=False):
        value ^= 1 << int(bit)
    return value


def random_hashes(rng: np.random.Generator, n: int) -> list[int]:
    return [int(v) for v in rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)]


# --- 200,000 stored hashes -------------------------------------------------------------------------

def test_the_configured_distance_is_8_bits_by_default():
    assert CONFIGURED == 8


@pytest.mark.parametrize("stored", [200_000])
def test_a_batch_lookup_among_200000_hashes_finds_what_a_full_scan_finds(sqlite_url, stored):
    upgrade(sqlite_url)
    db = Database(sqlite_url)
    rng = np.random.default_rng(17)
    base = random_hashes(rng, stored)
    add_many_to_sqlite(db, base)
    with db.session() as s:  # the full scan's side: every stored (id, hash), read once and kept up to date
        known = {i: int(h, 16) for i, h in s.execute(select(Image.id, Image.phash))}
    lookup(db, [1])  # the first lookup of the process loads the copy: not what a batch costs

    def stored_too(hashes: list[int | None]) -> list[int]:
        ids = add_hashed(db, hashes)
        known.update((i, h) for i, h in zip(ids, hashes) if h is not None)
        return ids

    timings, planted = [], {}
    for b in range(12):
        # A batch as the worker meets it, uploaded after the copy was loaded: images planted at
        # 0..9 bits from a stored hash (9 is out of reach), one near another image of the same
        # batch, a random one, and now and then an image without a hash.
        sources = [int(v) for v in rng.integers(0, stored, 6)]
        distances = [(b * 6 + k) % 10 for k in range(6)]
        hashes = [flipped(base[src], d, rng) for src, d in zip(sources, distances)]
        hashes.append(flipped(hashes[0], 3, rng))
        hashes.append(None if b % 3 == 0 else random_hashes(rng, 1)[0])
        if b in (3, 5):  # ties: a later stored hash exactly as far from the first image as its source
            stored_too([flipped(hashes[0], distances[0], rng)])
        ids = stored_too(hashes)
        planted.update({i: d for i, d in zip(ids, distances)})
        with db.session() as s:
            s.connection()  # the write transaction has begun when the worker looks up
            started = time.perf_counter()
            found = find_near_duplicates(s, ids, CONFIGURED)
            timings.append(time.perf_counter() - started)
        all_ids = np.array(list(known), np.int64)
        all_hashes = np.array(list(known.values()), np.uint64)
        expected = {int(all_ids[at]): nearest(all_ids, all_hashes, int(at), CONFIGURED)
                    for at in np.flatnonzero(np.isin(all_ids, ids))}
        assert found == {i: m for i, m in expected.items() if m is not None}, f"batch {b}"
        assert ids[-2] in found  # near another image of its own batch
        assert all(i in found for i, d in zip(ids, distances) if d <= CONFIGURED)  # every planted one in reach

    assert found == full_scan(db, ids, CONFIGURED)  # the kept-up side is what SQL holds
    median = statistics.median(timings)
    print(f"lookup per batch of 8 among {stored} stored hashes: median {median * 1000:.2f} ms, "
          f"max {max(timings) * 1000:.2f} ms")
    # The target is 10 ms (scripts/near_duplicate_benchmark.py measures it); reading every hash, as
    # before, took 500-800 ms here. A generous bound, on a shared machine.
    assert median < 0.05, timings
    db.dispose()


# --- the index on its own --------------------------------------------------------------------------

@pytest.mark.parametrize("max_distance", [0, 1, 3, 8, 12, 20, 30])
def test_the_index_answers_what_a_full_scan_answers(max_distance):
    rng = np.random.default_rng(max_distance)
    values = random_hashes(rng, 6000)
    for _ in range(3000):  # near copies at 0..11 bits, ties and chains among them
        values.append(flipped(values[int(rng.integers(len(values)))], int(rng.integers(0, 12)), rng))
    hashes = np.array(values, np.uint64)
    ids = rng.permutation(len(values)).astype(np.int64) + 1  # ids in no particular order
    index = HashIndex(max_distance)
    index.MIN_TAIL = 500
    index.add(ids[:7000], hashes[:7000])
    index.nearest(0, 0)  # sorted into blocks
    index.add(ids[7000:], hashes[7000:])  # these wait in the tail
    assert 0 < index._sorted < len(values) or max_distance >= HashIndex.LINEAR_FROM
    queries = rng.integers(0, len(values), 400)
    expected = [nearest(ids, hashes, int(q), max_distance) for q in queries]
    assert [index.nearest(int(hashes[q]), int(ids[q]), max_distance) for q in queries] == expected
    many = index.closest_many(hashes[queries], ids[queries], max_distance)
    assert [None if m is None else m[1] for m in many] == expected
    assert all(m is None or m[0] == int(np.bitwise_count(np.uint64(m[2]) ^ hashes[q]))
               for m, q in zip(many, queries))


def test_the_index_widens_for_a_larger_distance_and_forgets_what_is_taken_out():
    index = HashIndex(2)
    index.MIN_TAIL = 10
    rng = np.random.default_rng(3)
    values = random_hashes(rng, 100)
    index.add(np.arange(1, 101), values)
    index.nearest(0, 0)
    far = flipped(values[0], 7, rng)
    assert index.nearest(far, 0, 2) is None
    assert index.nearest(far, 0, 8) == 1  # blocks chosen for 2 bits would miss 7: chosen again
    index.add([200], [values[0]])
    assert index.nearest(values[0], 1) == 200
    index.discard([200, 1])
    assert index.nearest(values[0], 0) is None and len(index) == 99


# --- rows that appear late, rows that go -----------------------------------------------------------

def test_a_row_committed_after_a_higher_id_is_found_once_it_appears(pg_db):
    """PostgreSQL gives an upload its ids at INSERT and shows them at COMMIT: a slow upload's image
    appears below the highest id already read. The copy notes the hole and looks at it again."""
    rng = np.random.default_rng(5)
    add_hashed(pg_db, random_hashes(rng, 50))
    copy = StoredHashes(CONFIGURED, track_gaps=True)
    assert lookup(pg_db, [1], copy=copy) == {}
    target = random_hashes(rng, 1)[0]  # the late image's; the others at fixed bits from it
    slow = pg_db.engine.connect()
    transaction = slow.begin()
    with pg_db.session() as s:
        batch_id = s.scalar(select(Batch.id))
    late = slow.execute(insert(Image).returning(Image.id), [dict(
        batch_id=batch_id, display_name="late.jpg", sha256=f"{next(_serial):064x}", store_key="0" * 64,
        size_bytes=1, width=300, height=300, format="JPEG", stored_format="JPEG", status=ImageStatus.QUEUED,
        phash=f"{target:016x}")]).scalar()
    first = add_hashed(pg_db, [target ^ 0b11], batch_id)[0]  # a higher id, committed first
    assert first > late
    assert lookup(pg_db, [first], copy=copy) == {}  # the late row is not visible yet
    assert any(lo <= late <= hi for lo, hi, _ in copy.gaps)
    transaction.commit()
    slow.close()
    second = add_hashed(pg_db, [target ^ 0b100], batch_id)[0]  # 1 bit from the late image, 3 from the first
    assert lookup(pg_db, [first, second], copy=copy) == {first: late, second: late}
    assert copy.gaps == []
    assert lookup(pg_db, [first, second]) == full_scan(pg_db, [first, second], CONFIGURED)


def test_a_hole_that_never_fills_is_given_up_after_the_grace_period(pg_db):
    now = [0.0]
    copy = StoredHashes(CONFIGURED, track_gaps=True, grace_s=60, clock=lambda: now[0])
    rng = np.random.default_rng(6)
    ids = add_hashed(pg_db, random_hashes(rng, 10))
    with pg_db.session() as s:  # an upload that rolled back leaves its ids unused
        s.execute(delete(Image).where(Image.id.in_(ids[3:5])))
    lookup(pg_db, [ids[0]], copy=copy)
    assert [(lo, hi) for lo, hi, _ in copy.gaps] == [(ids[3], ids[4])]
    now[0] = 61
    lookup(pg_db, [ids[0]], copy=copy)
    assert copy.gaps == []


def test_sqlite_rows_appear_in_id_order_so_no_hole_is_followed(sqlite_url):
    upgrade(sqlite_url)
    db = Database(sqlite_url)
    ids = add_hashed(db, random_hashes(np.random.default_rng(8), 10))
    with db.session() as s:
        s.execute(delete(Image).where(Image.id == ids[4]))
    copy = StoredHashes(CONFIGURED, track_gaps=False)
    lookup(db, [ids[0]], copy=copy)
    assert copy.gaps == [] and copy.high == ids[-1] and len(copy.index) == 9
    db.dispose()


def test_a_deleted_or_changed_row_is_never_named(db):
    rng = np.random.default_rng(9)
    query = random_hashes(rng, 1)[0]
    gone, changed, farther = add_hashed(db, [flipped(query, 1, rng), flipped(query, 2, rng), flipped(query, 5, rng)])
    assert lookup(db, [gone]) == {gone: changed}  # the copy now holds all three
    with db.session() as s:
        s.execute(delete(Image).where(Image.id == gone))
        s.get(Image, changed).phash = f"{flipped(query, 40, rng):016x}"
    image = add_hashed(db, [query])[0]
    assert lookup(db, [image]) == {image: farther} == full_scan(db, [image], CONFIGURED)


def test_images_without_a_hash_are_neither_flagged_nor_named(db):
    rng = np.random.default_rng(10)
    value = random_hashes(rng, 1)[0]
    ids = add_hashed(db, [None, value, None, value])
    assert lookup(db, ids) == {ids[1]: ids[3], ids[3]: ids[1]}


def test_another_database_behind_the_same_address_is_loaded_afresh(sqlite_url):
    upgrade(sqlite_url)
    db = Database(sqlite_url)
    rng = np.random.default_rng(11)
    ids = add_hashed(db, random_hashes(rng, 20))
    lookup(db, ids[:1])
    with db.session() as s:
        s.execute(delete(Image))  # SQLite hands out ids from 1 again
    value = random_hashes(rng, 1)[0]
    again = add_hashed(db, [value, flipped(value, 3, rng)])
    assert again[-1] < ids[-1]
    assert lookup(db, again) == {again[0]: again[1], again[1]: again[0]}
    db.dispose()
