"""Fast checks that fail on a wrong head (issue 16, item 7), each without a learnability run.

- a flipped training loss: a few optimiser steps on each trained head's own ``loss`` must move an
  independent criterion the right way (PE-CLIP: the forward and the backward log-likelihoods; the
  EmoAsst heads and EmotionCLIP: how much closer an item's feature is to its own targets than to others);
- PE-CLIP's backward loss must run each class's own CA prompt through the decoder (``v_j`` equals the
  decoder on ``p_j`` tokenised here, and the ``v_j`` differ);
- choices read the validation part, never test: toy features whose val and test parts want opposite
  α/β cells of the cache classifier's search; the run must score what choosing on val gives;
- "+prompt" targets are drawn among every prompt format an item has (and never a missing one);
- the central mechanism of each head: PE-CLIP's classifier weights are the CA prompts' embeddings, the
  VFM's queries are the class prompts' text features in class order. The other heads' are checked in
  their own files: the auditory adapter's masked pooling (``test_an_audio_feature_does_not_depend_on_its_batch``)
  and SupCon's positives (formula), the cache classifier's Tip logits and search (formula, brute force),
  EmotionCLIP's SNCE directions (``test_snce_matches_the_double_loop_and_every_wrong_direction_differs``)
  and event order, the linear probe and zero-shot scores (``test_heads_linear.py``).

``tests/mutants.py`` puts each of these mistakes into the code in turn and shows which test fails.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emo.cache.data import FeatureData
from emo.cache.loader import load_features
from emo.heads.cache_classifier import CacheClassifierHead, search_grid
from emo.heads.layers.clip_text import encode_texts
from emo.heads.layers.prompts import ca_prompts, check_fits
from emo.heads.layers.utterance_prompts import FORMATS, class_prompts, item_prompts
from emo.heads.registry import get_head
from emo.heads.runs import train_head
from emo.heads.text_guided import text_targets

from .cachetools import emoasst_cache
from .test_emotionclip import build as build_emotionclip
from .test_emotionclip import order_task, pairs_data
from .test_pe_clip import build as build_pe_clip
from .test_pe_clip import tiny_features


def adam_steps(head, batch: dict, labels: torch.Tensor, steps: int, lr: float) -> None:
    """``steps`` Adam steps on the head's own training loss of one batch."""
    opt = torch.optim.Adam([p for p in head.module.parameters() if p.requires_grad], lr=lr)
    head.module.train()
    for _ in range(steps):
        opt.zero_grad()
        loss, _ = head.loss(dict(batch), labels)
        loss.backward()
        opt.step()
    head.module.eval()


def pair_margin(a: torch.Tensor, b: torch.Tensor, same: torch.Tensor) -> float:
    """Mean cosine of the pairs marked ``same [B, B]`` minus the mean cosine of the others."""
    cos = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T  # [B, B]
    return float(cos[same].mean() - cos[~same].mean())


