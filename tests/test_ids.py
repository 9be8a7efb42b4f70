"""Ids no row can have (issue 19: 2^63 and more gave a 503 and a traceback; on PostgreSQL 2^31 did) are
404s on every route that takes one, and are ignored in every query parameter that takes one."""
from __future__ import annotations

import io
import logging
import re
import subprocess
import sys

from harness import imagegen
from tests.support import ROOT, child_env, csrf_token, seed_analysis
from triage.ids import MAX_ID, parse_id

BEYOND = [str(MAX_ID + 1), str(2 ** 63), "99999999999999999999", "0"]


def test_parse_id():
    assert parse_id("1") == 1 and parse_id(" 42 ") == 42 and parse_id(str(MAX_ID)) == MAX_ID
    for text in [*BEYOND, "", None, "-1", "1.0", "0x10", "٣", "00000000000001", 7]:
        assert parse_id(text) is None, text


def _url(rule, value: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?(\w+)>", lambda m: "csv" if m.group(1) == "fmt" else value, rule.rule)


def test_every_route_taking_an_id_answers_404_for_one_no_row_can_have(stack, caplog):
    batch = stack.upload([(imagegen.jpeg(1), "a.jpg")]).get_json()["batch_id"]
    analysis = seed_analysis(stack.db, batch)
    browser = stack.login()
    rules = [r for r in stack.app.url_map.iter_rules() if "<id:" in r.rule]
    assert len(rules) >= 14  # every one of them, not a sample
    assert browser.get(f"/review/{analysis}").status_code == 200  # the ids that exist still work
    with caplog.at_level(logging.ERROR):
        for rule in rules:
            for value in BEYOND:
                url = _url(rule, value)
                for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                    # A token needs no CSRF token, so a POST gets as far as the route.
                    answer = stack.client.open(url, method=method)
                    assert answer.status_code == 404, (method, url, answer.status_code)
                    if url.startswith("/api/"):
                        assert answer.is_json
                if "GET" in rule.methods:
                    assert browser.get(url).status_code == 404, url
    assert not [r for r in caplog.records if "unhandled error" in r.getMessage()]


def test_query_parameters_taking_an_id_ignore_one_no_row_can_have(stack, caplog):
    batch = stack.upload([(imagegen.jpeg(1), "a.jpg")]).get_json()["batch_id"]
    seed_analysis(stack.db, batch)
    browser = stack.login()
    with caplog.at_level(logging.ERROR):
        for value in BEYOND:
            for path in (f"/?batch={value}", f"/admin/audit?before={value}&actor={value}",
                         f"/review?batch={value}&reviewer={value}",
                         f"/review?after=0.20261101093000000000.{value}",
                         f"/review?before={value}.20261101093000000000.1"):
                assert browser.get(path).status_code == 200, path
            assert stack.client.get(f"/api/queue?batch={value}&after=2.20261101093000000000.{value}").status_code == 200
            # The upload form's batch field: a batch that cannot exist means a new batch, as any unknown one does.
            answer = browser.post("/upload", content_type="multipart/form-data", data={
                "batch": value, "files": [(io.BytesIO(imagegen.jpeg(2)), "b.jpg")], "csrf_token": csrf_token(browser)})
            assert answer.status_code == 200
    assert not [r for r in caplog.records if "unhandled error" in r.getMessage()]


def test_the_command_line_refuses_an_id_no_row_can_have(sqlite_stack):
    answer = subprocess.run([sys.executable, "-m", "scripts.cli", "revoke-token", "99999999999999999999"], cwd=ROOT,
                            env=child_env(sqlite_stack.settings), capture_output=True, text=True, timeout=60)
    assert answer.returncode == 2 and "not a row id" in answer.stderr and "Traceback" not in answer.stderr
