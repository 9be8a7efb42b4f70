"""Who and what a photograph shows, as the clinic says at upload: patient, lesion, body site and context.

Three ways in, one set of rules: `manifest.csv` at the top of an upload folder (`parse_csv`), the folder
convention `<patient>/<lesion>/<photograph>` (`from_layout`), and the API's per-file rows (`parse_rows`).
Each returns a `Manifest`: the fields of every photograph it names, or every problem found (all of them,
never only the first), each saying where (row or path) and what is wrong.

Identifiers are the clinic's pseudonyms. They are checked against a conservative pattern that no name
with a space can pass, and must hold a digit, so that a bare surname cannot pass either. Problem messages
point at rows and columns and never repeat a value (a name typed into the wrong column included), so a
problem may be recorded with a refused file or shown anywhere without carrying one.

Pure: no Flask, no database, no TensorFlow; the schema takes its limits from here.
"""
from __future__ import annotations

import csv
import io
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable

from .body_sites import BODY_SITES, body_site_slug
from .names import HIDDEN_CATEGORIES, display_name

FILE_NAME = "manifest.csv"
LAYOUT = "patient/lesion"  # the folder convention <patient>/<lesion>/<photograph>
IDENTIFIER_MAX = 64
IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
AGE_RANGE = (0, 120)
SEXES = ("female", "male", "other", "unknown")
FITZPATRICK_TYPES = (1, 2, 3, 4, 5, 6)
ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4, "v": 5, "vi": 6}  # how skin types are often written
NOTE_MAX = 500
MAX_ROWS = 10_000
REQUIRED = ("path", "patient", "lesion", "body_site")
OPTIONAL = ("age", "sex", "fitzpatrick", "note")
COLUMNS = REQUIRED + OPTIONAL
EXAMPLE = "path,patient,lesion,body_site,age,sex,fitzpatrick,note"


@dataclass(frozen=True)
class Fields:
    """What the clinic said about one photograph. Patient and lesion always come together."""
    patient: str
    lesion: str
    body_site: str | None = None
    age: int | None = None
    sex: str | None = None
    fitzpatrick: int | None = None
    note: str | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Problem:
    """One thing wrong. `whole`: it concerns the manifest as a whole (a column, a file, two rows that
    disagree); otherwise only the photograph of its row, which can be refused alone."""
    message: str
    row: int | None = None
    column: str | None = None
    path: str | None = None
    whole: bool = True

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row else self.path or "manifest"
        return f"{where}{f' ({self.column})' if self.column else ''}: {self.message}"

    def as_dict(self) -> dict:
        return {"row": self.row, "column": self.column, "path": self.path, "message": self.message, "text": str(self)}


@dataclass
class Manifest:
    files: dict[str, Fields] = field(default_factory=dict)  # by path
    rows: dict[str, int | None] = field(default_factory=dict)  # path -> its row
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def whole_problems(self) -> list[Problem]:
        return [p for p in self.problems if p.whole]

    def row_problems(self, path: str) -> list[Problem]:
        """The problems that refuse only this path's photograph."""
        return [p for p in self.problems if not p.whole and p.path == path]


# --------------------------------------------------------------------------- the three ways in

def parse_csv(text: str, paths: Iterable[str]) -> Manifest:
    """`manifest.csv` checked against the paths (relative to the folder) of the folder's photographs."""
    try:
        records = list(csv.reader(io.StringIO(text.lstrip("\ufeff"), newline="")))
    except csv.Error as exc:
        return Manifest(problems=[Problem(f"Not a readable CSV file ({exc}).")])
    if not records or not any(cell.strip() for cell in records[0]):
        return Manifest(problems=[Problem(f"The manifest has no header row; its first row must be: {EXAMPLE}", row=1)])
    columns = [_column(c) for c in records[0]]
    problems = _header_problems(columns)
    if any(p.column in REQUIRED or p.column is None for p in problems):
        return Manifest(problems=problems)  # without its columns no row can be read
    rows = []
    for number, cells in enumerate(records[1:], start=2):  # row 1 is the header, as a spreadsheet numbers them
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) > len(columns):
            problems.append(Problem(f"has {len(cells)} cells but the header names {len(columns)} columns "
                                    "(a comma inside a value needs quotes).", row=number))
        rows.append((number, dict(zip(columns, cells))))
    return _checked(rows, set(paths), problems)


