"""The PyAV decoder: sparse exact decoding where the probe allows it, else one pass over the stream.

``decode_pyav`` *seeks* where frames are known by their pts alone (``VideoProbe.seekable``): for each
keyframe before some sampled frames it seeks there and decodes forward until they are out, skipping
non-reference frames that are not sampled (nothing else needs them). That is the same pixels as
decoding the whole stream (tests/test_decode_sparse.py). Elsewhere, or where the file does not behave
as its packets say, it decodes the stream once from the start, keeping only the sampled frames, and
redoes the selection when the decoded frames differ from the packets' prediction.

A ``Route`` says how decoded frames become views: ``CPU`` (swscale's RGB, turned upright, PIL's
bicubic crops: the CPU path) or the GPU's (``emo.decode.gpu``: NVDEC frames, converted on the GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image

from . import frames
from .frames import DecodedItem
from .probe import (
    DecodeError,
    Orientation,
    VideoProbe,
    ffmpeg_message,
    one_thread,
    orientation_of,
    stream_times,
)
from .sampling import SamplingConfig, crop_boxes

__all__ = ["CPU", "Route", "cpu_views", "decode_pyav", "decode_sparse", "sequential_views", "sparse_views", "upright_image"]


def upright_image(frame, orientation: Orientation) -> Image.Image:
    """A decoded PyAV frame as an RGB image turned upright (the coded frame itself when no turn is due)."""
    rgb = frame.to_ndarray(format="rgb24", threads=1)  # [H, W, 3]; swscale's threads: one, as the decoder's
    return Image.fromarray(rgb if orientation.identity else orientation.apply(rgb))  # to_image: same pixels, 5x slower


def cpu_views(frame, orientation: Orientation, boxes: np.ndarray, size: int) -> np.ndarray:
    """``[V, S, S, 3]`` uint8 views of a decoded frame: swscale's RGB, upright, PIL's bicubic crops."""
    return frames.pil_views(upright_image(frame, orientation), boxes, size)


@dataclass(frozen=True)
class Route:
    """How the PyAV decoder's frames become views, and what its items record."""

    views: Callable[..., np.ndarray] = cpu_views  # (frame, orientation, boxes [V, 4], S) -> [V, S, S, 3] uint8
    open_options: dict = field(default_factory=dict)  # for ``av.open``, e.g. ``hwaccel``
    backend: str = "pyav"  # ``DecodedItem.backend``


CPU = Route()


def decode_pyav(
    path: Path, probe: VideoProbe, cfg: SamplingConfig, item_id: str, start, end, reason: str | None,
    sparse: bool = True, route: Route = CPU,
) -> DecodedItem:
    """Decode the sampled frames: sparsely where the probe allows (unless ``sparse`` is False: already
    tried), else sequentially, redoing the selection if the decoder disagrees with the packets."""
    if sparse and probe.seekable is not None:
        item = decode_sparse(path, probe, cfg, item_id, start, end, reason, route)
        if item is not None:
            return item
    index, _ = frames.select_frames(probe.times, cfg, start, end)  # [M, N] as the packets predict
    for _ in range(2):
        views, times, size, boxes, orientation = sequential_views(
            path, set(index.reshape(-1).tolist()), cfg, item_id, probe, route
        )
        chosen, n_span = frames.select_frames(times, cfg, start, end)  # the decoded stream rules over the packets
        if np.array_equal(chosen, index):
            break
        index = chosen
    else:
        raise DecodeError("the decoder produced different frames on two passes over the same file")
    return frames.item_of(index, views, times, n_span, size, boxes, route.backend, reason, orientation)


def decode_sparse(
    path: Path, probe: VideoProbe, cfg: SamplingConfig, item_id: str, start, end, reason: str | None,
    route: Route = CPU,
) -> DecodedItem | None:
    """``_pyav_sparse`` made an item, or None where it could not (the caller decodes another way)."""
    index, n_span = frames.select_frames(probe.times, cfg, start, end)  # [M, N]
    sparse = sparse_views(path, probe, set(index.reshape(-1).tolist()), cfg, item_id, route)
    if sparse is None:
        return None
    views, size, boxes, orientation = sparse
    return frames.item_of(index, views, probe.times, n_span, size, boxes, route.backend, reason, orientation)


