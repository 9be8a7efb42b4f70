"""Near-duplicate lookup for a batch: a copy of every stored perceptual hash kept in this process.

Reading and parsing every stored hash for every batch grew with the database (half a second per batch
at 200,000 images). A hash is written with its image row at ingest and never changes, so each worker
process loads the (id, hash) pairs once and then reads only rows it has not seen: those above the
highest id it holds, and, on PostgreSQL, the ids below it that were missing when it last looked.

Why the missing ids: PostgreSQL hands out an id when a row is inserted but shows the row when its
transaction commits, so two uploads committing in the opposite order leave a hole below the highest
visible id for a moment. Each hole is looked at again with every batch until its row appears or
GAP_GRACE_S has passed (an id taken by a rolled-back upload or a lost ON CONFLICT race never fills;
an upload's transaction lasts milliseconds, and the portal's request timeout is 300 s). On SQLite
writers take turns and a new id is the highest plus one, so rows appear in id order.

The batch's own hashes are read from SQL with each lookup, and each image a lookup points at is
checked, in the same transaction, to exist still with the hash held for it (a row deleted, or another
database behind the same address): a flag always names a real row. Several processes and hosts each
keep their own copy; nothing is shared but SQL.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np
from sqlalchemy import bindparam, func, or_, select, union_all

from triage.phash import HashIndex, hash_values, popcount
from triage.schema import Image

log = logging.getLogger(__name__)

GAP_GRACE_S = 600.0
MAX_GAPS = 256  # ranges of missing ids followed at once: the newest (one in flight is among them)
RANGES_PER_QUERY = 100
LOAD_CHUNK = 100_000

_images = Image.__table__
# Built once. The rows above the high-water mark, with the batch's (whose hashes are the queries): two
# index searches (one OR'd WHERE with ORDER BY makes SQLite scan the table).
_NEW_AND_WANTED = union_all(
    select(_images.c.id, _images.c.phash).where(_images.c.id > bindparam("high")),
    select(_images.c.id, _images.c.phash).where(_images.c.id.in_(bindparam("wanted", expanding=True))))
_AFTER = (select(_images.c.id, _images.c.phash).where(_images.c.id > bindparam("high"))
          .order_by(_images.c.id).limit(bindparam("limit")))
_THESE = select(_images.c.id, _images.c.phash).where(_images.c.id.in_(bindparam("ids", expanding=True)))
_TOP = select(func.max(_images.c.id))

Found = tuple[int, int, int]  # (distance, id, hash) of the closest other image


class StoredHashes:
    """Every stored (image id, hash) of one database, in memory, extended by id with each lookup."""

    def __init__(self, max_distance: int, track_gaps: bool, grace_s: float = GAP_GRACE_S, clock=time.monotonic):
        self.index = HashIndex(max_distance)
        self.track_gaps = track_gaps
        self.grace_s = grace_s
        self.clock = clock
        self.high = 0  # every id up to here has been read, but those in `gaps`
        self.gaps: list[tuple[int, int, float]] = []  # (first id, last id, since when): not seen yet
        self.lock = threading.Lock()

    def find(self, session, image_ids: list[int], max_distance: int) -> dict[int, int]:
        """{image id: the other image it nearly duplicates} for those of `image_ids` that have one: the
        closest stored hash within max_distance bits, ties to the lowest id, never itself (what
        `triage.phash.nearest` finds among every stored hash). Reads only what this copy lacks."""
        conn = session.connection()
        with self.lock:
            wanted = self.refresh(conn, image_ids)
            # The batch's hashes come from SQL and are also compared with each other directly, so
            # the answer for them never rests on the copy holding them.
            batch = {i: int(h, 16) for i, h in wanted.items() if h is not None}
            found = self._closest(batch, list(batch), max_distance)
            # Each round takes a gone row out of the copy or gives a row its current hash: it ends.
            while stale := self._stale(conn, {m[1:] for m in found.values() if m is not None}):
                found.update(self._closest(batch, [i for i, m in found.items() if m and m[1] in stale],
                                           max_distance))
            return {i: m[1] for i, m in found.items() if m is not None}

    def refresh(self, conn, wanted: list[int] = ()) -> dict[int, str | None]:
        """Read the rows this copy lacks (in its open gaps, and above the highest id it holds), with
        those of `wanted`, whose {id: hash} it returns."""
        now = self.clock()
        fresh = self._follow_gaps(conn, now)
        if not self.high:
            while self.load_piece(conn) == LOAD_CHUNK:
                pass
        rows = dict(conn.execute(_NEW_AND_WANTED, {"high": self.high, "wanted": list(wanted)}).all())
        new = sorted((i, h) for i, h in rows.items() if i > self.high)
        if not new and self.high and (conn.scalar(_TOP) or 0) < self.high:
            log.warning("image ids went back below %d: the near-duplicate copy starts afresh", self.high)
            self.index, self.high, self.gaps = HashIndex(self.index.max_distance), 0, []
            return self.refresh(conn, wanted)
        self._advance(new, now)
        fresh = [(i, h) for i, h in fresh + new if h is not None]
        if fresh:
            self.index.add(np.array([i for i, _ in fresh], np.int64), hash_values([h for _, h in fresh]))
        return {i: rows[i] for i in wanted if i in rows}

    def load_piece(self, conn) -> int:
        """Up to LOAD_CHUNK rows above the high-water mark into the copy (the first load goes by pieces:
        no statement holds a million rows); returns how many were read."""
        piece = conn.execute(_AFTER, {"high": self.high, "limit": LOAD_CHUNK}).all()
        self._advance(piece, self.clock())
        rows = [(i, h) for i, h in piece if h is not None]
        if rows:
            self.index.add(np.array([i for i, _ in rows], np.int64), hash_values([h for _, h in rows]))
        return len(piece)

    def _advance(self, new: list[tuple[int, str | None]], now: float) -> None:
        """Move the high-water mark past `new` (in id order), noting the ids skipped as gaps."""
        if not new:
            return
        if self.track_gaps:
            ids = [self.high] + [i for i, _ in new]
            self.gaps += [(a + 1, b - 1, now) for a, b in zip(ids, ids[1:]) if b > a + 1]
            self.gaps = self.gaps[-MAX_GAPS:]
        self.high = new[-1][0]

    def _follow_gaps(self, conn, now: float) -> list[tuple[int, str | None]]:
        """The rows that have appeared in the open gaps since the last look; the gaps shrink."""
        expired = [g for g in self.gaps if now - g[2] > self.grace_s]
        if expired:
            log.info("ids %s never appeared within %.0f s; no longer looked for",
                     ", ".join(f"{lo}..{hi}" for lo, hi, _ in expired), self.grace_s)
            self.gaps = [g for g in self.gaps if now - g[2] <= self.grace_s]
        found: list[tuple[int, str | None]] = []
        for start in range(0, len(self.gaps), RANGES_PER_QUERY):
            ranges = self.gaps[start:start + RANGES_PER_QUERY]
            found += conn.execute(select(_images.c.id, _images.c.phash).where(
                or_(*[_images.c.id.between(lo, hi) for lo, hi, _ in ranges]))).all()
        if found:
            seen = np.array([i for i, _ in found], np.int64)
            self.gaps = [piece for gap in self.gaps for piece in _minus(gap, seen)]
        return found

    def _closest(self, batch: dict[int, int], ids: list[int], max_distance: int) -> dict[int, Found | None]:
        stored = self.index.closest_many([batch[i] for i in ids], ids, max_distance)
        found = {}
        for i, best in zip(ids, stored):
            options = [(int(popcount(np.uint64(batch[i] ^ h))), j, h) for j, h in batch.items() if j != i]
            options = [o for o in options if o[0] <= max_distance] + ([best] if best else [])
            found[i] = min(options, default=None)  # the least distance, then the lowest id
        return found

    def _stale(self, conn, matches: set[tuple[int, int]]) -> set[int]:
        """Ids among `matches` ((id, hash held) pairs) whose row is gone or now holds another hash;
        the copy is corrected."""
        if not matches:
            return set()
        current = dict(conn.execute(_THESE, {"ids": [m for m, _ in matches]}).all())
        stale = {m for m, h in matches if current.get(m) is None or int(current[m], 16) != h}
        if stale:
            log.warning("near-duplicate copy out of date for images %s; corrected", sorted(stale))
            self.index.discard(list(stale))
            again = [(m, current[m]) for m in stale if current.get(m) is not None]
            if again:
                self.index.add([m for m, _ in again], hash_values([h for _, h in again]))
        return stale


def _minus(gap: tuple[int, int, float], seen: np.ndarray) -> list[tuple[int, int, float]]:
    """What remains of the range `gap` once the ids `seen` are taken out of it."""
    lo, hi, since = gap
    inside = np.sort(seen[(seen >= lo) & (seen <= hi)])
    bounds = [lo - 1, *inside.tolist(), hi + 1]
    return [(a + 1, b - 1, since) for a, b in zip(bounds, bounds[1:]) if b > a + 1]


_copies: dict[tuple[int, str], StoredHashes] = {}
_copies_lock = threading.Lock()


def stored_hashes(bind, max_distance: int) -> StoredHashes:
    """This process's copy for the database of `bind` (an engine or a connection), made on first use;
    a forked child makes its own."""
    engine = bind.engine
    key = (os.getpid(), engine.url.render_as_string(hide_password=False))
    with _copies_lock:
        if key not in _copies:
            _copies[key] = StoredHashes(max_distance, track_gaps=engine.dialect.name != "sqlite")
        return _copies[key]


def preload(db, max_distance: int) -> None:
    """Load this process's copy if it is empty, a piece per transaction, before the write transaction
    that looks up a batch: a first load of a million rows takes seconds, and must not hold SQLite's
    write lock all that time."""
    copy = stored_hashes(db.engine, max_distance)
    if copy.high:
        return
    with copy.lock:
        while True:
            with db.session() as s:
                if copy.load_piece(s.connection()) < LOAD_CHUNK:
                    return


def find_near_duplicates(session, image_ids: list[int], max_distance: int) -> dict[int, int]:
    """{image id: id of the image it nearly duplicates} for `image_ids`, in the session's transaction."""
    if not image_ids:
        return {}
    return stored_hashes(session.get_bind(), max_distance).find(session, image_ids, max_distance)
