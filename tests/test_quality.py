"""The quality gate: every check passes a good photograph and stops the failure it exists for.

Images are generated (harness/imagegen.py); the real calibration photographs are used only when their
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

from model.quality import (GATE_MIN_SIDE, WORKING_SIDE, QualityThresholds, assess_quality, measure,
                           working_view)
from harness import imagegen
from triage.imaging import decode_reduced, decode_rgb
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


def at_224(rgb: np.ndarray) -> np.ndarray:
    """A copy with a shorter side of 224 px, saved as JPEG: as the reference's training set is stored."""
    return as_uploaded(imagegen.shrunk_to_shorter(rgb, 224))


# ---------------------------------------------------------------- good photographs pass

@pytest.mark.parametrize("make", [
    pytest.param(lambda: photo(0), id="light-skin"),
    pytest.param(lambda: photo(1, hairs=False), id="smooth-skin-no-hairs"),
    pytest.param(lambda: photo(2, dark=True), id="dark-skin"),
    pytest.param(lambda: photo(3, dark=True, hairs=False), id="dark-smooth-skin"),
    pytest.param(lambda: as_uploaded(photo(4), quality=75), id="jpeg-q75"),
    pytest.param(lambda: photo(5, 1600, 1200, hairs=False), id="1600px"),
    pytest.param(lambda: as_uploaded(imagegen.vignette(photo(6))), id="dermatoscope-surround"),
    pytest.param(lambda: as_uploaded(photo(8, 299, 224)), id="299x224"),
    pytest.param(lambda: at_224(photo(9, 1600, 1200)), id="1600px-shrunk-to-224"),
    pytest.param(lambda: as_uploaded(imagegen.smooth_nevus(0)), id="smooth-nevus"),
    pytest.param(lambda: at_224(imagegen.smooth_nevus(1, 1024, 768)), id="smooth-nevus-at-224"),
    pytest.param(lambda: as_uploaded(imagegen.veiled_nevus(2)), id="blue-grey-veil-dark-grey-surround"),
    pytest.param(lambda: as_uploaded(imagegen.veiled_nevus(3, surround=(20, 20, 22), field=0.45)),
                 id="blue-grey-veil-black-surround"),
    pytest.param(lambda: at_224(imagegen.veiled_nevus(4, 1024, 1024)), id="blue-grey-veil-at-224"),
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
    (lambda: as_uploaded(imagegen.blurred_by_size(photo(0))), {"sharpness"}),
    (lambda: as_uploaded(imagegen.darkened(photo(0))), {"brightness_min"}),
    (lambda: as_uploaded(imagegen.darkened(photo(2, dark=True))), {"brightness_min"}),
    (lambda: as_uploaded(imagegen.blown_out(photo(0))), {"brightness_max", "clipped_bright"}),
    (lambda: imagegen.shrunk(photo(0), 160), {"resolution"}),
    (lambda: as_uploaded(imagegen.blurred_by_size(imagegen.smooth_nevus(2))), {"sharpness"}),
    (lambda: as_uploaded(imagegen.blurred_by_size(imagegen.veiled_nevus(5))), {"sharpness"}),
], ids=["blur", "shadow", "glare", "blur-inside-a-hard-dermatoscope-rim", "blur-1%-of-the-side", "darkened",
        "darkened-dark-skin", "blown-out", "shrunk-to-160", "blurred-smooth-nevus",
        "blurred-in-a-dark-grey-surround"])
def test_a_single_fault_is_reported_alone(make, expected):
    # Checks that fire together for one fault would bury the advice that matters: a dark or blown-out
    # frame is not also called blurred, uniform or a document.
    assert failing(assess_quality(make(), DEFAULTS)) == expected


def test_while_the_exposure_is_wrong_contrast_and_sharpness_are_not_held_against_the_photo():
    report = assess_quality(imagegen.blank(colour=(0, 0, 0)), DEFAULTS)
    assert failing(report) == {"brightness_min", "clipped_dark"}
    for name in ("contrast", "sharpness"):
        check = report.check(name)
        assert check.passed and not check.marginal and "fix the light first" in check.message
    assert all("fix the light" not in m for m in report.failures) and report.marginal == []


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


