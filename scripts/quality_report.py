"""How the quality gate's defaults sit against real photographs, at their own size and at 224 px.

    python -m scripts.quality_report [--quiet]

For every folder of real photographs (the dermoscopic calibration set and its smartphone/ subfolder),
at two sizes (as stored, and shrunk by area averaging to a shorter side of 224 px, the network's
input), prints the share of photographs the gate passes, the share of each degraded copy it rejects
for the right reason (and for that reason alone), and what the gate costs per photograph on one
core. Then every real photograph that fails, with its reasons, and per check the real photograph
closest to its threshold and the degraded copy closest to passing it. Thresholds come from the
settings, so DERMATRIAGE_* variables can be tried out here before they are deployed.

The gate sees each file as the worker will hand it over: decoded at reduced scale by the JPEG
decoder (`triage.imaging.decode_reduced`), with the photograph's own size passed for the size check. The cost is
measured on that reduced copy (and, for comparison, on the full decode): CPU time of one thread, with
OpenCV held to one thread.

Degraded copies (issue 15), each saved as JPEG like any upload: Gaussian blur of sigma 1/100 of the
longer side; darkened x 0.15; blown out x 2.5 + 90; shrunk to 160 px on the longer side.

The photographs live outside the repository (they are not ours to redistribute): by default in
../shared/calibration next to the checkout, or wherever DERMATRIAGE_CALIBRATION_DIR points.
Exit status: 0 when every folder and size meets the targets (at least 97% of real photographs of
224 px and more pass; at least 97% of each degradation is rejected for the right reason) or the
folder is absent, 1 otherwise.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from model.quality import (GATE_MIN_SIDE, WORKING_SIDE, Measurements, QualityReport, QualityThresholds,
                           judge, measure)
from harness.imagegen import blown_out, blurred_by_size, darkened, encode, shrunk, shrunk_to_shorter
from triage.imaging import decode_reduced, decode_rgb
from triage.settings import Settings

CALIBRATION_ENV = "DERMATRIAGE_CALIBRATION_DIR"
TARGET = 0.97
COST_TARGET_MS = 3.0
SIZES = ("native", "224")
TIMING_REPEATS = 5

# Each copy must fail for one of the listed reasons. Overexposing a darker photograph can leave its
# mean brightness under the limit while blowing out most of it, and darkening one with a black
# surround can add to its black share first: either reason is the right advice.
DEGRADATIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], tuple[str, ...]]] = {
    "blurred": (blurred_by_size, ("sharpness",)),
    "darkened": (darkened, ("brightness_min", "clipped_dark")),
    "overexposed": (blown_out, ("brightness_max", "clipped_bright")),
    "shrunk": (lambda rgb: shrunk(rgb, 160), ("resolution",)),
}

COLUMNS = [  # (check, header, format)
    ("resolution", "side", "{:.0f}"),
    ("flat_colour", "flat", "{:.3f}"),
    ("colourless", "grey", "{:.3f}"),
    ("text_edges", "text", "{:.4f}"),
    ("brightness_min", "bright", "{:.1f}"),
    ("clipped_dark", "black", "{:.3f}"),
    ("clipped_bright", "white", "{:.3f}"),
    ("contrast", "contr", "{:.3f}"),
    ("sharpness", "sharp", "{:.3f}"),
]


def calibration_dir() -> Path:
    override = os.environ.get(CALIBRATION_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1].parent / "shared" / "calibration"


def calibration_photos(folder: Path) -> list[Path]:
    """The photographs the folder's manifest.csv (column file) or labels.csv (column img_id) lists, or
    else every JPEG directly in it, in a stable order."""
    for name, column in (("manifest.csv", "file"), ("labels.csv", "img_id")):
        listing = folder / name
        if listing.is_file():
            with listing.open(newline="") as f:
                return [folder / row[column] for row in csv.DictReader(f)]
    return sorted(folder.glob("*.jpg"))


def calibration_folders(root: Path) -> dict[str, list[Path]]:
    """{"dermoscopic": [...], "smartphone": [...]}: the root's own photographs and each subfolder's
    that has a listing of its own, absent ones left out."""
    folders = {}
    if root.is_dir():
        if (root / "manifest.csv").is_file():
            folders["dermoscopic"] = calibration_photos(root)
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            if (sub / "labels.csv").is_file() or (sub / "manifest.csv").is_file():
                folders[sub.name] = calibration_photos(sub)
    return {name: photos for name, photos in folders.items() if photos}


def load(path: Path) -> np.ndarray:
    return decode_rgb(path.read_bytes())


def reduced_decode(data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
    """What the worker hands the gate: the JPEG decoded at the smallest DCT scale that keeps the
    gate's minimum size (other formats in full), and the photograph's own (width, height)."""
    return decode_reduced(data, GATE_MIN_SIDE)


def at_size(rgb: np.ndarray, size: str) -> np.ndarray:
    return rgb if size == "native" else shrunk_to_shorter(rgb, WORKING_SIDE)


def degraded_copy(rgb: np.ndarray, kind: str) -> bytes:
    make, _ = DEGRADATIONS[kind]
    return encode(make(rgb))


def assess(data: bytes, thresholds: QualityThresholds) -> tuple[QualityReport, Measurements]:
    rgb, size = reduced_decode(data)
    m = measure(rgb, size)
    return QualityReport(judge(m, thresholds)), m


def gate_ms(rgb: np.ndarray, thresholds: QualityThresholds, size: tuple[int, int] | None = None) -> float:
    """The whole gate's cost on one photograph: the median of a few runs, in CPU time of this thread
    (OpenCV held to one thread), so time spent waiting for a core that others use is not counted."""
    times = []
    for _ in range(TIMING_REPEATS):
        start = time.thread_time()
        QualityReport(judge(measure(rgb, size), thresholds))
        times.append(time.thread_time() - start)
    return statistics.median(times) * 1000


@dataclass
class Row:
    folder: str
    name: str
    size: str
    kind: str  # "real" or a DEGRADATIONS key
    report: QualityReport
    small: bool = False  # the photograph itself is under GATE_MIN_SIDE: refused as too small by rule

    def failed(self) -> set[str]:
        return {c.name for c in self.report.checks if not c.passed}

    @property
    def as_expected(self) -> bool:
        if self.kind == "real":
            return self.report.passed
        return bool(self.failed() & set(DEGRADATIONS[self.kind][1]))

    @property
    def alone(self) -> bool:
        return self.kind != "real" and bool(self.failed()) and self.failed() <= set(DEGRADATIONS[self.kind][1])


@dataclass
class Cost:
    reduced: list[float] = field(default_factory=list)
    full: list[float] = field(default_factory=list)


def assess_folder(folder: str, photos: list[Path], root: Path, thresholds: QualityThresholds,
                  costs: dict[tuple[str, str], Cost]) -> list[Row]:
    rows = []
    for path in photos:
        raw = path.read_bytes()
        full = decode_rgb(raw)
        small = min(full.shape[:2]) < GATE_MIN_SIDE
        name = path.relative_to(root).as_posix()
        for size in SIZES:
            if size != "native" and small:
                continue  # no 224-px copy of a photograph smaller than that
            data = raw if size == "native" else encode(at_size(full, size))
            rgb = full if size == "native" else decode_rgb(data)
            report, _ = assess(data, thresholds)
            rows.append(Row(folder, name, size, "real", report, small))
            reduced, own = reduced_decode(data)
            cost = costs.setdefault((folder, size), Cost())
            cost.reduced.append(gate_ms(reduced, thresholds, own))
            cost.full.append(gate_ms(rgb, thresholds))
            for kind in DEGRADATIONS:
                copy, _ = assess(degraded_copy(rgb, kind), thresholds)
                rows.append(Row(folder, name, size, kind, copy, small))
    return rows


def _pct(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def summary(rows: list[Row], costs: dict[tuple[str, str], Cost]) -> tuple[list[str], bool]:
    """The README's table (Markdown) and whether every target is met."""
    header = ("| folder | size | photos | real pass | " + " | ".join(f"{k} rejected (alone)" for k in DEGRADATIONS)
              + " | ms / photo, reduced decode (full decode) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    ok = True
    for folder in dict.fromkeys(r.folder for r in rows):
        for size in SIZES:
            here = [r for r in rows if r.folder == folder and r.size == size]
            if not here:
                continue
            real = [r for r in here if r.kind == "real" and not r.small]
            small = [r for r in here if r.kind == "real" and r.small]
            passed = sum(r.as_expected for r in real)
            ok &= passed >= TARGET * len(real)
            label = "own size" if size == "native" else f"{WORKING_SIDE} px"
            photos = f"{len(real)}" + (f" (+{len(small)} under {GATE_MIN_SIDE} px)" if small else "")
            cells = [folder, label, photos, f"{_pct(passed, len(real))}"]
            for kind in DEGRADATIONS:
                copies = [r for r in here if r.kind == kind]
                rejected = sum(r.as_expected for r in copies)
                ok &= rejected >= TARGET * len(copies)
                cells.append(f"{_pct(rejected, len(copies))} ({_pct(sum(r.alone for r in copies), len(copies))})")
            cost = costs[(folder, size)]
            cells.append(f"{statistics.mean(cost.reduced):.2f} ({statistics.mean(cost.full):.2f})")
            lines.append("| " + " | ".join(cells) + " |")
    return lines, ok


def print_failures(rows: list[Row]) -> None:
    real = [r for r in rows if r.kind == "real" and not r.report.passed]
    print(f"\nReal photographs that fail ({len(real)}):" if real else "\nEvery real photograph passes.")
    for r in real:
        why = "; ".join(f"{c.name} {c.value:g}" for c in r.report.checks if not c.passed)
        note = f"  (under {GATE_MIN_SIDE} px: refused by rule)" if r.small else ""
        print(f"  {r.folder:<12} {r.size:<7} {r.name:<44} {why}{note}")
    missed = [r for r in rows if r.kind != "real" and not r.as_expected]
    if missed:
        print(f"\nDegraded copies that pass their check ({len(missed)}):")
        for r in missed:
            print(f"  {r.folder:<12} {r.size:<7} {r.kind:<12} {r.name}  fails: {sorted(r.failed()) or 'nothing'}")
    extra: dict[tuple[str, str], int] = {}
    for r in rows:
        if r.kind != "real" and r.as_expected and not r.alone:
            for name in sorted(r.failed() - set(DEGRADATIONS[r.kind][1])):
                extra[(r.kind, name)] = extra.get((r.kind, name), 0) + 1
    if extra:
        print("\nOther checks that also failed on degraded copies: "
              + ", ".join(f"{kind} + {name}: {n}" for (kind, name), n in sorted(extra.items())))


def headroom(value: float, limit: float, bound: str) -> str:
    """Distance to the threshold on the passing side, absolute and as a factor."""
    if bound == "min":
        return f"{value - limit:+.4g} ({value / limit:.2f}x)" if limit else f"{value - limit:+.4g}"
    return f"{limit - value:+.4g} ({limit / value:.1f}x)" if value else f"{limit - value:+.4g} (all)"


def print_margins(rows: list[Row]) -> None:
    real = [r for r in rows if r.kind == "real" and not r.small]
    print("\nWorst real photograph (224 px and more) against each threshold (headroom: how far inside "
          "the passing side):")
    print(f"{'check':<16} {'threshold':>10} {'worst':>10}  {'headroom':<18} photo")
    for check in real[0].report.checks:
        pick = min if check.bound == "min" else max
        worst_row = pick(real, key=lambda r: r.report.check(check.name).value)
        worst = worst_row.report.check(check.name)
        print(f"{check.name:<16} {check.threshold:>10g} {worst.value:>10.4g}  "
              f"{headroom(worst.value, check.threshold, check.bound):<18} {worst_row.name} ({worst_row.size})")
    print("\nDegraded copies: per reason, how many fail it, and the copy closest to passing it:")
    for kind, (_, reasons) in DEGRADATIONS.items():
        copies = [r for r in rows if r.kind == kind]
        for reason in reasons:
            checks = [(r.report.check(reason), r) for r in copies]
            failed = sum(not c.passed for c, _ in checks)
            pick = max if checks[0][0].bound == "min" else min
            closest, r = pick(checks, key=lambda cr: cr[0].value)
            print(f"  {kind:<12} {reason:<15} fails in {failed:>4}/{len(copies)}; closest {closest.value:.4g} "
                  f"(threshold {closest.threshold:g}) {r.name} ({r.size})")


def print_table(rows: list[Row]) -> None:
    header = f"{'photo':<44} {'size':<7} {'copy':<12}" + "".join(f"{h:>8}" for _, h, _ in COLUMNS) + "  verdict"
    print(header)
    print("-" * len(header))
    for row in rows:
        values = "".join(f"{fmt.format(row.report.check(name).value):>8}" for name, _, fmt in COLUMNS)
        verdict = "pass" if row.report.passed else "FAIL: " + ", ".join(sorted(row.failed()))
        flag = "" if row.as_expected else "   <-- UNEXPECTED"
        print(f"{row.name:<44} {row.size:<7} {row.kind:<12}{values}  {verdict}{flag}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiet", action="store_true", help="leave out the per-photograph table")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)  # the cost is per photograph on one core, as the worker's threads each pay it
    root = calibration_dir()
    folders = calibration_folders(root)
    if not folders:
        print(f"Skipped: no calibration photographs at {root}. They are not part of the repository; "
              f"point {CALIBRATION_ENV} at a folder of real photographs (with a manifest.csv or labels.csv).")
        return 0
    missing = [p for photos in folders.values() for p in photos if not p.is_file()]
    if missing:
        print(f"The listings name {len(missing)} file(s) that are missing, e.g. {missing[0]}.")
        return 1
    thresholds = QualityThresholds.from_settings(Settings())
    print(f"Quality gate on {sum(map(len, folders.values()))} real photographs in {root} "
          f"({', '.join(f'{k}: {len(v)}' for k, v in folders.items())}), each also shrunk to a shorter side "
          f"of {WORKING_SIDE} px, and their degraded copies.")
    print(f"Working view: shorter side {WORKING_SIDE} px. Thresholds: "
          + ", ".join(f"{k}={v:g}" for k, v in vars(thresholds).items()))
    costs: dict[tuple[str, str], Cost] = {}
    rows = []
    for name, photos in folders.items():
        rows += assess_folder(name, photos, root, thresholds, costs)
    if not args.quiet:
        print()
        print_table(rows)
    lines, ok = summary(rows, costs)
    print()
    print("\n".join(lines))
    slowest = max(statistics.mean(c.reduced) for c in costs.values())
    print(f"\nTargets: real pass >= {TARGET:.0%}, each degradation rejected for the right reason >= {TARGET:.0%}: "
          f"{'met' if ok else 'NOT MET'}. Cost per photograph on the reduced decode, CPU time on one core, "
          f"median of {TIMING_REPEATS} runs, mean over photographs: at most {slowest:.2f} ms "
          f"(target {COST_TARGET_MS:g} ms{'' if slowest <= COST_TARGET_MS else '; NOT MET on this machine now'}; "
          f"load average {os.getloadavg()[0]:.1f}).")
    print_failures(rows)
    print_margins(rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
