"""Names that come from clients (a file's name, its path inside the uploaded folder): shown, never used.

A name keeps its characters, in every script, but loses those that change how the text around it is
displayed rather than being part of it: control characters, line and paragraph separators, and the
invisible format characters, among them the bidirectional override with which `lesion\u202egpj.exe`
displays as `lesionexe.jpg`. Names are cleaned where they are recorded (ingest) and again where they are
shown (results, queue, case page), since rows stored before this cleaning may still hold such characters.
"""
from __future__ import annotations

import unicodedata

MAX_NAME = 1024
# Control (Cc), format (Cf: bidi overrides, embeddings, isolates and marks, zero-width space, byte-order
# mark, ...), line and paragraph separators, lone surrogates.
HIDDEN_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs"}
# Format characters that are part of spelling: Persian, Indic scripts and emoji sequences need them.
ZERO_WIDTH_JOINERS = {"\u200c", "\u200d"}


def display_name(raw: str | None) -> str:
    """A client's name for a file, as it may be shown: folder-relative paths keep their folders, with `/`
    as the separator whatever system sent them."""
    shown = "".join(c for c in raw or "" if c in ZERO_WIDTH_JOINERS
                    or unicodedata.category(c) not in HIDDEN_CATEGORIES)
    name = shown.replace("\\", "/").strip()
    return (name or "unnamed")[-MAX_NAME:]
