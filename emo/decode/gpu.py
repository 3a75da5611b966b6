"""Decode on the GPU: NVDEC through the FFmpeg that PyAV bundles, then colour conversion, turning upright
and crops done by torch on the device (``--decode-device cuda``; docs/decoding.md says why this route).

The decoder is the CPU path's (``emo.decode.pyav_backend``): the same probe, the same seeks to the
keyframe before each sampled frame, the same frames. Only two things change:

- **Where frames are decoded.** ``av.open(..., hwaccel=HWAccel("cuda", is_hw_owned=True))`` decodes on
  NVDEC and leaves each frame in GPU memory (NV12, or P010 for 10-bit); its planes reach torch through
  DLPack without a copy. A stream NVDEC does not take (no NVDEC decoder for the codec, a profile or
  pixel format the chip lacks, a failure mid-stream) is decoded again on the CPU, *the whole video*,
  and the item records why in ``fallback_reason`` (backend ``pyav`` instead of ``nvdec``). H.264,
  HEVC, VP9 and AV1 decoding is bit-exact by their standards, so both decoders give the same YUV.
- **How YUV becomes the stored views** (``TorchViews``, the same for NVDEC frames and the CPU's):
  chroma repeated to full size (nearest, as swscale's unscaled converter does), the stream's own
  matrix (BT.601, BT.709, BT.2020, ...; unspecified = BT.601) and range (limited, or full for JPEG
  range), rounded to 8-bit RGB; then each crop box resized to ``S x S`` with PIL's bicubic filter
  re-derived (``bicubic_weights``: the same taps, support widened by the scale when shrinking, box
  edges at fractional pixels), as two matrix products, width first, rounding after each as PIL does.

The views are within a level or two of the CPU path's (swscale rounds its conversion differently; the
test bounds the difference), not equal, so a feature set decoded here has a key of its own
(``GPU_CONVERT_VERSION``). Pixel formats the converter does not read (RGB, palettes, gray) are
converted by swscale on the CPU and only cropped on the device.
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import torch

from .frames import DecodedItem
from .probe import DecodeError, Orientation, probe_video
from .pyav_backend import Route, decode_pyav
from .sampling import SamplingConfig

__all__ = [
    "GPU_CONVERT_VERSION", "NotOnDevice", "TorchViews", "bicubic_weights", "decode_on_gpu", "frame_rgb",
    "nvdec_problem", "yuv_to_rgb",
]

# The conversion of ``TorchViews``, for a feature set's key: 1 = nearest chroma, the stream's matrix
# and range, 8-bit RGB, PIL's bicubic crops re-derived (width pass, round, height pass, round).
GPU_CONVERT_VERSION = 1

# AVColorSpace -> (Kr, Kb) of its Y'CbCr matrix; 2 (unspecified) and anything unknown: BT.601, as swscale
_KR_KB = {1: (0.2126, 0.0722), 4: (0.30, 0.11), 5: (0.299, 0.114), 6: (0.299, 0.114), 7: (0.212, 0.087),
          9: (0.2627, 0.0593), 10: (0.2627, 0.0593)}
_BT601 = (0.299, 0.114)
_JPEG_RANGE = 2  # AVColorRange: 1 = MPEG (limited), 2 = JPEG (full); 0 = unspecified (limited unless yuvj*)
_PLANAR = {  # pixel format -> bits per sample, for the planar Y'CbCr formats read as three planes
    "yuv420p": 8, "yuvj420p": 8, "yuv422p": 8, "yuvj422p": 8, "yuv444p": 8, "yuvj444p": 8, "yuv440p": 8,
    "yuv420p10le": 10, "yuv422p10le": 10, "yuv444p10le": 10, "yuv420p12le": 12, "yuv422p12le": 12,
    "yuv444p12le": 12,
}
_SEMIPLANAR = {"nv12": (8, 0), "p010le": (10, 6), "p016le": (16, 0)}  # -> (bits, low bits of padding)
_WEIGHT_CACHE = 64  # crop weight matrices kept per device (random crops differ per item; about 1 MB each at 720p)


class NotOnDevice(Exception):
    """NVDEC did not decode this stream: the video is decoded on the CPU, with this as the reason."""


def nvdec_problem(device: str) -> str | None:
    """Why NVDEC cannot decode on torch ``device`` here (no CUDA, no CUDA in PyAV's FFmpeg, no NVDEC
    driver library), or None when an H.264 decoder opens on it."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return f"the device is {dev}, not a CUDA GPU"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    if "cuda" not in av.codec.hwaccel.hwdevices_available():
        return f"PyAV {av.__version__}'s FFmpeg was built without CUDA"
    try:
        _hwaccel(dev).create(av.Codec("h264", "r"))
    except Exception as e:  # noqa: BLE001 - FFmpeg's own words (a missing libnvcuvid, a busy device) are the reason
        return f"FFmpeg cannot open NVDEC on {dev}: {e}"
    return None


def _hwaccel(dev: torch.device) -> av.codec.hwaccel.HWAccel:
    return av.codec.hwaccel.HWAccel(
        "cuda", device=str(dev.index or 0), allow_software_fallback=False, is_hw_owned=True
    )