def test_a_black_and_white_photograph_of_skin_has_no_colour():
    grey = cv2.cvtColor(cv2.cvtColor(photo(0), cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    assert failing(assess_quality(as_uploaded(grey), DEFAULTS)) == {"colourless"}


@pytest.mark.parametrize("make, expected", [
    (lambda: imagegen.blank(colour=(0, 0, 0)), {"brightness_min", "clipped_dark"}),
    (lambda: imagegen.blank(1, 1), {"resolution", "contrast", "sharpness"}),
    (lambda: imagegen.blank(15, 300), {"resolution", "contrast", "sharpness"}),
    (lambda: np.zeros((240, 320), np.uint8) + 128, {"contrast", "sharpness"}),
], ids=["black", "1px", "15px-wide", "greyscale-array"])
def test_degenerate_frames_are_judged_not_crashed_on(make, expected):
    report = assess_quality(make(), DEFAULTS)
    assert not report.passed and expected <= failing(report)


def test_hard_steps_are_counted_along_a_strip_one_pixel_high_or_wide():
    from model.quality import text_edge_share

    row = np.array([[0, 100, 100, 0, 0]], np.float32)  # two hard steps among five pixels
    inside = np.ones(row.shape, bool)
    assert text_edge_share(row, inside) == text_edge_share(row.T.copy(), inside.T.copy()) == 2 / 5


# ---------------------------------------------------------------- counting colours

def _commonest_counts_by_sorting(values: np.ndarray, k: int) -> int:
    return int(np.sort(np.unique(values, return_counts=True)[1])[-k:].sum()) if values.size else 0


@pytest.mark.parametrize("seed", range(40))
def test_the_commonest_colours_are_counted_exactly(seed):
    from model.quality import _commonest_count

    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 20_000))
    spread = int(rng.choice([1, 3, 9, 200, 5_000, 1 << 24]))  # one colour ... all different
    values = rng.integers(0, spread, n).astype(np.uint32)
    if seed % 4 == 0 and n:  # a few heavy colours over a noisy background, as in a dermatoscope frame
        values[rng.random(n) < 0.3] = rng.integers(0, 1 << 24, 4, dtype=np.uint32)[rng.integers(0, 4)]
    for k in (1, 8):
        assert _commonest_count(values, k) == _commonest_counts_by_sorting(values, k)


def test_the_flat_colour_share_of_photographs_is_the_sorted_count():
    from model.quality import CHANNEL_MAX, COLOUR_MIN_VALUE, FLAT_COLOURS, _brightest_channel, flat_colour_share

    for image in (photo(3), imagegen.screenshot(), imagegen.document(), photo(5, 1200, 900)):
        small = working_view(image).colour
        packed = np.ascontiguousarray(cv2.cvtColor(small, cv2.COLOR_RGB2RGBA)).view(np.uint32)[..., 0]
        brightest = _brightest_channel(small)
        lit = packed[(brightest >= COLOUR_MIN_VALUE) & (brightest < CHANNEL_MAX)]
        assert flat_colour_share(small) == _commonest_counts_by_sorting(lit, FLAT_COLOURS) / packed.size


# ---------------------------------------------------------------- judged at the network's scale

def test_the_working_view_is_the_networks_scale_and_never_an_enlargement():
    for w, h in [(4000, 3000), (1000, 1000), (600, 450), (450, 600), (300, 225), (299, 224), (300, 200), (160, 120)]:
        view = working_view(np.zeros((h, w, 3), np.uint8))
        assert min(view.grey.shape) == min(WORKING_SIDE, h, w)
        assert view.grey.shape[0] <= h and view.grey.shape[1] <= w
        assert abs(view.grey.shape[1] / view.grey.shape[0] - w / h) < 0.02  # the aspect is kept
        assert min(view.colour.shape[:2]) <= min(view.grey.shape)


def _smaller_copy(rgb: np.ndarray, side: int, resample: str) -> np.ndarray:
    if resample == "area":
        return imagegen.shrunk(rgb, side)
    h, w = rgb.shape[:2]
    size = (round(w * side / max(h, w)), round(h * side / max(h, w)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))  # as photo software exports


# A copy shrunk by other software carries that software's filter; the closer its size to the working
# size, the more that filter shows (Lanczos keeps more edge contrast than area averaging).
@pytest.mark.parametrize("side, resample", [(299, "area"), (299, "lanczos"), (600, "lanczos"), (800, "area"),
                                            (2000, "area")])
def test_a_4000px_photo_and_a_smaller_copy_get_similar_sharpness(side, resample):
    large = photo(7, 4000, 3000)
    small = _smaller_copy(large, side, resample)
    assert measure(small).sharpness == pytest.approx(measure(large).sharpness, abs=0.06)
    assert assess_quality(large, DEFAULTS).passed and assess_quality(small, DEFAULTS).passed


def test_a_sharp_photograph_at_224px_passes_and_its_blurred_copy_does_not():
    sharp = at_224(photo(10, 1600, 1200))
    assert min(sharp.shape[:2]) == 224
    report = assess_quality(sharp, DEFAULTS)
    assert report.passed and report.marginal == []
    soft = assess_quality(as_uploaded(imagegen.blurred_by_size(sharp)), DEFAULTS)
    assert failing(soft) == {"sharpness"}
    assert "blurred" in soft.check("sharpness").message and "hold the camera still" in soft.check("sharpness").message


