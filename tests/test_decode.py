"""decode_item on generated videos: the stored pixels are the frames at the stored indices, for every
container/codec quirk listed in SPEC §3.2, and every broken file fails with a readable DecodeError."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from emo.decode.sampling import SamplingConfig, crop_boxes, frame_positions
from emo.decode.video import DecodeError, decode_item
from tests import videos

CFG = SamplingConfig(segments=8, frames_per_segment=3, views=2, image_size=16)  # M N = 24 positions

# name -> (file name, make_video kwargs, what "auto" should do: "sparse" PyAV seeking, "decord", or "pyav"
# decoding the whole stream with a fallback reason)
GOOD = {
    "mp4": ("plain.mp4", {"n_frames": 30}, "sparse"),
    "one_frame": ("one.mp4", {"n_frames": 1}, "sparse"),
    "three_frames": ("three.mp4", {"n_frames": 3}, "sparse"),
    "uhd_3840x2160": ("uhd.mp4", {"n_frames": 3, "size": (3840, 2160)}, "sparse"),
    "odd_34x18": ("odd.mp4", {"n_frames": 10, "size": (34, 18)}, "sparse"),
    "vfr_mp4": ("vfr.mp4", {"n_frames": 40, "vfr": True}, "sparse"),
    "vfr_bframes_mkv": ("vfr.mkv", {"n_frames": 40, "vfr": True, "bframes": True}, "sparse"),
    "vp9_webm": ("vp9.webm", {"n_frames": 30}, "sparse"),
    "mjpeg_avi": ("mjpeg.avi", {"n_frames": 30}, "pyav"),
    "mkv_with_audio": ("audio.mkv", {"n_frames": 30, "audio": True}, "sparse"),
    "bframes_mp4": ("bframes.mp4", {"n_frames": 60, "bframes": True}, "sparse"),
    "bframes_mpegts": ("bframes.ts", {"n_frames": 60, "bframes": True}, "pyav"),
    "bframes_h264_avi": ("bframes.avi", {"n_frames": 60, "bframes": True, "codec": "libx264"}, "pyav"),
    "mpeg2_ps": ("mpeg2.mpg", {"n_frames": 40}, "pyav"),
    "hevc_mkv": ("hevc.mkv", {"n_frames": 30, "codec": "libx265"}, "sparse"),
    "h264_10bit_mp4": ("ten.mp4", {"n_frames": 30, "pix_fmt": "yuv420p10le", "bframes": True}, "decord"),
    "spaces_non_ascii_name": ("a clip – émotion 感情.mp4", {"n_frames": 20}, "sparse"),
}

BROKEN = {
    "zero_byte": (videos.make_zero_byte, "empty file"),
    "text_as_mp4": (videos.make_text_as_mp4, "not a video"),
    "truncated_moov_lost": (videos.make_truncated, "not a video"),
    "random_after_header": (videos.make_random_after_header, "not a video"),
    "audio_only": (videos.make_audio_only, r"not a video: no video stream \(audio only\)"),
    "audio_with_cover_picture": (
        lambda p: videos.make_audio_only(p.with_suffix(".mp3"), cover=True),
        r"no video stream \(audio only\)",
    ),
    "overpromising_mid_packet": (videos.make_overpromising, "promises 40 frames, its data holds 20"),
    "overpromising_at_packet": (
        lambda p: videos.make_overpromising(p, inside_packet=False),
        "promises 40 frames, its data holds 20",
    ),
    "corrupt_frame_data": (videos.make_corrupt_frame, "decoding failed after 15 frames|decord failed"),
    "missing": (lambda p: p, "file not found"),
}


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


def _good(video_dir: Path, name: str) -> tuple[Path, dict, str]:
    file_name, kwargs, expected = GOOD[name]
    codec = kwargs.get("codec")
    if codec and codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder")
    path = video_dir / file_name
    if not path.exists():
        videos.make_video(path, **kwargs)
    return path, kwargs, expected


def _check_colours(item, tolerance: int = 12) -> None:
    """Every stored crop is a solid colour that decodes to its own stored frame index."""
    m, n, v = item.pixels.shape[:3]
    for i in range(m):
        for j in range(n):
            for k in range(v):
                crop = item.pixels[i, j, k].reshape(-1, 3).astype(int)
                assert np.ptp(crop, axis=0).max() <= tolerance, f"crop ({i},{j},{k}) is not one frame"
                got = videos.decode_colour(crop)
                assert got == item.frame_index[i, j], (
                    f"({i},{j},{k}): frame {got} stored as {item.frame_index[i, j]}"
                )


@pytest.mark.parametrize("backend", ["auto", "pyav"])
@pytest.mark.parametrize("name", list(GOOD))
def test_stored_pixels_are_the_frames_at_the_stored_indices(video_dir, name, backend):
    path, kwargs, expected_backend = _good(video_dir, name)
    n = kwargs["n_frames"]
    width, height = kwargs.get("size", (64, 48))
    item = decode_item(path, CFG, "item", backend=backend)

    assert item.pixels.shape == (8, 3, 2, 16, 16, 3) and item.pixels.dtype == np.uint8
    assert item.n_frames == n and (item.width, item.height) == (width, height)
    np.testing.assert_array_equal(item.frame_index, frame_positions(n, 8, 3))
    assert item.frame_index.dtype == np.int64 and item.timestamps.dtype == np.float64
    times = np.array([float(t) for t in videos.frame_times(n, vfr=kwargs.get("vfr", False))])
    np.testing.assert_allclose(item.timestamps, times[item.frame_index], atol=1e-6)
    np.testing.assert_array_equal(item.crops, crop_boxes(height, width, CFG, "item"))
    _check_colours(item)

    want = expected_backend if backend == "auto" else "pyav"
    assert item.backend == ("decord" if want == "decord" else "pyav")
    assert (item.fallback_reason is not None) == (backend == "auto" and want == "pyav"), item.fallback_reason


@pytest.mark.parametrize("backend", ["auto", "pyav", "decord"])
@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_files_raise_a_readable_decode_error(tmp_path, name, backend):
    make, message = BROKEN[name]
    path = make(tmp_path / "bad.mp4")
    with pytest.raises(DecodeError, match=message):
        decode_item(path, CFG, "item", backend=backend)


def test_metadata_that_over_reports_is_overruled_by_the_decoded_count(tmp_path):
    path = videos.make_overreporting_avi(tmp_path / "claims60.avi", n_frames=20, claimed=60)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 60  # what the header claims
    item = decode_item(path, CFG, "item")
    assert item.n_frames == 20
    np.testing.assert_array_equal(item.frame_index, frame_positions(20, 8, 3))
    _check_colours(item)


def test_decord_and_pyav_store_identical_items(video_dir):
    # Noise frames: any shift of a pixel, a frame or a crop between the two backends would show.
    path = videos.make_video(video_dir / "noise_bframes.mp4", 50, bframes=True, colour_code=False)
    a = decode_item(path, CFG, "item", backend="decord")
    b = decode_item(path, CFG, "item", backend="pyav")
    assert (a.backend, b.backend) == ("decord", "pyav")
    np.testing.assert_array_equal(a.frame_index, b.frame_index)
    np.testing.assert_allclose(a.timestamps, b.timestamps, atol=1e-9)
    np.testing.assert_array_equal(a.pixels, b.pixels)


def test_decord_misreads_mpegts_with_bframes_which_is_why_auto_avoids_it(video_dir):
    # decord 0.6.0 seeks one GOP off in MPEG-TS (and worse in MPEG-PS and AVI with B-frames). If this
    # starts failing, decord got fixed there and _DECORD_FORMATS in decord_backend.py may grow.
    path, _, _ = _good(video_dir, "bframes_mpegts")
    item = decode_item(path, CFG, "item", backend="decord")
    got = [videos.decode_colour(item.pixels[i, j, 0]) for i in range(8) for j in range(3)]
    assert got != item.frame_index.reshape(-1).tolist()
    assert "mpegts" in decode_item(path, CFG, "item").fallback_reason


# --- [start, end) spans -------------------------------------------------------------------------------

SPAN_CFG = SamplingConfig(segments=4, frames_per_segment=2, views=1, image_size=16)


@pytest.mark.parametrize("backend", ["auto", "pyav"])
@pytest.mark.parametrize("vfr", [False, True])
@pytest.mark.parametrize("start, end", [(0.4, 1.2), (None, 0.9), (0.5, None), (0.41, 0.8)])
def test_span_samples_frames_whose_time_is_in_start_end(video_dir, backend, vfr, start, end):
    n = 50
    path = video_dir / f"span_{vfr}.mp4"
    if not path.exists():
        videos.make_video(path, n, vfr=vfr)
    times = np.array([float(t) for t in videos.frame_times(n, vfr=vfr)])
    inside = np.flatnonzero((times >= (start or 0)) & (times < (end if end is not None else np.inf)))
    item = decode_item(path, SPAN_CFG, "item", start=start, end=end, backend=backend)
    assert item.n_frames == len(inside)
    np.testing.assert_array_equal(item.frame_index, inside[0] + frame_positions(len(inside), 4, 2))
    np.testing.assert_allclose(item.timestamps, times[item.frame_index], atol=1e-6)
    _check_colours(item)


@pytest.mark.parametrize("start, end", [(5.0, None), (0.5, 0.5), (0.9, 0.4)])
def test_empty_span_is_a_decode_error(video_dir, start, end):
    path, _, _ = _good(video_dir, "mp4")  # 30 frames, 1.2 s
    with pytest.raises(DecodeError):
        decode_item(path, SPAN_CFG, "item", start=start, end=end)


# --- frame folders and crops ---------------------------------------------------------------------------


def test_frame_folder(tmp_path):
    folder = videos.make_frame_folder(tmp_path / "frames", 30)
    item = decode_item(folder, CFG, "item", start=0.2)  # frame k at k / 25 s: frames 5..29
    assert item.backend == "frames" and item.n_frames == 25 and (item.width, item.height) == (64, 48)
    np.testing.assert_array_equal(item.frame_index, 5 + frame_positions(25, 8, 3))
    np.testing.assert_allclose(item.timestamps, item.frame_index / 25.0)
    _check_colours(item)


def test_frame_folder_failures(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DecodeError, match="no images"):
        decode_item(tmp_path / "empty", CFG, "item")
    folder = videos.make_frame_folder(tmp_path / "mixed", 30)
    Image.new("RGB", (32, 32)).save(folder / "000029.png")
    with pytest.raises(DecodeError, match="000029.png"):
        decode_item(folder, SamplingConfig(segments=30), "item")


def test_views_crop_the_same_box_from_every_frame(tmp_path):
    # Identical textured frames: each view is one fixed crop, the same for all frames of the video;
    # view 0 is the centre square resized (CLIP's eval transform), views 1.. random boxes.
    yy, xx = np.mgrid[0:90, 0:160]
    texture = np.stack([xx * 255 // 159, yy * 255 // 89, (xx * yy) % 256], axis=-1).astype(np.uint8)
    folder = tmp_path / "same"
    folder.mkdir()
    for k in range(12):
        Image.fromarray(texture).save(folder / f"{k:03d}.png")
    cfg = SamplingConfig(segments=4, frames_per_segment=3, views=3, image_size=24, seed=3)
    item = decode_item(folder, cfg, "clip-7")

    boxes = crop_boxes(90, 160, cfg, "clip-7")
    np.testing.assert_array_equal(item.crops, boxes)
    image = Image.fromarray(texture)
    for v in range(3):
        expected = np.asarray(image.resize((24, 24), Image.BICUBIC, box=tuple(boxes[v])))
        for i in range(4):
            for j in range(3):
                np.testing.assert_array_equal(item.pixels[i, j, v], expected)
    # view 0 = the centre 90x90 square; resizing with box= lets the filter see past the box edge, so
    # it differs from crop-then-resize by a few levels at the border only
    np.testing.assert_array_equal(boxes[0], [35, 0, 125, 90])
    centre = np.asarray(image.crop((35, 0, 125, 90)).resize((24, 24), Image.BICUBIC)).astype(int)
    assert np.abs(item.pixels[0, 0, 0] - centre)[2:-2, 2:-2].max() <= 1
    assert not np.array_equal(item.pixels[0, 0, 1], item.pixels[0, 0, 2])
    other = decode_item(folder, cfg, "clip-8")
    np.testing.assert_array_equal(other.pixels[:, :, 0], item.pixels[:, :, 0])
    assert not np.array_equal(other.crops[1:], item.crops[1:])


def test_unknown_backend_is_rejected(video_dir):
    path, _, _ = _good(video_dir, "mp4")
    with pytest.raises(ValueError, match="backend"):
        decode_item(path, CFG, "item", backend="opencv")
