"""Frame positions and crop boxes (SPEC §3.2) against their formulas."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from emo.decode.sampling import SamplingConfig, crop_boxes, frame_positions


def _formula(t: int, m: int, n: int) -> np.ndarray:
    """The SPEC formula, in exact rationals: floor(m T/M + (T/M)(0.5 + (j - N//2)/N)), clamped."""
    out = np.empty((m, n), dtype=np.int64)
    for s in range(m):
        for j in range(n):
            x = Fraction(s * t, m) + Fraction(t, m) * (Fraction(1, 2) + Fraction(j - n // 2, n))
            out[s, j] = min(max(math.floor(x), 0), t - 1)
    return out


@pytest.mark.parametrize("t", [24, 25, 64, 100, 101, 257, 1000, 12345])
@pytest.mark.parametrize("m, n", [(1, 1), (8, 1), (8, 2), (8, 3), (4, 4), (3, 5)])
def test_positions_match_formula(t, m, n):
    if t < m * n:
        pytest.skip("short video: other rule")
    got = frame_positions(t, m, n)
    assert got.shape == (m, n) and got.dtype == np.int64
    np.testing.assert_array_equal(got, _formula(t, m, n))


@pytest.mark.parametrize("t, m, n", [(100, 8, 3), (1000, 64, 4), (97, 16, 2), (64, 64, 1)])
def test_positions_lie_in_their_segment_and_increase(t, m, n):
    got = frame_positions(t, m, n)
    for s in range(m):
        lo, hi = s * t / m, (s + 1) * t / m
        assert np.all((got[s] >= math.floor(lo)) & (got[s] < hi)), (s, got[s])
    assert np.all(np.diff(got.reshape(-1)) > 0)  # distinct and increasing when T >= M N


def test_centre_is_the_middle_position():
    # N = 1 is the segment centre; for any N the position N // 2 is that same centre.
    t, m = 1000, 10
    centre = frame_positions(t, m, 1)[:, 0]
    np.testing.assert_array_equal(centre, [int((s + 0.5) * t / m) for s in range(m)])
    for n in (2, 3, 4, 5):
        np.testing.assert_array_equal(frame_positions(t, m, n)[:, n // 2], centre)


@pytest.mark.parametrize("m, n", [(8, 1), (8, 3), (4, 4), (64, 1), (5, 2)])
def test_exactly_m_times_n_frames_gives_every_frame_once(m, n):
    # At T == M N the regular rule and the short-video rule must agree: 0..T-1.
    t = m * n
    np.testing.assert_array_equal(frame_positions(t, m, n).reshape(-1), np.arange(t))
    np.testing.assert_array_equal(_formula(t, m, n).reshape(-1), np.arange(t))


@pytest.mark.parametrize("t", [1, 2, 3, 23])
def test_short_video_plays_once_then_repeats_last_frame(t):
    got = frame_positions(t, 8, 3)
    assert got.shape == (8, 3)
    np.testing.assert_array_equal(got.reshape(-1), np.minimum(np.arange(24), t - 1))


def test_no_frames_is_an_error():
    with pytest.raises(ValueError):
        frame_positions(0, 8, 1)


# --- config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"segments": 0}, "segments"),
        ({"frames_per_segment": -1}, "frames_per_segment"),
        ({"views": 1.5}, "views"),
        ({"image_size": True}, "image_size"),
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"crop_scale": (0.9, 0.5)}, "crop_scale"),
        ({"crop_scale": (0.5, 1.5)}, "crop_scale"),
        ({"crop_ratio": (4 / 3, 3 / 4)}, "crop_ratio"),
        ({"crop_ratio": (1.0,)}, "crop_ratio"),
        ({"seed": "0"}, "seed"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingConfig(**kwargs)


def test_config_from_json_lists_is_hashable_and_equal():
    a = SamplingConfig(crop_scale=[0.64, 1], crop_ratio=[0.75, 4 / 3])
    assert a == SamplingConfig() and hash(a) == hash(SamplingConfig())
    with pytest.raises(TypeError):
        SamplingConfig(segment=8)  # typo: unknown keys fail loudly


# --- crops ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h, w", [(48, 64), (64, 48), (18, 34), (2160, 3840), (50, 50)])
def test_view_zero_is_the_centre_square(h, w):
    boxes = crop_boxes(h, w, SamplingConfig(views=3), "a")
    assert boxes.shape == (3, 4) and boxes.dtype == np.float64
    s = min(h, w)
    np.testing.assert_allclose(boxes[0], [(w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2])


def test_random_crops_follow_scale_and_ratio():
    cfg = SamplingConfig(views=2, crop_scale=(0.3, 0.7), crop_ratio=(0.5, 2.0))
    h, w = 480, 640
    areas, ratios = [], []
    for i in range(400):
        x0, y0, x1, y1 = crop_boxes(h, w, cfg, f"video-{i}")[1]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert all(float(v).is_integer() for v in (x0, y0, x1, y1))
        areas.append((x1 - x0) * (y1 - y0) / (h * w))
        ratios.append((x1 - x0) / (y1 - y0))
    areas, log_ratios = np.array(areas), np.log(ratios)
    assert areas.min() > 0.29 and areas.max() < 0.71  # integer rounding moves the edges a little
    assert log_ratios.min() > math.log(0.5) - 0.02 and log_ratios.max() < math.log(2.0) + 0.02
    # log-uniform ratio and uniform area: both spread over their range, not stuck at one end
    assert abs(np.median(log_ratios)) < 0.15 and abs(np.median(areas) - 0.5) < 0.05


def test_random_crops_are_stable_per_item_and_differ_across_items_seeds_views():
    cfg = SamplingConfig(views=4, seed=7)
    a = crop_boxes(240, 320, cfg, "clip/001")
    np.testing.assert_array_equal(a, crop_boxes(240, 320, cfg, "clip/001"))
    assert not np.array_equal(a[1:], crop_boxes(240, 320, cfg, "clip/002")[1:])
    assert not np.array_equal(a[1:], crop_boxes(240, 320, SamplingConfig(views=4, seed=8), "clip/001")[1:])
    assert len({tuple(b) for b in a[1:]}) == 3
    # Pinned: crops feed existing caches, so a change of the RNG or of the crop rule must be deliberate.
    np.testing.assert_array_equal(
        crop_boxes(240, 320, SamplingConfig(views=2), "x")[1], [20.0, 3.0, 320.0, 236.0]
    )


def test_random_crops_do_not_depend_on_the_process():
    # Another interpreter with another string-hash seed (as a spawned worker would have) draws the same boxes.
    code = "from emo.decode.sampling import *; print(crop_boxes(240, 320, SamplingConfig(views=3), 'clip é').tolist())"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == crop_boxes(240, 320, SamplingConfig(views=3), "clip é").tolist()


def test_impossible_crops_fall_back_to_a_ratio_clamped_centre_box():
    # A 1000x10 strip cannot hold a crop of ratio <= 4/3 with area >= 64 %: the fallback is the
    # largest centred box of ratio 4/3.
    box = crop_boxes(10, 1000, SamplingConfig(views=2), "strip")[1]
    np.testing.assert_array_equal(box, [493.0, 0.0, 506.0, 10.0])
