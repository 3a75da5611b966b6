"""The frozen image tower from stored tokens (DuSE's ground): ``--tokens-layer k`` (0: the tokens entering
block 1) and :class:`FrozenImageTower` re-running blocks ``k+1..K`` reproduce ``clip/cls`` — exactly in
fp32, within fp16 rounding from a cache — and subject-prompted sets are refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from emo.cache.data import FeatureData, take_items
from emo.cache.loader import load_features
from emo.cache.manifest import Item, Manifest, write_manifest
from emo.decode.sampling import SamplingConfig
from emo.encoders.clip import TINY_MODEL, ClipSpec, load_clip
from emo.extract.modalities.clip import extract_clip
from emo.extract.runner import ExtractOptions
from emo.heads.layers.clip_text import clip_image_tower_of
from emo.heads.layers.image_tower import FrozenImageTower
from tests import videos


def frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_the_tower_reproduces_the_embedding_exactly_in_fp32_from_any_depth(k):
    enc = load_clip(ClipSpec(model=TINY_MODEL, weights="random", random_seed=3, tokens_layer=k), device="cpu",
                    precision="fp32")
    out = enc.encode_images(frames(4, 32))
    tower = FrozenImageTower(enc.model.visual)
    with torch.no_grad():
        again = tower(out["tokens"], k)
    torch.testing.assert_close(again, out["cls"], rtol=0, atol=1e-6)
    if k < 2:  # a wrong start block must not reproduce it
        with torch.no_grad():
            assert not torch.allclose(tower(out["tokens"], k + 1), out["cls"], atol=1e-3)


def test_the_tower_is_frozen_but_passes_gradients_to_its_input_tokens():
    enc = load_clip(ClipSpec(model=TINY_MODEL, weights="random", tokens_layer=0), device="cpu", precision="fp32")
    tower = FrozenImageTower(enc.model.visual)
    tower.train()
    assert not tower.training and all(not p.requires_grad for p in tower.parameters())
    tokens = enc.encode_images(frames(2, 32))["tokens"].clone().requires_grad_(True)
    extra = torch.zeros(2, 3, tokens.shape[-1], requires_grad=True)  # prompt tokens appended to the sequence
    h = tower.run_blocks(torch.cat([tokens, extra], dim=1), 0)
    tower.finish(h, tokens.shape[1]).sum().backward()
    assert tokens.grad is not None and extra.grad is not None and extra.grad.abs().sum() > 0
    assert all(p.grad is None for p in tower.parameters())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    items = []
    for i in range(3):
        videos.make_video(root / f"v{i}.mp4", 12 + i)
        items.append(Item(id=f"v{i}", path=f"v{i}.mp4", label="x"))
    write_manifest(Manifest(dataset="t", classes=["x"], items=items, root=str(root)), root / "manifest.jsonl")
    for k in (0, 1):
        extract_clip(root, ClipSpec(model=TINY_MODEL, weights="random", tokens_layer=k), SamplingConfig(segments=2),
                     ExtractOptions(workers=0, progress=False), device="cpu")
    return root


@pytest.mark.parametrize("k", [0, 1])
def test_from_a_cache_the_tower_reproduces_the_stored_cls_within_fp16(cache, k):
    from emo.cache.featureset import list_feature_sets

    (fs,) = [s for s in list_feature_sets(cache) if s.meta["outputs"]["tokens_layer"] == k]
    data = load_features(cache, feature_sets=[fs.name], arrays=["clip/cls", "clip/tokens"])
    tower, start = clip_image_tower_of(data)
    assert start == k
    tokens = take_items(data.arrays["clip/tokens"], np.arange(len(data)))  # [n, M, N, V, L, W] fp16
    flat = tokens[:, :, 0, 0].reshape(-1, *tokens.shape[-2:]).float()  # [n*M, L, W]
    with torch.no_grad():
        again = tower(flat, start)
    stored = data.arrays["clip/cls"][:, :, 0, 0].reshape(len(flat), -1).float()
    torch.testing.assert_close(again, stored, rtol=0, atol=2e-2)


def test_subject_prompted_or_tokenless_sets_are_refused_with_the_reason(cache):
    data = load_features(cache, feature_sets=_names(cache)[:1], arrays=["clip/cls"])
    meta = next(iter(data.feature_sets.values()))
    sap = dataclasses.replace(data, feature_sets={"s": {**meta, "subject_prompt": {"boxes": "manifest"}}})
    with pytest.raises(ValueError, match="--subject-prompt: its stored tokens leave out the subject token"):
        clip_image_tower_of(sap)
    none = dataclasses.replace(data, feature_sets={"s": {**meta, "outputs": {"tokens_layer": None}}})
    with pytest.raises(ValueError, match="stores no tokens"):
        clip_image_tower_of(none)
    assert isinstance(data, FeatureData)


def _names(cache) -> list[str]:
    from emo.cache.featureset import list_feature_sets

    return [s.name for s in list_feature_sets(cache)]
