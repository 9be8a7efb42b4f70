"""The quality gate: every check passes a good photograph and stops the failure it exists for.

Images are generated (tests/imagegen.py); the real calibration photographs are used only when their
folder is present, and that test says clearly when it is skipped.
"""
from __future__ import annotations

import dataclasses
import json
from functools import lru_cache

import cv2
import numpy as np
import pytest
from PIL import Image

from model.quality import WORKING_SIDE, QualityThresholds, assess_quality, measure
from tests import imagegen
from triage.imaging import decode_rgb
from triage.settings import Settings

DEFAULTS = QualityThresholds()
CHECK_NAMES = ["resolution", "flat_colour", "colourless", "text_edges", "brightness_min", "brightness_max",
               "clipped_dark", "clipped_bright", "contrast", "sharpness"]


@lru_cache(maxsize=None)
def photo(seed: int = 0, width: int = 640, height: int = 480, hairs: bool = True, dark: bool = False) -> np.ndarray:
    tone = imagegen.DARK_SKIN if dark else imagegen.LIGHT_SKIN
    image = imagegen.skin_photo(seed, width, height, hairs=hairs, tone=tone)
    image.flags.writeable = False  # shared between tests through the cache
    return image


def as_uploaded(rgb: np.ndarray, quality: int = 92) -> np.ndarray:
    """What the worker sees: JPEG-encoded by the client, decoded by the store's reader."""
    return decode_rgb(imagegen.encode(rgb, "JPEG", quality=quality))


def failing(report) -> set[str]:
    return {c.name for c in report.checks if not c.passed}


# ---------------------------------------------------------------- good photographs pass

@pytest.mark.parametrize("make", [
    pytest.param(lambda: photo(0), id="light-skin"),
    pytest.param(lambda: photo(1, hairs=False), id="smooth-skin-no-hairs"),
    pytest.param(lambda: photo(2, dark=True), id="dark-skin"),
    pytest.param(lambda: photo(3, dark=True, hairs=False), id="dark-smooth-skin"),
    pytest.param(lambda: as_uploaded(photo(4), quality=75), id="jpeg-q75"),
    pytest.param(lambda: photo(5, 1600, 1200, hairs=False), id="1600px"),
    pytest.param(lambda: as_uploaded(imagegen.vignette(photo(6))), id="dermatoscope-surround"),
])
def test_a_good_photograph_passes_every_check_clear_of_the_thresholds(make):
    report = assess_quality(make(), DEFAULTS)
    assert report.passed, report.failures
    assert report.failures == [] and report.marginal == []
    assert [c.name for c in report.checks] == CHECK_NAMES


# ---------------------------------------------------------------- each check stops its own failure

CHECK_CASES = [
    # (check, degraded image, words the person reads)
    ("resolution", lambda: imagegen.shrunk(photo(0)), "too small"),
    ("sharpness", lambda: imagegen.blurred(photo(0)), "blurred"),
    ("brightness_min", lambda: imagegen.darkened(photo(0)), "too dark"),
    ("brightness_max", lambda: imagegen.overexposed(photo(0)), "overexposed"),
    ("contrast", lambda: imagegen.low_contrast(photo(0)), "almost uniform"),
    ("clipped_dark", lambda: imagegen.shadowed(photo(0)), "is black"),
    ("clipped_bright", lambda: imagegen.glare(photo(0)), "blown out"),
    ("flat_colour", lambda: imagegen.screenshot(), "screenshot"),
    ("colourless", lambda: imagegen.document(), "no colour"),
    ("text_edges", lambda: as_uploaded(imagegen.photographed(imagegen.document())), "print-like edges"),
]


def test_every_check_has_a_failure_case():
    assert sorted(name for name, _, _ in CHECK_CASES) == sorted(CHECK_NAMES)


@pytest.mark.parametrize("check, make, words", CHECK_CASES, ids=[c[0] for c in CHECK_CASES])
def test_a_degraded_image_fails_for_that_check(check, make, words):
    assert assess_quality(photo(0), DEFAULTS).check(check).passed
    report = assess_quality(make(), DEFAULTS)
    assert not report.passed
    failed = report.check(check)
    assert not failed.passed and not failed.marginal
    assert failed.message in report.failures and words in failed.message


