"""How the quality gate's defaults sit against real photographs.

    python -m scripts.quality_report

For every calibration photograph and for blurred, darkened, overexposed and shrunk copies of it, prints
each measured value and the verdict; then, per check, the worst real photograph's margin to its
threshold and the degraded copy that came closest to passing. Thresholds come from the settings, so
DERMATRIAGE_* variables can be tried out here before they are deployed.

The photographs live outside the repository (they are not ours to redistribute): by default in
../shared/calibration next to the checkout, or wherever DERMATRIAGE_CALIBRATION_DIR points.
Exit status: 0 when every real photo passes and every degraded copy fails (or the folder is absent),
1 otherwise.
"""
from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from model.quality import WORKING_SIDE, QualityReport, QualityThresholds, assess_quality
from tests.imagegen import blurred, darkened, encode, overexposed, shrunk
from triage.imaging import decode_rgb
from triage.settings import Settings

CALIBRATION_ENV = "DERMATRIAGE_CALIBRATION_DIR"

# Each copy must fail, for one of the listed reasons (overexposing a darker photo can leave its mean
# brightness under the limit while blowing out its highlights). Blur uses sigma 3, not the test default of 6:
# a softness a person sees at once. Copies are saved as JPEG like any upload, so the gate sees what it
# would see in production.
DEGRADATIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], tuple[str, ...]]] = {
    "blurred": (lambda rgb: blurred(rgb, 3.0), ("sharpness",)),
    "darkened": (darkened, ("brightness_min", "clipped_dark")),
    "overexposed": (overexposed, ("brightness_max", "clipped_bright")),
    "shrunk": (shrunk, ("resolution",)),
}

COLUMNS = [  # (check, header, format)
    ("resolution", "side", "{:.0f}"),
    ("flat_colour", "flat", "{:.3f}"),
    ("colourless", "grey", "{:.3f}"),
    ("text_edges", "text", "{:.4f}"),
    ("brightness_min", "bright", "{:.1f}"),
    ("clipped_dark", "black", "{:.3f}"),
    ("clipped_bright", "white", "{:.3f}"),
    ("contrast", "contr", "{:.1f}"),
    ("sharpness", "sharp", "{:.1f}"),
]


def calibration_dir() -> Path:
    override = os.environ.get(CALIBRATION_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1].parent / "shared" / "calibration"


def calibration_photos(folder: Path) -> list[Path]:
    """The photographs the manifest lists (or every JPEG, if it has none), in a stable order."""
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="") as f:
            return [folder / row["file"] for row in csv.DictReader(f)]
    return sorted(folder.rglob("*.jpg"))


def load(path: Path) -> np.ndarray:
    return decode_rgb(path.read_bytes())


def degraded_copy(rgb: np.ndarray, kind: str) -> np.ndarray:
    make, _ = DEGRADATIONS[kind]
    return decode_rgb(encode(make(rgb)))


@dataclass
class Row:
    name: str
    kind: str  # "real" or a DEGRADATIONS key
    report: QualityReport

    @property
    def as_expected(self) -> bool:
        if self.kind == "real":
            return self.report.passed
        return any(not self.report.check(name).passed for name in DEGRADATIONS[self.kind][1])


def assess_all(photos: list[Path], thresholds: QualityThresholds, folder: Path) -> list[Row]:
    rows = []
    for path in photos:
        rgb = load(path)
        name = path.relative_to(folder).as_posix()
        rows.append(Row(name, "real", assess_quality(rgb, thresholds)))
        rows.extend(Row(name, kind, assess_quality(degraded_copy(rgb, kind), thresholds)) for kind in DEGRADATIONS)
    return rows


def verdict(row: Row) -> str:
    if row.report.passed:
        marginal = [c.name for c in row.report.checks if c.marginal]
        return "pass" + (f" (marginal: {', '.join(marginal)})" if marginal else "")
    return "FAIL: " + ", ".join(c.name for c in row.report.checks if not c.passed)


