"""emo's small synthetic video dataset: classes that differ in appearance *and* in the order of events.

Used by ``make demo`` and the tests: it must be learnable, fast to write (48 videos in a few seconds)
and built so that a temporal head can beat mean pooling over time.

Design. Classes come in pairs that share a *look* (``calm``, ``warm``, ...) and differ only in the order
of two events (``flash-first`` / ``shade-first``)::

    SYNTH_CLASSES = ("calm-flash-first", "calm-shade-first", "warm-flash-first", ...)

- Look (tells pairs apart, visible in every frame): a background colour (hue fixed per look), diagonal
  stripes with a per-look angle and period, drifting over time; per video the hue, brightness, stripe
  phase and drift speed are jittered, and every frame gets pixel noise, so no single pixel names the
  class.
- Events (tell the two classes of a pair apart): every video has a *flash* (a bright blob moving along
  a random straight path, with a small global brightening) and a *shade* (the same with a dark blob),
  each lasting ``round(0.125 * frames)`` frames with a smooth ``sin`` envelope, at random times that
  never overlap. ``flash-first`` puts the flash before the shade, ``shade-first`` the other way round.
  Both classes of a pair hold the same frames in distribution (same look, one flash, one shade, a
  background whose drift starts at a random phase), only their order differs: the time average of
  any per-frame feature cannot tell them apart, a model that sees order can.
- Audio (16 kHz mono AAC): a hum whose pitch is fixed per look, a high tone (1760 Hz) during the flash
  and a low tone (440 Hz) during the shade, on the video's envelope — the pitch follows the events,
  so audio heads see both the pair and the order.

Every video is drawn from its own generator seeded with ``(seed, class index, video index)``: the same
config writes the same frames, and adding videos or classes leaves the existing ones unchanged. The
event times of every video are written to ``<out>/synth.json`` with the config (ground truth for tests).
"""

from __future__ import annotations

import colorsys
import json
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = ["SYNTH_CLASSES", "LOOKS", "ORDERS", "SAMPLE_RATE", "SynthConfig", "VideoPlan", "plan_video",
           "render_frames", "render_audio", "generate"]

LOOKS = ("calm", "warm", "moss", "dusk", "rose", "sand", "ink", "mint")
ORDERS = ("flash-first", "shade-first")
SYNTH_CLASSES = tuple(f"{look}-{order}" for look in LOOKS for order in ORDERS)
SAMPLE_RATE = 16000  # Hz, the rate wav2vec 2.0 expects
EVENT_FRACTION = 0.125  # of the clip, per event
FLASH_HZ, SHADE_HZ = 1760.0, 440.0


@dataclass
class SynthConfig:
    classes: int = 4
    per_class: int = 12
    frames: int = 48
    fps: int = 12
    size: tuple[int, int] = (96, 72)  # (width, height), both even (yuv420p)
    audio: bool = True
    seed: int = 0

    def __post_init__(self):
        self.size = tuple(int(s) for s in self.size)
        if not 1 <= self.classes <= len(SYNTH_CLASSES):
            raise ValueError(f"classes must be in 1..{len(SYNTH_CLASSES)}, got {self.classes}")
        if self.per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {self.per_class}")
        if self.frames < 16:
            raise ValueError(f"frames must be >= 16 (two events and a gap), got {self.frames}")
        if self.fps < 1:
            raise ValueError(f"fps must be >= 1, got {self.fps}")
        if len(self.size) != 2 or any(s < 16 or s % 2 for s in self.size):
            raise ValueError(f"size must be (width, height), even and >= 16, got {self.size}")


@dataclass
class VideoPlan:
    """Everything random about one video, drawn before any pixel is made."""

    cls: str
    look: int  # index into LOOKS
    events: list[tuple[str, int, int]]  # (kind "flash" | "shade", first frame, frames), in time order
    hue: float  # [0, 1)
    value: float  # background brightness
    stripe_angle: float  # radians
    stripe_period: float  # pixels
    stripe_phase: float  # radians
    drift: float  # radians per frame
    paths: list[tuple[float, float, float, float]]  # per event: blob (x0, y0, x1, y1) in [0, 1]
    hum_phase: float
    seed: tuple[int, int, int]


def plan_video(cfg: SynthConfig, class_index: int, video_index: int) -> VideoPlan:
    """Draw one video's look jitter, event times and blob paths from its own generator."""
    seed = (cfg.seed, class_index, video_index)
    rng = np.random.default_rng(seed)
    look, order = divmod(class_index, len(ORDERS))
    t, n = cfg.frames, max(2, round(EVENT_FRACTION * cfg.frames))
    first = int(rng.integers(0, t - 2 * n))  # leaves room for a 1-frame gap and the second event
    second = int(rng.integers(first + n + 1, t - n + 1))
    kinds = ("flash", "shade") if order == 0 else ("shade", "flash")
    base_period = 0.18 + 0.05 * (look % 3)  # of the width
    return VideoPlan(
        cls=SYNTH_CLASSES[class_index],
        look=look,
        events=[(kinds[0], first, n), (kinds[1], second, n)],
        hue=(look * 3 / len(LOOKS) + rng.uniform(-0.03, 0.03)) % 1.0,
        value=rng.uniform(0.45, 0.6),
        stripe_angle=np.pi * look / len(LOOKS) + rng.uniform(-0.1, 0.1),
        stripe_period=cfg.size[0] * base_period * rng.uniform(0.9, 1.1),
        stripe_phase=rng.uniform(0, 2 * np.pi),
        drift=rng.choice([-1, 1]) * rng.uniform(0.5, 1.5) * 2 * np.pi / cfg.frames,
        paths=[tuple(rng.uniform(0.15, 0.85, 4).tolist()) for _ in range(2)],
        hum_phase=rng.uniform(0, 2 * np.pi),
        seed=seed,
    )


