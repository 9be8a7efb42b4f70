"""Datasets labelled by a metadata table instead of class folders: PAD-UFES-20 and HAM10000.

Both public datasets ship their photographs in plain folders with one CSV row per photograph, naming
its diagnosis by a dataset code and the patient (PAD-UFES-20) or lesion (HAM10000) it shows. A table
is recognised by its columns, so the folder can be trained on as it is downloaded. The patient or
lesion becomes the photograph's group: a group goes whole into one split, so no patient is seen in
training and tested on again.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TableLayout:
    dataset: str
    path_column: str  # the photograph's file name, with or without its suffix
    label_column: str  # a dataset code the catalogue knows (slug_for_folder)
    group_column: str  # patient or lesion: kept within one split


LAYOUTS = (
    TableLayout("PAD-UFES-20", "img_id", "diagnostic", "patient_id"),
    TableLayout("HAM10000", "image_id", "dx", "lesion_id"),
)


@dataclass(frozen=True)
class TableRow:
    path: Path  # the photograph's file
    code: str
    group: str


def find_table(root: Path) -> tuple[TableLayout, Path] | None:
    """The first CSV directly in `root` whose header has one layout's columns."""
    for table in sorted(root.glob("*.csv")):
        with open(table, newline="", encoding="utf-8-sig") as fh:
            header = set(next(csv.reader(fh), []))
        for layout in LAYOUTS:
            if {layout.path_column, layout.label_column, layout.group_column} <= header:
                return layout, table
    return None


def read_table(root: Path, layout: TableLayout, table: Path, suffixes: tuple[str, ...]) -> tuple[list[TableRow], list[str]]:
    """The rows whose photograph is found under `root` (by file name, or by name without suffix, in
    any sub-folder: HAM10000 comes in two image folders), and the names of those that are not."""
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in suffixes:
            files.setdefault(path.name, path)
            files.setdefault(path.stem, path)
    rows, missing = [], []
    with open(table, newline="", encoding="utf-8-sig") as fh:
        for record in csv.DictReader(fh):
            name = record[layout.path_column].strip()
            found = files.get(name)
            if found is None:
                missing.append(name)
                continue
            rows.append(TableRow(found, record[layout.label_column].strip(), record[layout.group_column].strip()))
    return rows, missing
