"""Where on the body a lesion is: the one list the manifest, the API, the pages and the exports use.

Coarse anatomical regions a clinic can name without a chart, as slugs with labels. Laterality is left
out on purpose: it belongs in the clinical note until the exports need it coded.
"""
from __future__ import annotations

BODY_SITES: dict[str, str] = {
    "scalp": "Scalp",
    "face": "Face",
    "ear": "Ear",
    "neck": "Neck",
    "chest": "Chest",
    "abdomen": "Abdomen",
    "back": "Back",
    "upper_arm": "Upper arm",
    "forearm": "Forearm",
    "hand": "Hand",
    "thigh": "Thigh",
    "lower_leg": "Lower leg",
    "foot": "Foot",
    "genital": "Genital area",
    "other": "Other",
}


def body_site_slug(text: str) -> str | None:
    """The slug a clinic's spelling stands for ("Upper arm", "upper-arm", "upper_arm"), or None."""
    slug = "_".join(text.strip().lower().replace("-", " ").replace("_", " ").split())
    return slug if slug in BODY_SITES else None


def body_site_name(slug: str | None) -> str | None:
    return BODY_SITES.get(slug) if slug else None


SNOMED_CT = "http://snomed.info/sct"

# The SNOMED CT body structure each site stands for, with the concept's display, for the FHIR export.
# Checked one by one against published code lists; a site left out here ("other") is exported with its
# label as text alone, since a guessed code would be taken at face value by a receiving system.
BODY_SITE_SNOMED: dict[str, tuple[str, str]] = {
    "scalp": ("41695006", "Scalp structure"),
    "face": ("89545001", "Face structure"),
    "ear": ("117590005", "Ear structure"),
    "neck": ("45048000", "Neck structure"),
    "chest": ("51185008", "Thoracic structure"),
    "abdomen": ("113345001", "Abdominal structure"),
    "back": ("77568009", "Structure of back of trunk"),
    "upper_arm": ("40983000", "Upper arm structure"),
    "forearm": ("14975008", "Forearm structure"),
    "hand": ("85562004", "Hand structure"),
    "thigh": ("68367000", "Thigh structure"),
    "lower_leg": ("30021000", "Lower leg structure"),
    "foot": ("56459004", "Foot structure"),
    "genital": ("71934003", "Genital structure"),
}


def body_site_snomed(slug: str | None) -> tuple[str, str] | None:
    """The SNOMED CT code and display of a site, or None when it has none (no site, or "other")."""
    return BODY_SITE_SNOMED.get(slug) if slug else None
