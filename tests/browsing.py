"""Driving the portal in Debian's headless Chromium (the `browser` fixture lives in conftest)."""
from __future__ import annotations

import re
import shutil

from tests.support import PASSWORD

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_executable() -> str:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "Debian's chromium is not installed (scripts/test.sh installs it)"
    return executable


def sign_in(page, base_url: str, username: str = "admin", password: str = PASSWORD) -> None:
    page.goto(base_url + "/")
    page.wait_for_url(re.compile(r"/login\?next=/$"))  # signed out, everything leads to sign-in
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(base_url + "/")


def csp_errors(page) -> list[str]:
    """Console errors from the content security policy: inline code the browser refused to run."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    return errors