def print_table(rows: list[Row]) -> None:
    header = f"{'photo':<36} {'copy':<11}" + "".join(f"{h:>8}" for _, h, _ in COLUMNS) + "  verdict"
    print(header)
    print("-" * len(header))
    for row in rows:
        values = "".join(f"{fmt.format(row.report.check(name).value):>8}" for name, _, fmt in COLUMNS)
        flag = "" if row.as_expected else "   <-- UNEXPECTED"
        print(f"{row.name:<36} {row.kind:<11}{values}  {verdict(row)}{flag}")


def headroom(value: float, limit: float, bound: str) -> str:
    """Distance to the threshold on the passing side, absolute and as a factor."""
    if bound == "min":
        return f"{value - limit:+.4g} ({value / limit:.2f}x)" if limit else f"{value - limit:+.4g}"
    return f"{limit - value:+.4g} ({limit / value:.1f}x)" if value else f"{limit - value:+.4g} (all)"


def print_margins(rows: list[Row]) -> None:
    real = [r for r in rows if r.kind == "real"]
    print("\nWorst real photograph against each threshold (headroom: how far inside the passing side):")
    print(f"{'check':<16} {'threshold':>10} {'worst':>10}  {'headroom':<18} photo")
    for check in real[0].report.checks:
        pick = min if check.bound == "min" else max
        worst = pick(real, key=lambda r: r.report.check(check.name).value).report.check(check.name)
        name = next(r.name for r in real if r.report.check(check.name) is worst)
        print(f"{check.name:<16} {check.threshold:>10g} {worst.value:>10.4g}  "
              f"{headroom(worst.value, check.threshold, check.bound):<18} {name}")

    print("\nDegraded copies (each must fail one of its checks; 'closest' is the copy nearest to passing it):")
    for kind, (_, reasons) in DEGRADATIONS.items():
        copies = [r for r in rows if r.kind == kind]
        print(f"{kind:<12} {sum(not r.as_expected for r in copies)} of {len(copies)} pass "
              f"({' or '.join(reasons)} must fail)")
        for reason in reasons:
            checks = [(r.report.check(reason), r.name) for r in copies]
            failed = sum(not c.passed for c, _ in checks)
            pick = max if checks[0][0].bound == "min" else min
            closest, name = pick(checks, key=lambda cn: cn[0].value)
            print(f"    {reason:<15} fails in {failed:>2}/{len(copies)}; closest {closest.value:.4g} "
                  f"(threshold {closest.threshold:g}) {name}")


def main() -> int:
    folder = calibration_dir()
    photos = calibration_photos(folder) if folder.is_dir() else []
    if not photos:
        print(f"Skipped: no calibration photographs at {folder}. They are not part of the repository; "
              f"point {CALIBRATION_ENV} at a folder of real photographs (with an optional manifest.csv).")
        return 0
    missing = [p for p in photos if not p.is_file()]
    if missing:
        print(f"The manifest lists {len(missing)} file(s) that are missing, e.g. {missing[0]}.")
        return 1
    thresholds = QualityThresholds.from_settings(Settings())
    print(f"Quality gate on {len(photos)} calibration photographs in {folder}")
    print(f"Working size: longer side {WORKING_SIDE} px. Thresholds: "
          + ", ".join(f"{k}={v:g}" for k, v in vars(thresholds).items()) + "\n")
    rows = assess_all(photos, thresholds, folder)
    print_table(rows)
    print_margins(rows)
    unexpected = [r for r in rows if not r.as_expected]
    real = [r for r in rows if r.kind == "real"]
    print(f"\n{sum(r.report.passed for r in real)}/{len(real)} real photographs pass; "
          f"{sum(r.as_expected for r in rows if r.kind != 'real')}/{len(rows) - len(real)} degraded copies fail "
          f"their check; {len(unexpected)} unexpected result(s).")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
