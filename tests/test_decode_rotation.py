"""Phone videos: the display matrix turns the decoded frames upright before they are cropped.

Every video here codes the same picture (a solid colour per frame, the top-left quarter white) and
differs only in its display matrix. The reference is re-derived from the coded frames as PyAV returns
them (it ignores the matrix): ``np.rot90`` by the rotation (counter-clockwise, FFmpeg's and every
player's convention), mirrored left-right after it, then the crop boxes of the upright size.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from emo.decode.sampling import SamplingConfig, crop_boxes
from emo.decode.strided import strided_frames
from emo.decode.video import DecodeError, decode_item, probe_video
from tests import videos

CFG = SamplingConfig(segments=4, frames_per_segment=1, views=2, image_size=32)
SIZE = (64, 48)  # coded width, height

# (rotation, mirror) -> the quadrant of the upright centre crop that shows the coded top-left corner
CASES = {
    (None, False): "top-left",
    (90, False): "bottom-left",  # counter-clockwise: the top edge becomes the left edge
    (180, False): "bottom-right",
    (270, False): "top-right",
    (0, True): "top-right",
    (90, True): "bottom-right",
}


def _video(tmp_path: Path, rotation, mirror, n_frames=12, **kwargs) -> Path:
    path = tmp_path / f"rot{rotation}{'m' if mirror else ''}-{n_frames}.mp4"
    return videos.make_video(path, n_frames, size=SIZE, rotation=rotation, mirror=mirror, corner=True, **kwargs)


def _coded_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]  # [H, W, 3] as coded


def _expected(path: Path, item, rotation, mirror) -> np.ndarray:
    """``[M, N, V, S, S, 3]``: the coded frames at the item's indices turned, then cropped and resized."""
    frames = _coded_frames(path)
    out = []
    boxes = None
    for k in item.frame_index.reshape(-1):
        rgb = np.rot90(frames[k], (rotation or 0) // 90)
        rgb = np.fliplr(rgb) if mirror else rgb
        image = Image.fromarray(np.ascontiguousarray(rgb))
        if boxes is None:
            boxes = crop_boxes(image.height, image.width, CFG, "item")
            np.testing.assert_array_equal(item.crops, boxes)
        s = CFG.image_size
        out.append(np.stack([np.asarray(image.resize((s, s), Image.BICUBIC, box=tuple(b))) for b in boxes]))
    return np.stack(out).reshape(item.pixels.shape)


def _bright_quadrant(crop: np.ndarray) -> str:
    h, w = crop.shape[0] // 2, crop.shape[1] // 2
    means = {
        "top-left": crop[:h, :w].mean(), "top-right": crop[:h, w:].mean(),
        "bottom-left": crop[h:, :w].mean(), "bottom-right": crop[h:, w:].mean(),
    }
    return max(means, key=means.get)


@pytest.mark.parametrize("backend", ["auto", "pyav"])
@pytest.mark.parametrize(("rotation", "mirror"), list(CASES))
def test_frames_are_turned_upright_before_cropping(tmp_path, rotation, mirror, backend):
    path = _video(tmp_path, rotation, mirror)
    item = decode_item(path, CFG, "item", backend=backend)

    turned = (rotation or 0) % 180 == 90
    assert (item.width, item.height) == ((SIZE[1], SIZE[0]) if turned else SIZE)
    assert item.rotation == (rotation or 0) and item.mirrored == mirror
    np.testing.assert_array_equal(item.pixels, _expected(path, item, rotation, mirror))
    assert _bright_quadrant(item.pixels[0, 0, 0]) == CASES[rotation, mirror]  # view 0, the centre square
    assert item.backend == "pyav" and item.fallback_reason is None  # mp4 H.264: auto seeks with PyAV


def test_a_video_without_a_display_matrix_decodes_as_before_with_both_backends(tmp_path):
    # the coded frames, cropped with the boxes of the coded size: what emo stored before orientation existed
    path = _video(tmp_path, None, False, bframes=True)
    items = {b: decode_item(path, CFG, "item", backend=b) for b in ("decord", "pyav")}
    for b, item in items.items():
        assert item.backend == b and item.rotation == 0 and not item.mirrored
        np.testing.assert_array_equal(item.pixels, _expected(path, item, None, False))
    np.testing.assert_array_equal(items["decord"].pixels, items["pyav"].pixels)


@pytest.mark.parametrize("rotation", [90, 180])
def test_decord_alone_refuses_a_turned_stream_naming_why(tmp_path, rotation):
    path = _video(tmp_path, rotation, False)
    with pytest.raises(DecodeError, match=rf"decord: the display matrix turns the frames \({rotation}°\)"):
        decode_item(path, CFG, "item", backend="decord")


def test_the_probe_reads_the_matrix_even_when_the_decoder_holds_the_only_frame(tmp_path):
    path = _video(tmp_path, 90, False, n_frames=1, bframes=True)
    assert probe_video(path).orientation.rotation == 90
    assert decode_item(path, CFG, "item").pixels.shape[:2] == (4, 1)


def test_an_angle_that_is_not_a_multiple_of_90_is_a_decode_error(tmp_path):
    path = tmp_path / "tilted.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        c = s = round(65536 * np.sqrt(0.5))  # 45° counter-clockwise, 16.16 fixed point
        stream.set_display_matrix([c, -s, 0, s, c, 0, 0, 0, 1 << 30])
        frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
        frame.pts = 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(DecodeError, match="rotates by 45.0°; only multiples of 90°"):
        decode_item(path, CFG, "item")


def test_detector_frames_are_upright_too(tmp_path):
    path = _video(tmp_path, 270, False)
    coded = _coded_frames(path)
    seen = strided_frames(path, None, None, 5, lambda frames: {k: f.copy() for k, f in frames.items()})
    assert sorted(seen) == [0, 5, 10]
    for k, rgb in seen.items():
        assert rgb.shape == (SIZE[0], SIZE[1], 3)
        np.testing.assert_array_equal(rgb, np.rot90(coded[k], 3))
