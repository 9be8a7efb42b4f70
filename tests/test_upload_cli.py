"""`dermatriage upload` against the portal under gunicorn, over real HTTP: a folder tree with nested
folders, a file that is not a photograph, a duplicate and a damaged photograph; killed half-way and
resumed; transient failures; limits; a refused token."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from harness import imagegen
from tests.support import (ROOT, FlakyProxy, batch_image_names, clinical_fields, files_received, free_port,
                           photo_folder, wait_until)
from triage.imaging import UNREADABLE
from triage.schema import AuditEvent, Image



def make_tree(root: Path, photos: int) -> dict:
    """`photos` distinct JPEGs spread over nested folders, plus: a copy of the first under another name,
    a text file, a text file named like a photograph (last in order, so a run killed early has not
    sent it), and a .DS_Store that is ignored. Returns what the batch should end up holding."""
    names = photo_folder(root, photos, ["room 1", "room 1/close-ups", "room 2", "room 2/follow-up/week 2"])
    first = root / "room 1" / "lesion-000.jpg"
    (root / "room 2" / "copy of lesion-000.jpg").write_bytes(first.read_bytes())
    (root / "room 2" / "notes.txt").write_text("patient list: not for the portal")
    (root / "zz last").mkdir()
    (root / "zz last" / "scan.jpg").write_text("a text file named like a photograph")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    original = f"{root.name}/room 1/lesion-000.jpg"
    return {"accepted": names, "duplicate": {f"{root.name}/room 2/copy of lesion-000.jpg": original},
            "rejected": {f"{root.name}/room 2/notes.txt": "Not a JPEG, PNG or WEBP file; not sent.",
                         f"{root.name}/zz last/scan.jpg": UNREADABLE}}


def env_for(tmp_path: Path, token: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DERMATRIAGE_")}
    env.update(DERMATRIAGE_TOKEN=token, XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    return env


def run_upload(tmp_path: Path, token: str, *args: str, module: str = "scripts.upload"):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env_for(tmp_path, token),
                          capture_output=True, text=True, timeout=300)


def image_count(stack) -> int:
    with stack.db.session() as s:
        return s.scalar(select(func.count()).select_from(Image))


def by_status(report: dict) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for f in report["files"]:
        out.setdefault(f["status"], {})[f["path"]] = f
    return out


def test_a_killed_upload_resumes_sending_only_what_is_missing(sqlite_stack, tmp_path):
    stack = sqlite_stack
    web = stack.start_web()
    tree = tmp_path / "clinic 2026-11-24"
    expected = make_tree(tree, photos=120)
    args = [str(tree), "--server", web.url, "--parallel", "1", "--files-per-request", "1"]

    # First run: one file per request, killed (SIGKILL: no chance to tidy up) once 20 have arrived.
    first = subprocess.Popen([sys.executable, "-m", "scripts.upload", *args, "--quiet"], cwd=ROOT,
                             env=env_for(tmp_path, stack.token), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: image_count(stack) >= 20, 120, 0.02, "the first run to send 20 photographs")
    assert first.poll() is None, "the first run finished before it could be interrupted"
    first.kill()
    first.wait(10)
    # A request the server had fully received is still stored after the client died: wait until
    # nothing changes any more, then note what the batch holds.
    counts = []
    wait_until(lambda: counts.append(image_count(stack)) or counts[-3:] == [counts[-1]] * 3 and len(counts) >= 3,
               30, 0.3, "the server to finish the last request")
    with stack.db.session() as s:
        batch_id = s.scalar(select(Image.batch_id))
    before = set(batch_image_names(stack.db, batch_id))
    assert 20 <= len(before) < len(expected["accepted"])

    # Second run: the same command resumes the same batch (remembered in the state file) and sends the rest.
    report_path = tmp_path / "second.json"
    second = run_upload(tmp_path, stack.token, *args, "--report", str(report_path))
    assert second.returncode == 1, second.stderr  # something was rejected
    report = json.loads(report_path.read_text())
    assert report["batch_id"] == batch_id
    outcomes = by_status(report)
    assert sorted(outcomes["accepted"]) == expected["accepted"]
    already = {p for p, f in outcomes["accepted"].items() if f["how"] == "already"}
    sent = {f["path"] for f in report["files"] if f["how"] == "sent"}
    # What the batch held is recognised (plus at most the one file in flight at the kill, should the
    # server have committed it only after we looked), and only the rest is sent.
    assert before <= already and len(already - before) <= 1
    assert sent == (set(expected["accepted"]) - already) | {f"{tree.name}/zz last/scan.jpg"}
    assert report["sent_files"] == len(sent)
    assert {p: f["duplicate_of"] for p, f in outcomes["duplicate"].items()} == expected["duplicate"]
    assert {p: f["reason"] for p, f in outcomes["rejected"].items()} == expected["rejected"]
    assert "failed" not in outcomes
    assert report["counts"] == {"accepted": 120, "duplicate": 1, "rejected": 2, "failed": 0}

    # The batch holds each photograph once, under its path in the folder; nothing was sent twice
    # (a file sent again would have come back as a duplicate), and the copy never left the machine.
    assert batch_image_names(stack.db, batch_id) == expected["accepted"]
    assert files_received(stack.db, batch_id) == {"accepted": 120, "duplicate": 0, "rejected": 1}
    summary = second.stdout
    assert f"Batch #{batch_id}" in summary and "120 accepted" in summary and "2 rejected" in summary
    assert "notes.txt: Not a JPEG, PNG or WEBP file; not sent." in summary
    assert "copy of lesion-000.jpg: same file as " in summary

    # Third run, through `dermatriage upload`: nothing left to send, and the rejection is remembered.
    third = run_upload(tmp_path, stack.token, "upload", *args, "--report", str(tmp_path / "third.json"),
                       module="scripts.cli")
    assert third.returncode == 1
    again = json.loads((tmp_path / "third.json").read_text())
    assert again["sent_files"] == 0 and again["counts"] == report["counts"]
    assert files_received(stack.db, batch_id) == {"accepted": 120, "duplicate": 0, "rejected": 1}
    # What was left out is recorded with the batch, once, for whoever opens it.
    left_out = [(f["name"], f["kind"]) for f in stack.client.get(f"/api/batches/{batch_id}").get_json()["rejected_files"]
                if f["name"].endswith("notes.txt")]
    assert left_out == [(f"{tree.name}/room 2/notes.txt", "skipped")]


def test_transient_failures_are_retried_and_lost_answers_not_resent(sqlite_stack, tmp_path):
    stack = sqlite_stack
    web = stack.start_web()
    tree = tmp_path / "visit"
    (tree / "a" / "b").mkdir(parents=True)
    for i in range(12):
        (tree / ("a/b" if i % 2 else "a") / f"{i:02d}.jpg").write_bytes(imagegen.jpeg(100 + i, 64, 48))
    # The 1st upload request gets a 503, the 2nd and 3rd reach the server but their answers are lost.
    proxy = FlakyProxy(web.url, busy={1}, lost={2, 3}).start()
    try:
        done = run_upload(tmp_path, stack.token, str(tree), "--server", proxy.url, "--parallel", "2",
                          "--files-per-request", "3", "--report", str(tmp_path / "r.json"))
    finally:
        proxy.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(proxy.spoiled) == [(1, "busy"), (2, "lost"), (3, "lost")]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counts"] == {"accepted": 12, "duplicate": 0, "rejected": 0, "failed": 0}
    assert report["retries"] == 3
    assert report["sent_files"] == 12 + 3  # only the request refused as busy went again
    # The files whose answers were lost were found in the batch, not sent again.
    received = files_received(stack.db, report["batch_id"])
    assert received == {"accepted": 12, "duplicate": 0, "rejected": 0}
    assert len(batch_image_names(stack.db, report["batch_id"])) == 12


def test_requests_are_cut_to_the_servers_limits(make_stack, sqlite_url, tmp_path):
    stack = make_stack(sqlite_url, max_files_per_request=3, max_request_bytes=400_000, max_file_bytes=150_000)
    web = stack.start_web()
    tree = tmp_path / "limits"
    tree.mkdir()
    sizes = {}
    for i in range(8):
        data = imagegen.jpeg(200 + i, 320, 240, quality=95)
        (tree / f"{i}.jpg").write_bytes(data)
        sizes[i] = len(data)
    big = imagegen.encode(imagegen.skin_photo(7, 900, 700), "PNG")
    assert len(big) > 150_000
    (tree / "huge.png").write_bytes(big)
    done = run_upload(tmp_path, stack.token, str(tree), "--server", web.url, "--report", str(tmp_path / "r.json"))
    assert done.returncode == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counts"] == {"accepted": 8, "duplicate": 0, "rejected": 1, "failed": 0}
    huge = next(f for f in report["files"] if f["path"].endswith("huge.png"))
    assert huge["how"] == "local" and "limit" in huge["reason"]  # never sent
    with stack.db.session() as s:
        requests = s.scalars(select(AuditEvent.details).where(AuditEvent.action == "batch.upload")).all()
    assert all(r["accepted"] + r["duplicate"] + r["rejected"] <= 3 for r in requests)
    assert sum(r["accepted"] for r in requests) == 8 and report["requests"] == len(requests) >= 3


def test_a_refused_token_or_unknown_batch_stops_at_once(sqlite_stack, tmp_path):
    web = sqlite_stack.start_web()
    tree = tmp_path / "few"
    tree.mkdir()
    (tree / "a.jpg").write_bytes(imagegen.jpeg(1, 64, 48))
    refused = run_upload(tmp_path, "dt_not-a-token", str(tree), "--server", web.url)
    assert refused.returncode == 2 and "refused the API token" in refused.stderr
    unknown = run_upload(tmp_path, sqlite_stack.token, str(tree), "--server", web.url, "--batch", "999")
    assert unknown.returncode == 2 and "Batch 999 does not exist" in unknown.stderr
    assert image_count(sqlite_stack) == 0


def test_the_walk_names_files_from_the_folder_and_leaves_out_system_files(tmp_path):
    from scripts.upload import walk

    root = tmp_path / "day 1"
    for rel in ("b.JPG", "a/c.png", "a/d.webp", "notes.txt", ".DS_Store", "._b.JPG", "Thumbs.db", ".git/x.jpg",
                "skip/e.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "gone.jpg").symlink_to(root / "nowhere.jpg")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "f.jpg").write_bytes(b"x")
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # not followed
    photos, others = walk(root, (".jpg", ".png", ".webp"), ["skip/*"])
    assert [f.rel for f in photos] == ["day 1/a/c.png", "day 1/a/d.webp", "day 1/b.JPG"]
    assert others == {"day 1/gone.jpg": "Could not be read (No such file or directory); not sent.",
                      "day 1/notes.txt": "Not a JPEG, PNG or WEBP file; not sent."}


def test_the_resume_state_keeps_every_answer_recorded_before_a_kill(tmp_path):
    from scripts.upload import LocalFile, Outcome, ResumeState

    path = tmp_path / "state.json"
    state = ResumeState(path, "http://portal", tmp_path)
    state.use_batch(7)
    state.save()
    files = [LocalFile(f"f/{i}.jpg", tmp_path / f"{i}.jpg", 10 + i, 100 + i, f"{i:064x}") for i in range(3)]
    state.remember(files[0], Outcome("accepted", "sent", image_id=1))
    state.remember(files[1], Outcome("rejected", "sent", "Not an image."))
    state.record(files[:2])
    with open(state.journal, "a") as fh:
        fh.write('["f/2.jpg", {"size": 1')  # the process died while writing this line
    again = ResumeState(path, "http://portal", tmp_path)
    assert again.batch_id == 7 and sorted(again.files) == ["f/0.jpg", "f/1.jpg"]
    assert again.rejected_before(files[1]) == "Not an image." and again.cached_hash(files[0]) == files[0].sha256
    assert ResumeState(path, "http://another-portal", tmp_path).batch_id is None  # per server and folder


def test_photographs_sent_from_a_folder_are_stored_without_metadata(sqlite_stack, tmp_path):
    import io

    import requests
    from PIL import Image as PILImage

    stack = sqlite_stack
    web = stack.start_web()
    exif = PILImage.Exif()
    exif[0x0132] = "2026:11:24 09:15:00"
    exif.get_ifd(0x8769)[0xA431] = "SERIAL-0042"
    exif.get_ifd(0x8825)[2] = (51.0, 30.0, 12.5)
    buf = io.BytesIO()
    PILImage.fromarray(imagegen.skin_photo(5, 320, 240)).save(
        buf, "JPEG", exif=exif.tobytes(), comment=b"Patient: record 0042-XY",
        xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description>record 0042-XY</rdf:Description></x:xmpmeta>')
    tree = tmp_path / "private"
    tree.mkdir()
    (tree / "lesion.jpg").write_bytes(buf.getvalue())
    assert b"SERIAL-0042" in buf.getvalue() and b"0042-XY" in buf.getvalue()
    done = run_upload(tmp_path, stack.token, str(tree), "--server", web.url, "--report", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    image_id = json.loads((tmp_path / "r.json").read_text())["files"][0]["image_id"]
    stored = requests.get(f"{web.url}/images/{image_id}/file", headers={"Authorization": f"Bearer {stack.token}"},
                          timeout=30).content
    for secret in (b"Exif", b"SERIAL-0042", b"2026:11:24", b"0042-XY", b"xmpmeta"):
        assert secret not in stored
    assert not PILImage.open(io.BytesIO(stored)).getexif()


def test_an_unreachable_server_stops_the_run_with_status_2(tmp_path):
    tree = tmp_path / "day"
    photo_folder(tree, 2, ["room"])
    done = run_upload(tmp_path, "some-token", str(tree), "--server", f"http://127.0.0.1:{free_port()}",
                      "--attempts", "2")
    assert done.returncode == 2, done.stderr
    assert "kept failing" in done.stderr and "ConnectionError" in done.stderr


def test_retries_wait_longer_each_time_up_to_half_a_minute_with_jitter():
    from scripts.upload import backoff

    for attempt, base in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (20, 30.0)]:
        waits = [backoff(attempt) for _ in range(300)]
        assert 0.5 * base <= min(waits) and max(waits) <= 1.5 * base
        assert max(waits) - min(waits) > 0.5 * base  # spread out, so uploaders that failed together part


def test_rejected_files_are_sent_again_only_when_asked(sqlite_stack, tmp_path):
    stack = sqlite_stack
    web = stack.start_web()
    tree = tmp_path / "visit"
    photo_folder(tree, 2, ["room"])
    (tree / "room" / "scan.jpg").write_text("a text file named like a photograph")
    args = (str(tree), "--server", web.url, "--report", str(tmp_path / "r.json"))

    first = run_upload(tmp_path, stack.token, *args)
    assert first.returncode == 1, first.stderr  # a file was rejected
    batch_id = json.loads((tmp_path / "r.json").read_text())["batch_id"]
    assert files_received(stack.db, batch_id) == {"accepted": 2, "duplicate": 0, "rejected": 1}
    again = run_upload(tmp_path, stack.token, *args)  # the same command: nothing is sent again
    assert again.returncode == 1 and files_received(stack.db, batch_id)["rejected"] == 1
    retried = run_upload(tmp_path, stack.token, *args, "--retry-rejected")
    assert retried.returncode == 1 and files_received(stack.db, batch_id) == {"accepted": 2, "duplicate": 0,
                                                                                "rejected": 2}


def test_a_bad_manifest_lists_every_problem_and_uploads_nothing(sqlite_stack, tmp_path):
    from triage.schema import Batch

    stack = sqlite_stack
    web = stack.start_web()
    tree = tmp_path / "visit"
    photo_folder(tree, 3, ["room"])
    (tree / "manifest.csv").write_text(
        "path,patient,lesion,body_site,age,colour\n"
        "room/lesion-000.jpg,P-1,L-1,back,40,red\n"
        "room/lesion-001.jpg,P-2,L-1,back,200,red\n"
        "room/lesion-001.jpg,P-2,L-2,knee,,\n"
        "room/missing.jpg,Given Family,L-3,,,\n")
    done = run_upload(tmp_path, stack.token, str(tree), "--server", web.url, "--report", str(tmp_path / "r.json"))
    assert done.returncode == 1, done.stderr
    listed = [line.strip() for line in done.stderr.splitlines()[1:]]
    assert "manifest.csv: 7 problem(s); nothing was uploaded." in done.stderr.splitlines()[0]
    assert listed == [
        "row 1: unknown columns colour; the columns are path, patient, lesion, body_site, age, sex, fitzpatrick, note.",
        "row 3 (age): is not an age: give a whole number of years from 0 to 120.",
        "row 3 (patient): gives its lesion another patient than row 2: a lesion belongs to one patient.",
        "row 4 (path): names the same photograph as row 3: each photograph has one row.",
        "row 4 (body_site): is not a body site; use one of scalp, face, ear, neck, chest, abdomen, back, upper_arm, "
        "forearm, hand, thigh, lower_leg, foot, genital, other.",
        "row 5 (path): names no photograph of the folder (the path is relative to the folder that holds the manifest).",
        "row 5 (patient): contains a space; use the clinic's pseudonymous code (such as P-0042), never a name.",
    ]
    assert not (tmp_path / "r.json").exists()
    with stack.db.session() as s:  # no batch, no image, no file
        assert s.scalar(select(func.count()).select_from(Batch)) == 0
    assert image_count(stack) == 0 and not any(p.is_file() for p in stack.settings.image_store.rglob("*"))


def test_a_good_manifest_or_the_folder_convention_sends_each_photographs_fields(sqlite_stack, tmp_path):
    stack = sqlite_stack
    web = stack.start_web()
    tree = tmp_path / "visit"
    photo_folder(tree, 3, ["room"])
    (tree / "manifest.csv").write_text(
        "\ufeffpath,patient,lesion,body_site,age,sex,fitzpatrick,note\r\n"
        "room/lesion-000.jpg,P-0042,L-7,upper arm,54,female,II,\"raised, itchy\"\r\n"
        "room/lesion-001.jpg,P-0042,L-7,,,,,\r\n")
    done = run_upload(tmp_path, stack.token, str(tree), "--server", web.url, "--report", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counts"] == {"accepted": 3, "duplicate": 0, "rejected": 0, "failed": 0}  # the manifest is no file
    assert clinical_fields(stack.db) == {
        "visit/room/lesion-000.jpg": ("P-0042", "L-7", "upper_arm", 54, "female", 2, "raised, itchy"),
        "visit/room/lesion-001.jpg": ("P-0042", "L-7", "upper_arm", None, None, None, None),
        "visit/room/lesion-002.jpg": (None,) * 7}

    by_folder = tmp_path / "by patient"
    photo_folder(by_folder, 2, ["P-1/L-1", "P-2/L-2/week 2"], first_seed=50)
    (by_folder / "loose.jpg").write_bytes(imagegen.jpeg(99, 64, 48))
    refused = run_upload(tmp_path, stack.token, str(by_folder), "--server", web.url, "--layout", "patient/lesion")
    assert refused.returncode == 1 and "loose.jpg: is not inside a <patient>/<lesion>/ folder." in refused.stderr
    (by_folder / "loose.jpg").unlink()
    done = run_upload(tmp_path, stack.token, str(by_folder), "--server", web.url, "--layout", "patient/lesion")
    assert done.returncode == 0, done.stderr
    stored = {name: fields[:2] for name, fields in clinical_fields(stack.db).items() if name.startswith("by patient/")}
    assert sorted(stored.values()) == [("P-1", "L-1"), ("P-2", "L-2")]
