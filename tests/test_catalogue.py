"""The class catalogue against the facts in DESIGN.md (copied here as literals on purpose)."""
from __future__ import annotations

import pytest

from triage.catalogue import (BENIGN, BY_SLUG, CLASSES, DISCLAIMER, MALIGNANT, NEEDS_TREATMENT, PRE_MALIGNANT,
                              REFERENCE_LABEL_ORDER, SEVERITY_RANK, SLUGS, class_name, classes_of, folder_names,
                              named_probabilities, slug_for_folder)

# DESIGN.md, "Facts to build against": the dataset's folder names, verbatim, in the table's order.
DESIGN_FOLDERS = [
    "1. Eczema 1677",
    "2. Melanoma 15.75k",
    "3. Atopic Dermatitis - 1.25k",
    "4. Basal Cell Carcinoma (BCC) 3323",
    "5. Melanocytic Nevi (NV) - 7970",
    "6. Benign Keratosis-like Lesions (BKL) 2624",
    "7. Psoriasis pictures Lichen Planus and related diseases - 2k",
    "8. Seborrheic Keratoses and other Benign Tumors - 1.8k",
    "9. Tinea Ringworm Candidiasis and other Fungal Infections - 1.7k",
    "10. Warts Molluscum and other Viral Infections - 2103",
]

# DESIGN.md: the reference model's index order (alphabetical folder sort puts "10. Warts" second).
DESIGN_REFERENCE_ORDER = [
    "1. Eczema 1677",                                                    # 0 Eczema
    "10. Warts Molluscum and other Viral Infections - 2103",             # 1 Warts/Molluscum
    "2. Melanoma 15.75k",                                                # 2 Melanoma
    "3. Atopic Dermatitis - 1.25k",                                      # 3 Atopic Dermatitis
    "4. Basal Cell Carcinoma (BCC) 3323",                                # 4 BCC
    "5. Melanocytic Nevi (NV) - 7970",                                   # 5 Melanocytic Nevi
    "6. Benign Keratosis-like Lesions (BKL) 2624",                       # 6 BKL
    "7. Psoriasis pictures Lichen Planus and related diseases - 2k",     # 7 Psoriasis/Lichen Planus
    "8. Seborrheic Keratoses and other Benign Tumors - 1.8k",            # 8 Seborrheic Keratoses
    "9. Tinea Ringworm Candidiasis and other Fungal Infections - 1.7k",  # 9 Tinea
]

# DESIGN.md, "Other datasets a clinic may train on": each dataset's codes, and the class each names.
HAM10000_CODES = {"akiec": "actinic_keratosis", "bcc": "bcc", "bkl": "bkl", "df": "dermatofibroma",
                  "mel": "melanoma", "nv": "melanocytic_nevi", "vasc": "vascular_lesion"}
PAD_UFES_20_CODES = {"ACK": "actinic_keratosis", "BCC": "bcc", "MEL": "melanoma", "NEV": "melanocytic_nevi",
                     "SCC": "scc", "SEK": "seborrheic_keratoses"}
# ISIC 2019 adds squamous cell carcinoma and calls actinic keratosis AK.
ISIC_2019_CODES = {"AK": "actinic_keratosis", "SCC": "scc", "DF": "dermatofibroma", "VASC": "vascular_lesion"}

# DESIGN.md: "melanoma, BCC, SCC malignant; actinic keratosis / intraepithelial carcinoma pre-malignant
# (never routine); nevus, BKL, SEK, dermatofibroma, vascular benign"; the Kaggle set's inflammatory and
# infectious classes need treatment.
DESIGN_SEVERITY = {
    "melanoma": MALIGNANT, "bcc": MALIGNANT, "scc": MALIGNANT,
    "actinic_keratosis": PRE_MALIGNANT,
    "eczema": NEEDS_TREATMENT, "atopic_dermatitis": NEEDS_TREATMENT, "psoriasis_lichen_planus": NEEDS_TREATMENT,
    "tinea_fungal": NEEDS_TREATMENT, "warts_viral": NEEDS_TREATMENT,
    "melanocytic_nevi": BENIGN, "bkl": BENIGN, "seborrheic_keratoses": BENIGN, "dermatofibroma": BENIGN,
    "vascular_lesion": BENIGN,
}

FOLDER_OF = {c.slug: c.folder for c in CLASSES}


def test_the_ten_kaggle_classes_come_first_then_the_other_datasets_classes():
    assert len(set(SLUGS)) == len(CLASSES) == 14
    assert SLUGS == tuple(c.slug for c in CLASSES)
    assert set(BY_SLUG) == set(SLUGS) and all(BY_SLUG[c.slug] is c for c in CLASSES)
    assert [c.folder is not None for c in CLASSES] == [True] * 10 + [False] * 4
    assert set(SLUGS) == set(DESIGN_SEVERITY)


def test_folder_names_are_verbatim_from_the_design():
    assert [c.folder for c in CLASSES if c.folder] == DESIGN_FOLDERS