def decode_on_gpu(
    path: Path, cfg: SamplingConfig, item_id: str, start, end, device: str, hardware: bool = True
) -> DecodedItem:
    """The item of ``decode_item(..., device=device)`` for a video file.

    ``hardware``: decode on NVDEC (else on the CPU, as NVDEC's fallback does; the conversion is on
    ``device`` either way, so ``device="cpu", hardware=False`` runs this route without a GPU).
    """
    probe = probe_video(path)
    dev = torch.device(device)
    reason = None
    if hardware:
        route = Route(views=_converter(dev, hardware=True), open_options={"hwaccel": _hwaccel(dev)}, backend="nvdec")
        try:
            return decode_pyav(path, probe, cfg, item_id, start, end, reason=None, route=route)
        except NotOnDevice as e:
            reason = f"NVDEC: {e}"
        except (DecodeError, av.FFmpegError, NotImplementedError, RuntimeError) as e:  # the CPU's verdict follows
            reason = f"NVDEC failed: {str(e).strip()[:200]}"
    route = Route(views=_converter(dev, hardware=False), backend="pyav")
    return decode_pyav(path, probe, cfg, item_id, start, end, reason=reason, route=route)


_CONVERTERS: dict[tuple[str, bool], TorchViews] = {}


def _converter(dev: torch.device, hardware: bool) -> TorchViews:
    """One ``TorchViews`` per (device, hardware) in a process: its crop weights outlive one video."""
    key = (str(dev), hardware)
    if key not in _CONVERTERS:
        _CONVERTERS[key] = TorchViews(dev, hardware)
    return _CONVERTERS[key]


class TorchViews:
    """A ``Route``'s ``views``: a PyAV frame -> ``[V, S, S, 3]`` uint8 views, computed on ``device``.

    With ``hardware``, every frame must be an NVDEC frame (``NotOnDevice`` otherwise: FFmpeg decoded the
    stream in software after all).
    """

    def __init__(self, device: torch.device, hardware: bool = False):
        self.device, self.hardware = device, hardware
        self._weights: dict[tuple, tuple[int, int, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, frame, orientation: Orientation, boxes: np.ndarray, size: int) -> np.ndarray:
        if self.hardware and frame.format.name != "cuda":
            raise NotOnDevice(f"FFmpeg decoded the stream in software ({frame.format.name} frames)")
        with torch.no_grad():
            rgb = upright(frame_rgb(frame, self.device), orientation)  # [3, H', W'] float, 8-bit values
            views = [self._crop(rgb, box, size) for box in np.asarray(boxes, dtype=np.float64)]
            return torch.stack(views).permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()  # [V, S, S, 3]

    def _crop(self, rgb: torch.Tensor, box: np.ndarray, size: int) -> torch.Tensor:
        """``[3, S, S]``: PIL's ``resize((S, S), BICUBIC, box=box)`` of ``rgb`` (8-bit values, float)."""
        height, width = rgb.shape[1:]
        key = (width, height, tuple(box.tolist()), size)
        if key not in self._weights:
            if len(self._weights) >= _WEIGHT_CACHE:
                self._weights.clear()
            y0, wy = bicubic_weights(height, box[1], box[3], size)  # rows y0.. feed the output rows
            x0, wx = bicubic_weights(width, box[0], box[2], size)
            self._weights[key] = (
                y0, x0, torch.as_tensor(wy, dtype=torch.float32, device=rgb.device),
                torch.as_tensor(wx, dtype=torch.float32, device=rgb.device),
            )
        y0, x0, wy, wx = self._weights[key]
        rows = rgb[:, y0 : y0 + wy.shape[1], x0 : x0 + wx.shape[1]]  # [3, R, C] the pixels any tap reads
        wide = _round8(rows @ wx.T)  # [3, R, S] width pass first, rounded to 8 bits as PIL stores it
        return _round8(wy @ wide)  # [3, S, S]


def bicubic_weights(in_size: int, lo: float, hi: float, out_size: int) -> tuple[int, np.ndarray]:
    """PIL's bicubic resampling along one axis, re-derived: output ``k`` of the span ``[lo, hi)`` of an
    axis of ``in_size`` pixels is ``sum_j w[k, j] * x[first + j]``; returns ``(first, w [out, J])``.

    Output pixel centres sit at ``lo + (k + 0.5) * scale`` with ``scale = (hi - lo) / out``; the cubic
    kernel (``a = -0.5``) has support 2 input pixels, widened by ``scale`` when shrinking (so every
    input pixel is averaged in: antialiasing); taps are the input pixels within the support, cut at the
    image edges, and each row is normalised to sum to 1.
    """
    scale = (hi - lo) / out_size
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    taps = np.zeros((out_size, in_size), dtype=np.float64)
    for k in range(out_size):
        centre = lo + (k + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)  # C's (int) truncates toward zero, as PIL's does
        last = min(int(centre + support + 0.5), in_size)
        j = np.arange(first, last)
        w = _cubic((j - centre + 0.5) / stretch)
        total = w.sum()
        taps[k, first:last] = w / total if total != 0 else w
    used = np.flatnonzero(np.abs(taps).sum(axis=0))
    if not len(used):
        return 0, taps[:, :1]
    first, last = int(used[0]), int(used[-1]) + 1
    return first, taps[:, first:last]


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _round8(x: torch.Tensor) -> torch.Tensor:
    """Round half up and clip to 0..255, as PIL's fixed-point passes store 8-bit results."""
    return torch.floor(x + 0.5).clamp_(0.0, 255.0)


def upright(rgb: torch.Tensor, orientation: Orientation) -> torch.Tensor:
    """``[3, H, W]`` turned upright: ``Orientation.apply`` on a channel-first tensor."""
    if orientation.transpose:
        rgb = rgb.transpose(1, 2)
    if orientation.flip_rows:
        rgb = rgb.flip(1)
    if orientation.flip_cols:
        rgb = rgb.flip(2)
    return rgb


def frame_rgb(frame, device: torch.device) -> torch.Tensor:
    """``[3, H, W]`` float32 on ``device``: the frame's RGB, rounded to 8-bit values.

    Y'CbCr frames (NVDEC's NV12/P010, the CPU's planar formats) are converted by ``yuv_to_rgb`` from
    their planes (DLPack: no copy for NVDEC frames); others by swscale on the CPU.
    """
    name = frame.sw_format.name if frame.format.name == "cuda" else frame.format.name
    full = frame.color_range == _JPEG_RANGE or name.startswith("yuvj")
    kr, kb = _KR_KB.get(frame.colorspace, _BT601)
    if name in _SEMIPLANAR:
        bits, pad = _SEMIPLANAR[name]
        luma = _plane(frame.planes[0], device)  # [H, W]
        chroma = _plane(frame.planes[1], device)  # [H/2, W/2, 2] Cb, Cr interleaved
        if pad:
            luma, chroma = luma >> pad, chroma >> pad
        cb, cr = chroma[..., 0], chroma[..., 1]
    elif name in _PLANAR:
        bits = _PLANAR[name]
        luma, cb, cr = (_plane(frame.planes[i], device) for i in range(3))
    else:
        rgb = frame.to_ndarray(format="rgb24", threads=1)  # [H, W, 3]
        return torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1).float()
    return yuv_to_rgb(luma, cb, cr, bits, kr, kb, full)


