"""The train / validation / test split: stratified, reproducible, and with near-duplicates kept together.

ISIC holds several photographs of one lesion, so an image-level random split lets a lesion seen in
training be "recognised" in the test set and overstates accuracy. Images whose perceptual hashes are
equal or within a few bits are joined into one group (transitively: union-find), and whole groups
are assigned to splits, class by class.

Reproducible means the same files in every process and on every machine: file lists are sorted, the
shuffles use NumPy's legacy RandomState (its stream is frozen across NumPy versions) seeded from the
seed and a CRC of the class name, and nothing depends on Python's per-process string hashing.

`python -m model.splits DATA --out DIR` writes the split without training, to inspect it first.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import sys
import zlib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triage.imaging import decode_rgb
from triage.phash import bit_blocks, perceptual_hash, popcount

from .dataset import LabelledFolder, scan_labelled_folder

SEED = 42
FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
SPLITS = tuple(FRACTIONS)
# The worker flags two uploads as near-duplicates within 8 bits (DERMATRIAGE_NEAR_DUPLICATE_DISTANCE);
# training keeps together what the worker would call the same picture.
NEAR_DUPLICATE_BITS = 8
CSV_FIELDS = ("path", "label", "group", "phash", "split")
HASH_CACHE_FIELDS = ("path", "size", "mtime_ns", "phash", "error")


@dataclass(frozen=True)
class SplitRow:
    path: str
    label: str
    group: int  # index (in path order) of the group's first image
    phash: str
    split: str


@dataclass(frozen=True)
class Split:
    rows: tuple[SplitRow, ...]
    labels: tuple[str, ...]
    unreadable: tuple[tuple[str, str], ...]  # (path, reason): left out, listed in the summary
    max_distance: int
    seed: int

    def rows_in(self, split: str) -> list[SplitRow]:
        return [row for row in self.rows if row.split == split]

    def summary(self) -> dict:
        groups = Counter(row.group for row in self.rows)
        labels_in_group: dict[int, set[str]] = defaultdict(set)
        for row in self.rows:
            labels_in_group[row.group].add(row.label)
        per_class = {label: {split: 0 for split in SPLITS} for label in self.labels}
        for row in self.rows:
            per_class[row.label][row.split] += 1
        return {
            "images": len(self.rows),
            "seed": self.seed,
            "fractions": FRACTIONS,
            "per_class": per_class,
            "per_split": {split: len(self.rows_in(split)) for split in SPLITS},
            "near_duplicates": {
                "max_hamming_distance": self.max_distance,
                "groups": len(groups),
                "images_in_shared_groups": sum(n for n in groups.values() if n > 1),
                "largest_group": max(groups.values(), default=0),
                # The same picture filed under two classes: a labelling problem worth knowing about.
                "groups_with_conflicting_labels": sum(1 for s in labels_in_group.values() if len(s) > 1),
            },
            "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
        }


def make_split(folder: LabelledFolder, seed: int = SEED, max_distance: int = NEAR_DUPLICATE_BITS,
               hash_cache: Path | None = None, progress=None) -> Split:
    hashes, unreadable = hash_images(folder, hash_cache, progress)
    images = [image for image in folder.images if image.path in hashes]
    groups = near_duplicate_groups([hashes[image.path] for image in images], max_distance)
    groups = joined_by_key(groups, [image.group for image in images])
    labels = [image.label for image in images]
    assigned = assign_splits(labels, groups, folder.labels, seed)
    rows = tuple(SplitRow(image.path, image.label, group, hashes[image.path], split)
                 for image, group, split in zip(images, groups, assigned))
    return Split(rows, folder.labels, tuple(unreadable), max_distance, seed)


# --- perceptual hashes --------------------------------------------------------------------------

def hash_images(folder: LabelledFolder, cache: Path | None = None, progress=None
                ) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """pHash of every image, decoded exactly as the worker decodes. Decoding 27,000 photographs takes
    minutes, so results are cached by (path, size, mtime) and a resumed run does not redo them."""
    known = _read_hash_cache(cache)
    stats = {image.path: folder.absolute(image).stat() for image in folder.images}
    todo = [image.path for image in folder.images
            if known.get(image.path, {}).get("key") != (stats[image.path].st_size, stats[image.path].st_mtime_ns)]
    if todo:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            # Pillow and OpenCV release the GIL while decoding and resizing, so threads do run in parallel.
            for done, (path, result) in enumerate(zip(todo, pool.map(lambda p: _hash_file(folder.root / p), todo)), 1):
                known[path] = {"key": (stats[path].st_size, stats[path].st_mtime_ns), **result}
                if progress and (done % 500 == 0 or done == len(todo)):
                    progress(f"hashed {done}/{len(todo)} images")
        _write_hash_cache(cache, known, [image.path for image in folder.images])
    hashes, unreadable = {}, []
    for image in folder.images:
        entry = known[image.path]
        if entry["error"]:
            unreadable.append((image.path, entry["error"]))
        else:
            hashes[image.path] = entry["phash"]
    return hashes, unreadable


def _hash_file(path: Path) -> dict:
    try:
        return {"phash": perceptual_hash(decode_rgb(path.read_bytes())), "error": ""}
    except Exception as exc:  # one damaged file among thousands is left out and reported, not fatal
        return {"phash": "", "error": f"{type(exc).__name__}: {exc}"}


def _read_hash_cache(cache: Path | None) -> dict[str, dict]:
    if cache is None or not cache.exists():
        return {}
    with open(cache, newline="") as fh:
        return {row["path"]: {"key": (int(row["size"]), int(row["mtime_ns"])), "phash": row["phash"],
                              "error": row["error"]} for row in csv.DictReader(fh)}


def _write_hash_cache(cache: Path | None, known: dict[str, dict], paths: list[str]) -> None:
    if cache is None:
        return
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HASH_CACHE_FIELDS)
        for path in paths:
            entry = known[path]
            writer.writerow([path, *entry["key"], entry["phash"], entry["error"]])
    tmp.replace(cache)


# --- near-duplicate groups ----------------------------------------------------------------------

def near_duplicate_groups(hashes: list[str], max_distance: int) -> list[int]:
    """Group id per image: the index of the first image of its group (so ids follow path order).

    Two 64-bit hashes within d bits of each other agree exactly on at least one of d + 1 disjoint
    blocks of their bits (pigeonhole), so only hashes sharing a block value need comparing: exact,
    and far fewer than the 370 million pairs of the full dataset.
    """
    parent = list(range(len(hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    if not hashes:
        return []
    values = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    # Identical hashes first (a folder copied twice must not cost a quadratic comparison).
    unique, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    for i, u in enumerate(inverse.ravel()):
        union(int(first[u]), i)
    for block in bit_blocks(max_distance + 1):
        keys = (unique >> np.uint64(block[0])) & np.uint64((1 << block[1]) - 1)
        order = np.argsort(keys, kind="stable")
        starts = np.flatnonzero(np.r_[True, keys[order][1:] != keys[order][:-1], True])
        for lo, hi in zip(starts[:-1], starts[1:]):
            if hi - lo > 1:
                for a, b in _close_pairs(unique[order[lo:hi]], max_distance):
                    union(int(first[order[lo + a]]), int(first[order[lo + b]]))
    return [find(i) for i in range(len(hashes))]


def joined_by_key(groups: list[int], keys: list[str]) -> list[int]:
    """Groups merged wherever two images share a non-empty key (a patient or a lesion from a metadata
    table), ids again the index of each merged group's first image."""
    first_of: dict[int, int] = {}
    parent = {g: g for g in groups}

    def find(g: int) -> int:
        while parent[g] != g:
            g = parent[g]
        return g

    by_key: dict[str, int] = {}
    for group, key in zip(groups, keys):
        if key:
            other = by_key.setdefault(key, group)
            a, b = find(group), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    for index, group in enumerate(groups):
        first_of.setdefault(find(group), index)
    return [first_of[find(group)] for group in groups]