def sparse_views(path: Path, probe: VideoProbe, wanted: set[int], cfg: SamplingConfig, item_id: str, route: Route = CPU):
    """Views of the ``wanted`` frame indices, decoding from the keyframe before each sampled frame only.

    Frame ``k`` is the one whose pts is ``probe.seekable[k]``. For each keyframe that precedes some
    sampled frames, seek to it and decode forward until they are all out, skipping the non-reference
    frames that are not sampled (no other frame needs them, so the sampled ones are the same pixels as a
    decode of the whole stream gives). Returns ``(views, upright size, boxes, orientation)``, or None
    where the file does not behave as the probe predicted (the seek lands elsewhere, a sampled frame
    never comes out): the caller then decodes the whole stream.
    """
    order, keys = probe.seekable, probe.keyframes  # [P] frame pts, [K] keyframe pts
    targets = np.array(sorted(wanted), dtype=np.int64)  # frame indices, ascending
    starts = keys[np.searchsorted(keys, order[targets], side="right") - 1]  # [T] the keyframe before each
    views: dict[int, np.ndarray] = {}
    size, boxes, orientation = None, None, Orientation()
    with av.open(str(path), **route.open_options) as container:
        stream = container.streams[probe.stream_index]
        one_thread(stream)
        context = stream.codec_context
        try:
            for start in np.unique(starts).tolist():
                group = {int(order[k]): int(k) for k in targets[starts == start]}  # pts -> frame index
                container.seek(start, stream=stream, backward=True, any_frame=False)  # also flushes the decoder
                origin = None
                for packet in container.demux(stream):
                    if origin is None:  # the seek must land on a keyframe at or before ``start``
                        if packet.pts is None or not packet.is_keyframe or packet.pts > start:
                            return None
                        origin = packet.pts
                    context.skip_frame = "DEFAULT" if packet.pts in group else "NONREF"
                    for frame in context.decode(packet if packet.size else None):
                        if frame.pts is None:
                            return None
                        if size is None:
                            size = (frame.width, frame.height)
                            orientation = orientation_of(frame)
                            upright_w, upright_h = orientation.size(*size)
                            boxes = crop_boxes(upright_h, upright_w, cfg, item_id)
                        elif (frame.width, frame.height) != size:
                            return None  # the whole-stream pass says where
                        k = group.pop(frame.pts, None)  # None: not sampled, or an open GOP's leading
                        if k is not None:  # frame (shown before ``origin``, sampled from an earlier keyframe)
                            views[k] = route.views(frame, orientation, boxes, cfg.image_size)
                    if not group:
                        break
                if group:
                    return None
        except av.FFmpegError:
            return None  # the whole-stream pass reports it, counting the frames decoded before it
    return views, orientation.size(*size), boxes, orientation


def sequential_views(
    path: Path, wanted: set[int], cfg: SamplingConfig, item_id: str, probe: VideoProbe, route: Route = CPU
):
    """One decoding pass: views of the ``wanted`` frame indices, and the times of all decoded frames."""
    views: dict[int, np.ndarray] = {}
    pts: list[int | None] = []
    size, boxes, orientation = None, None, Orientation()
    with av.open(str(path), **route.open_options) as container:
        stream = container.streams[probe.stream_index]
        one_thread(stream)
        try:
            for frame in container.decode(stream):
                k = len(pts)
                pts.append(frame.pts)
                if size is None:
                    size = (frame.width, frame.height)
                    orientation = orientation_of(frame)
                    upright_w, upright_h = orientation.size(*size)
                    boxes = crop_boxes(upright_h, upright_w, cfg, item_id)  # boxes of the upright frame
                elif (frame.width, frame.height) != size:
                    raise DecodeError(
                        f"frame size changes mid-stream at frame {k}: {size} -> {frame.width}x{frame.height}"
                    )
                if k in wanted:
                    views[k] = route.views(frame, orientation, boxes, cfg.image_size)
        except av.FFmpegError as e:
            raise DecodeError(
                f"decoding failed after {len(pts)} frames (the container promises {probe.promised or len(probe.times)}): "
                f"{ffmpeg_message(e)}"
            ) from None
        if not pts:
            raise DecodeError(f"no frame decodes (the stream has {len(probe.times)} packets)")
        decoded = stream_times(pts, stream)
    return views, decoded, orientation.size(*size), boxes, orientation
