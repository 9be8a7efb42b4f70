"""The ten skin conditions: names, dataset folders, severity, and what to do about each.

Everything a screen, an export or the risk policy says about a class comes from here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MALIGNANT = "malignant"
NEEDS_TREATMENT = "needs_treatment"
BENIGN = "benign"
SEVERITY_RANK = {MALIGNANT: 2, NEEDS_TREATMENT: 1, BENIGN: 0}

DISCLAIMER = ("Decision support only, not a diagnosis. Results come from an automated model and must be "
              "reviewed by a qualified clinician before any clinical decision.")
UNTRAINED_WARNING = ("UNTRAINED DEMO MODEL: this model has random weights. Its outputs are meaningless and "
                     "must not be used for any clinical purpose.")


@dataclass(frozen=True)
class SkinClass:
    slug: str
    folder: str  # verbatim folder name in the Kaggle "Skin Diseases Image Dataset"
    display_name: str
    description: str
    severity: str
    recommendation: str


CLASSES: tuple[SkinClass, ...] = (
    SkinClass("eczema", "1. Eczema 1677", "Eczema",
              "Inflammatory dermatitis with itchy, red, dry or weeping patches.", NEEDS_TREATMENT,
              "Assess for treatment (emollients, topical anti-inflammatories) at a routine appointment."),
    SkinClass("melanoma", "2. Melanoma 15.75k", "Melanoma",
              "Malignant tumour of melanocytes; the most dangerous common skin cancer.", MALIGNANT,
              "Urgent dermatology referral (suspected-cancer pathway); dermoscopy and excision biopsy."),
    SkinClass("atopic_dermatitis", "3. Atopic Dermatitis - 1.25k", "Atopic dermatitis",
              "Chronic relapsing eczema of atopic patients, often flexural.", NEEDS_TREATMENT,
              "Assess for treatment and trigger management at a routine appointment."),
    SkinClass("bcc", "4. Basal Cell Carcinoma (BCC) 3323", "Basal cell carcinoma",
              "Slow-growing, locally invasive skin cancer; pearly papule or non-healing ulcer.", MALIGNANT,
              "Dermatology referral for confirmation and excision; biopsy when uncertain."),
    SkinClass("melanocytic_nevi", "5. Melanocytic Nevi (NV) - 7970", "Melanocytic nevus",
              "Benign mole made of melanocytes.", BENIGN,
              "No treatment needed; advise self-monitoring (ABCDE) and review if it changes."),
    SkinClass("bkl", "6. Benign Keratosis-like Lesions (BKL) 2624", "Benign keratosis-like lesion",
              "Solar lentigo, seborrhoeic keratosis or lichen-planus-like keratosis.", BENIGN,
              "No treatment needed unless symptomatic; review if it changes."),
    SkinClass("psoriasis_lichen_planus", "7. Psoriasis pictures Lichen Planus and related diseases - 2k",
              "Psoriasis, lichen planus and related diseases",
              "Papulosquamous inflammatory diseases with scaly plaques or violaceous papules.", NEEDS_TREATMENT,
              "Assess for topical or systemic treatment at a routine appointment."),
    SkinClass("seborrheic_keratoses", "8. Seborrheic Keratoses and other Benign Tumors - 1.8k",
              "Seborrheic keratosis and other benign tumours",
              "Common benign 'stuck-on' warty growths and other benign tumours.", BENIGN,
              "No treatment needed unless irritated or for cosmetic reasons."),
    SkinClass("tinea_fungal", "9. Tinea Ringworm Candidiasis and other Fungal Infections - 1.7k",
              "Tinea, candidiasis and other fungal infections",
              "Superficial fungal infections: annular scaly plaques, intertrigo.", NEEDS_TREATMENT,
              "Confirm (skin scraping if unsure) and treat with antifungals."),
    SkinClass("warts_viral", "10. Warts Molluscum and other Viral Infections - 2103",
              "Warts, molluscum and other viral infections",
              "Viral skin infections such as common warts and molluscum contagiosum.", NEEDS_TREATMENT,
              "Usually self-limiting; offer treatment if painful, spreading or in immunosuppressed patients."),
)

BY_SLUG = {c.slug: c for c in CLASSES}
SLUGS = tuple(c.slug for c in CLASSES)


def class_name(slug: str | None) -> str | None:
    """The display name of a class, or None for no class or one this catalogue does not know (a
    model or an old row may name a class that has since been renamed)."""
    known = BY_SLUG.get(slug) if slug else None
    return known.display_name if known else None


MALIGNANT_SLUGS = tuple(c.slug for c in CLASSES if c.severity == MALIGNANT)

# The reference model's class index: a plain alphabetical sort of the folder names ("10. Warts"
# sorts second). A weights file always names its own order in its card; this is only that of
# the published reference weights.
REFERENCE_LABEL_ORDER = tuple(c.slug for c in sorted(CLASSES, key=lambda c: c.folder))


def _normalise(name: str) -> str:
    # Folder names carry a leading index and a trailing image count ("2. Melanoma 15.75k",
    # "... - 2k"); neither names the class, and a count's "k" must not be left behind as a word.
    words = re.sub(r"\d+(?:\.\d+)?k?\b", " ", name.lower())
    return re.sub(r"[^a-z]+", " ", words).strip()


def slug_for_folder(name: str) -> str | None:
    """The class a dataset folder holds: the verbatim folder name, a slug, or a display name."""
    if name in BY_SLUG:
        return name
    wanted = _normalise(name)
    for cls in CLASSES:
        if wanted in (_normalise(cls.folder), _normalise(cls.display_name), _normalise(cls.slug)):
            return cls.slug
    return None