def _close_pairs(values: np.ndarray, max_distance: int, rows: int = 1024):
    for start in range(0, len(values), rows):
        chunk = values[start:start + rows]
        distance = popcount(chunk[:, None] ^ values[None, :])
        for a, b in zip(*np.nonzero(distance <= max_distance)):
            if start + a < b:
                yield start + int(a), int(b)


# --- stratified assignment of groups ------------------------------------------------------------

def assign_splits(labels: list[str], groups: list[int], label_order: tuple[str, ...], seed: int) -> list[str]:
    """Split name per image. Each group goes whole to one split; groups are stratified by their
    majority label, shuffled per class, and laid end to end by image count: a group whose middle
    falls in the first 80% of its class's images is train, the next 10% validation, the rest test."""
    members: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    rank = {label: i for i, label in enumerate(label_order)}
    by_class: dict[str, list[int]] = defaultdict(list)
    for group in sorted(members):
        votes = Counter(labels[i] for i in members[group])
        majority = min(votes, key=lambda label: (-votes[label], rank[label]))
        by_class[majority].append(group)
    bounds = np.cumsum([FRACTIONS[s] for s in SPLITS])
    assigned = [""] * len(labels)
    for label in label_order:
        class_groups = by_class.get(label, [])
        rng = np.random.RandomState([seed, zlib.crc32(label.encode())])
        shuffled = [class_groups[i] for i in rng.permutation(len(class_groups))]
        total = sum(len(members[g]) for g in shuffled)
        position = 0
        for group in shuffled:
            size = len(members[group])
            middle = (position + size / 2) / total
            split = SPLITS[min(int(np.searchsorted(bounds, middle, side="right")), len(SPLITS) - 1)]
            for index in members[group]:
                assigned[index] = split
            position += size
    return assigned