def _plane(plane, device: torch.device) -> torch.Tensor:
    """One plane as a tensor on ``device`` (DLPack: NVDEC's stays where it is); 16-bit samples as int32,
    which every op takes.

    ``torch.from_dlpack(plane)`` would ask a CUDA plane for a capsule on torch's current stream, which
    PyAV refuses (it cannot order FFmpeg's stream after torch's). So the capsule is made without a
    stream, after the device has finished all queued work, NVDEC's copy of this frame included (FFmpeg
    shares the device's primary context with torch)."""
    if plane.__dlpack_device__()[0] != 1:  # kDLCPU = 1; NVDEC's planes are kDLCUDA
        torch.cuda.synchronize(device)
    t = torch.from_dlpack(plane.__dlpack__()).to(device)
    return t.to(torch.int32) if t.dtype == torch.uint16 else t


def yuv_to_rgb(
    luma: torch.Tensor, cb: torch.Tensor, cr: torch.Tensor, bits: int, kr: float, kb: float, full: bool
) -> torch.Tensor:
    """``[3, H, W]`` float32 R'G'B' in 0..255, rounded, from Y' ``[H, W]`` and Cb, Cr ``[h, w]`` samples.

    Chroma is repeated to the luma's size (nearest). With ``n = 2**(bits - 8)``: limited range
    ``Y = (Y' - 16n) / 219n``, ``C = (C' - 128n) / 224n``; full range ``/ 255n`` about ``0`` and ``128n``.
    Then ``R = Y + 2(1 - Kr) Cr``, ``B = Y + 2(1 - Kb) Cb``, ``G = (Y - Kr R - Kb B) / Kg``.
    """
    height, width = luma.shape
    up_y, up_x = math.ceil(height / cb.shape[0]), math.ceil(width / cb.shape[1])
    cb = cb.float().repeat_interleave(up_y, 0).repeat_interleave(up_x, 1)[:height, :width]
    cr = cr.float().repeat_interleave(up_y, 0).repeat_interleave(up_x, 1)[:height, :width]
    n = float(2 ** (bits - 8))
    if full:
        y, cb, cr = luma.float() / (255 * n), (cb - 128 * n) / (255 * n), (cr - 128 * n) / (255 * n)
    else:
        y, cb, cr = (luma.float() - 16 * n) / (219 * n), (cb - 128 * n) / (224 * n), (cr - 128 * n) / (224 * n)
    r = y + 2 * (1 - kr) * cr
    b = y + 2 * (1 - kb) * cb
    g = (y - kr * r - kb * b) / (1 - kr - kb)
    return _round8(torch.stack([r, g, b]) * 255.0)
