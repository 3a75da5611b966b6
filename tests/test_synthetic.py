"""The synthetic dataset: deterministic, event order visible by decoding (frames and audio), usable by
the folder adapter, and pairs of classes that only a temporal model can tell apart."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from emo.datasets import prepare_folder
from emo.datasets.synthetic import (
    FLASH_HZ,
    SAMPLE_RATE,
    SHADE_HZ,
    SYNTH_CLASSES,
    SynthConfig,
    generate,
    plan_video,
    render_frames,
)

CFG = SynthConfig(classes=4, per_class=3, frames=48, fps=12)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth"), CFG)


def _frames(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])  # [T, H, W, 3]


def _audio(path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
        samples = np.concatenate([f.to_ndarray().reshape(channels, -1) for f in c.decode(audio=0)], axis=1)
    return samples, rate


def _videos(root):
    info = json.loads((root / "synth.json").read_text())
    return info, [(root / f"{v['id']}.mp4", v) for v in info["videos"]]


def test_layout_and_record(synth):
    info, videos = _videos(synth)
    assert sorted(p.name for p in synth.iterdir()) == sorted([*SYNTH_CLASSES[:4], "synth.json"])
    assert info["classes"] == list(SYNTH_CLASSES[:4]) and info["config"]["seed"] == 0
    assert len(videos) == 12 and all(p.exists() for p, _ in videos)
    assert not list(synth.rglob("*.tmp"))
    frames = _frames(videos[0][0])
    assert frames.shape == (48, 72, 96, 3)


def test_same_seed_same_frames_other_seed_other_frames(synth, tmp_path):
    again = generate(tmp_path / "again", SynthConfig(classes=2, per_class=2, frames=48, fps=12))
    other = generate(tmp_path / "other", SynthConfig(classes=2, per_class=2, frames=48, fps=12, seed=1))
    for cls in SYNTH_CLASSES[:2]:
        for i in range(2):
            name = f"{cls}/v{i:03d}.mp4"
            assert np.array_equal(_frames(synth / name), _frames(again / name))
            assert not np.array_equal(_frames(synth / name), _frames(other / name))


def test_event_order_is_visible_in_brightness(synth):
    _, videos = _videos(synth)
    for path, v in videos:
        brightness = _frames(path).astype(np.float64).mean(axis=(1, 2, 3))  # [T]
        windows = {e["kind"]: range(e["start_frame"], e["start_frame"] + e["frames"]) for e in v["events"]}
        peak, trough = int(brightness.argmax()), int(brightness.argmin())
        assert peak in windows["flash"] and trough in windows["shade"], v
        assert (peak < trough) == v["class"].endswith("flash-first"), v
        assert brightness[peak] - np.median(brightness) > 15 and np.median(brightness) - brightness[trough] > 10


def test_audio_is_16k_mono_and_its_pitch_follows_the_events(synth):
    _, videos = _videos(synth)
    hop = SAMPLE_RATE // CFG.fps  # samples per video frame
    for path, v in videos:
        samples, rate = _audio(path)
        assert rate == SAMPLE_RATE and samples.shape[0] == 1
        assert abs(samples.shape[1] - CFG.frames * hop) <= 2048  # codec padding
        windows = samples[0, : (samples.shape[1] // hop) * hop].reshape(-1, hop)  # [frames, hop]
        spectrum = np.abs(np.fft.rfft(windows, axis=1))  # [frames, hop // 2 + 1]
        freqs = np.fft.rfftfreq(hop, 1 / SAMPLE_RATE)
        high = spectrum[:, np.argmin(abs(freqs - FLASH_HZ))].argmax()
        low = spectrum[:, np.argmin(abs(freqs - SHADE_HZ))].argmax()
        assert (high < low) == v["class"].endswith("flash-first"), v


def test_folder_adapter_reads_the_output(synth, tmp_path):
    m, skipped = prepare_folder(synth, tmp_path / "cache", test_ratio=0.34)
    assert skipped == [] and m.classes == list(SYNTH_CLASSES[:4])
    assert [it.id for it in m.items[:3]] == [f"calm-flash-first/v{i:03d}" for i in range(3)]
    assert sum(it.splits["folder"]["0"] == "test" for it in m.items) == 4  # one of 3 per class


def test_pairs_share_look_and_events_and_differ_in_order():
    cfg = SynthConfig(classes=4)
    for i in range(20):
        a, b = plan_video(cfg, 2, i), plan_video(cfg, 3, i)  # warm-flash-first, warm-shade-first
        assert a.look == b.look == 1
        assert [k for k, _, _ in a.events] == ["flash", "shade"] and [k for k, _, _ in b.events] == ["shade", "flash"]
        assert {n for _, _, n in a.events} == {n for _, _, n in b.events} == {6}  # 12.5% of 48 frames
        for plan in (a, b):
            (_, s1, n1), (_, s2, _) = plan.events
            assert 0 <= s1 and s1 + n1 < s2 and s2 + n1 <= cfg.frames


def _pooled_and_order(cfg, classes, per_class):
    """Per video: the time average of 4x4-grid mean colours (mean pooling), and whether the flash
    (brightest frame) comes before the shade (darkest frame) (a temporal feature)."""
    pooled, flash_first, labels = [], [], []
    for c in classes:
        for i in range(per_class):
            f = render_frames(plan_video(cfg, c, i), cfg).astype(np.float32)  # [T, H, W, 3]
            t, h, w, _ = f.shape
            grid = f.reshape(t, 4, h // 4, 4, w // 4, 3).mean(axis=(2, 4)).reshape(t, -1)  # [T, 48]
            brightness = f.mean(axis=(1, 2, 3))  # [T]
            pooled.append(grid.mean(axis=0))
            flash_first.append(brightness.argmax() < brightness.argmin())
            labels.append(c)
    return np.stack(pooled), np.array(flash_first), np.array(labels)


def _nearest_centroid_loo(x, y) -> float:
    """Leave-one-out accuracy of a nearest-centroid classifier."""
    hits = []
    for k in range(len(y)):
        rest = np.arange(len(y)) != k
        classes = np.unique(y)
        cents = np.stack([x[rest & (y == c)].mean(axis=0) for c in classes])
        hits.append(classes[np.linalg.norm(cents - x[k], axis=1).argmin()] == y[k])
    return float(np.mean(hits))


def test_mean_pooling_cannot_tell_a_pair_apart_but_event_order_can():
    cfg = SynthConfig(classes=4)
    pooled, flash_first, labels = _pooled_and_order(cfg, classes=(0, 1), per_class=16)  # calm-*
    assert _nearest_centroid_loo(pooled, labels) <= 0.7  # chance is 0.5
    assert np.array_equal(flash_first, labels == 0)
    pooled, _, labels = _pooled_and_order(cfg, classes=(0, 2), per_class=8)  # calm vs warm
    assert _nearest_centroid_loo(pooled, labels) == 1.0


def test_config_is_checked():
    with pytest.raises(ValueError, match="even"):
        SynthConfig(size=(95, 72))
    with pytest.raises(ValueError, match="classes"):
        SynthConfig(classes=len(SYNTH_CLASSES) + 1)
    with pytest.raises(ValueError, match="frames"):
        SynthConfig(frames=8)
    with pytest.raises(TypeError):
        SynthConfig(clases=4)
    assert SynthConfig(size=[64, 48]).size == (64, 48)
    assert all(name.replace("-", "").isalpha() for name in SYNTH_CLASSES)
