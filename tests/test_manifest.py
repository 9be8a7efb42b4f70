"""`triage.manifest`: every rule as a row of a table (each fails if its rule is removed), the folder
convention, the API's rows, and a good manifest read whole."""
from __future__ import annotations

import pytest

from triage.body_sites import BODY_SITES, body_site_slug
from triage.manifest import Fields, from_layout, parse_csv, parse_rows

HEADER = "path,patient,lesion,body_site,age,sex,fitzpatrick,note\n"
PHOTOS = ["a.jpg", "b.jpg", "room 2/c.jpg"]


def problems_of(text: str, paths=PHOTOS) -> list[tuple]:
    return [(p.row, p.column, p.whole) for p in parse_csv(text, paths).problems]


# (what, manifest text, [(row, column, whole)] expected, a phrase of the first message)
RULES = [
    ("no header", "", [(1, None, True)], "no header row"),
    ("semicolons", "path;patient;lesion;body_site\n", [(1, None, True)], "commas"),
    ("missing column", "path,patient,lesion\na.jpg,P-1,L-1\n", [(1, "body_site", True)], "missing"),
    ("unknown column", "path,patient,lesion,body_site,name\na.jpg,P-1,L-1,back,x\n", [(1, "", True)], "unknown columns name"),
    ("column twice", "path,patient,lesion,body_site,age,age\na.jpg,P-1,L-1,back,3,4\n", [(1, "age", True)], "more than once"),
    ("too many cells", HEADER + "a.jpg,P-1,L-1,back,40,female,2,note,extra\n", [(2, None, True)], "9 cells"),
    ("unknown file", HEADER + "zz.jpg,P-1,L-1,back,,,,\n", [(2, "path", True)], "names no photograph"),
    ("no path", HEADER + ",P-1,L-1,back,,,,\n", [(2, "path", True)], "has no path"),
    ("duplicated row", HEADER + "a.jpg,P-1,L-1,back,,,,\na.jpg,P-1,L-1,back,,,,\n", [(3, "path", True)],
     "same photograph as row 2"),
    ("lesion of two patients", HEADER + "a.jpg,P-1,L-1,back,,,,\nb.jpg,P-2,L-1,back,,,,\n", [(3, "patient", True)],
     "another patient than row 2"),
    ("lesion at two sites", HEADER + "a.jpg,P-1,L-1,back,,,,\nb.jpg,P-1,L-1,chest,,,,\n", [(3, "body_site", True)],
     "another body site (chest) than row 2 (back)"),
    ("missing patient", HEADER + "a.jpg,,L-1,back,,,,\n", [(2, "patient", False)], "is missing"),
    ("missing lesion", HEADER + "a.jpg,P-1,,back,,,,\n", [(2, "lesion", False)], "is missing"),
    ("a name with a space", HEADER + "a.jpg,Given Family 1,L-1,back,,,,\n", [(2, "patient", False)], "contains a space"),
    ("a name without digits", HEADER + "a.jpg,P-1,surname,back,,,,\n", [(2, "lesion", False)], "holds no digit"),
    ("odd characters", HEADER + "a.jpg,P/1,L-1,back,,,,\n", [(2, "patient", False)], "only letters, digits"),
    ("control character", HEADER + "a.jpg,P\x071,L-1,back,,,,\n", [(2, "patient", False)], "only letters, digits"),
    ("too long", HEADER + f"a.jpg,P{'1' * 64},L-1,back,,,,\n", [(2, "patient", False)], "longer than 64"),
    ("body site", HEADER + "a.jpg,P-1,L-1,elbow pit,,,,\n", [(2, "body_site", False)], "not a body site"),
    ("age over 120", HEADER + "a.jpg,P-1,L-1,back,121,,,\n", [(2, "age", False)], "not an age"),
    ("age not a number", HEADER + "a.jpg,P-1,L-1,back,forty,,,\n", [(2, "age", False)], "not an age"),
    ("age negative", HEADER + "a.jpg,P-1,L-1,back,-1,,,\n", [(2, "age", False)], "not an age"),
    ("sex", HEADER + "a.jpg,P-1,L-1,back,,f,,\n", [(2, "sex", False)], "not one of female, male, other, unknown"),
    ("skin type 7", HEADER + "a.jpg,P-1,L-1,back,,,7,\n", [(2, "fitzpatrick", False)], "not a Fitzpatrick"),
    ("skin type 0", HEADER + "a.jpg,P-1,L-1,back,,,0,\n", [(2, "fitzpatrick", False)], "not a Fitzpatrick"),
    ("skin type 2.5", HEADER + "a.jpg,P-1,L-1,back,,,2.5,\n", [(2, "fitzpatrick", False)], "not a Fitzpatrick"),
    ("age 40.5", HEADER + "a.jpg,P-1,L-1,back,40.5,,,\n", [(2, "age", False)], "not an age"),
    ("note too long", HEADER + f"a.jpg,P-1,L-1,back,,,,{'x' * 501}\n", [(2, "note", False)], "at most 500"),
]