def parse_rows(entries, names: Iterable[str]) -> Manifest:
    """The API's rows (JSON: a list of objects with the manifest's columns as keys, `path` being the
    file's name as sent) checked against the names of the request's files. Row numbers count from 1."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return Manifest(problems=[Problem('Send the manifest as a JSON list of objects such as '
                                          '{"path": "<file name as sent>", "patient": "P-0042", "lesion": "L-7", '
                                          '"body_site": "back"}.')])
    problems, rows = [], []
    for number, entry in enumerate(entries, start=1):
        unknown = sorted(str(k) for k in entry if k not in COLUMNS)
        if unknown:
            problems.append(Problem(f"unknown fields {', '.join(unknown)}; the fields are {', '.join(COLUMNS)}.",
                                    row=number))
        rows.append((number, {k: v for k, v in entry.items() if k in COLUMNS}))
    return _checked(rows, {display_name(n) for n in names}, problems)


def from_layout(paths: Iterable[str]) -> Manifest:
    """The folder convention: the first folder of a photograph's path is its patient, the second its lesion
    (deeper folders, a visit's date say, are free). Problems are reported per folder, not per photograph."""
    paths = sorted(paths)
    problems, rows = [], []
    for path in paths:
        parts = path.split("/")
        if len(parts) < 3:
            problems.append(Problem("is not inside a <patient>/<lesion>/ folder.", path=path))
            continue
        rows.append((None, {"path": path, "patient": parts[0], "lesion": parts[1]}))
    checked = _checked(rows, set(paths), problems)
    checked.problems = _per_folder(checked.problems)
    return checked


# --------------------------------------------------------------------------- the rules

def _column(name: str) -> str:
    return "_".join(name.strip().lower().split())


def _header_problems(columns: list[str]) -> list[Problem]:
    problems = []
    if len(columns) == 1 and ";" in columns[0]:
        return [Problem(f"The columns must be separated by commas, not semicolons: {EXAMPLE}", row=1)]
    for name in sorted({c for c in columns if columns.count(c) > 1}):
        problems.append(Problem("this column appears more than once.", row=1, column=name))
    for name in REQUIRED:
        if name not in columns:
            problems.append(Problem(f"the column is missing; the header must name {', '.join(REQUIRED)} "
                                    f"(and may name {', '.join(OPTIONAL)}).", row=1, column=name))
    unknown = [c or "(empty)" for c in columns if c not in COLUMNS]
    if unknown:
        problems.append(Problem(f"unknown columns {', '.join(unknown)}; the columns are {', '.join(COLUMNS)}.", row=1,
                                column=""))
    return problems


def _checked(rows: list[tuple[int | None, dict]], known: set[str], problems: list[Problem]) -> Manifest:
    """Every row's own rules, then the rules between rows (on every row whose identifiers are good, so
    that a row with a bad age still has its lesion compared with the others)."""
    out = Manifest(problems=problems)
    if len(rows) > MAX_ROWS:
        out.problems.append(Problem(f"has {len(rows)} rows; at most {MAX_ROWS} photographs per manifest."))
        return out
    identified: dict[str, dict] = {}
    for number, row in rows:
        path = _path(row.get("path"))
        unusable = _path_problems(out, number, path, known)
        values, found = _fields(row)  # checked all the same: every problem of a row at once
        for column, message in found:
            out.problems.append(Problem(message, number, column, path, whole=False))
        if unusable:
            continue
        out.rows[path] = number
        if not found:
            out.files[path] = Fields(**values)
        if not {"patient", "lesion"} & {column for column, _ in found}:
            identified[path] = values
    _lesion_problems(out, identified)
    out.problems.sort(key=lambda p: (p.row is None, p.row or 0))  # in the order of the file
    return out


def _path(value) -> str:
    text = value.strip() if isinstance(value, str) else ""
    path = display_name(text).removeprefix("./") if text else ""
    return path


def _path_problems(out: Manifest, number: int | None, path: str, known: set[str]) -> bool:
    before = len(out.problems)
    if not path:
        out.problems.append(Problem("has no path: name the photograph's path inside the folder.", number, "path"))
    elif path not in known:
        out.problems.append(Problem("names no photograph of the folder (the path is relative to the folder "
                                    "that holds the manifest).", number, "path", path))
    elif path in out.rows:
        out.problems.append(Problem(f"names the same photograph as {_where(out.rows[path], path)}: "
                                    "each photograph has one row.", number, "path", path))
    return len(out.problems) > before


def _fields(row: dict) -> tuple[dict, list[tuple[str, str]]]:
    """The row's values by column, and its problems as (column, message): each refuses this photograph only."""
    found: list[tuple[str, str]] = []
    values = {}
    for column, check in _RULES:
        text = _text(row.get(column))
        if text is None:
            found.append((column, "must be text or a whole number."))
        elif text or column in ("patient", "lesion"):
            values[column], message = check(text)
            if message:
                found.append((column, message))
    return values, found


def _text(value) -> str | None:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():  # 40.0, as a data tool writes a numeric column
        return str(int(value))
    return None


def _identifier(text: str) -> tuple[str, str | None]:
    never = "use the clinic's pseudonymous code (such as P-0042), never a name."
    if not text:
        return text, "is missing: a row names both the patient and the lesion (leave out of the manifest a " \
                     "photograph that has neither)."
    if len(text) > IDENTIFIER_MAX:
        return text, f"is longer than {IDENTIFIER_MAX} characters."
    if any(c.isspace() for c in text):
        return text, f"contains a space; {never}"
    if not IDENTIFIER.fullmatch(text):
        return text, f"may hold only letters, digits and . _ - (starting with a letter or digit); {never}"
    if not any(c.isdigit() for c in text):
        return text, f"holds no digit; {never}"
    return text, None


def _body_site(text: str) -> tuple[str | None, str | None]:
    slug = body_site_slug(text)
    return slug, None if slug else f"is not a body site; use one of {', '.join(BODY_SITES)}."


_WHOLE = re.compile(r"[0-9]+(?:\.0+)?")


def _whole(text: str) -> int | None:
    """A whole number, also as spreadsheets and data tools write one from a numeric column ("2.0")."""
    return int(text.split(".")[0]) if text.isascii() and _WHOLE.fullmatch(text) else None


def _age(text: str) -> tuple[int | None, str | None]:
    low, high = AGE_RANGE
    years = _whole(text)
    if years is None or not low <= years <= high:
        return None, f"is not an age: give a whole number of years from {low} to {high}."
    return years, None


def _sex(text: str) -> tuple[str | None, str | None]:
    value = text.lower()
    return (value, None) if value in SEXES else (None, f"is not one of {', '.join(SEXES)}.")


def _fitzpatrick(text: str) -> tuple[int | None, str | None]:
    value = text.lower()
    number = ROMAN.get(value) or _whole(value)
    if number not in FITZPATRICK_TYPES:
        return None, "is not a Fitzpatrick skin type: give 1 to 6 (or I to VI)."
    return number, None


def _note(text: str) -> tuple[str | None, str | None]:
    # Line breaks become spaces and invisible characters go, as for names: a note is shown on one line.
    flat = " ".join(text.split())
    clean = "".join(c for c in flat if unicodedata.category(c) not in HIDDEN_CATEGORIES)
    if len(clean) > NOTE_MAX:
        return None, f"is {len(clean)} characters long; a note has at most {NOTE_MAX}."
    return clean or None, None


_RULES = (("patient", _identifier), ("lesion", _identifier), ("body_site", _body_site), ("age", _age),
          ("sex", _sex), ("fitzpatrick", _fitzpatrick), ("note", _note))


def _lesion_problems(out: Manifest, identified: dict[str, dict]) -> None:
    """A lesion belongs to one patient and is in one place: rows that disagree are named, each against
    the first row that gave the lesion."""
    first: dict[str, str] = {}  # lesion -> path of its first row
    site_first: dict[str, str] = {}  # lesion -> path of its first row that gives a body site
    for path, values in identified.items():
        lesion, site = values["lesion"], values.get("body_site")
        earlier = first.setdefault(lesion, path)
        if identified[earlier]["patient"] != values["patient"]:
            out.problems.append(Problem(f"gives its lesion another patient than {_where(out.rows[earlier], earlier)}"
                                        ": a lesion belongs to one patient.", out.rows[path], "patient", path))
        if site is None:
            continue
        earlier = site_first.setdefault(lesion, path)
        if identified[earlier]["body_site"] != site:
            out.problems.append(Problem(f"gives its lesion another body site ({site}) than "
                                        f"{_where(out.rows[earlier], earlier)} ({identified[earlier]['body_site']}).",
                                        out.rows[path], "body_site", path))


def _where(number: int | None, path: str) -> str:
    return f"row {number}" if number else path


def _per_folder(problems: list[Problem]) -> list[Problem]:
    """For the folder convention: a problem with a folder's name once for the folder, not per photograph."""
    out: list[Problem] = []
    for p in problems:
        if not p.whole:  # an identifier's own rule: about the folder's name
            depth = 1 if p.column == "patient" else 2
            p = Problem(p.message, column=p.column, path="/".join(p.path.split("/")[:depth]) + "/")
        else:
            p = Problem(p.message, p.row, p.column, p.path)
        if p not in out:
            out.append(p)
    return out