def test_reference_label_order_matches_the_design():
    assert [FOLDER_OF[s] for s in REFERENCE_LABEL_ORDER] == DESIGN_REFERENCE_ORDER
    assert REFERENCE_LABEL_ORDER[1] == "warts_viral"  # the trap: "10." sorts before "2."
    assert REFERENCE_LABEL_ORDER == ("eczema", "warts_viral", "melanoma", "atopic_dermatitis", "bcc",
                                     "melanocytic_nevi", "bkl", "psoriasis_lichen_planus", "seborrheic_keratoses",
                                     "tinea_fungal")  # the new classes never join the reference's order


@pytest.mark.parametrize("slug, severity", DESIGN_SEVERITY.items())
def test_severity_of_every_class_is_the_designs(slug, severity):
    assert BY_SLUG[slug].severity == severity


def test_pre_malignant_ranks_between_malignant_and_needs_treatment():
    assert SEVERITY_RANK[MALIGNANT] > SEVERITY_RANK[PRE_MALIGNANT] > SEVERITY_RANK[NEEDS_TREATMENT] \
        > SEVERITY_RANK[BENIGN]
    assert set(SEVERITY_RANK) == {c.severity for c in CLASSES}


def test_every_class_has_text_for_screens():
    for c in CLASSES:
        assert c.display_name and c.description and c.recommendation, c.slug


def test_disclaimer_says_it_is_not_a_diagnosis():
    assert "not a diagnosis" in DISCLAIMER and "clinician" in DISCLAIMER


@pytest.mark.parametrize("folder", DESIGN_FOLDERS)
def test_verbatim_folder_names_map_to_their_class(folder):
    assert FOLDER_OF[slug_for_folder(folder)] == folder


@pytest.mark.parametrize("name, slug", [
    ("Eczema", "eczema"),
    ("eczema", "eczema"),
    ("Melanoma", "melanoma"),
    ("Atopic Dermatitis", "atopic_dermatitis"),
    ("Basal Cell Carcinoma (BCC)", "bcc"),
    ("Basal cell carcinoma", "bcc"),
    ("Melanocytic Nevi (NV)", "melanocytic_nevi"),
    ("Benign Keratosis-like Lesions (BKL)", "bkl"),
    # Bare folder names whose count ends in "k": the "k" must not stick to the name.
    ("Psoriasis pictures Lichen Planus and related diseases", "psoriasis_lichen_planus"),
    ("Seborrheic Keratoses and other Benign Tumors", "seborrheic_keratoses"),
    ("Tinea Ringworm Candidiasis and other Fungal Infections", "tinea_fungal"),
    ("Warts Molluscum and other Viral Infections", "warts_viral"),
    # A re-counted copy of the dataset keeps the names but not the numbers.
    ("2. Melanoma 3140", "melanoma"),
])
def test_bare_and_display_names_map(name, slug):
    assert slug_for_folder(name) == slug


@pytest.mark.parametrize("slug", SLUGS)
def test_slugs_map_to_themselves(slug):
    assert slug_for_folder(slug) == slug


@pytest.mark.parametrize("name", ["", "Acne", "Psoriasis", "2103", "Melanoma in situ", "IMG_CLASSES",
                                  "UNK", "akiec-like", "keratosis", "PAD-UFES-20"])
def test_unknown_names_give_none(name):
    assert slug_for_folder(name) is None


@pytest.mark.parametrize("code, slug", [*HAM10000_CODES.items(), *PAD_UFES_20_CODES.items(), *ISIC_2019_CODES.items()])
def test_dataset_codes_map_in_any_case(code, slug):
    for spelling in (code, code.lower(), code.upper()):
        assert slug_for_folder(spelling) == slug, spelling


@pytest.mark.parametrize("name, slug", [
    ("Actinic keratosis", "actinic_keratosis"),  # the slug, written out
    ("Actinic keratosis / intraepithelial carcinoma", "actinic_keratosis"),
    ("Squamous cell carcinoma", "scc"),
    ("Dermatofibroma", "dermatofibroma"),
    ("Vascular lesion", "vascular_lesion"),
])
def test_new_classes_map_by_name(name, slug):
    assert slug_for_folder(name) == slug


def test_no_name_or_code_belongs_to_two_classes():
    for cls in CLASSES:
        for name in folder_names(cls):
            assert slug_for_folder(name) == cls.slug, (name, cls.slug)


def test_classes_of_a_label_set_in_catalogue_order():
    pad = ["actinic_keratosis", "bcc", "melanoma", "melanocytic_nevi", "scc", "seborrheic_keratoses"]
    assert [c.slug for c in classes_of(pad)] == ["melanoma", "bcc", "melanocytic_nevi", "seborrheic_keratoses",
                                                 "actinic_keratosis", "scc"]
    assert classes_of(["renamed_class"]) == ()


def test_named_probabilities_most_probable_first_with_names():
    named = named_probabilities({"scc": 0.2, "actinic_keratosis": 0.5, "melanoma": 0.2, "renamed": 0.1})
    assert [(n["slug"], n["name"], n["probability"]) for n in named] == [
        ("actinic_keratosis", class_name("actinic_keratosis"), 0.5),
        ("melanoma", "Melanoma", 0.2),  # a tie goes to catalogue order
        ("scc", "Squamous cell carcinoma", 0.2),
        ("renamed", "renamed", 0.1)]  # a class the catalogue no longer knows keeps its slug
    assert named_probabilities(None) == []