@pytest.mark.parametrize("make, expected", [
    (lambda: imagegen.blurred(photo(0)), {"sharpness"}),
    (lambda: imagegen.shadowed(photo(0)), {"clipped_dark"}),
    (lambda: imagegen.glare(photo(0)), {"clipped_bright"}),
    (lambda: as_uploaded(imagegen.vignette(imagegen.blurred(photo(0), 3), soft=0)), {"sharpness"}),
], ids=["blur", "shadow", "glare", "blur-inside-a-hard-dermatoscope-rim"])
def test_a_single_fault_is_reported_alone(make, expected):
    # Checks that fire together for one fault would bury the advice that matters.
    assert failing(assess_quality(make(), DEFAULTS)) == expected


# ---------------------------------------------------------------- not a skin photograph

@pytest.mark.parametrize("encoded", [False, True], ids=["raw", "jpeg"])
@pytest.mark.parametrize("make, expected, words", [
    (imagegen.document, {"flat_colour", "colourless", "text_edges"}, "document"),
    (imagegen.screenshot, {"flat_colour", "colourless"}, "screenshot"),
    (imagegen.blank, {"flat_colour", "colourless", "contrast"}, "blank"),
    (lambda: imagegen.blank(colour=(200, 150, 130)), {"flat_colour", "contrast"}, "blank"),
], ids=["document", "screenshot", "blank-grey", "blank-skin-coloured"])
def test_images_that_are_not_skin_photographs_fail_with_a_clear_message(make, expected, words, encoded):
    image = as_uploaded(make()) if encoded else make()
    report = assess_quality(image, DEFAULTS)
    assert expected <= failing(report)
    assert words in report.failures[0]


def test_a_photographed_page_of_text_is_caught_by_its_edges_although_it_has_colour_and_noise():
    report = assess_quality(as_uploaded(imagegen.photographed(imagegen.document())), DEFAULTS)
    assert report.check("colourless").passed and report.check("flat_colour").passed
    assert not report.check("text_edges").passed


@pytest.mark.parametrize("image", [imagegen.blank(colour=(0, 0, 0)), imagegen.blank(1, 1)], ids=["black", "1px"])
def test_degenerate_frames_are_judged_not_crashed_on(image):
    report = assess_quality(image, DEFAULTS)
    assert not report.passed and {"contrast", "sharpness"} <= failing(report)


# ---------------------------------------------------------------- counting colours

def _commonest_counts_by_sorting(values: np.ndarray, k: int) -> int:
    return int(np.sort(np.unique(values, return_counts=True)[1])[-k:].sum()) if values.size else 0


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("hash_bits", [2, 18])  # 2: every bucket holds many colours, the floor must hold
def test_the_commonest_colours_are_counted_exactly_without_sorting_them_all(seed, hash_bits, monkeypatch):
    from model import quality
    from model.quality import _largest_counts_sum

    monkeypatch.setattr(quality, "_HASH_BITS", hash_bits)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 20_000))
    spread = int(rng.choice([1, 3, 9, 200, 5_000, 1 << 24]))  # one colour ... all different
    values = rng.integers(0, spread, n).astype(np.uint32)
    if seed % 4 == 0 and n:  # a few heavy colours over a noisy background, as in a dermatoscope frame
        values[rng.random(n) < 0.3] = rng.integers(0, 1 << 24, 4, dtype=np.uint32)[rng.integers(0, 4)]
    for k in (1, 8):
        assert _largest_counts_sum(values, k) == _commonest_counts_by_sorting(values, k)


def test_the_flat_colour_share_of_photographs_is_the_sorted_count():
    from model.quality import FLAT_COLOURS, _brightest_channel, NEAR_BLACK, flat_colour_share, working_copy

    for image in (photo(3), imagegen.screenshot(), imagegen.document(), photo(5, 1200, 900)):
        small = working_copy(image)
        packed = np.ascontiguousarray(cv2.cvtColor(small, cv2.COLOR_RGB2RGBA)).view(np.uint32)[..., 0]
        lit = packed[_brightest_channel(small) >= NEAR_BLACK]
        assert flat_colour_share(small) == _commonest_counts_by_sorting(lit, FLAT_COLOURS) / packed.size


