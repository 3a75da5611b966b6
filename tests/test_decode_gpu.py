"""The GPU decoding route (``emo.decode.gpu``) without a GPU: its conversion re-derived on fixed values
and against swscale and PIL, the whole route run on the CPU against the CPU path, and the fallback
when NVDEC cannot take a video. NVDEC itself is checked by ``bench/gpu_decode.py`` on a GPU box."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from PIL import Image

import emo.decode.gpu as gpu
from emo.decode.gpu import TorchViews, bicubic_weights, decode_on_gpu, frame_rgb, yuv_to_rgb
from emo.decode.probe import Orientation
from emo.decode.sampling import SamplingConfig
from emo.decode.video import DecodeError, decode_item
from emo.extract.modalities.clip import decoder_key, decoding_options
from emo.extract.runner import ExtractOptions
from tests import test_decode, videos

CPU = torch.device("cpu")


# --- PIL's bicubic crops, re-derived ---------------------------------------------------------------


def test_bicubic_weights_of_a_halving_are_the_cubic_kernel_stretched_and_normalised():
    # 4 pixels -> 2: scale 2, so the kernel (a = -0.5) is stretched by 2 and its support is 4 pixels;
    # output 0 is centred at 1.0 and reads pixels 0..3 at distances (j + 0.5 - 1) / 2
    first, w = bicubic_weights(4, 0.0, 4.0, 2)
    k = np.array([0.8671875, 0.8671875, 0.2265625, -0.0703125])  # cubic(-0.25), cubic(0.25), cubic(0.75), cubic(1.25)
    assert first == 0
    np.testing.assert_allclose(w[0], k / k.sum(), rtol=1e-12)
    np.testing.assert_allclose(w[1], k[::-1] / k.sum(), rtol=1e-12)  # mirror image about the middle
    np.testing.assert_allclose(w.sum(axis=1), 1.0)


def test_bicubic_weights_of_an_enlargement_keep_the_kernels_own_support():
    # 2 pixels -> 4 (scale 0.5): no stretch; output 0 is centred at 0.25, pixel centres at 0.5 and 1.5:
    # distances 0.25 and 1.25 (the kernel's negative lobe)
    _, w = bicubic_weights(2, 0.0, 2.0, 4)
    k = np.array([0.8671875, -0.0703125])
    np.testing.assert_allclose(w[0], k / k.sum(), rtol=1e-12)


@pytest.mark.parametrize("box", [(0, 0, 131, 97), (10.3, 5.7, 100.2, 90.1), (50, 40, 60, 50.5), (0.5, 0, 131, 96.25)])
@pytest.mark.parametrize("size", [24, 160])
def test_torch_crops_are_pils_resize_with_a_box(box, size):
    rng = np.random.default_rng(size)
    image = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    image[20:60, 30:90] = 255  # edges where a wrong support or offset shows at once
    want = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC, box=box)).astype(int)
    got = TorchViews(CPU)._crop(torch.from_numpy(image).permute(2, 0, 1).float(), np.array(box), size)
    diff = np.abs(got.permute(1, 2, 0).numpy().astype(int) - want)
    assert diff.max() <= 1  # PIL's 22-bit fixed-point coefficients against float32: a tie may round apart
    assert (diff > 0).mean() < 1e-3


# --- Y'CbCr -> RGB, re-derived ---------------------------------------------------------------------


def _rgb(y, cb, cr, bits=8, matrix=(0.299, 0.114), full=False):
    t = lambda v: torch.tensor([[v]], dtype=torch.int32)  # noqa: E731
    return yuv_to_rgb(t(y), t(cb), t(cr), bits, *matrix, full)[:, 0, 0].tolist()


def test_yuv_to_rgb_reaches_the_corners_of_each_range():
    assert _rgb(16, 128, 128) == [0, 0, 0]
    assert _rgb(235, 128, 128) == [255, 255, 255]
    assert _rgb(0, 128, 128, full=True) == [0, 0, 0]
    assert _rgb(255, 128, 128, full=True) == [255, 255, 255]
    assert _rgb(64, 512, 512, bits=10) == [0, 0, 0]
    assert _rgb(940, 512, 512, bits=10) == [255, 255, 255]


@pytest.mark.parametrize("matrix, red", [((0.299, 0.114), (81, 90, 240)), ((0.2126, 0.0722), (63, 102, 240))])
def test_yuv_to_rgb_uses_the_streams_matrix(matrix, red):
    # the limited-range codes of pure red in BT.601 and BT.709: each matrix gives red for its own only
    assert np.abs(np.array(_rgb(*red, matrix=matrix)) - [255, 0, 0]).max() <= 2
    other = (0.2126, 0.0722) if matrix[0] == 0.299 else (0.299, 0.114)
    assert np.abs(np.array(_rgb(*red, matrix=other)) - [255, 0, 0]).max() > 10


def test_ten_bit_codes_four_times_the_eight_bit_ones_give_the_same_rgb():
    rng = np.random.default_rng(0)
    y, cb, cr = (torch.from_numpy(rng.integers(16, 236, (4, 6))).int() for _ in range(3))
    eight = yuv_to_rgb(y, cb[::2, ::2], cr[::2, ::2], 8, 0.299, 0.114, False)
    ten = yuv_to_rgb(4 * y, 4 * cb[::2, ::2], 4 * cr[::2, ::2], 10, 0.299, 0.114, False)
    assert torch.equal(eight, ten)


def test_subsampled_chroma_covers_its_two_by_two_block():
    y = torch.full((2, 4), 120, dtype=torch.int32)
    cb = torch.tensor([[100, 200]], dtype=torch.int32)  # one chroma sample per 2x2 luma block
    rgb = yuv_to_rgb(y, cb, torch.full((1, 2), 128, dtype=torch.int32), 8, 0.299, 0.114, False)
    assert torch.equal(rgb[:, :, 0], rgb[:, :, 1]) and torch.equal(rgb[:, 0], rgb[:, 1])
    assert not torch.equal(rgb[:, 0, 1], rgb[:, 0, 2])


def _first_frame(path):
    with av.open(str(path)) as container:
        return next(container.decode(video=0))


@pytest.mark.parametrize("pix_fmt, worst", [("yuv420p", 3), ("yuvj420p", 3), ("yuv422p", 3), ("yuv444p", 1)])
def test_frame_rgb_is_swscales_rgb_within_its_rounding(tmp_path, pix_fmt, worst):
    frame = _first_frame(videos.make_video(tmp_path / "v.mp4", 3, size=(96, 64), pix_fmt=pix_fmt, colour_code=False))
    want = frame.to_ndarray(format="rgb24").astype(int)
    got = frame_rgb(frame, CPU).permute(1, 2, 0).numpy().astype(int)
    assert np.abs(got - want).max() <= worst
    assert np.abs(got - want).mean() < 1.5


def test_frame_rgb_follows_a_bt709_tag_as_swscale_does(tmp_path):
    path = tmp_path / "709.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.colorspace, stream.codec_context.color_range = 1, 1  # BT.709, limited
        rng = np.random.default_rng(1)
        for _ in range(2):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    frame = _first_frame(path)
    assert frame.colorspace == 1
    diff = np.abs(frame_rgb(frame, CPU).permute(1, 2, 0).numpy().astype(int) - frame.to_ndarray(format="rgb24"))
    assert diff.max() <= 3


def test_nv12_frames_as_nvdec_gives_them_convert_as_their_planar_twin(tmp_path):
    frame = _first_frame(videos.make_video(tmp_path / "v.mp4", 3, size=(96, 64), colour_code=False))
    semi = frame.reformat(format="nv12")  # NVDEC's layout: Y, then Cb and Cr interleaved
    assert torch.equal(frame_rgb(semi, CPU), frame_rgb(frame, CPU))


# --- the route, run on the CPU ---------------------------------------------------------------------

ROUTE_VIDEOS = {
    "bframes_gop40": ("b.mp4", {"bframes": True, "gop": 40, "colour_code": False}),
    "rotated_mirrored": ("r.mp4", {"rotation": 90, "mirror": True, "corner": True}),
    "mpegts_whole_stream": ("t.ts", {"bframes": True}),
}


@pytest.mark.parametrize("name", list(ROUTE_VIDEOS))
def test_the_gpu_route_keeps_the_cpu_paths_frames_and_nearly_its_pixels(tmp_path, name):
    file_name, kwargs = ROUTE_VIDEOS[name]
    path = videos.make_video(tmp_path / file_name, 80, size=(96, 64), **kwargs)
    cfg = SamplingConfig(segments=8, views=3, image_size=32)
    want = decode_item(path, cfg, "item", backend="pyav")
    got = decode_on_gpu(path, cfg, "item", None, None, "cpu", hardware=False)
    for field in ("frame_index", "timestamps", "crops"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    assert (got.n_frames, got.width, got.height, got.rotation, got.mirrored) == (
        want.n_frames, want.width, want.height, want.rotation, want.mirrored)
    diff = np.abs(got.pixels.astype(int) - want.pixels)
    assert diff.max() <= 4 and diff.mean() < 1.5  # swscale's conversion rounds differently; a wrong turn or box would not be close
    assert (got.backend, got.fallback_reason) == ("pyav", None)


def test_a_span_on_the_gpu_route_samples_the_same_frames(tmp_path):
    path = videos.make_video(tmp_path / "v.mp4", 100, size=(64, 48), bframes=True)
    cfg = SamplingConfig(segments=6, image_size=16)
    got = decode_on_gpu(path, cfg, "item", 1.3, 3.1, "cpu", hardware=False)
    want = decode_item(path, cfg, "item", 1.3, 3.1, backend="pyav")
    np.testing.assert_array_equal(got.frame_index, want.frame_index)
    assert [videos.decode_colour(p[2:-2, 2:-2]) for p in got.pixels[:, 0, 0]] == got.frame_index[:, 0].tolist()


@pytest.mark.skipif(gpu.nvdec_problem("cuda:0") is None, reason="NVDEC works here: bench/gpu_decode.py checks it")
def test_a_video_nvdec_cannot_open_is_decoded_on_the_cpu_with_the_reason(tmp_path):
    path = videos.make_video(tmp_path / "v.mp4", 30, size=(64, 48), bframes=True)
    cfg = SamplingConfig(segments=4, image_size=16)
    fell = decode_on_gpu(path, cfg, "item", None, None, "cpu", hardware=True)
    plain = decode_on_gpu(path, cfg, "item", None, None, "cpu", hardware=False)
    assert fell.backend == "pyav" and fell.fallback_reason.startswith("NVDEC failed:")
    np.testing.assert_array_equal(fell.pixels, plain.pixels)


def test_a_stream_ffmpeg_decodes_in_software_after_all_is_redone_on_the_cpu(tmp_path, monkeypatch):
    # FFmpeg keeps a codec without an NVDEC decoder in software: its frames are not CUDA frames
    monkeypatch.setattr(gpu, "_hwaccel", lambda dev: None)  # av.open(hwaccel=None): software frames
    path = videos.make_video(tmp_path / "v.mp4", 30, size=(64, 48))
    item = decode_on_gpu(path, SamplingConfig(segments=4, image_size=16), "item", None, None, "cpu", hardware=True)
    assert item.backend == "pyav"
    assert item.fallback_reason == "NVDEC: FFmpeg decoded the stream in software (yuv420p frames)"


def test_a_broken_video_fails_on_the_gpu_route_with_the_cpu_paths_reason(tmp_path):
    path = videos.make_video(tmp_path / "v.mp4", 30, size=(64, 48))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    cfg = SamplingConfig(segments=4, image_size=16)
    with pytest.raises(DecodeError) as cpu_error:
        decode_item(path, cfg, "item")
    with pytest.raises(DecodeError) as gpu_error:
        decode_on_gpu(path, cfg, "item", None, None, "cpu", hardware=True)
    assert str(gpu_error.value) == str(cpu_error.value)


def test_decode_item_refuses_decord_or_an_unknown_device_on_the_gpu(tmp_path):
    path = videos.make_video(tmp_path / "v.mp4", 10)
    with pytest.raises(ValueError, match="decord cannot decode on the GPU"):
        decode_item(path, SamplingConfig(segments=2), "item", backend="decord", device="cuda")
    with pytest.raises(ValueError, match="device must be cpu or a CUDA device"):
        decode_item(path, SamplingConfig(segments=2), "item", device="gpu")


def test_upright_on_the_device_is_the_orientation_of_the_cpu_path():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for o in (Orientation(90, False, transpose=True, flip_rows=True), Orientation(180, False, flip_rows=True, flip_cols=True),
              Orientation(90, True, transpose=True)):
        turned = gpu.upright(torch.from_numpy(rgb).permute(2, 0, 1), o).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(turned, o.apply(rgb))


# --- options and keys ------------------------------------------------------------------------------


def test_decode_device_options_are_checked_by_name():
    with pytest.raises(ValueError, match="--decode-device must be auto, cpu or cuda, got 'gpu'"):
        ExtractOptions(decode_device="gpu")
    with pytest.raises(ValueError, match="cannot use --backend decord"):
        ExtractOptions(decode_device="cuda", backend="decord")
    ExtractOptions(decode_device="cuda:1")


def test_auto_decodes_on_the_cpu_beside_a_cpu_encoder_and_cuda_without_one_fails_naming_why():
    encoder = SimpleNamespace(device=torch.device("cpu"))
    assert ExtractOptions().decode_device == "cpu"  # the default until NVDEC is checked on a GPU
    assert decoding_options(ExtractOptions(decode_device="auto"), encoder).decode_device == "cpu"
    if gpu.nvdec_problem("cuda:0") is not None:
        with pytest.raises(RuntimeError, match=r"--decode-device cuda: NVDEC cannot decode here: .*--decode-device cpu"):
            decoding_options(ExtractOptions(decode_device="cuda"), encoder)


def test_gpu_decoding_has_a_key_of_its_own_and_cpu_keys_are_unchanged():
    cpu = decoder_key(ExtractOptions(decode_device="cpu"))
    assert set(cpu) == {"policy", "version", "decord", "av"}  # as every CPU feature set was keyed before
    on = [decoder_key(dataclasses.replace(ExtractOptions(), decode_device=d)) for d in ("cuda:0", "cuda:1")]
    assert on[0] == on[1]  # which GPU decoded does not change the pixels
    assert on[0] != cpu and on[0]["device"] == "cuda" and on[0]["convert"] == gpu.GPU_CONVERT_VERSION
    with pytest.raises(ValueError, match="not resolved"):
        decoder_key(ExtractOptions(decode_device="auto"))  # auto must be resolved against the encoder first


# --- the extraction's wiring, the device redirected to the CPU ------------------------------------


def test_extract_clip_with_decode_device_cuda_keys_decodes_and_records_the_gpu_route(tmp_path, monkeypatch):
    """``--decode-device cuda`` from the command line to the stored records: the option is resolved, the
    key says cuda, each video goes through ``decode_on_gpu`` (run on the CPU here, where NVDEC cannot
    open, so each records the fallback), and a CPU-decoded set of the same videos is another set."""
    from typer.testing import CliRunner

    import emo.extract.modalities.clip as clip_module
    from emo.cache.featureset import list_feature_sets
    from emo.cache.manifest import Item, Manifest, write_manifest
    from emo.cli import app
    from emo.encoders.clip import TINY_MODEL

    items = []
    for i in range(3):
        videos.make_video(tmp_path / f"v{i}.mp4", 20 + i, bframes=True)
        items.append(Item(id=f"v{i}", path=f"v{i}.mp4", label="x"))
    write_manifest(Manifest(dataset="t", classes=["x"], items=items, root=str(tmp_path)), tmp_path / "manifest.jsonl")
    seen = []
    on_cpu = gpu.decode_on_gpu

    def redirected(path, cfg, item_id, start, end, device, hardware=True):
        seen.append(device)
        return on_cpu(path, cfg, item_id, start, end, "cpu", hardware=True)

    monkeypatch.setattr(clip_module, "nvdec_problem", lambda device: None)  # as on a GPU box
    monkeypatch.setattr(gpu, "decode_on_gpu", redirected)
    base = ["extract", "clip", str(tmp_path), "--model", TINY_MODEL, "--weights", "random", "--segments", "2",
            "--workers", "0", "--device", "cpu", "--no-progress"]
    res = CliRunner().invoke(app, [*base, "--decode-device", "cuda"])
    assert res.exit_code == 0, res.output
    assert seen == ["cuda:0"] * 3
    (fs,) = list_feature_sets(tmp_path)
    assert fs.meta["decoder"]["device"] == "cuda" and fs.meta["decoder"]["convert"] == gpu.GPU_CONVERT_VERSION
    records = fs.done_record(0)["decoder"]
    assert {r["backend"] for r in records.values()} == {"pyav"}
    assert all(r["fallback"].startswith("NVDEC failed") for r in records.values())

    res = CliRunner().invoke(app, [*base, "--decode-device", "cpu"])
    assert res.exit_code == 0, res.output
    assert len(list_feature_sets(tmp_path)) == 2 and seen == ["cuda:0"] * 3


def test_planes_are_taken_as_pyav_hands_cuda_planes_out_with_no_stream_asked():
    """PyAV's CUDA planes raise when ``__dlpack__`` gets a stream (torch.from_dlpack passes one for CUDA,
    and max_version besides): the plane must be asked with no arguments at all."""

    class Plane:  # a plane as PyAV exports it, strict about arguments for every device
        def __init__(self, array):
            self.array, self.asked = array, []

        def __dlpack_device__(self):
            return (1, 0)

        def __dlpack__(self, **kwargs):
            self.asked.append(kwargs)
            if kwargs:
                raise NotImplementedError("CUDA stream synchronization is not supported")
            return self.array.__dlpack__()

    plane = Plane(np.arange(12, dtype=np.uint16).reshape(3, 4))
    t = gpu._plane(plane, CPU)
    assert plane.asked == [{}] and t.dtype == torch.int32 and t.tolist() == np.arange(12).reshape(3, 4).tolist()


# --- the decoding corpus of tests/test_decode.py, through the GPU route run on the CPU ---------------


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("corpus")


@pytest.mark.parametrize("name", list(test_decode.GOOD))
def test_every_odd_video_decodes_to_the_same_frames_on_the_gpu_route(corpus_dir, name):
    path, kwargs, _ = test_decode._good(corpus_dir, name)
    want = decode_item(path, test_decode.CFG, "item", backend="pyav")
    got = decode_on_gpu(path, test_decode.CFG, "item", None, None, "cpu", hardware=False)
    np.testing.assert_array_equal(got.frame_index, want.frame_index)
    np.testing.assert_array_equal(got.timestamps, want.timestamps)
    assert (got.n_frames, got.width, got.height) == (want.n_frames, want.width, want.height)
    test_decode._check_colours(got)  # each crop one solid colour, decoding to its stored frame index


@pytest.mark.parametrize("name", list(test_decode.BROKEN))
def test_every_bad_video_fails_on_the_gpu_route_with_the_cpu_paths_reason(tmp_path, monkeypatch, name):
    make, _ = test_decode.BROKEN[name]
    path = make(tmp_path / "bad.mp4")
    with pytest.raises(DecodeError) as cpu_error:
        decode_item(path, test_decode.CFG, "item", backend="pyav")
    on_cpu = gpu.decode_on_gpu
    monkeypatch.setattr(gpu, "decode_on_gpu", lambda *args: on_cpu(*args[:5], "cpu", hardware=True))
    with pytest.raises(DecodeError) as gpu_error:
        decode_item(path, test_decode.CFG, "item", device="cuda")  # the route, the conversion on the CPU
    assert str(gpu_error.value) == str(cpu_error.value)