def test_a_smooth_subject_is_not_taken_for_a_blurred_one():
    # Dermoscopy of a nevus has little detail by nature; what it has is crisp. Its blurred copy has
    # about as much contrast, but no fine detail left.
    nevus = as_uploaded(imagegen.smooth_nevus(3))
    soft = as_uploaded(imagegen.blurred_by_size(imagegen.smooth_nevus(3)))
    assert measure(nevus).sharpness > 2 * DEFAULTS.min_sharpness_share
    assert measure(soft).sharpness < 0.5 * DEFAULTS.min_sharpness_share
    assert measure(soft).contrast > 0.9 * measure(nevus).contrast


def test_enlarging_a_small_photo_neither_adds_nor_costs_sharpness():
    small = imagegen.shrunk(photo(0), 300)
    blown_up = imagegen.enlarged(small, 4000)
    assert measure(blown_up).sharpness == pytest.approx(measure(small).sharpness, abs=0.05)
    assert assess_quality(small, DEFAULTS).passed and assess_quality(blown_up, DEFAULTS).passed


def test_sensor_noise_on_a_blurred_large_photo_is_averaged_away_not_taken_for_detail():
    soft = imagegen.enlarged(imagegen.blurred(photo(0), 3), 4000).astype(np.float32)
    soft += np.random.default_rng(0).standard_normal(soft.shape, np.float32) * 4
    report = assess_quality(np.clip(soft, 0, 255).astype(np.uint8), DEFAULTS)
    assert failing(report) == {"sharpness"}


def test_the_dermatoscope_surround_neither_fails_nor_flatters_the_photo():
    plain, ringed = photo(0), as_uploaded(imagegen.vignette(photo(0)))
    report = assess_quality(ringed, DEFAULTS)
    assert report.passed and report.check("clipped_dark").value > 0.3
    # The ring's border is the sharpest, most contrasting edge in the frame; it is not the lesion's.
    assert measure(ringed).sharpness == pytest.approx(measure(plain).sharpness, abs=0.05)
    washed_out = as_uploaded(imagegen.vignette(imagegen.low_contrast(photo(0), 0.08)))
    assert not assess_quality(washed_out, DEFAULTS).check("contrast").passed


# ---------------------------------------------------------------- a reduced decode, as the worker makes it

