"""Subject boxes (manifest format, frame rule) and patch coverage against hand-computed areas and
against the pixels the decoder actually produces."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from emo.decode.frames import pil_views as _views
from emo.decode.sampling import SamplingConfig, crop_boxes
from emo.extract.modalities.boxes import (
    DEFAULT_TOLERANCE,
    BoxFormatError,
    boxes_at,
    coverage_for_item,
    parse_subject_boxes,
    patch_coverage,
)

S, P, G = 32, 8, 4  # the tiny model's geometry: 4 x 4 patches of 8 px


def one_hot(p: int, value: float = 1.0) -> np.ndarray:
    out = np.zeros(G * G)
    out[p] = value
    return out


# -- patch coverage: hand-computed areas ---------------------------------------------------------
def test_box_over_exactly_one_patch_is_one_hot():
    crop = [0, 0, 64, 64]  # 64 px source square -> 32 px: scale 1/2
    got = patch_coverage([16, 16, 32, 32], crop, S, P)  # -> [8, 8, 16, 16]: row 1, col 1
    assert got.shape == (G * G,)
    np.testing.assert_array_equal(got, one_hot(1 * G + 1))
    np.testing.assert_array_equal(
        patch_coverage([48, 0, 64, 16], crop, S, P), one_hot(0 * G + 3)
    )  # row-major


def test_half_and_quarter_patches():
    crop = [0, 0, 64, 64]
    np.testing.assert_array_equal(patch_coverage([16, 16, 24, 32], crop, S, P), one_hot(5, 0.5))  # left half
    np.testing.assert_array_equal(patch_coverage([16, 24, 32, 32], crop, S, P), one_hot(5, 0.5))  # lower half
    np.testing.assert_array_equal(
        patch_coverage([24, 24, 40, 40], crop, S, P),
        0.25 * np.array([0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0]),
    )  # a patch-sized box across four patches


def test_box_outside_the_crop_covers_nothing():
    crop = [100, 50, 164, 114]
    for box in ([0, 0, 100, 50], [164, 50, 200, 114], [100, 114, 164, 200], [0, 0, 99, 49]):
        np.testing.assert_array_equal(patch_coverage(box, crop, S, P), np.zeros(G * G))
    np.testing.assert_array_equal(patch_coverage([np.nan] * 4, crop, S, P), np.zeros(G * G))  # no subject


def test_box_across_the_crop_border_is_clipped():
    crop = [10, 20, 42, 52]  # 32 px: scale 1, offset (10, 20)
    # -> [20, 20, 90, 80]: rows/cols 2 half covered, 3 fully, the rest of the box outside the crop
    got = patch_coverage([30, 40, 100, 100], crop, S, P).reshape(G, G)
    want = np.zeros((G, G))
    want[2:, 2:] = np.outer([0.5, 1.0], [0.5, 1.0])
    np.testing.assert_array_equal(got, want)
    # a box holding the whole crop covers every patch fully
    np.testing.assert_array_equal(patch_coverage([-5, -5, 500, 500], crop, S, P), np.ones(G * G))


def test_non_square_crop_scales_x_and_y_apart():
    crop = [0, 0, 64, 128]  # 64 x 128 source -> 32 x 32: x scale 1/2, y scale 1/4
    got = patch_coverage([16, 32, 32, 64], crop, S, P)  # -> [8, 8, 16, 16]
    np.testing.assert_array_equal(got, one_hot(5))


def test_view0_is_shortest_side_resize_then_centre_crop():
    """96 x 64 source: resize to 48 x 32, centre crop x in [8, 40). A source box [32, 16, 48, 32] becomes
    [16, 8, 24, 16] after the resize and [8, 8, 16, 16] in the crop: patch (1, 1)."""
    view0 = crop_boxes(64, 96, SamplingConfig(views=1, image_size=S), "v")[0]
    np.testing.assert_array_equal(view0, [16, 0, 80, 64])
    np.testing.assert_array_equal(patch_coverage([32, 16, 48, 32], view0, S, P), one_hot(5))
    # portrait 64 x 96 (w x h): the crop is vertical, y in [16, 80) of the source
    view0 = crop_boxes(96, 64, SamplingConfig(views=1, image_size=S), "v")[0]
    np.testing.assert_array_equal(patch_coverage([16, 32, 32, 48], view0, S, P), one_hot(5))


@pytest.mark.parametrize("height, width", [(200, 321), (240, 180)])
def test_coverage_matches_the_decoders_pixels(height, width):
    """A white box on black, cut and resized by the decoder's own ``_views`` for every view (centre and
    random crops, odd margins): the mean of each patch is the coverage (bicubic edges aside). One source
    pixel of shift is 10x the tolerance."""
    cfg = SamplingConfig(views=4, image_size=64)
    crops = crop_boxes(height, width, cfg, "item")  # [V, 4]
    box = np.array([71, 47, 159, 171])
    mask = np.zeros((height, width, 3), dtype=np.uint8)
    mask[47:171, 71:159] = 255
    pixels = _views(Image.fromarray(mask), crops, 64)[..., 0] / 255.0  # [V, 64, 64]
    pooled = pixels.reshape(4, 8, 8, 8, 8).mean(axis=(2, 4)).reshape(4, 64)  # [V, G*G] patch means
    got = patch_coverage(box, crops, 64, 8)  # [V, G*G]
    assert got.shape == (4, 64)
    assert np.abs(pooled - got).max() < 0.005
    shifted = patch_coverage(box + [1, 0, 1, 0], crops, 64, 8)
    assert np.abs(pooled - shifted).max() > 0.02


def test_bad_geometry_raises():
    with pytest.raises(ValueError, match="x0 < x1"):
        patch_coverage([0, 0, 1, 1], [5, 0, 5, 10], S, P)
    with pytest.raises(ValueError, match="patch <= image_size"):
        patch_coverage([0, 0, 1, 1], [0, 0, 10, 10], 8, 16)


# -- the manifest format and the frame rule ------------------------------------------------------
def test_no_subject_forms():
    for value in (None, []):
        got = boxes_at(value, np.arange(6).reshape(3, 2))
        assert got.shape == (3, 2, 4) and np.isnan(got).all()


def test_whole_clip_boxes():
    index = np.array([[0, 5], [100, 10_000]])
    got = boxes_at([1, 2, 30, 40], index)
    assert got.shape == (2, 2, 4) and got.dtype == np.float64
    np.testing.assert_array_equal(got, np.broadcast_to([1, 2, 30, 40], (2, 2, 4)))
    # several subjects: the largest; the first of equal areas
    got = boxes_at([[0, 0, 10, 10], [5, 5, 25, 15], [0, 0, 5, 5]], index)  # areas 100, 200, 25
    np.testing.assert_array_equal(got, np.broadcast_to([5, 5, 25, 15], (2, 2, 4)))
    got = boxes_at([[0, 0, 10, 20], [50, 50, 70, 60]], index)  # equal areas
    np.testing.assert_array_equal(got[0, 0], [0, 0, 10, 20])


def test_per_frame_nearest_within_tolerance():
    a, b, c = [0, 0, 10, 10], [20, 20, 40, 40], [1, 1, 2, 2]
    value = [
        {"frame": 10, "box": a},
        {"frame": 20, "box": b},
        {"frame": 20, "box": c},  # a second, smaller subject on frame 20: b wins
        {"frame": 40, "box": None},  # looked at, nobody there
    ]
    index = np.array([[10, 14, 15, 16], [20, 30, 33, 36], [0, 7, 45, 53]])
    got = boxes_at(value, index, tolerance=5)
    nan = [math.nan] * 4
    want = np.array(
        [
            [a, a, a, b],  # 14: 4 from 10; 15: tie between 10 and 20 -> the earlier; 16: 4 from 20
            [b, nan, nan, nan],  # 30: tie 20/40 at 10 > 5; 33: 7 from 40; 36: nearest is the null entry 40
            [nan, a, nan, nan],  # 0: 10 away; 7: 3 from 10; 45: nearest is 40 (null); 53: 13 away
        ]
    )
    np.testing.assert_array_equal(got, want)
    wider = boxes_at(value, np.array([30, 0, 52, 44]), tolerance=10)
    np.testing.assert_array_equal(wider, np.array([b, a, nan, nan]))  # 30: tie -> 20's box
    exact = boxes_at(value, np.array([10, 11, 20]), tolerance=0)
    np.testing.assert_array_equal(exact, np.array([a, nan, b]))
    assert DEFAULT_TOLERANCE == 12
    np.testing.assert_array_equal(boxes_at(value, np.array([22])), np.array([b]))  # default 12


def test_parsed_track_is_sorted_with_one_box_per_frame():
    track = parse_subject_boxes(
        [{"frame": 9, "box": None}, {"frame": 3, "box": [0, 0, 1, 1]}, {"frame": 9, "box": [0, 0, 2, 2]}]
    )
    np.testing.assert_array_equal(track.frames, [3, 9])
    np.testing.assert_array_equal(track.boxes, [[0, 0, 1, 1], [0, 0, 2, 2]])  # a box beats a null entry
    np.testing.assert_array_equal(boxes_at(track, np.array([9])), [[0, 0, 2, 2]])


@pytest.mark.parametrize(
    "value, message",
    [
        ("0 0 10 10", "must be a list"),
        ({"frame": 1, "box": [0, 0, 1, 1]}, "must be a list"),
        ([0, 0, 10], r"4 numbers"),
        ([0, 0, 10, "10"], "not a mixture"),
        ([[0, 0, 10, 10], [0, 0, 10]], r"subject_boxes\[1\].*4 numbers"),
        ([[0, 0, 10, 10], {"frame": 0, "box": [0, 0, 1, 1]}], "not a mixture"),
        ([10, 0, 5, 10], r"empty \(needs x0 < x1"),
        ([0, 10, 5, 10], r"empty \(needs x0 < x1 and y0 < y1"),
        ([0, 0, math.inf, 10], "not finite"),
        ([0, 0, math.nan, 10], "not finite"),
        ([True, 0, 5, 10], "not a mixture"),
        ([{"frame": 0, "box": [0, 0, 1, 1], "person": 2}], r"unknown \['person'\]"),
        ([{"frame": 0}], r"missing \['box'\]"),
        ([{"frame": -1, "box": [0, 0, 1, 1]}], "'frame' must be a frame index"),
        ([{"frame": 1.5, "box": [0, 0, 1, 1]}], "'frame' must be a frame index"),
        ([{"frame": True, "box": [0, 0, 1, 1]}], "'frame' must be a frame index"),
        (
            [{"frame": 0, "box": [0, 0, 1, 1]}, {"frame": 2, "box": [3, 3, 1, 1]}],
            r"subject_boxes\[1\].*empty",
        ),
    ],
)
def test_format_errors_name_the_problem(value, message):
    with pytest.raises(BoxFormatError, match=message):
        boxes_at(value, np.zeros((1, 1), dtype=np.int64))


def test_bad_tolerance():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="tolerance"):
            boxes_at(None, np.zeros(1, dtype=np.int64), tolerance=bad)


# -- per item ------------------------------------------------------------------------------------
def test_coverage_for_item_shapes_and_values():
    crops = crop_boxes(64, 96, SamplingConfig(views=3, image_size=S), "it")  # [3, 4]
    value = [{"frame": 0, "box": [32, 16, 48, 32]}, {"frame": 50, "box": [-1, -1, 100, 70]}]
    index = np.array([[0, 1], [30, 50]])  # 30 is 20 frames from either entry: no subject
    got = coverage_for_item(value, index, crops, S, P, tolerance=5)
    assert got.shape == (2, 2, 3, G * G) and got.dtype == np.float32
    np.testing.assert_array_equal(got[0, 0, 0], one_hot(5))  # view 0: the hand-computed case above
    np.testing.assert_array_equal(got[0, 1], got[0, 0])  # frame 1 takes frame 0's box
    np.testing.assert_array_equal(got[1, 0], np.zeros((3, G * G)))
    np.testing.assert_array_equal(got[1, 1], np.ones((3, G * G)))  # a box around the frame holds every crop
    for v in range(3):
        np.testing.assert_allclose(got[0, 0, v], patch_coverage([32, 16, 48, 32], crops[v], S, P), rtol=1e-6)
    assert ((got >= 0) & (got <= 1)).all()
    with pytest.raises(ValueError, match=r"crops must be \[V, 4\]"):
        coverage_for_item(value, index, crops[0], S, P)