# -- a flipped training loss ---------------------------------------------------------------------------
def pe_clip_criteria(head, z: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """``(mean log p_fwd(y), mean log p_bwd(y))`` recomputed here from ``v_0``, ``v_j`` and ``w``."""
    m = head.module
    with torch.no_grad():
        mem = m.memory(z)
        v0, vj = m.evolve(mem), m.evolve_classes(mem)  # [B, D], [B, C, D]
        w = F.normalize(m.class_weights().float(), dim=-1)  # [C, D]
        fwd = F.log_softmax(F.normalize(v0.float(), dim=-1) @ w.T / head.config.tau, dim=-1)  # [B, C]
        own = w[y]  # [B, D] w_+ of each video
        bwd = F.log_softmax((F.normalize(vj.float(), dim=-1) * own[:, None]).sum(-1) / head.config.tau, dim=-1)
    rows = torch.arange(len(y))
    return float(fwd[rows, y].mean()), float(bwd[rows, y].mean())


def test_pe_clip_training_raises_the_true_class_both_ways():
    """λ = 1 trains L_fwd alone, then λ = 0 trains L_bwd alone (at initialisation ``v_j = w_j``, so L_bwd
    starts at its optimum; the forward steps move it away first): each part must raise its own
    log-likelihood, so a flip of the whole loss or of either part fails."""
    fd = tiny_features()
    train = fd.role("train")
    head = build_pe_clip(fd)
    batch = head.inputs(train, np.arange(16), False, torch.Generator())
    y = train.labels[:16]
    fwd0, _ = pe_clip_criteria(head, batch["z"], y)
    head.config.lam = 1.0
    adam_steps(head, batch, y, steps=5, lr=1e-3)
    fwd1, bwd1 = pe_clip_criteria(head, batch["z"], y)
    assert fwd1 > fwd0 + 1.0, (fwd0, fwd1)  # L_fwd: the true class's CA prompt fits v_0 better
    head.config.lam = 0.0
    adam_steps(head, batch, y, steps=5, lr=1e-3)
    _, bwd2 = pe_clip_criteria(head, batch["z"], y)
    assert bwd2 > bwd1 + 0.2, (bwd1, bwd2)  # L_bwd: the true class's own prototype fits w_+ better


@pytest.fixture(scope="module")
def meld(tmp_path_factory):
    root = tmp_path_factory.mktemp("meld")
    emoasst_cache(root / "cache")
    return load_features(root / "cache", split="meld:official", modalities=("clip", "audio"))


TEXT_GUIDED = {"epochs": "1", "heads": "2", "ffn": "64", "dropout": "0", "text": "utterance"}


@pytest.mark.parametrize("name", ["vfm", "audio-adapter"])
def test_text_guided_training_brings_each_feature_closer_to_its_own_text(meld, name):
    spec = get_head(name)
    torch.manual_seed(0)
    head = spec.build(spec.config(TEXT_GUIDED), meld.classes)
    head.prepare(meld)
    train = meld.role("train")
    head._targets, _ = text_targets(train, "utterance", head.tower, head.tokenize)
    batch = head.inputs(train, np.arange(24), True, torch.Generator().manual_seed(0))
    y = train.labels[:24]
    # the VFM's positive is the item's own utterance; SupCon's are every text and audio of the same emotion
    same = torch.eye(24, dtype=torch.bool) if name == "vfm" else y[:, None] == y[None, :]

    def margin() -> float:
        with torch.no_grad():
            return pair_margin(head.module(**{k: v for k, v in batch.items() if k != "text"}), batch["text"], same)

    before = margin()
    adam_steps(head, batch, y, steps=8, lr=1e-3)
    assert margin() > before + 0.004, (before, margin())  # about +0.01 (the tiny CLIP's texts are alike)


def test_emotionclip_training_brings_each_video_closer_to_its_utterance():
    frames, text, _ = order_task(k=6)
    sentiment = np.random.default_rng(0).standard_normal((len(frames), 7)).astype(np.float32)
    data = pairs_data(frames, text, sentiment)
    head = build_emotionclip(data, beta=10.0)
    batch = head.inputs(data, np.arange(24), True, torch.Generator().manual_seed(0))
    same = torch.eye(24, dtype=torch.bool)

    def margin() -> float:
        with torch.no_grad():
            return pair_margin(head.module(batch["frames"]), batch["text"], same)

    before = margin()
    adam_steps(head, batch, torch.full((24,), -1), steps=8, lr=3e-3)
    assert margin() > before + 0.05, (before, margin())


# -- L_bwd runs each class's own prompt ------------------------------------------------------------------
def test_pe_clip_backward_prototypes_are_each_classs_own_ca_prompt():
    fd = tiny_features()
    head = build_pe_clip(fd)
    m = head.module
    z = head.inputs(fd, np.arange(4), False, torch.Generator())["z"]
    with torch.no_grad():
        mem = m.memory(z)
        _, vj = m.evolve_both(mem)  # [B, C, D], what L_bwd is computed from
        prompts = ca_prompts(fd.classes)  # class j's prompt, tokenised here
        for j, prompt in enumerate(prompts):
            ids = check_fits(_tokenizer(fd), [prompt])
            own = m.decoder(m.decoder.precompute(ids), mem)[:, 0]  # [B, D]
            assert torch.allclose(vj[:, j], own, rtol=1e-4, atol=1e-5), f"v_{j} is not class {j}'s prompt evolved"
    # and the prototypes differ: a loss whose v_j were one prompt for every j would see equal rows
    assert (vj[:, 0] - vj[:, 1]).abs().max() > 1e-4 and (vj[:, 1] - vj[:, 2]).abs().max() > 1e-4


def _tokenizer(fd: FeatureData):
    from emo.heads.layers.clip_text import clip_text_of

    return clip_text_of(fd, "clip/cls")[1]


def test_pe_clip_classifier_weights_are_the_ca_prompt_embeddings():
    fd = tiny_features()
    head = build_pe_clip(fd)
    tower, tokenize = head.module.tower, _tokenizer(fd)
    with torch.no_grad():
        expected = tower.encode(tokenize(ca_prompts(fd.classes)))  # [C, D], class order
    assert torch.allclose(head.module.class_weights(), expected, rtol=1e-5, atol=1e-6)


def test_vfm_queries_are_the_class_prompts_text_features_in_class_order(meld):
    spec = get_head("vfm")
    head = spec.build(spec.config(TEXT_GUIDED), meld.classes)
    head.prepare(meld)
    expected, _ = encode_texts(head.tower, head.tokenize, [f"A {c} video." for c in meld.classes])
    assert [p[0] for p in class_prompts(meld.classes, [1])] == [f"A {c} video." for c in meld.classes]
    assert torch.allclose(head.module.encoder.prompt_queries, expected, rtol=1e-5, atol=1e-6)


# -- "+prompt" targets draw among the formats ------------------------------------------------------------
def test_prompt_targets_draw_every_format_an_item_has_and_never_a_missing_one(meld):
    spec = get_head("vfm")
    head = spec.build(spec.config(TEXT_GUIDED), meld.classes)
    head.prepare(meld)
    train = meld.role("train")
    targets, _ = text_targets(train, "prompts", head.tower, head.tokenize)
    with_speaker = next(k for k, s in enumerate(train.speakers) if s)
    without = next(k for k, s in enumerate(train.speakers) if not s)
    for k in (with_speaker, without):
        prompts = item_prompts(train.classes[int(train.labels[k])], train.texts[k][0], train.speakers[k])
        have = [p for p in prompts if p is not None]
        own, _ = encode_texts(head.tower, head.tokenize, have)  # [F_k, D], each format encoded here
        gen = torch.Generator().manual_seed(0)
        drawn = torch.stack([targets.draw([train.ids[k]], gen)[0] for _ in range(300)])  # [300, D]
        which = (torch.cdist(drawn, own).argmin(dim=1))  # the format each draw is
        assert torch.allclose(drawn, own[which], atol=1e-5), "a draw is not one of the item's own prompts"
        counts = np.bincount(which.numpy(), minlength=len(have))
        assert len(have) == (len(FORMATS) if k == with_speaker else len(FORMATS) - 1)
        assert counts.min() >= 300 / len(have) / 2, counts  # every format, about uniformly


# -- choices on val, never on test -----------------------------------------------------------------------
class FixedFeatures:
    """Stands in for a VFM run: each item's feature is fixed (no sampling randomness)."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def embed(self, data: FeatureData, train_sampling: bool = False, generator=None, unit: bool = True) -> np.ndarray:
        return np.stack([self.table[i] for i in data.ids]).astype(np.float32)

    def random_sampling(self, data: FeatureData) -> bool:
        return False


def val_test_opposites() -> tuple[FeatureData, dict[str, np.ndarray]]:
    """Two classes; train keys ``e_0`` (class a) and ``e_1`` (b); the class texts point the other way
    (a at ``e_1``), so zero-shot and cache disagree on every item. Val items are labelled as the cache
    says, test items as zero-shot says: the search on val picks a cache-heavy cell (val top-1 1.0, test
    top-1 0.0); a search on test would pick the first cell (α = β = 0.1) and score 1.0 on test."""
    e0, e1 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    rows = [("t0", e0, 0, "train"), ("t1", e1, 1, "train"), ("t2", e0, 0, "train"), ("t3", e1, 1, "train")]
    rows += [(f"v{k}", (e0, e1)[k % 2], k % 2, "val") for k in range(6)]
    rows += [(f"x{k}", (e0, e1)[k % 2], 1 - k % 2, "test") for k in range(6)]
    table = {i: f for i, f, _, _ in rows}
    fd = FeatureData(dataset="toy", ids=[r[0] for r in rows], classes=["a", "b"],
                     labels=torch.tensor([r[2] for r in rows]), arrays={},
                     roles=np.array([r[3] for r in rows], dtype=object), split="toy:0")
    return fd, table


def test_the_cache_classifiers_search_reads_val_and_never_test(tmp_path, monkeypatch):
    fd, table = val_test_opposites()
    seen = []

    def prepare(self, data):
        self.feature_heads = {"video": FixedFeatures(table)}
        self.weights = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # class a's text at e_1: zero-shot inverted

    real_features = CacheClassifierHead.features
    monkeypatch.setattr(CacheClassifierHead, "prepare", prepare)
    monkeypatch.setattr(CacheClassifierHead, "features",
                        lambda self, data: (seen.append(set(data.ids)), real_features(self, data))[1])
    result = train_head("cache-classifier", fd, out=tmp_path / "run", label="cache (toy)", overrides={
        "video": "stub", "shots": "0", "logit_scale": "1", "alpha_steps": "20", "beta_steps": "20"})
    selected = json.loads((tmp_path / "run" / "0" / "config.json").read_text())["selected"]
    assert selected["val_top1"] == 1.0 and selected["n_val"] == 6
    assert selected["alpha"]["video"] > search_grid(3.0, 20)[0] or selected["beta"] > search_grid(7.0, 20)[0]
    assert result.folds["0"]["top1"] == 0.0, "test scored as the val choice gives (a test-chosen cell scores 1.0)"
    assert seen == [set(fd.role("val").ids), set(fd.role("test").ids)]  # searched on val; test only predicted


def test_cache_keys_average_the_views_as_the_head_gives_them_then_normalise():
    """Tip-Adapter's order (SPEC §4.2): the mean of the raw view features, then the norm."""
    from emo.heads.cache_classifier import CacheClassifierConfig, averaged_keys

    class TwoViews:  # a feature head whose two training-time samplings differ in length and direction
        calls = 0

        def random_sampling(self, data):
            return True

        def embed(self, data, train_sampling=False, generator=None, unit=True):
            f = np.array([[3.0, 0.0]]) if self.calls % 2 == 0 else np.array([[0.0, 1.0]])
            self.calls += 1
            return f / np.linalg.norm(f, axis=1, keepdims=True) if unit else f

    head = CacheClassifierHead(CacheClassifierConfig(video="stub", views=2), ["a", "b"])
    head.feature_heads = {"video": TwoViews()}
    keys = averaged_keys(head.view_features(tiny_features(n=1), 2, seed=0)["video"])
    assert torch.allclose(keys, torch.tensor([[3.0, 1.0]]) / np.sqrt(10.0))  # unit views would give [√½, √½]
