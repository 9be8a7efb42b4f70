"""The store sweeper removes only old files that no row refers to."""
from __future__ import annotations

import os
import time

from triage.db import Database
from triage.migrate import upgrade
from triage.schema import Batch, Image
from triage.store import ImageStore
from worker.orphans import sweep_orphans


def test_sweep_removes_old_unreferenced_files_and_unfinished_writes(tmp_path, sqlite_url):
    upgrade(sqlite_url)
    db, store = Database(sqlite_url), ImageStore(tmp_path / "images")
    kept, _ = store.put(b"referenced")
    orphan, _ = store.put(b"left by a killed upload")
    young, _ = store.put(b"upload still in flight")
    unfinished = store.path(orphan).parent / ".incoming-abc123"
    unfinished.write_bytes(b"half")
    with db.session() as s:
        batch = Batch(name="b")
        s.add(batch)
        s.flush()
        s.add(Image(batch_id=batch.id, display_name="x.jpg", sha256="0" * 64, store_key=kept, size_bytes=1,
                    width=1, height=1, format="JPEG", stored_format="JPEG"))
    old = time.time() - 7200
    for path in (store.path(kept), store.path(orphan), unfinished):
        os.utime(path, (old, old))

    assert sweep_orphans(db, store, grace_s=3600) == 2
    assert store.exists(kept) and store.exists(young)
    assert not store.exists(orphan) and not unfinished.exists()
    db.dispose()
