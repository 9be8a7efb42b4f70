"""Rewrite the configuration table in README.md from the settings (run after changing a setting)."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from scripts.cli import cmd_config_table

README = Path(__file__).resolve().parents[1] / "README.md"


def main() -> None:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cmd_config_table(None)
    text = README.read_text()
    new = re.sub(r"(<!-- config-table:start -->\n).*?(\n<!-- config-table:end -->)",
                 lambda m: m.group(1) + buf.getvalue().rstrip("\n") + m.group(2), text, flags=re.S)
    README.write_text(new)


if __name__ == "__main__":
    main()