def _reduced(data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
    return decode_reduced(data, GATE_MIN_SIDE)


@pytest.mark.parametrize("width, height", [(2304, 1728), (4000, 3000), (1024, 768), (600, 450), (500, 500)])
def test_a_reduced_decode_is_judged_like_the_full_one(width, height):
    data = imagegen.encode(imagegen.skin_photo(11, width, height))
    reduced, size = _reduced(data)
    assert min(reduced.shape[:2]) >= GATE_MIN_SIDE and reduced.shape[0] < height  # the decoder did reduce it
    full = measure(decode_rgb(data))
    small = measure(reduced, size)
    assert (small.width, small.height) == (full.width, full.height) == (width, height)
    assert small.sharpness == pytest.approx(full.sharpness, abs=0.03)
    assert small.contrast == pytest.approx(full.contrast, rel=0.05)
    assert small.brightness == pytest.approx(full.brightness, abs=1.5)
    assert assess_quality(reduced, DEFAULTS, size).passed and assess_quality(decode_rgb(data), DEFAULTS).passed
    blurred, size = _reduced(imagegen.encode(imagegen.blurred_by_size(imagegen.skin_photo(11, width, height))))
    assert failing(assess_quality(blurred, DEFAULTS, size)) == {"sharpness"}


def test_the_size_check_uses_the_photographs_own_size():
    reduced = imagegen.shrunk_to_shorter(photo(12, 1600, 1200), 224)
    assert failing(assess_quality(reduced, DEFAULTS, (1600, 1200))) == set()
    assert assess_quality(reduced, DEFAULTS, (1600, 1200)).check("resolution").value == 1200
    tiny = assess_quality(imagegen.shrunk(photo(12), 160), DEFAULTS, (160, 120))
    assert failing(tiny) == {"resolution"} and "160 x 120" in tiny.failures[0]


# ---------------------------------------------------------------- marginal passes

def test_a_pass_just_above_a_minimum_is_marginal_and_explained():
    value = measure(photo(0)).sharpness
    near = assess_quality(photo(0), dataclasses.replace(DEFAULTS, min_sharpness_share=value / 1.1))
    assert near.passed and near.check("sharpness").marginal
    assert len(near.marginal) == 1 and "only just above the minimum" in near.marginal[0]
    assert not near.marginal[0].endswith(".")  # the risk policy adds its own full stop
    clear = assess_quality(photo(0), dataclasses.replace(DEFAULTS, min_sharpness_share=value / 1.2))
    assert clear.passed and clear.marginal == []


def test_a_pass_just_under_a_maximum_is_marginal():
    report = assess_quality(imagegen.shadowed(photo(0), share=0.45), DEFAULTS)
    assert report.passed
    assert [c.name for c in report.checks if c.marginal] == ["clipped_dark"]
    assert "only just below the maximum of 50%" in report.marginal[0]


def test_the_marginal_band_follows_its_setting():
    no_band = dataclasses.replace(DEFAULTS, marginal_margin=0.0)
    report = assess_quality(imagegen.shadowed(photo(0), share=0.45), no_band)
    assert report.passed and report.marginal == []


def test_a_failed_check_is_never_marginal():
    report = assess_quality(imagegen.shadowed(photo(0), share=0.55), DEFAULTS)
    assert not report.check("clipped_dark").passed and not report.check("clipped_dark").marginal


def test_a_photograph_of_exactly_the_networks_size_is_not_marginal_for_it():
    report = assess_quality(as_uploaded(photo(8, 299, 224)), DEFAULTS)
    assert report.check("resolution").value == 224 and not report.check("resolution").marginal


# ---------------------------------------------------------------- the stored report

def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return type(value) in (bool, int, float, str)


@pytest.mark.parametrize("image", [photo(0), imagegen.shadowed(photo(0), 0.45), imagegen.document(),
                                   imagegen.blank(colour=(0, 0, 0))],
                         ids=["pass", "marginal", "fail", "not-judged"])
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
    clean_quality_env.setenv("DERMATRIAGE_MIN_SHARPNESS_SHARE", "0.99")
    clean_quality_env.setenv("DERMATRIAGE_MAX_TEXT_EDGE_SHARE", "0.5")
    thresholds = QualityThresholds.from_settings(Settings())
    assert thresholds.min_sharpness_share == 0.99 and thresholds.max_text_edge_share == 0.5
    report = assess_quality(photo(0), thresholds)
    assert failing(report) == {"sharpness"} and "needs 99%" in report.check("sharpness").message
    photographed_page = as_uploaded(imagegen.photographed(imagegen.document()))
    assert assess_quality(photographed_page, thresholds).check("text_edges").passed


@pytest.mark.parametrize("name, value", [("min_sharpness_share", 6.0), ("min_relative_contrast", 4.0),
                                         ("max_colourless_share", -0.1)])
def test_a_share_outside_0_to_1_is_refused_with_its_setting_named(name, value):
    with pytest.raises(ValueError, match=f"DERMATRIAGE_{name.upper()}"):
        dataclasses.replace(DEFAULTS, **{name: value})


# ---------------------------------------------------------------- real photographs, when present

@pytest.fixture(scope="module")
def calibration():
    from scripts.quality_report import CALIBRATION_ENV, calibration_dir, calibration_folders

    root = calibration_dir()
    folders = calibration_folders(root)
    if not folders:
        pytest.skip(f"real calibration photographs not found at {root} (they are not in the repository; "
                    f"set {CALIBRATION_ENV} to a folder of them to run this test)")
    photos = [p for paths in folders.values() for p in paths]
    assert all(p.is_file() for p in photos), f"calibration folder {root} is incomplete"
    return photos


def test_real_photographs_pass_at_their_size_and_at_224px_and_their_degraded_copies_fail(calibration):
    """Every real photograph of 224 px and more passes, as stored and shrunk to 224 px; every degraded
    copy fails for its own reason. (scripts/quality_report.py prints the same with every value.)"""
    from scripts.quality_report import DEGRADATIONS, at_size, degraded_copy, load

    problems = []
    for path in calibration:
        full = load(path)
        if min(full.shape[:2]) < GATE_MIN_SIDE:
            report = assess_quality(full, DEFAULTS)
            if failing(report) != {"resolution"}:
                problems.append(f"{path.name} ({full.shape[1]} x {full.shape[0]}): {failing(report)}")
            continue
        for size in ("native", "224"):
            data = path.read_bytes() if size == "native" else imagegen.encode(at_size(full, size))
            rgb = full if size == "native" else decode_rgb(data)
            report = _as_the_worker_sees_it(data)
            if not report.passed:
                problems.append(f"{path.name} at {size}: {report.failures}")
            for kind, (_, reasons) in DEGRADATIONS.items():
                copy = _as_the_worker_sees_it(degraded_copy(rgb, kind))
                if not failing(copy) & set(reasons):
                    problems.append(f"{path.name} at {size}, {kind}: passed {reasons} (failed {failing(copy)})")
    assert not problems, "\n".join(problems)


def _as_the_worker_sees_it(data: bytes):
    from scripts.quality_report import reduced_decode

    rgb, size = reduced_decode(data)
    return assess_quality(rgb, DEFAULTS, size)
