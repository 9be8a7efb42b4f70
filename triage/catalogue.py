"""The skin conditions: names, dataset folders and codes, severity, and what to do about each.

The ten classes of the Kaggle "Skin Diseases Image Dataset" and the classes of the common public
dermoscopic and smartphone datasets (HAM10000 / ISIC, PAD-UFES-20), one entry per condition: a class
two datasets share (melanoma, BCC, nevus, ...) is one class with both datasets' codes. A model serves
exactly the classes its card names, in any number; everything a screen, an export or the risk policy
says about a class comes from here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MALIGNANT = "malignant"
# Actinic keratosis and intraepithelial carcinoma (Bowen's disease) are not yet invasive cancer but can
# become squamous cell carcinoma, and a thick one may already be: never routine (see triage/risk.py).
PRE_MALIGNANT = "pre_malignant"
NEEDS_TREATMENT = "needs_treatment"
BENIGN = "benign"
SEVERITY_RANK = {MALIGNANT: 3, PRE_MALIGNANT: 2, NEEDS_TREATMENT: 1, BENIGN: 0}

DISCLAIMER = ("Decision support only, not a diagnosis. Results come from an automated model and must be "
              "reviewed by a qualified clinician before any clinical decision.")
UNTRAINED_WARNING = ("UNTRAINED DEMO MODEL: this model has random weights. Its outputs are meaningless and "
                     "must not be used for any clinical purpose.")


@dataclass(frozen=True)
class SkinClass:
    slug: str
    folder: str | None  # verbatim folder name in the Kaggle "Skin Diseases Image Dataset"; None: not in it
    display_name: str
    description: str
    severity: str
    recommendation: str
    # Other datasets' codes for this class, matched without regard to case: HAM10000 / ISIC 2018 `dx`
    # (akiec, bcc, bkl, df, mel, nv, vasc), ISIC 2019 (AK, SCC, ...), PAD-UFES-20 `diagnostic` (ACK, ...).
    codes: tuple[str, ...] = ()


CLASSES: tuple[SkinClass, ...] = (
    SkinClass("eczema", "1. Eczema 1677", "Eczema",
              "Inflammatory dermatitis with itchy, red, dry or weeping patches.", NEEDS_TREATMENT,
              "Assess for treatment (emollients, topical anti-inflammatories) at a routine appointment."),
    SkinClass("melanoma", "2. Melanoma 15.75k", "Melanoma",
              "Malignant tumour of melanocytes; the most dangerous common skin cancer.", MALIGNANT,
              "Urgent dermatology referral (suspected-cancer pathway); dermoscopy and excision biopsy.",
              codes=("mel",)),
    SkinClass("atopic_dermatitis", "3. Atopic Dermatitis - 1.25k", "Atopic dermatitis",
              "Chronic relapsing eczema of atopic patients, often flexural.", NEEDS_TREATMENT,
              "Assess for treatment and trigger management at a routine appointment."),
    SkinClass("bcc", "4. Basal Cell Carcinoma (BCC) 3323", "Basal cell carcinoma",
              "Slow-growing, locally invasive skin cancer; pearly papule or non-healing ulcer.", MALIGNANT,
              "Dermatology referral for confirmation and excision; biopsy when uncertain.", codes=("bcc",)),
    SkinClass("melanocytic_nevi", "5. Melanocytic Nevi (NV) - 7970", "Melanocytic nevus",
              "Benign mole made of melanocytes.", BENIGN,
              "No treatment needed; advise self-monitoring (ABCDE) and review if it changes.",
              codes=("nv", "nev")),
    SkinClass("bkl", "6. Benign Keratosis-like Lesions (BKL) 2624", "Benign keratosis-like lesion",
              "Solar lentigo, seborrhoeic keratosis or lichen-planus-like keratosis.", BENIGN,
              "No treatment needed unless symptomatic; review if it changes.", codes=("bkl",)),
    SkinClass("psoriasis_lichen_planus", "7. Psoriasis pictures Lichen Planus and related diseases - 2k",
              "Psoriasis, lichen planus and related diseases",
              "Papulosquamous inflammatory diseases with scaly plaques or violaceous papules.", NEEDS_TREATMENT,
              "Assess for topical or systemic treatment at a routine appointment."),
    SkinClass("seborrheic_keratoses", "8. Seborrheic Keratoses and other Benign Tumors - 1.8k",
              "Seborrheic keratosis and other benign tumours",
              "Common benign 'stuck-on' warty growths and other benign tumours.", BENIGN,
              "No treatment needed unless irritated or for cosmetic reasons.", codes=("sek",)),
    SkinClass("tinea_fungal", "9. Tinea Ringworm Candidiasis and other Fungal Infections - 1.7k",
              "Tinea, candidiasis and other fungal infections",
              "Superficial fungal infections: annular scaly plaques, intertrigo.", NEEDS_TREATMENT,
              "Confirm (skin scraping if unsure) and treat with antifungals."),
    SkinClass("warts_viral", "10. Warts Molluscum and other Viral Infections - 2103",
              "Warts, molluscum and other viral infections",
              "Viral skin infections such as common warts and molluscum contagiosum.", NEEDS_TREATMENT,
              "Usually self-limiting; offer treatment if painful, spreading or in immunosuppressed patients."),
    # Classes of the dermoscopic and smartphone datasets that the Kaggle set lacks.
    SkinClass("actinic_keratosis", None, "Actinic keratosis / intraepithelial carcinoma",
              "Rough scaly patch on sun-damaged skin; includes Bowen's disease (carcinoma in situ). "
              "Can progress to squamous cell carcinoma.", PRE_MALIGNANT,
              "Not routine: clinician review within weeks and treatment (cryotherapy, topical therapy); "
              "biopsy if thick, tender, bleeding or growing, to exclude invasive SCC.",
              codes=("akiec", "ak", "ack")),
    SkinClass("scc", None, "Squamous cell carcinoma",
              "Skin cancer of keratinocytes: growing scaly or crusted nodule or non-healing ulcer on "
              "sun-exposed skin; can spread.", MALIGNANT,
              "Urgent dermatology referral (suspected-cancer pathway) for excision.",
              codes=("scc",)),
    SkinClass("dermatofibroma", None, "Dermatofibroma",
              "Firm benign dermal nodule, often on the legs, that dimples when pinched.", BENIGN,
              "No treatment needed; review if it grows, changes or looks atypical.",
              codes=("df",)),
    SkinClass("vascular_lesion", None, "Vascular lesion",
              "Cherry angioma, angiokeratoma, pyogenic granuloma or haemorrhage.", BENIGN,
              "No treatment needed unless it bleeds or bothers the patient; review a new, fast-growing or "
              "bleeding nodule.",
              codes=("vasc",)),
)

BY_SLUG = {c.slug: c for c in CLASSES}
SLUGS = tuple(c.slug for c in CLASSES)


def class_name(slug: str | None) -> str | None:
    """The display name of a class, or None for no class or one this catalogue does not know (a
    model or an old row may name a class that has since been renamed)."""
    known = BY_SLUG.get(slug) if slug else None
    return known.display_name if known else None


def classes_of(slugs) -> tuple[SkinClass, ...]:
    """The catalogue's classes among `slugs` (a model's labels, an analysis's probabilities), in
    catalogue order; slugs the catalogue does not know are left out."""
    wanted = set(slugs)
    return tuple(c for c in CLASSES if c.slug in wanted)


def named_probabilities(probabilities: dict[str, float] | None) -> list[dict]:
    """An analysis's own classes, most probable first (ties in catalogue order), each with its display
    name: what every page, API answer and export lists, whatever label set the model had."""
    order = {slug: i for i, slug in enumerate(SLUGS)}
    ranked = sorted((probabilities or {}).items(), key=lambda kv: (-kv[1], order.get(kv[0], len(order)), kv[0]))
    return [{"slug": slug, "name": class_name(slug) or slug, "probability": p} for slug, p in ranked]


MALIGNANT_SLUGS = tuple(c.slug for c in CLASSES if c.severity == MALIGNANT)
PRE_MALIGNANT_SLUGS = tuple(c.slug for c in CLASSES if c.severity == PRE_MALIGNANT)

# The reference model's class index: a plain alphabetical sort of the Kaggle folder names ("10. Warts"
# sorts second). A weights file always names its own order in its card; this is only that of
# the published reference weights.
REFERENCE_LABEL_ORDER = tuple(c.slug for c in sorted((c for c in CLASSES if c.folder), key=lambda c: c.folder))


def _normalise(name: str) -> str:
    # Folder names carry a leading index and a trailing image count ("2. Melanoma 15.75k",
    # "... - 2k"); neither names the class, and a count's "k" must not be left behind as a word.
    words = re.sub(r"\d+(?:\.\d+)?k?\b", " ", name.lower())
    return re.sub(r"[^a-z]+", " ", words).strip()


def folder_names(cls: SkinClass) -> tuple[str, ...]:
    """Every name a dataset folder may give this class: the Kaggle folder, slug, display name, codes."""
    names = ((cls.folder,) if cls.folder else ()) + (cls.slug, cls.display_name) + cls.codes
    return tuple(dict.fromkeys(names))  # a code may equal the slug ("bcc")


def slug_for_folder(name: str) -> str | None:
    """The class a dataset folder holds: the verbatim Kaggle folder name, a slug, a display name, or a
    dataset's code for it (HAM10000 `akiec`, PAD-UFES-20 `ACK`; any case)."""
    if name in BY_SLUG:
        return name
    wanted = _normalise(name)
    for cls in CLASSES:
        if wanted in (_normalise(n) for n in folder_names(cls)):
            return cls.slug
    return None