@pytest.mark.parametrize("what,text,expected,phrase", RULES, ids=[r[0] for r in RULES])
def test_each_rule_names_its_row_and_column(what, text, expected, phrase):
    manifest = parse_csv(text, PHOTOS)
    assert [(p.row, p.column, p.whole) for p in manifest.problems] == expected
    assert phrase in manifest.problems[0].message
    assert not manifest.ok


def test_every_problem_is_listed_not_only_the_first():
    text = (HEADER + "a.jpg,P-1,L-1,back,200,x,9,\n"  # three bad values on one row
            "b.jpg,P-2,L-1,chest,,,,\n"  # another patient and site for L-1
            "gone.jpg,P-3,L-3,,,,,\n"
            "room 2/c.jpg,Given Family,L-4,,,,,\n")
    texts = [str(p) for p in parse_csv(text, PHOTOS).problems]
    assert texts == [
        "row 2 (age): is not an age: give a whole number of years from 0 to 120.",
        "row 2 (sex): is not one of female, male, other, unknown.",
        "row 2 (fitzpatrick): is not a Fitzpatrick skin type: give 1 to 6 (or I to VI).",
        "row 3 (patient): gives its lesion another patient than row 2: a lesion belongs to one patient.",
        "row 3 (body_site): gives its lesion another body site (chest) than row 2 (back).",
        "row 4 (path): names no photograph of the folder (the path is relative to the folder that holds the manifest).",
        "row 5 (patient): contains a space; use the clinic's pseudonymous code (such as P-0042), never a name.",
    ]
    assert not any("Given" in t or "Family" in t for t in texts)  # problems never repeat a value


def test_a_good_manifest_gives_every_named_photograph_its_fields():
    text = ("\ufeffPath, Patient ,Lesion,Body site,Age,Sex,Fitzpatrick,Note\r\n"  # Excel's BOM, loose header
            "a.jpg,P-0042,L-7,Upper arm,54,Female,III,\"raised, itchy\nfor 3 weeks\"\r\n"
            "./room 2/c.jpg,P-0042,L-7,,,,,\r\n"
            ",,,,,,,\r\n"  # an empty row is no row
            "b.jpg,P-0043,L.8_b,back,0,unknown,6,\r\n")
    manifest = parse_csv(text, PHOTOS)
    assert manifest.ok, [str(p) for p in manifest.problems]
    assert manifest.files == {
        "a.jpg": Fields("P-0042", "L-7", "upper_arm", 54, "female", 3, "raised, itchy for 3 weeks"),
        "room 2/c.jpg": Fields("P-0042", "L-7"),  # a lesion's body site need not be repeated
        "b.jpg": Fields("P-0043", "L.8_b", "back", 0, "unknown", 6),
    }
    assert manifest.rows == {"a.jpg": 2, "room 2/c.jpg": 3, "b.jpg": 5}
    # Photographs the manifest leaves out are fine: they stay unnamed.
    assert "b.jpg" in parse_csv(HEADER + "b.jpg,P-1,L-1,back,,,,\n", PHOTOS).files


def test_body_sites_are_one_list_of_slugs_with_labels():
    assert list(BODY_SITES)[:3] == ["scalp", "face", "ear"] and BODY_SITES["lower_leg"] == "Lower leg"
    assert body_site_slug("Lower-leg") == "lower_leg" and body_site_slug("knee") is None


