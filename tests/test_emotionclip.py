"""The EmotionCLIP head (seed 001): contract (shapes, gradients, save/load, parameter count), the presets'
feature-set expectations, the two synthetic tasks that show its mechanisms (the temporal encoder reads
the order of events that mean pooling cannot; SNCE's re-weighting helps an emotion probe when many
same-emotion items share a batch), and the user's path end to end: pre-training without a test split,
its report, and a probe of its features on a second dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from emo.cache.data import FeatureData
from emo.cache.manifest import Item, Manifest, write_manifest
from emo.cache.ragged import RaggedArray
from emo.cli import app
from emo.heads.emotionclip import EmotionCLIPConfig
from emo.heads.layers.snce import snce_loss
from emo.heads.metrics import retrieval_metrics
from emo.heads.registry import HEAD_PRESET_DIR, get_head, head_preset, load_checkpoint
from emo.heads.runs import train_head
from tests.cachetools import write_set

SMALL = {"layers": 2, "heads": 2, "ffn": 64, "dropout": 0.0, "batch_size": 64, "lr": 3e-3, "warmup_epochs": 0,
         "weight_decay": 0.0, "betas": [0.9, 0.999], "schedule": "constant"}
CLIP_META = {"modality": "clip", "model": "ViT-B-32", "weights": {"kind": "pretrained", "tag": "openai"},
             "preprocess": {"mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28], "size": 224}}


def pairs_data(frames: np.ndarray, text: np.ndarray, sentiment: np.ndarray, labels=None, sap: bool = False) -> FeatureData:
    """In-memory features: ``clip/cls [n, T, 1, 1, D]``, ragged ``text/clip`` and ``text/sentiment`` (one caption)."""
    n = len(frames)
    ones = torch.arange(n + 1)
    clip = {**CLIP_META, "key": "c" * 64, "sampling": {"segments": frames.shape[1]},
            **({"subject_prompt": {"boxes": "manifest"}} if sap else {})}
    return FeatureData(
        dataset="syn", ids=[f"i{k:04d}" for k in range(n)], classes=[] if labels is None else ["a", "b", "c", "d"],
        labels=torch.as_tensor(labels if labels is not None else [-1] * n, dtype=torch.int64),
        arrays={"clip/cls": torch.as_tensor(frames)[:, :, None, None, :].half(),
                "text/clip": RaggedArray(torch.as_tensor(text).half(), ones),
                "text/sentiment": RaggedArray(torch.as_tensor(sentiment).half(), ones)},
        roles=np.array(["train"] * n, dtype=object), split="syn:all",
        feature_sets={"clip-c": clip, "text-t": {"modality": "text", "model": "ViT-B-32", "key": "t" * 64,
                                                "weights": {"kind": "pretrained", "tag": "openai"}}},
    )


def order_task(seed: int = 0, k: int = 16, dim: int = 16, t: int = 8, noise: float = 0.1):
    """Every ordered pair (a, b) of ``k`` events: frames show event a, then event b; the utterance names
    the order (``0.8 e_a + 0.2 e_b``). Both orders of a pair come one after the other, so a held-out
    block of consecutive items holds each pair in both orders: mean pooling sees the same video twice."""
    g = np.random.default_rng(seed)
    e = g.standard_normal((k, dim))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    g.shuffle(pairs)
    frames, text = [], []
    for a, b in pairs:
        for p, q in ((a, b), (b, a)):
            f = np.concatenate([np.repeat(e[p][None], t // 2, 0), np.repeat(e[q][None], t - t // 2, 0)])  # [T, D]
            frames.append(f + noise * g.standard_normal(f.shape))
            text.append(0.8 * e[p] + 0.2 * e[q])
    n = len(frames)
    return np.asarray(frames, np.float32), np.asarray(text, np.float32), np.zeros((n, 7), np.float32)


def emotion_task(seed: int, n: int = 480, classes: int = 4, dim: int = 16, t: int = 8):
    """Many same-emotion items per batch (4 emotions): frames carry a weak emotion direction under strong
    item content and noise; the utterance is almost only its emotion (``m_c + 0.1 u_i``: same-emotion
    utterances are near-duplicates, false negatives for InfoNCE); sentiment logits are a noisy one-hot
    of the emotion (margin 8, noise N(0, 1)), as a sentiment classifier's would be."""
    g = np.random.default_rng(seed)
    m = g.standard_normal((classes, dim))
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    u = g.standard_normal((n, dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    y = np.arange(n) % classes
    frames = 0.3 * m[y][:, None] + u[:, None] + g.standard_normal((n, t, dim))
    text = m[y] + 0.1 * u
    sentiment = np.zeros((n, 7))
    sentiment[np.arange(n), y] = 8.0
    sentiment += g.standard_normal((n, 7))
    return frames.astype(np.float32), text.astype(np.float32), sentiment.astype(np.float32), y


def build(data: FeatureData, **over):
    spec = get_head("emotionclip")
    head = spec.build(spec.config({**SMALL, **over}), data.classes)
    head.prepare(data)
    return head


# --- contract ----------------------------------------------------------------------------------------


def test_shapes_no_nan_gradients_reach_every_trainable_parameter_and_the_loss_is_snce():
    frames, text, sent = order_task(k=6)
    data = pairs_data(frames, text, np.random.default_rng(0).standard_normal((len(frames), 7)).astype(np.float32))
    head = build(data, beta=10.0)
    batch = head.inputs(data, np.arange(12), True, torch.Generator().manual_seed(0))
    assert batch["frames"].shape == (12, 8, 16) and batch["text"].shape == (12, 16) and batch["sentiment"].shape == (12, 7)
    loss, parts = head.loss(batch, torch.full((12,), -1))
    video = head.module(batch["frames"])
    assert torch.isfinite(loss) and video.shape == (12, 16)
    torch.manual_seed(0)
    expected = snce_loss(video, batch["text"], batch["sentiment"], head.module.log_scale, 10.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)  # dropout 0: the same forward
    loss.backward()
    params = dict(head.module.named_parameters())
    assert params and all(p.requires_grad for p in params.values())
    missing = [n for n, p in params.items() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, missing
    assert float(parts["logit_scale"]) == pytest.approx(1 / 0.07, rel=1e-5)


def test_default_parameter_count_is_the_official_temporal_encoder_plus_the_logit_scale():
    frames = np.zeros((4, 8, 512), np.float32)
    data = pairs_data(frames, np.ones((4, 512), np.float32), np.zeros((4, 7), np.float32))
    spec = get_head("emotionclip")
    head = spec.build(spec.config(), [])
    head.prepare(data)
    assert sum(p.numel() for p in head.module.parameters() if p.requires_grad) == 18_919_424 + 1


def test_mean_pooling_has_only_the_logit_scale_and_embeds_the_normalised_frame_mean():
    frames, text, sent = order_task(k=5)
    data = pairs_data(frames, text, sent)
    head = build(data, pooling="mean")
    assert [n for n, _ in head.module.named_parameters()] == ["log_scale"]
    expected = torch.nn.functional.normalize(torch.as_tensor(frames).half().float().mean(1), dim=-1)
    np.testing.assert_allclose(head.embed(data), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_a_run_round_trips_its_checkpoint_and_embeds_identically(tmp_path):
    frames, text, sent = order_task(k=6)
    data = pairs_data(frames, text, sent)
    train_head("emotionclip", data, out=tmp_path / "run", val_fraction=0.25, overrides={**SMALL, "epochs": 2})
    fold = tmp_path / "run" / "all"
    metrics = json.loads((fold / "metrics.json").read_text())
    assert metrics["evaluated_on"] == "val" and metrics["n"] == round(0.25 * len(data))
    head = load_checkpoint(fold, data)
    v, t = head.retrieval_embeddings(data)
    held = json.loads((fold / "config.json").read_text())["val_ids"]
    sub = data.select([i in set(held) for i in data.ids])
    again = retrieval_metrics(*head.retrieval_embeddings(sub))
    assert again["r1"] == pytest.approx(metrics["r1"]) and again["v2t_medr"] == metrics["v2t_medr"]
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5) and np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)


def test_presets_name_the_feature_set_they_expect_and_refuse_the_other():
    frames, text, sent = order_task(k=5)
    plain, sap = pairs_data(frames, text, sent), pairs_data(frames, text, sent, sap=True)
    presets = sorted(p.stem for p in (HEAD_PRESET_DIR / "emotionclip").glob("*.json"))
    assert presets == ["table1-sap", "table1-sap-snce", "table1-vanilla", "table3-mean-pooling"]
    spec = get_head("emotionclip")
    expect = {"table1-vanilla": (0.0, False), "table1-sap": (0.0, True), "table1-sap-snce": (10.0, True),
              "table3-mean-pooling": (10.0, True)}
    for name, (beta, wants_sap) in expect.items():
        over = head_preset("emotionclip", name)
        cfg = spec.config({**SMALL, **over})
        assert (cfg.beta, cfg.expects_subject_prompt) == (beta, wants_sap)
        good, bad = (sap, plain) if wants_sap else (plain, sap)
        spec.build(cfg, []).prepare(good)
        with pytest.raises(ValueError, match="with --subject-prompt" if wants_sap else "without --subject-prompt"):
            spec.build(cfg, []).prepare(bad)
    assert spec.config(head_preset("emotionclip", "table3-mean-pooling")).pooling == "mean"
    assert EmotionCLIPConfig(beta=0).label() == "EmotionCLIP InfoNCE"


# --- mechanisms on synthetic tasks -----------------------------------------------------------------


def test_the_temporal_encoder_reads_event_order_that_mean_pooling_cannot():
    frames, text, sent = order_task()
    data = pairs_data(frames, text, sent)
    held = np.arange(40)  # 20 pairs, both orders of each
    train, val = data.select(np.arange(40, len(data))), data.select(held)
    r1 = {}
    for pooling in ("transformer", "mean"):
        torch.manual_seed(0)
        head = build(train, pooling=pooling, beta=0.0, epochs=30, batch_size=32)
        head.fit(train)
        r1[pooling] = retrieval_metrics(*head.retrieval_embeddings(val))["r1"]
    assert r1["transformer"] > 0.9, r1
    assert r1["mean"] < 0.7, r1  # the two orders of a pair give one mean: a coin toss between their texts
    assert r1["transformer"] > r1["mean"] + 0.3


def test_snce_beta_10_gives_a_better_emotion_probe_than_infonce_on_every_seed():
    gains = []
    for seed in range(3):
        frames, text, sent, y = emotion_task(seed)
        data = pairs_data(frames, text, sent, labels=y)
        acc = {}
        for beta in (0.0, 10.0):
            torch.manual_seed(seed)
            head = build(data, beta=beta, epochs=30)
            head.fit(data)
            e = head.embed(data)
            acc[beta] = LogisticRegression(max_iter=2000).fit(e[:320], y[:320]).score(e[320:], y[320:])
        gains.append(acc[10.0] - acc[0.0])
    assert all(g > 0 for g in gains), gains
    assert np.mean(gains) > 0.03, gains


# --- the user's path through the CLI -----------------------------------------------------------------


def _pretrain_cache(root: Path, seed: int = 0) -> None:
    """A subtitles-like cache: unlabelled utterance clips, scheme ``subtitles:all``, a clip set and a text
    set (synthetic sentiment logits, never a random model's)."""
    frames, text, sent = order_task(seed=seed, k=8)
    items = [Item(id=f"ep1/cue{i:04d}", path="ep1.mp4", label=None, start=float(i), end=float(i) + 2.0,
                  text=f"utterance {i}", splits={"subtitles": {"all": "train"}}) for i in range(len(frames))]
    root.mkdir(parents=True)
    write_manifest(Manifest(dataset="tv", classes=[], items=items, root=str(root), label_type="none",
                            split_schemes={"subtitles": ["all"]}), root / "manifest.jsonl")
    ids = [it.id for it in items]
    write_set(root, {**CLIP_META, "sampling": {"segments": 8, "frames_per_segment": 1, "views": 1}},
              {i: {"clip/cls": frames[k][:, None, None, :].astype(np.float16)} for k, i in enumerate(ids)})
    write_set(root, {"modality": "text", "model": "ViT-B-32", "weights": {"kind": "pretrained", "tag": "openai"}},
              {i: {"text/clip": text[k][None].astype(np.float16), "text/sentiment": sent[k][None].astype(np.float16)}
               for k, i in enumerate(ids)}, ragged={"text/clip", "text/sentiment"})


def _probe_cache(root: Path, weights: dict) -> None:
    """A MELD-like labelled cache (train / val / test) whose clip set has another sampling (4 segments, 2
    views) of the encoder named by ``weights``."""
    g = np.random.default_rng(7)
    classes = ["joy", "anger"]
    roles = ["train"] * 24 + ["val"] * 8 + ["test"] * 8
    means = g.standard_normal((2, 16)) * 2
    items, values = [], {}
    for i, role in enumerate(roles):
        y = i % 2
        items.append(Item(id=f"dia{i}_utt0", path=f"dia{i}.mp4", label=classes[y], splits={"meld": {"official": role}}))
        values[f"dia{i}_utt0"] = {"clip/cls": (means[y] + g.standard_normal((4, 1, 2, 16))).astype(np.float16)}
    root.mkdir(parents=True)
    write_manifest(Manifest(dataset="meld", classes=classes, items=items, root=str(root),
                            split_schemes={"meld": ["official"]}), root / "manifest.jsonl")
    write_set(root, {**CLIP_META, "weights": weights, "sampling": {"segments": 4, "frames_per_segment": 1, "views": 2}},
              values)


def test_pretrain_without_a_test_split_report_and_probe_on_another_dataset_through_the_cli(tmp_path):
    tv, meld, other = tmp_path / "cache" / "tv", tmp_path / "cache" / "meld", tmp_path / "cache" / "other"
    _pretrain_cache(tv)
    _probe_cache(meld, CLIP_META["weights"])
    _probe_cache(other, {"kind": "pretrained", "tag": "laion2b_s34b_b79k"})
    runs = tmp_path / "runs"
    runner = CliRunner()
    small = ["--layers", "1", "--heads", "2", "--ffn", "32", "--epochs", "3", "--batch-size", "16", "--lr", "1e-3",
             "--warmup-epochs", "0", "--dropout", "0"]
    res = runner.invoke(app, ["heads", "train", "emotionclip", str(tv), "--split", "subtitles:all", "--val-fraction",
                              "0.25", "--out", str(runs / "eclip"), *small])
    assert res.exit_code == 0, res.output
    assert "V→T R@1" in res.output
    res = runner.invoke(app, ["heads", "train", "emotionclip", str(tv), "--split", "subtitles:all", "--val-fraction",
                              "0.25", "--preset", "table1-vanilla", "--out", str(runs / "eclip-vanilla"), *small])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["heads", "train", "emotionclip", str(tv), "--split", "subtitles:all", "--val-fraction",
                              "0.25", "--preset", "table1-sap", "--out", str(runs / "eclip-sap"), *small])
    assert res.exit_code != 0 and "expects clip features extracted with --subject-prompt" in res.output
    res = runner.invoke(app, ["heads", "eval", str(runs / "eclip")])
    assert res.exit_code == 0, res.output
    first = json.loads((runs / "eclip" / "all" / "metrics.json").read_text())
    assert f"{100 * first['v2t_r1']:.2f}" in res.output  # the same held-out items, scored again
    res = runner.invoke(app, ["heads", "probe", str(meld), "--run", str(runs / "eclip"), "--split",
                              "meld:official", "--out", str(runs / "eclip-meld")])
    assert res.exit_code == 0, res.output
    probe_cfg = json.loads((runs / "eclip-meld" / "official" / "config.json").read_text())
    assert probe_cfg["source_run"]["transfer"] and probe_cfg["source_run"]["dataset"] == "tv"
    assert probe_cfg["source_run"]["head"] == "emotionclip"
    res = runner.invoke(app, ["heads", "probe", str(other), "--features", str(runs / "eclip"), "--split",
                              "meld:official", "--out", str(runs / "x")])
    assert res.exit_code != 0
    assert "ViT-B-32 (openai)" in res.output and "ViT-B-32 (laion2b_s34b_b79k)" in res.output
    res = runner.invoke(app, ["report", str(runs)])
    assert res.exit_code == 0, res.output
    text = res.output
    assert text.index("**classification**") < text.index("**retrieval**")
    assert "| EmotionCLIP SNCE β=10 |" in text and "| EmotionCLIP InfoNCE |" in text
    assert "linear probe: EmotionCLIP SNCE β=10" in text
    assert "scored on its held-out val part" in text and "transferred" in text