# --- CSV files ----------------------------------------------------------------------------------

def split_csvs(split: Split) -> dict[str, bytes]:
    """{"train.csv": bytes, ...}: the files' exact contents, so they can be fingerprinted before writing."""
    files = {}
    for name in SPLITS:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_FIELDS)
        for row in split.rows_in(name):
            writer.writerow([row.path, row.label, row.group, row.phash, row.split])
        files[f"{name}.csv"] = buf.getvalue().encode()
    return files


def csv_digests(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def write_split_csvs(split: Split, out_dir: Path) -> dict[str, str]:
    """train.csv, val.csv, test.csv; returns {file name: SHA-256}, for the model card."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = split_csvs(split)
    for name, data in files.items():
        tmp = out_dir / (name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(out_dir / name)
    return csv_digests(files)


def read_split_csv(path: Path) -> list[SplitRow]:
    with open(path, newline="") as fh:
        return [SplitRow(r["path"], r["label"], int(r["group"]), r["phash"], r["split"])
                for r in csv.DictReader(fh)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the stratified, near-duplicate-aware 80/10/10 split "
                                                 "of a folder-per-class dataset as CSV files.")
    parser.add_argument("data", type=Path, help="the dataset folder (class folders inside)")
    parser.add_argument("--out", type=Path, required=True, help="folder for train.csv, val.csv, test.csv")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--near-duplicate-bits", type=int, default=NEAR_DUPLICATE_BITS)
    args = parser.parse_args(argv)
    folder = scan_labelled_folder(args.data)
    split = make_split(folder, args.seed, args.near_duplicate_bits, args.out / "phash.csv",
                       progress=lambda m: print(m, file=sys.stderr))
    for name, digest in write_split_csvs(split, args.out).items():
        print(f"{args.out / name}  sha256 {digest}")


if __name__ == "__main__":
    main()
