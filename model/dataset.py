"""A labelled image folder: one sub-folder per class, as the Kaggle dataset is laid out when downloaded.

Folder names are mapped to catalogue classes with `slug_for_folder`, so the verbatim Kaggle names
("2. Melanoma 15.75k"), class slugs ("melanoma"), display names and other datasets' codes (HAM10000
"akiec", PAD-UFES-20 "ACK") all work; anything else is refused with the list of accepted names, because
a label the worker cannot name must never reach a model card.
No TensorFlow here: scanning a folder and splitting it must stay quick.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from triage.catalogue import CLASSES, SLUGS, folder_names, slug_for_folder

from .metadata import TableLayout, find_table, read_table

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


class DatasetError(ValueError):
    """The folder cannot be used as a labelled dataset; the message says what to change."""


@dataclass(frozen=True)
class LabelledImage:
    path: str  # POSIX path relative to the dataset root: what the split CSVs record
    label: str  # catalogue slug
    group: str = ""  # patient or lesion from a metadata table: its photographs stay in one split


@dataclass(frozen=True)
class LabelledFolder:
    root: Path  # the folder that holds the class folders
    images: tuple[LabelledImage, ...]  # sorted by path, so every process sees the same order
    labels: tuple[str, ...]  # the label order a model trained on this folder uses
    folders: dict[str, str]  # slug -> the folder name it came from
    ignored_files: int  # files that are not images (.DS_Store, Thumbs.db, notes)

    def absolute(self, image: LabelledImage) -> Path:
        return self.root / image.path

    def counts(self) -> dict[str, int]:
        found = Counter(image.label for image in self.images)
        return {label: found[label] for label in self.labels}


def accepted_names() -> str:
    lines = ["  " + ", ".join(repr(name) for name in folder_names(c)) for c in CLASSES]
    return "Accepted class folder names, one line per class (dataset codes in any case):\n" + "\n".join(lines)


def scan_labelled_folder(root: Path) -> LabelledFolder:
    table = find_table(Path(root)) if Path(root).is_dir() else None
    if table is not None:
        return scan_table(Path(root), *table)
    root = find_class_root(Path(root))
    folders: dict[str, str] = {}
    images: list[LabelledImage] = []
    ignored = 0
    for folder in _subfolders(root):
        slug = slug_for_folder(folder.name)
        if slug in folders:
            raise DatasetError(f"Folders {folders[slug]!r} and {folder.name!r} both name the class {slug!r}; "
                               f"merge them into one folder.")
        folders[slug] = folder.name
        found = 0
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or _hidden(path.relative_to(root)):
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                ignored += 1
                continue
            images.append(LabelledImage(path.relative_to(root).as_posix(), slug))
            found += 1
        if not found:
            raise DatasetError(f"Class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    # The catalogue's order, not the folders' sort order: "10. Warts" sorting second is how the
    # reference ended up with a surprising label order. Whatever it is, the card records it.
    labels = tuple(slug for slug in SLUGS if slug in folders)
    images.sort(key=lambda image: image.path)
    return LabelledFolder(root, tuple(images), labels, {s: folders[s] for s in labels}, ignored)


def scan_table(root: Path, layout: TableLayout, table: Path) -> LabelledFolder:
    """A folder of photographs described by a PAD-UFES-20 or HAM10000 metadata table (model.metadata)."""
    rows, missing = read_table(root, layout, table, IMAGE_SUFFIXES)
    if missing:
        raise DatasetError(f"{table.name} ({layout.dataset}) names {len(missing)} photographs not found under "
                           f"{root}, for example {', '.join(missing[:3])}.")
    unknown = sorted({row.code for row in rows if slug_for_folder(row.code) is None})
    if unknown:
        raise DatasetError(f"{table.name} ({layout.dataset}) uses diagnosis codes that name no class: "
                           f"{', '.join(repr(c) for c in unknown)}.\n{accepted_names()}")
    images = sorted((LabelledImage(row.path.relative_to(root).as_posix(), slug_for_folder(row.code), row.group)
                     for row in rows), key=lambda image: image.path)
    codes = {slug_for_folder(row.code): row.code for row in rows}
    labels = tuple(slug for slug in SLUGS if slug in codes)
    return LabelledFolder(root, tuple(images), labels, {s: codes[s] for s in labels}, 0)


def find_class_root(root: Path) -> Path:
    """The folder whose sub-folders are the classes. The Kaggle archive unpacks into one wrapper
    folder (e.g. IMG_CLASSES), so a single folder that is not a class name is stepped into."""
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder.")
    current = root
    while True:
        subfolders = _subfolders(current)
        unknown = [f.name for f in subfolders if slug_for_folder(f.name) is None]
        if subfolders and not unknown:
            return current
        if len(subfolders) == 1:
            current = subfolders[0]
            continue
        if not subfolders:
            raise DatasetError(f"{root} holds no class folders: put each class's images in a folder named "
                               f"for the class.\n{accepted_names()}")
        raise DatasetError(f"In {current}, these folders do not name a class: "
                           f"{', '.join(repr(n) for n in unknown)}.\n{accepted_names()}")


def _subfolders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _hidden(relative: Path) -> bool:
    # macOS leaves ._name resource files and .DS_Store beside every image copied from it.
    return any(part.startswith(".") for part in relative.parts)