def test_the_folder_convention_names_patient_then_lesion():
    manifest = from_layout(["P-1/L-1/a.jpg", "P-1/L-1/visit 2/b.jpg", "P-2/L-2/c.jpg"])
    assert manifest.ok
    assert manifest.files == {"P-1/L-1/a.jpg": Fields("P-1", "L-1"), "P-1/L-1/visit 2/b.jpg": Fields("P-1", "L-1"),
                              "P-2/L-2/c.jpg": Fields("P-2", "L-2")}


def test_the_folder_convention_reports_each_bad_folder_once():
    manifest = from_layout(["Given Family/L-1/a.jpg", "Given Family/L-1/b.jpg", "P-2/lesion/c.jpg", "loose.jpg",
                            "P-3/d.jpg", "P-4/L-5/e.jpg", "P-6/L-5/f.jpg"])
    assert sorted(str(p) for p in manifest.problems) == [
        "Given Family/ (patient): contains a space; use the clinic's pseudonymous code (such as P-0042), never a name.",
        "P-2/lesion/ (lesion): holds no digit; use the clinic's pseudonymous code (such as P-0042), never a name.",
        "P-3/d.jpg: is not inside a <patient>/<lesion>/ folder.",
        "P-6/L-5/f.jpg (patient): gives its lesion another patient than P-4/L-5/e.jpg: a lesion belongs to one patient.",
        "loose.jpg: is not inside a <patient>/<lesion>/ folder.",
    ]
    assert all(p.whole for p in manifest.problems)


def test_whole_numbers_written_as_a_spreadsheet_writes_them_are_taken():
    # A numeric column saved by a spreadsheet or a data tool reads "2.0"; the public PAD-UFES-20 metadata
    # does this for the skin type. Only whole values pass: 2.5 is refused above.
    manifest = parse_csv(HEADER + "a.jpg,P-1,L-1,back,31.0,,2.0,\nb.jpg,P-1,L-2,back,7,,IV,\n", PHOTOS)
    assert manifest.ok, manifest.problems
    assert manifest.files["a.jpg"] == Fields("P-1", "L-1", "back", 31, None, 2)
    assert manifest.files["b.jpg"] == Fields("P-1", "L-2", "back", 7, None, 4)
    rows = parse_rows([{"path": "a.jpg", "patient": "P-1", "lesion": "L-1", "age": 40.0, "fitzpatrick": 3.0}], PHOTOS)
    assert rows.ok and rows.files["a.jpg"] == Fields("P-1", "L-1", None, 40, None, 3)


def test_the_apis_rows_follow_the_same_rules():
    names = ["day/a.jpg", "day/b.jpg"]
    good = parse_rows([{"path": "day/a.jpg", "patient": "P-1", "lesion": "L-1", "body_site": "back", "age": 40,
                        "fitzpatrick": "2"}], names)
    assert good.ok and good.files == {"day/a.jpg": Fields("P-1", "L-1", "back", 40, None, 2)}
    bad = parse_rows([{"path": "day/a.jpg", "patient": "P-1", "lesion": "L-1", "age": True, "name": "x"},
                      {"path": "day/b.jpg", "patient": ["P-1"], "lesion": 7}], names)
    assert [(p.row, p.column, p.whole) for p in bad.problems] == [
        (1, None, True), (1, "age", False), (2, "patient", False)]
    assert [p.path for p in bad.problems if not p.whole] == ["day/a.jpg", "day/b.jpg"]  # each refuses its file
    assert not parse_rows({"path": "x"}, names).ok
    assert parse_rows([{"path": "day/a.jpg", "patient": 42, "lesion": 7}], names).files["day/a.jpg"] == Fields("42", "7")


def test_a_manifest_names_at_most_ten_thousand_photographs():
    paths = [f"{i}.jpg" for i in range(10_001)]
    text = HEADER + "".join(f"{p},P-{i},L-{i},,,,,\n" for i, p in enumerate(paths))
    assert [p.message for p in parse_csv(text, paths).problems] == [
        "has 10001 rows; at most 10000 photographs per manifest."]
    assert parse_csv(HEADER + "".join(f"{p},P-{i},L-{i},,,,,\n" for i, p in enumerate(paths[:-1])), paths).ok
