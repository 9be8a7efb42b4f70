"""The class catalogue against the facts in DESIGN.md (copied here as literals on purpose)."""
from __future__ import annotations

import pytest

from triage.catalogue import (BENIGN, BY_SLUG, CLASSES, DISCLAIMER, MALIGNANT, NEEDS_TREATMENT,
                              REFERENCE_LABEL_ORDER, SLUGS, slug_for_folder)

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

FOLDER_OF = {c.slug: c.folder for c in CLASSES}


def test_ten_classes_with_unique_slugs():
    assert len(CLASSES) == 10
    assert len(set(SLUGS)) == 10
    assert SLUGS == tuple(c.slug for c in CLASSES)
    assert set(BY_SLUG) == set(SLUGS) and all(BY_SLUG[c.slug] is c for c in CLASSES)


def test_folder_names_are_verbatim_from_the_design():
    assert [c.folder for c in CLASSES] == DESIGN_FOLDERS


def test_reference_label_order_matches_the_design():
    assert [FOLDER_OF[s] for s in REFERENCE_LABEL_ORDER] == DESIGN_REFERENCE_ORDER
    assert REFERENCE_LABEL_ORDER[1] == "warts_viral"  # the trap: "10." sorts before "2."
    assert sorted(REFERENCE_LABEL_ORDER) == sorted(SLUGS)


def test_exactly_melanoma_and_bcc_are_malignant():
    assert {c.slug for c in CLASSES if c.severity == MALIGNANT} == {"melanoma", "bcc"}
    assert {c.severity for c in CLASSES} <= {MALIGNANT, NEEDS_TREATMENT, BENIGN}


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


@pytest.mark.parametrize("name", ["", "Acne", "Psoriasis", "2103", "Melanoma in situ", "IMG_CLASSES"])
def test_unknown_names_give_none(name):
    assert slug_for_folder(name) is None
