"""The worker's database write per batch with many stored images: the near-duplicate lookup, and the
whole write transaction (statuses, analyses, review cases, near-duplicate flags).

Fills a SQLite database (or an empty one at `--database-url`) with `--stored` images of random 64-bit
perceptual hashes, then, `--batches` times, lets three batches of `--batch` new images arrive (a few
of each planted near a stored hash, at 0..9 bits), claimed by this "worker" as the worker claims them,
and measures, per batch, wall and CPU time (median, p90, max):

* lookup: `find_near_duplicates` alone (finding the closest stored hash of every image of the batch
  and setting the flags), in a transaction already begun;
* write: `write_outcomes` for the next batch, the lookup included, as the worker calls it;
* write without the lookup: the same for the third batch with the lookup replaced by nothing: the
  statements that store the results (statuses, analyses, review cases).

It also lists the SQL statements of one write. The process's first lookup loads whatever the lookup
keeps in memory; it is reported apart.

    python -m scripts.near_duplicate_benchmark                      # 200,000 stored, 30 rounds of 8
    python -m scripts.near_duplicate_benchmark --stored 1000000 --database-url postgresql+psycopg://...

On a machine shared with other work the wall times move with the load; the CPU times less so.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event, insert, select, update

from triage.db import Database
from triage.migrate import upgrade
from triage.schema import Batch, Image, ImageStatus, utcnow
from triage.settings import Settings
from triage.store import open_store

NODE = "benchmark-node"
TABLES = {"images", "analyses", "review_cases", "notifications"}
PLANTED = 3  # images per batch planted near a stored hash; the rest are random


def fill(db: Database, count: int, rng: random.Random, chunk: int = 20_000) -> tuple[int, list[int]]:
    """`count` analysed images with random hashes; returns (batch id, their hashes in id order)."""
    with db.session() as s:
        batch = Batch(name="stored")
        s.add(batch)
        s.flush()
        batch_id = batch.id
    hashes = [rng.getrandbits(64) for _ in range(count)]
    now = utcnow()
    for start in range(0, count, chunk):
        rows = [image_row(batch_id, start + i, h, ImageStatus.ANALYSED, now)
                for i, h in enumerate(hashes[start:start + chunk])]
        with db.session() as s:
            s.execute(insert(Image), rows)
    return batch_id, hashes


def image_row(batch_id: int, n: int, phash: int, status: str, now) -> dict:
    return dict(batch_id=batch_id, display_name=f"{n}.jpg", sha256=f"{n:064x}", store_key=f"{n:064x}",
                size_bytes=1, width=800, height=600, format="JPEG", stored_format="JPEG", phash=f"{phash:016x}",
                status=status, attempts=1, created_at=now, updated_at=now)


def arrive_and_claim(db: Database, batch_id: int, serial: int, size: int, stored: list[int],
                     rng: random.Random) -> list[int]:
    """`size` new images, as an upload adds them, already claimed by NODE (the claim is not timed)."""
    hashes = []
    for k in range(size):
        if k < PLANTED:
            near = rng.choice(stored)
            for bit in rng.sample(range(64), rng.randrange(10)):
                near ^= 1 << bit
            hashes.append(near)
        else:
            hashes.append(rng.getrandbits(64))
    now = utcnow()
    with db.session() as s:
        rows = [image_row(batch_id, serial + k, h, ImageStatus.PROCESSING, now) for k, h in enumerate(hashes)]
        ids = list(s.scalars(insert(Image).returning(Image.id), rows))
        s.execute(update(Image).where(Image.id.in_(ids)).values(claimed_by=NODE, lease_expires_at=now))
    return ids


def outcomes_for(ids: list[int]):
    from worker.pipeline import Outcome

    analysis = dict(outcome=ImageStatus.ANALYSED, probabilities={"nevus": 0.9, "melanoma": 0.1}, top_class="nevus",
                    confidence=0.9, top3=[["nevus", 0.9], ["melanoma", 0.1]], risk_level="low", priority="routine",
                    reasons=[], recommendations=["Routine follow-up."], quality={"sharpness": {"passed": True}},
                    heatmap=None)
    return [Outcome(i, ImageStatus.ANALYSED, analysis=dict(analysis), timings={"decode_ms": 1.0}) for i in ids]


@contextmanager
def without_lookup():
    """The write with its near-duplicate step replaced by nothing."""
    import worker.pipeline as pipeline

    real = pipeline.find_near_duplicates
    pipeline.find_near_duplicates = lambda *a, **k: {}
    try:
        yield
    finally:
        pipeline.find_near_duplicates = real


@contextmanager
def counted(db: Database):
    """The kinds of SQL statement (first word, table) the block executes, in order."""
    seen: list[str] = []

    def note(conn, cursor, statement, parameters, context, executemany):
        words = statement.split()
        seen.append(" ".join(words[:1] + [w for w in words[1:8] if w.strip('"') in TABLES][:1]))

    event.listen(db.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", note)


def timed(fn, *args) -> tuple[float, float]:
    """(wall, CPU) milliseconds of one call; the CPU time is this process's (SQLite runs in it)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000


