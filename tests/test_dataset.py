"""The labelled folder and its split: Kaggle folder names, reproducibility, stratification, and
near-duplicates that never straddle two splits. No TensorFlow here."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from model import splits as splits_module
from model.dataset import DatasetError, scan_labelled_folder
from model.splits import (SPLITS, assign_splits, make_split, near_duplicate_groups, popcount, read_split_csv,
                          write_split_csvs)
from tests.labelled import KAGGLE_CLASSES, SLUG_OF, picture, write_labelled_folder
from tests.support import ROOT
from triage.catalogue import CLASSES, folder_names
from triage.phash import hamming



# --- the folder --------------------------------------------------------------------------------

def test_kaggle_folders_inside_a_wrapper_folder_map_to_catalogue_classes(tmp_path):
    write_labelled_folder(tmp_path / "archive" / "IMG_CLASSES", per_class=3)
    (tmp_path / "archive" / "IMG_CLASSES" / "2. Melanoma 15.75k" / "notes.txt").write_text("not an image")
    (tmp_path / "archive" / "IMG_CLASSES" / "2. Melanoma 15.75k" / ".DS_Store").write_bytes(b"\0")
    folder = scan_labelled_folder(tmp_path / "archive")
    assert folder.root == tmp_path / "archive" / "IMG_CLASSES"
    # The catalogue's order, whatever the folders sort as.
    assert folder.labels == ("eczema", "melanoma", "bcc", "melanocytic_nevi")
    assert folder.folders == {slug: name for name, slug in SLUG_OF.items()}
    assert folder.counts() == {slug: 3 for slug in folder.labels}
    assert folder.ignored_files == 1  # notes.txt; the hidden file is not even counted
    assert [i.path for i in folder.images] == sorted(i.path for i in folder.images)
    assert folder.images[0].path == "1. Eczema 1677/img_000.png"


def test_every_kaggle_folder_name_is_accepted(tmp_path):
    kaggle = [c for c in CLASSES if c.folder]
    for cls in kaggle:
        (tmp_path / cls.folder).mkdir()
        (tmp_path / cls.folder / "a.png").write_bytes(b"")
    folder = scan_labelled_folder(tmp_path)
    assert set(folder.labels) == {c.slug for c in kaggle} and len(kaggle) == 10
    assert folder.folders["warts_viral"] == "10. Warts Molluscum and other Viral Infections - 2103"


@pytest.mark.parametrize("codes, labels", [
    # PAD-UFES-20's diagnostic codes, as the dataset spells them.
    (["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"],
     ("melanoma", "bcc", "melanocytic_nevi", "seborrheic_keratoses", "actinic_keratosis", "scc")),
    # HAM10000 / ISIC 2018 `dx` codes.
    (["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"],
     ("melanoma", "bcc", "melanocytic_nevi", "bkl", "actinic_keratosis", "dermatofibroma", "vascular_lesion")),
])
def test_other_datasets_folders_map_by_their_codes_in_catalogue_order(tmp_path, codes, labels):
    for code in codes:
        (tmp_path / "images" / code).mkdir(parents=True)
        (tmp_path / "images" / code / "a.png").write_bytes(b"")
    folder = scan_labelled_folder(tmp_path)
    assert folder.root == tmp_path / "images"
    assert folder.labels == labels
    assert sorted(folder.folders.values()) == sorted(codes)


def test_unknown_folder_is_refused_with_the_accepted_names(tmp_path):
    write_labelled_folder(tmp_path, per_class=1)
    (tmp_path / "Rosacea 900").mkdir()
    with pytest.raises(DatasetError) as err:
        scan_labelled_folder(tmp_path)
    message = str(err.value)
    assert "'Rosacea 900'" in message
    assert "'2. Melanoma 15.75k'" in message and "'melanoma'" in message
    # Every name and dataset code of every class, Kaggle or not.
    assert all(repr(name) in message for c in CLASSES for name in folder_names(c))
    assert "'akiec'" in message and "'ack'" in message and "'Squamous cell carcinoma'" in message


def test_two_folders_for_one_class_are_refused(tmp_path):
    write_labelled_folder(tmp_path, per_class=1)
    (tmp_path / "melanoma").mkdir()
    with pytest.raises(DatasetError, match="both name the class 'melanoma'"):
        scan_labelled_folder(tmp_path)


def test_an_empty_class_folder_is_refused(tmp_path):
    write_labelled_folder(tmp_path, per_class=1)
    (tmp_path / "tinea_fungal").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        scan_labelled_folder(tmp_path)


# --- reproducibility ---------------------------------------------------------------------------

def split_in_subprocess(data: Path, out: Path, hash_seed: str) -> dict[str, bytes]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    subprocess.run([sys.executable, "-m", "model.splits", str(data), "--out", str(out)], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=120)
    return {name: (out / f"{name}.csv").read_bytes() for name in SPLITS}


def test_split_is_identical_across_processes_and_file_creation_orders(tmp_path):
    write_labelled_folder(tmp_path / "a", per_class=30, duplicate_sets=2)
    # The same files created in the opposite order: directory listing order must not matter.
    for folder in sorted((tmp_path / "a").iterdir()):
        for image in sorted(folder.iterdir(), reverse=True):
            target = tmp_path / "b" / folder.name / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(image.read_bytes())
    first = split_in_subprocess(tmp_path / "a", tmp_path / "out1", hash_seed="1")
    second = split_in_subprocess(tmp_path / "b", tmp_path / "out2", hash_seed="2")
    assert first == second
    assert all(first[name].count(b"\n") > 1 for name in SPLITS)
    in_process = make_split(scan_labelled_folder(tmp_path / "a"))
    write_split_csvs(in_process, tmp_path / "out3")
    assert {name: (tmp_path / "out3" / f"{name}.csv").read_bytes() for name in SPLITS} == first


def test_the_seed_changes_the_split_and_the_same_seed_repeats_it(tmp_path):
    folder = scan_labelled_folder(write_labelled_folder(tmp_path, per_class=30))
    a, b, c = make_split(folder, seed=42), make_split(folder, seed=42), make_split(folder, seed=7)
    assert a.rows == b.rows
    assert [r.split for r in a.rows] != [r.split for r in c.rows]


def test_split_is_stratified_80_10_10_per_class(tmp_path):
    folder = scan_labelled_folder(write_labelled_folder(tmp_path, per_class=40))
    summary = make_split(folder).summary()
    assert summary["near_duplicates"]["images_in_shared_groups"] == 0, "distinct pictures must not be grouped"
    for label in folder.labels:
        assert summary["per_class"][label] == {"train": 32, "val": 4, "test": 4}


def test_split_csvs_record_path_label_group_hash_and_split(tmp_path):
    folder = scan_labelled_folder(write_labelled_folder(tmp_path / "data", per_class=10))
    split = make_split(folder)
    digests = write_split_csvs(split, tmp_path / "splits")
    assert set(digests) == {"train.csv", "val.csv", "test.csv"}
    rows = read_split_csv(tmp_path / "splits" / "val.csv")
    assert rows == split.rows_in("val")
    with open(tmp_path / "splits" / "val.csv", newline="") as fh:
        assert next(csv.reader(fh)) == ["path", "label", "group", "phash", "split"]


# --- near-duplicates ---------------------------------------------------------------------------

def test_near_duplicates_stay_in_one_split(tmp_path):
    folder = scan_labelled_folder(write_labelled_folder(tmp_path, per_class=20, duplicate_sets=6))
    split = make_split(folder)
    by_path = {row.path: row for row in split.rows}
    for name in KAGGLE_CLASSES:
        for d in range(6):
            copies = [by_path[f"{name}/dup_{d:03d}.png"]] + [by_path[f"{name}/dup_{d:03d}_{s}.jpg"] for s in "abc"]
            assert len({row.group for row in copies}) == 1, f"copies of {name} dup {d} were not grouped"
    splits_of_group = defaultdict(set)
    for row in split.rows:
        splits_of_group[row.group].add(row.split)
    assert all(len(s) == 1 for s in splits_of_group.values())
    # And distinct pictures stayed apart: 20 singles + 6 groups of 4, per class.
    assert split.summary()["near_duplicates"]["groups"] == 4 * (20 + 6)
    assert split.summary()["near_duplicates"]["largest_group"] == 4


def brute_force_groups(hashes: list[str], max_distance: int) -> list[int]:
    group = list(range(len(hashes)))
    changed = True
    while changed:  # propagate the smallest index along every close pair until nothing moves
        changed = False
        for i in range(len(hashes)):
            for j in range(len(hashes)):
                if hamming(hashes[i], hashes[j]) <= max_distance and group[j] > group[i]:
                    group[j] = group[i]
                    changed = True
    return group


@pytest.mark.parametrize("max_distance", [0, 3, 8, 12])
def test_near_duplicate_groups_equal_brute_force(max_distance):
    rng = np.random.RandomState(max_distance)
    values = [int(v) for v in rng.randint(0, 2**63, 60, dtype=np.int64)]
    # Plant chains and exact copies: each derived hash flips a few bits of an earlier one.
    for _ in range(60):
        base = values[rng.randint(len(values))]
        flips = rng.choice(64, rng.randint(0, 10), replace=False)
        values.append(base ^ sum(1 << int(b) for b in flips))
    hashes = [f"{v:016x}" for v in values]
    assert near_duplicate_groups(hashes, max_distance) == brute_force_groups(hashes, max_distance)


def test_near_duplicate_chains_join_transitively():
    a = "0000000000000000"
    b = "000000000000000f"  # 4 bits from a
    c = "00000000000000ff"  # 4 bits from b, 8 from a
    far = "ffffffffffffffff"
    assert near_duplicate_groups([a, b, c, far], 4) == [0, 0, 0, 3]
    assert near_duplicate_groups([a, b, c, far], 3) == [0, 1, 2, 3]


def test_popcount_counts_bits_of_64_bit_values():
    values = np.array([0, 1, 0xFF, 2**64 - 1, 0x8000000000000001], dtype=np.uint64)
    assert popcount(values).tolist() == [0, 1, 8, 64, 2]


def test_a_group_with_two_labels_goes_whole_to_the_split_of_its_majority():
    labels = ["eczema"] * 10 + ["melanoma"] * 10 + ["melanoma", "melanoma", "eczema"]
    groups = list(range(20)) + [20, 20, 20]
    order = ("eczema", "melanoma")
    assigned = assign_splits(labels, groups, order, seed=42)
    assert len(set(assigned[20:])) == 1
    # Stratified as melanoma, its majority: the same splits as if all three were melanoma, and not
    # those the group would give as eczema (it would then shift the eczema groups' places).
    assert assigned == assign_splits(labels[:20] + ["melanoma"] * 3, groups, order, seed=42)
    assert assigned != assign_splits(labels[:20] + ["eczema"] * 3, groups, order, seed=42)


# --- hashing -----------------------------------------------------------------------------------

def test_hashes_are_cached_and_a_changed_file_is_hashed_again(tmp_path, monkeypatch):
    folder = scan_labelled_folder(write_labelled_folder(tmp_path / "data", per_class=4))
    cache = tmp_path / "phash.csv"
    first = make_split(folder, hash_cache=cache)
    hashed = []
    real = splits_module._hash_file
    monkeypatch.setattr(splits_module, "_hash_file", lambda path: hashed.append(path.name) or real(path))
    assert make_split(folder, hash_cache=cache).rows == first.rows
    assert hashed == []
    changed = folder.absolute(folder.images[0])
    changed.write_bytes(changed.read_bytes())  # same bytes, new modification time
    os.utime(changed, ns=(1, 1))
    make_split(folder, hash_cache=cache)
    assert hashed == [changed.name]


def test_unreadable_images_are_left_out_and_reported(tmp_path):
    data = write_labelled_folder(tmp_path, per_class=10)
    (data / "1. Eczema 1677" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    split = make_split(scan_labelled_folder(data))
    assert "1. Eczema 1677/broken.jpg" not in {row.path for row in split.rows}
    unreadable = split.summary()["unreadable"]
    assert [u["path"] for u in unreadable] == ["1. Eczema 1677/broken.jpg"]
    assert unreadable[0]["reason"]


def test_synthetic_pictures_of_one_class_are_far_apart_and_copies_close():
    from triage.phash import perceptual_hash
    from tests.labelled import near_copies

    tint = KAGGLE_CLASSES["2. Melanoma 15.75k"]
    hashes = [perceptual_hash(picture(seed, tint)) for seed in range(10)]
    assert min(hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]) > splits_module.NEAR_DUPLICATE_BITS
    original = picture(99, tint)
    assert all(hamming(perceptual_hash(original), perceptual_hash(c)) <= 4 for c in near_copies(original))