# ---------------------------------------------------------------- the fixed working size

def _smaller_copy(rgb: np.ndarray, side: int, resample: str) -> np.ndarray:
    if resample == "area":
        return imagegen.shrunk(rgb, side)
    h, w = rgb.shape[:2]
    size = (round(w * side / max(h, w)), round(h * side / max(h, w)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))  # as photo software exports


# A copy shrunk by other software carries that software's filter; the closer its size to the working
# size, the more that filter shows (Lanczos keeps more edge contrast than area averaging).
@pytest.mark.parametrize("side, resample, tolerance", [(600, "lanczos", 0.35), (800, "area", 0.25),
                                                       (2000, "area", 0.1)])
def test_a_4000px_photo_and_a_smaller_copy_get_similar_sharpness(side, resample, tolerance):
    large = photo(7, 4000, 3000)
    small = _smaller_copy(large, side, resample)
    native = [cv2.Laplacian(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() for im in (large, small)]
    sharp_large, sharp_small = measure(large).sharpness, measure(small).sharpness
    assert sharp_small == pytest.approx(sharp_large, rel=tolerance)
    assert assess_quality(large, DEFAULTS).passed and assess_quality(small, DEFAULTS).passed
    if side == 600:  # at full resolution the two would be judged very differently
        assert native[1] > 2.5 * native[0]


def test_enlarging_a_small_photo_adds_no_sharpness():
    original = photo(0)
    small = imagegen.shrunk(original, 300)
    blown_up = imagegen.enlarged(small, 4000)
    assert measure(small).sharpness < 0.5 * measure(original).sharpness
    assert measure(blown_up).sharpness <= measure(small).sharpness


def test_sensor_noise_on_a_blurred_large_photo_is_averaged_away_not_taken_for_detail():
    soft = imagegen.enlarged(imagegen.blurred(photo(0), 3), 4000).astype(np.float32)
    soft += np.random.default_rng(0).standard_normal(soft.shape, np.float32) * 4
    report = assess_quality(np.clip(soft, 0, 255).astype(np.uint8), DEFAULTS)
    assert failing(report) == {"sharpness"}


def test_a_small_image_is_told_to_send_the_original_and_a_large_one_to_hold_still():
    strict = dataclasses.replace(DEFAULTS, min_sharpness=1e6)
    small = assess_quality(photo(0, 400, 300), strict).check("sharpness")
    large = assess_quality(photo(0), strict).check("sharpness")
    assert f"smaller than the {WORKING_SIDE}-px working size" in small.message and "original" in small.message
    assert "blurred" in large.message and "hold the camera still" in large.message


def test_the_dermatoscope_surround_neither_fails_nor_flatters_the_photo():
    plain, ringed = photo(0), as_uploaded(imagegen.vignette(photo(0)))
    report = assess_quality(ringed, DEFAULTS)
    assert report.passed and report.check("clipped_dark").value > 0.3
    # The ring's border is the sharpest, most contrasting edge in the frame; it is not the lesion's.
    assert measure(ringed).sharpness < 1.5 * measure(plain).sharpness
    washed_out = as_uploaded(imagegen.vignette(imagegen.low_contrast(photo(0), 0.08)))
    assert not assess_quality(washed_out, DEFAULTS).check("contrast").passed


# ---------------------------------------------------------------- marginal passes

def test_a_pass_just_above_a_minimum_is_marginal_and_explained():
    value = measure(photo(0)).sharpness
    near = assess_quality(photo(0), dataclasses.replace(DEFAULTS, min_sharpness=value / 1.1))
    assert near.passed and near.check("sharpness").marginal
    assert len(near.marginal) == 1 and "only just above the minimum" in near.marginal[0]
    assert not near.marginal[0].endswith(".")  # the risk policy adds its own full stop
    clear = assess_quality(photo(0), dataclasses.replace(DEFAULTS, min_sharpness=value / 1.2))
    assert clear.passed and clear.marginal == []


def test_a_pass_just_under_a_maximum_is_marginal():
    report = assess_quality(imagegen.shadowed(photo(0), share=0.45), DEFAULTS)
    assert report.passed
    assert [c.name for c in report.checks if c.marginal] == ["clipped_dark"]
    assert "only just below the maximum of 50%" in report.marginal[0]


def test_the_marginal_band_follows_its_setting():
    report = assess_quality(imagegen.shadowed(photo(0), share=0.45), dataclasses.replace(DEFAULTS, marginal_margin=0.0))
    assert report.passed and report.marginal == []


def test_a_failed_check_is_never_marginal():
    report = assess_quality(imagegen.shadowed(photo(0), share=0.55), DEFAULTS)
    assert not report.check("clipped_dark").passed and not report.check("clipped_dark").marginal


# ---------------------------------------------------------------- the stored report

def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return type(value) in (bool, int, float, str)


@pytest.mark.parametrize("image", [photo(0), imagegen.shadowed(photo(0), 0.45), imagegen.document()],
                         ids=["pass", "marginal", "fail"])
def test_as_dict_is_plain_json(image):
    report = assess_quality(image, DEFAULTS)
    data = report.as_dict()
    assert _plain(data)
    assert json.loads(json.dumps(data)) == data
    assert data["passed"] is report.passed and data["working_side"] == WORKING_SIDE
    assert [c["name"] for c in data["checks"]] == CHECK_NAMES
    assert all(set(c) == {"name", "value", "threshold", "passed", "marginal", "message", "bound"}
               for c in data["checks"])


# ---------------------------------------------------------------- thresholds come from the settings

QUALITY_VARIABLES = [f"DERMATRIAGE_{name.upper()}" for name in QualityThresholds.__dataclass_fields__]


@pytest.fixture
def clean_quality_env(monkeypatch):
    for name in QUALITY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_settings_carry_every_threshold_with_the_same_defaults(clean_quality_env):
    fields = Settings.model_fields
    for name in QualityThresholds.__dataclass_fields__:
        assert name in fields, f"Settings lacks {name}"
        assert fields[name].validation_alias.choices[0] == f"DERMATRIAGE_{name.upper()}"
    assert QualityThresholds.from_settings(Settings()) == DEFAULTS


def test_thresholds_are_read_from_the_environment(clean_quality_env):
    clean_quality_env.setenv("DERMATRIAGE_MIN_SHARPNESS", "5000")
    clean_quality_env.setenv("DERMATRIAGE_MAX_TEXT_EDGE_SHARE", "0.5")
    thresholds = QualityThresholds.from_settings(Settings())
    assert thresholds.min_sharpness == 5000 and thresholds.max_text_edge_share == 0.5
    report = assess_quality(photo(0), thresholds)
    assert failing(report) == {"sharpness"} and "needs 5000" in report.check("sharpness").message
    photographed_page = as_uploaded(imagegen.photographed(imagegen.document()))
    assert assess_quality(photographed_page, thresholds).check("text_edges").passed


# ---------------------------------------------------------------- real photographs, when present

@pytest.fixture(scope="module")
def calibration():
    from scripts.quality_report import CALIBRATION_ENV, calibration_dir, calibration_photos

    folder = calibration_dir()
    if not folder.is_dir():
        pytest.skip(f"real calibration photographs not found at {folder} (they are not in the repository; "
                    f"set {CALIBRATION_ENV} to a folder of them to run this test)")
    photos = calibration_photos(folder)
    assert photos and all(p.is_file() for p in photos), f"calibration folder {folder} is incomplete"
    return photos


def test_real_photographs_pass_clear_of_every_threshold_and_their_degraded_copies_fail(calibration):
    from scripts.quality_report import DEGRADATIONS, degraded_copy, load

    problems = []
    for path in calibration:
        rgb = load(path)
        report = assess_quality(rgb, DEFAULTS)
        if not report.passed or report.marginal:
            problems.append(f"{path.name}: {report.failures or report.marginal}")
        if report.check("sharpness").value < 2 * DEFAULTS.min_sharpness:
            problems.append(f"{path.name}: sharpness {report.check('sharpness').value} has under 2x headroom")
        for kind, (_, reasons) in DEGRADATIONS.items():
            copy = assess_quality(degraded_copy(rgb, kind), DEFAULTS)
            if all(copy.check(reason).passed for reason in reasons):
                problems.append(f"{path.name} {kind}: passed {reasons}")
    assert not problems, "\n".join(problems)
