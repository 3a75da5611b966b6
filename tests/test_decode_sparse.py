"""Sparse decoding (PyAV seeks to the keyframe before each sampled frame, skips unsampled non-reference
frames) stores the same arrays as decoding the whole stream, on videos with B-frames and long GOPs."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

import emo.decode.probe as probe
import emo.decode.pyav_backend as pyav_backend
from emo.decode.sampling import SamplingConfig
from emo.decode.video import decode_item, probe_video
from tests import videos

# name -> (file name, make_video kwargs); noise frames where colour codes would be too easy to predict
LONG_GOP = {
    "h264_bframes_gop250": ("g250.mp4", {"n_frames": 300, "bframes": True, "gop": 250, "colour_code": False}),
    "h264_bframes_gop40": ("g40.mp4", {"n_frames": 200, "bframes": True, "gop": 40}),
    "h264_open_gop": ("open.mp4", {"n_frames": 200, "bframes": True, "gop": 30, "open_gop": True,
                                   "colour_code": False}),
    "h264_mkv_vfr": ("vfr.mkv", {"n_frames": 150, "bframes": True, "gop": 50, "vfr": True}),
    "hevc_mkv": ("hevc.mkv", {"n_frames": 120, "codec": "libx265"}),  # x265's defaults: B-frames, keyint 250
    "vp9_webm": ("vp9.webm", {"n_frames": 120, "gop": 60}),
}
CONFIGS = {
    "sparse_16": (SamplingConfig(segments=16, views=2, image_size=24), None, None),
    "dense_8x3": (SamplingConfig(segments=8, frames_per_segment=3, image_size=24), None, None),
    "span": (SamplingConfig(segments=6, image_size=24), 1.3, 4.1),
}


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sparse")


def _video(video_dir: Path, name: str) -> Path:
    file_name, kwargs = LONG_GOP[name]
    codec = kwargs.get("codec")
    if codec and codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder")
    path = video_dir / file_name
    if not path.exists():
        videos.make_video(path, size=(96, 64), **kwargs)
    return path


def _whole_stream(path, cfg, start, end, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(probe, "_sparse_plan", lambda *args: None)  # today's path: decode every frame
        return decode_item(path, cfg, "item", start, end, backend="pyav")


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("name", list(LONG_GOP))
def test_sparse_decoding_stores_the_arrays_of_a_whole_stream_decode(video_dir, monkeypatch, name, config):
    path = _video(video_dir, name)
    cfg, start, end = CONFIGS[config]
    reference = _whole_stream(path, cfg, start, end, monkeypatch)

    assert probe_video(path).seekable is not None
    with monkeypatch.context() as m:  # the sparse path must answer by itself, not fall back
        m.setattr(pyav_backend, "sequential_views", lambda *args: pytest.fail("fell back to the whole-stream pass"))
        item = decode_item(path, cfg, "item", start, end, backend="pyav")
    for field in ("pixels", "frame_index", "timestamps", "crops"):
        np.testing.assert_array_equal(getattr(item, field), getattr(reference, field), err_msg=field)
    assert (item.n_frames, item.width, item.height) == (reference.n_frames, reference.width, reference.height)


@pytest.mark.parametrize("name", [n for n in LONG_GOP if n not in ("hevc_mkv", "h264_open_gop")])
def test_auto_stores_what_decord_stored_before_it_seeked_with_pyav(video_dir, name):
    # before: auto decoded these with decord; now with PyAV seeking, on the same 8-bit pixel formats only
    path = _video(video_dir, name)
    cfg, _, _ = CONFIGS["sparse_16"]
    now, before = (decode_item(path, cfg, "item", backend=b) for b in ("auto", "decord"))
    assert (now.backend, before.backend) == ("pyav", "decord")
    np.testing.assert_array_equal(now.pixels, before.pixels)
    np.testing.assert_array_equal(now.frame_index, before.frame_index)


def test_decord_misreads_open_gop_h264_which_auto_now_decodes_right(video_dir, monkeypatch):
    # decord 0.6.0, seeking in an open-GOP stream, returns frames that differ from a decode of the whole
    # stream (even frames after the keyframe); before PyAV seeking, auto stored those. If this starts
    # failing, decord got fixed there.
    path = _video(video_dir, "h264_open_gop")
    cfg, _, _ = CONFIGS["sparse_16"]
    truth = _whole_stream(path, cfg, None, None, monkeypatch)
    np.testing.assert_array_equal(decode_item(path, cfg, "item").pixels, truth.pixels)
    wrong = decode_item(path, cfg, "item", backend="decord")
    assert not np.array_equal(wrong.pixels, truth.pixels)


def test_ten_bit_video_stays_with_decord_under_auto(tmp_path):
    # PyAV and decord turn 10-bit YUV into different RGB: auto keeps what it stored before
    path = videos.make_video(tmp_path / "ten.mp4", 30, pix_fmt="yuv420p10le", bframes=True, colour_code=False)
    assert probe_video(path).pixel_format == "yuv420p10le"
    cfg, _, _ = CONFIGS["sparse_16"]
    item = decode_item(path, cfg, "item")
    assert item.backend == "decord"
    np.testing.assert_array_equal(item.pixels, decode_item(path, cfg, "item", backend="decord").pixels)


@pytest.mark.parametrize("name", ["mpegts", "avi"])
def test_streams_it_cannot_seek_exactly_are_decoded_whole(tmp_path, name):
    suffix = {"mpegts": ".ts", "avi": ".avi"}[name]
    kwargs = {"bframes": True, "codec": "libx264"} if name == "avi" else {"bframes": True}
    path = videos.make_video(tmp_path / f"v{suffix}", 60, **kwargs)
    assert probe_video(path).seekable is None
    item = decode_item(path, SamplingConfig(segments=8, image_size=16), "item", backend="pyav")
    assert [videos.decode_colour(p[2:-2, 2:-2]) for p in item.pixels[:, 0, 0]] == item.frame_index[:, 0].tolist()