def _envelope(n: int) -> np.ndarray:
    """[n] smooth event envelope, > 0 on every frame of the event, peak 1 in the middle."""
    return np.sin(np.pi * (np.arange(n) + 0.5) / n)


def render_frames(plan: VideoPlan, cfg: SynthConfig) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` RGB frames of a planned video."""
    w, h = cfg.size
    rng = np.random.default_rng((*plan.seed, 1))  # pixel noise, apart from the plan's draws
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)  # [H, W] pixels
    along = x * np.cos(plan.stripe_angle) + y * np.sin(plan.stripe_angle)  # [H, W]
    phase = (plan.stripe_phase + plan.drift * np.arange(cfg.frames)).astype(np.float32)  # [T]
    stripes = np.sin(along * np.float32(2 * np.pi / plan.stripe_period) + phase[:, None, None])  # [T, H, W]
    colour = np.array(colorsys.hsv_to_rgb(plan.hue, 0.6, plan.value), np.float32)  # [3]
    gradient = np.float32(0.9) + np.float32(0.2 / h) * y  # [H, W]
    frames = colour * (gradient * (1 + 0.25 * stripes))[..., None]  # [T, H, W, 3]
    frames += 0.025 * rng.standard_normal((*frames.shape[:3], 1), dtype=np.float32)  # luma noise

    sigma = 0.15 * min(w, h)  # blob radius, pixels
    for (kind, start, n), (x0, y0, x1, y1) in zip(plan.events, plan.paths, strict=True):
        for k, e in enumerate(_envelope(n)):
            a = k / max(n - 1, 1)  # 0 -> 1 along the path
            cx, cy = ((1 - a) * x0 + a * x1) * w, ((1 - a) * y0 + a * y1) * h
            blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))  # [H, W]
            strength = (e * (0.85 * blob + 0.15))[..., None]  # [H, W, 1]
            f = frames[start + k]
            frames[start + k] = f + strength * (1 - f) if kind == "flash" else f * (1 - strength)
    np.clip(frames, 0, 1, out=frames)
    frames *= 255
    frames += 0.5
    return frames.astype(np.uint8)


def render_audio(plan: VideoPlan, cfg: SynthConfig) -> np.ndarray:
    """float32 ``[samples]`` mono audio at ``SAMPLE_RATE`` as long as the video."""
    n = round(cfg.frames / cfg.fps * SAMPLE_RATE)
    rng = np.random.default_rng((*plan.seed, 2))
    t = np.arange(n) / SAMPLE_RATE  # [n] seconds
    hum_hz = 120.0 + 20.0 * plan.look
    audio = 0.08 * np.sin(2 * np.pi * hum_hz * t + plan.hum_phase) + rng.normal(0, 0.005, n)
    for kind, start, frames in plan.events:
        t0, dur = start / cfg.fps, frames / cfg.fps  # seconds
        inside = (t >= t0) & (t < t0 + dur)
        hz = FLASH_HZ if kind == "flash" else SHADE_HZ
        audio[inside] += 0.35 * np.sin(np.pi * (t[inside] - t0) / dur) * np.sin(2 * np.pi * hz * t[inside])
    return audio.astype(np.float32)


def _write_mp4(path: Path, frames: np.ndarray, audio: np.ndarray | None, fps: int) -> None:
    """H.264 (+ AAC) mp4, written to ``path.tmp`` and renamed."""
    tmp = path.with_name(path.name + ".tmp")
    with av.open(str(tmp), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "23", "bf": "0"})
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = "yuv420p"
        sound = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if audio is not None else None
        for k, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = k
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            chunk = sound.codec_context.frame_size or 1024  # samples per AAC frame
            padded = np.zeros(-(-len(audio) // chunk) * chunk, np.float32)
            padded[: len(audio)] = audio
            for s in range(0, len(padded), chunk):
                block = av.AudioFrame.from_ndarray(padded[None, s : s + chunk], format="fltp", layout="mono")
                block.sample_rate, block.pts, block.time_base = SAMPLE_RATE, s, Fraction(1, SAMPLE_RATE)
                out.mux(sound.encode(block))
            out.mux(sound.encode(None))
    os.replace(tmp, path)


def generate(out_dir: str | os.PathLike, cfg: SynthConfig) -> Path:
    """Write ``out_dir/<class>/v000.mp4 ...`` and ``out_dir/synth.json``; return ``out_dir``."""
    out_dir = Path(out_dir)
    record = []
    for c in range(cfg.classes):
        folder = out_dir / SYNTH_CLASSES[c]
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(cfg.per_class):
            plan = plan_video(cfg, c, i)
            audio = render_audio(plan, cfg) if cfg.audio else None
            _write_mp4(folder / f"v{i:03d}.mp4", render_frames(plan, cfg), audio, cfg.fps)
            events = [{"kind": k, "start_frame": s, "frames": n, "start_s": s / cfg.fps} for k, s, n in plan.events]
            record.append({"id": f"{plan.cls}/v{i:03d}", "class": plan.cls, "events": events})
    info = {"config": asdict(cfg), "classes": list(SYNTH_CLASSES[: cfg.classes]), "sample_rate": SAMPLE_RATE,
            "videos": record}
    tmp = out_dir / "synth.json.tmp"
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, out_dir / "synth.json")
    return out_dir