def figures(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"median_ms": round(statistics.median(ordered), 3),
            "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3),
            "max_ms": round(ordered[-1], 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, default=200_000, help="images already in the database")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8, help="images per batch (the worker's batch size)")
    parser.add_argument("--distance", type=int, default=8, help="near-duplicate distance in bits")
    parser.add_argument("--database-url", default="", help="default: a SQLite file in a temporary folder")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    from worker.near_duplicates import find_near_duplicates
    from worker.pipeline import write_outcomes

    rng = random.Random(17)
    with tempfile.TemporaryDirectory(prefix="near-dup-bench-") as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        settings = Settings(data_dir=Path(tmp), database_url=url)
        upgrade(url)
        db = Database(url)
        store = open_store(settings)
        started = time.perf_counter()
        batch_id, stored = fill(db, args.stored, rng)
        if db.engine.dialect.name == "postgresql":  # statistics, as autovacuum keeps them on a running database
            with db.engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE images")
        print(f"{args.stored} stored images in {time.perf_counter() - started:.1f} s ({db.engine.dialect.name})")

        def write(ids):
            write_outcomes(db, store, outcomes_for(ids), node=NODE, model_version="bench", model_trained=False,
                           thresholds={}, near_duplicate_distance=args.distance, settings=settings)

        def lookup(ids):
            with db.session() as s:
                s.connection()  # the transaction begins outside the timing, as it does in the write
                return timed(find_near_duplicates, s, ids, args.distance)

        samples = {"lookup": [], "write": [], "bare": []}
        serial = args.stored
        for round_ in range(args.batches + 1):
            # Three batches, each of images that have just arrived (as the worker meets them): the
            # lookup alone, the write, the write without the lookup.
            batches = []
            for _ in range(3):
                batches.append(arrive_and_claim(db, batch_id, serial, args.batch, stored, rng))
                serial += args.batch
            looked = lookup(batches[0])
            with counted(db) as with_lookup:
                written = timed(write, batches[1])
            with without_lookup(), counted(db) as statements:
                bare = timed(write, batches[2])
            if round_ == 0:  # the process's first lookup loads whatever it keeps
                first = {"lookup_ms": looked[0], "write_ms": written[0]}
                continue
            for key, value in (("lookup", looked), ("write", written), ("bare", bare)):
                samples[key].append(value)
        with db.session() as s:
            flagged = s.scalar(select(Image.id).where(Image.near_duplicate_of_id.is_not(None)).limit(1))
        db.dispose()

    result = {"stored": args.stored, "batch": args.batch, "batches": args.batches, "distance": args.distance,
              "dialect": url.split(":", 1)[0], "first_batch": first,
              "statements_per_write": {"with_lookup": len(with_lookup), "without_lookup": len(statements)},
              "flagged_any": flagged is not None}
    print(f"first batch of the process: lookup {first['lookup_ms']:.1f} ms (a copy kept in memory is loaded here), "
          f"write {first['write_ms']:.1f} ms")
    for label, key in (("near-duplicate lookup", "lookup"), ("write, lookup included", "write"),
                       ("write without the lookup", "bare")):
        wall, cpu = figures([w for w, _ in samples[key]]), figures([c for _, c in samples[key]])
        result[key + "_per_batch"] = {"wall": wall, "cpu": cpu}
        print(f"{label}, per batch of {args.batch}: median {wall['median_ms']:.2f} ms wall "
              f"({cpu['median_ms']:.2f} ms CPU), p90 {wall['p90_ms']:.2f}, max {wall['max_ms']:.2f} "
              f"({args.batches} batches)")
    print(f"SQL statements in one write of {args.batch}: {len(with_lookup)} "
          f"({len(statements)} without the lookup): {' / '.join(with_lookup)}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
