"""DuSE (seed 003): HTPC's prompted towers against their definitions, the head's contract (shapes, NaN,
gradients only into trainable parts, save/load), frame order (CoOp + LSEA exactly blind to it, HTPC not;
on an order-only task HTPC learns and CoOp + LSEA sits at chance), presets and the CLI path."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from emo.cache.data import FeatureData
from emo.cli import app
from emo.encoders.clip import TINY_MODEL, ClipSpec, load_clip
from emo.heads.duse import DuSEConfig, DuSEHead, fp32_cosine_logits
from emo.heads.layers.htpc import HTPC, PromptedTextTower, prompted_image_features, visual_blocks
from emo.heads.layers.image_tower import FrozenImageTower
from emo.heads.layers.prompts import coop_prompts
from emo.heads.layers.temporal import sinusoidal_positions
from emo.heads.layers.text_tower import CoOpClassifier, FrozenTextTower
from emo.heads.registry import HEAD_PRESET_DIR, get_head, head_preset, load_checkpoint, save_checkpoint

CLASSES = ["happy", "sad"]
SMALL = {"prompt_depth": 1, "epochs": 2, "batch_size": 8, "frames": 0, "heads": 2}


@pytest.fixture(scope="module")
def clip():
    return load_clip(ClipSpec(model=TINY_MODEL, weights="random", random_seed=0, tokens_layer=0), device="cpu",
                     precision="fp32")


@pytest.fixture(scope="module")
def text_tower(clip):
    return FrozenTextTower(clip.model)


def tiny_meta(tokens_layer: int = 0) -> dict:
    return {"modality": "clip", "name": "clip-tiny", "key": "k" * 64, "model": TINY_MODEL,
            "weights": {"kind": "random", "seed": 0}, "outputs": {"tokens_layer": tokens_layer}}


def token_data(clip, tokens: torch.Tensor, labels, roles=None, tokens_layer: int = 0) -> FeatureData:
    """A FeatureData over stored tokens ``[n, T, L, W]`` (one frame and view per segment) and the clip/cls
    the tiny tower makes of them."""
    n, t = tokens.shape[:2]
    tower = FrozenImageTower(clip.model.visual)
    with torch.no_grad():
        cls = prompted_image_features(tower, tokens, tokens_layer, 0, None)  # [n, T, D]
    roles = np.array(roles if roles is not None else ["train"] * n, dtype=object)
    return FeatureData(dataset="toy", ids=[f"v{i}" for i in range(n)], classes=CLASSES,
                       labels=torch.as_tensor(labels).long(),
                       arrays={"clip/tokens": tokens[:, :, None, None], "clip/cls": cls[:, :, None, None]},
                       roles=roles, split="toy:0", feature_sets={"clip-tiny": tiny_meta(tokens_layer)})


def random_tokens(clip, n: int, t: int = 4, seed: int = 0) -> torch.Tensor:
    frames = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n * t, 32, 32, 3), dtype=np.uint8))
    with torch.no_grad():
        tok = clip.encode_images(frames.numpy())["tokens"]  # [n*t, L, W] after ln_pre
    return tok.view(n, t, *tok.shape[1:]).float()


def build(data: FeatureData, **over) -> DuSEHead:
    spec = get_head("duse")
    head = spec.build(spec.config({**SMALL, **over}), data.classes)
    head.prepare(data)
    return head


# -- HTPC, text side -------------------------------------------------------------------------------
def test_the_unprompted_text_tower_is_encode_text_and_a_prompt_after_eos_changes_nothing(clip, text_tower):
    ids = clip.tokenize(["happy: the lip corners rise", "sad: the brows draw together and the lips fall"])
    with torch.no_grad():
        want = clip.model.encode_text(ids)
        p = torch.randn(2, 3, text_tower.width)
        torch.testing.assert_close(PromptedTextTower(text_tower, ids)(None), want, rtol=0, atol=1e-5)
        end = PromptedTextTower(text_tower, ids, at="end")
        torch.testing.assert_close(end(p), want, rtol=0, atol=1e-5)  # causal tower, pooled at [EOS]
        torch.testing.assert_close(end(p, keep=True), want, rtol=0, atol=1e-5)
        after_sos = PromptedTextTower(text_tower, ids)(p)
    assert (after_sos - want).abs().max() > 0.1


def test_deep_text_prompts_replace_the_previous_layer_and_leave_after_layer_m(clip, text_tower):
    """Re-derived with the tower's own blocks: [SOS] P1 words -> block 1 -> slots := P2 -> block 2 -> drop."""
    t = text_tower
    ids = clip.tokenize(["happy: smile", "sad: frown"])
    ids = ids[:, : int(ids.argmax(-1).max()) + 1]
    p = torch.randn(2, 3, t.width)  # M = 2 (the tiny tower has K = 2), n = 3
    with torch.no_grad():
        emb = t.token_embedding(ids)
        x = torch.cat([emb[:, :1], p[0].expand(2, -1, -1), emb[:, 1:]], 1)
        x = x + t.positional_embedding[: x.shape[1]]
        x = t.run_layers(x, 0, 1)
        x = torch.cat([x[:, :1], p[1].expand(2, -1, -1), x[:, 4:]], 1)
        x = t.run_layers(x, 1, 2)
        x = torch.cat([x[:, :1], x[:, 4:]], 1)  # M = K: the slots leave before pooling
        want = t.finish(x, ids.argmax(-1))
        got = PromptedTextTower(t, ids)(p)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        # the deep prompt matters, and replacing it changes the result (not appended beside the old one)
        assert (PromptedTextTower(t, ids)(torch.stack([p[0], -p[1]])) - got).abs().max() > 1e-3
        # M = 1 drops the slots after layer 1; keeping them (CoOp) is another computation
        assert (PromptedTextTower(t, ids)(p[:1]) - PromptedTextTower(t, ids)(p[:1], keep=True)).abs().max() > 1e-3


def test_kept_single_layer_prompts_are_coop(clip, text_tower):
    texts = ["happy: smile", "sad: frown"]
    coop = CoOpClassifier(text_tower, clip.tokenize(coop_prompts(texts, 4)), n_ctx=4)
    with torch.no_grad():
        coop.ctx.normal_()
        mine = PromptedTextTower(text_tower, clip.tokenize([c + "." for c in texts]))(coop.ctx[None], keep=True)
        torch.testing.assert_close(mine, coop(), rtol=0, atol=1e-5)


# -- HTPC, visual side -----------------------------------------------------------------------------
def test_visual_prompts_come_from_the_text_prompts_through_one_linear_output_mlp_and_carry_frame_position():
    torch.manual_seed(0)
    h = HTPC(text_width=6, visual_width=8, depth=3, tokens=2)
    with torch.no_grad():
        h.text_prompts.normal_()
        v = h.visual_prompts(5)  # [M, T, n, W_v]
        l1, l2 = h.mlp[0], h.mlp[2]
        by_hand = torch.relu(h.text_prompts @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias  # [M, n, W_v]
    assert v.shape == (3, 5, 2, 8)
    pe = sinusoidal_positions(5, 8)
    torch.testing.assert_close(v[0], by_hand[0][None] + pe[:, None], rtol=0, atol=1e-6)  # pe[τ] on every token
    torch.testing.assert_close(v[1:], by_hand[1:, None].expand(-1, 5, -1, -1), rtol=0, atol=1e-6)  # deeper: no pe
    assert (by_hand < 0).any()  # a linear output (a ReLU last would make every prompt value >= 0)
    flat = HTPC(6, 8, 3, 2, positions=False).visual_prompts(5)
    torch.testing.assert_close(flat[0, 0], flat[0, 4], rtol=0, atol=0)  # no encoding: every frame alike


def test_prompted_image_tower_is_the_unprompted_one_re_derived_with_prompts_appended(clip):
    tower = FrozenImageTower(clip.model.visual)
    tok = random_tokens(clip, 2, t=3)  # [B, T, L, W]
    b, t, length, w = tok.shape
    prompts = torch.randn(2, t, 2, w)  # M = 2 (= K of the tiny tower), n = 2
    with torch.no_grad():
        none = prompted_image_features(tower, tok, 0, 0, None)
        torch.testing.assert_close(none, tower(tok.reshape(b * t, length, w), 0).view(b, t, -1), rtol=0, atol=0)
        x = tok.reshape(b * t, length, w)
        x = tower.run_blocks(torch.cat([x, prompts[0].expand(b, -1, -1, -1).reshape(b * t, 2, w)], 1), 0, 1)
        x = tower.run_blocks(torch.cat([x[:, :length], prompts[1].expand(b, -1, -1, -1).reshape(b * t, 2, w)], 1), 1, 2)
        want = tower.finish(x[:, :length], length).view(b, t, -1)
        got = prompted_image_features(tower, tok, 0, 0, prompts)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        assert (got - none).abs().max() > 1e-3
        # last-layer variant from tokens after block 1: only block 2 is prompted
        after1 = tower.run_blocks(tok.reshape(b * t, length, w), 0, 1).view(b, t, length, w)
        last = prompted_image_features(tower, after1, 1, 1, prompts[1:])
        x = tower.run_blocks(torch.cat([after1.reshape(b * t, length, w),
                                        prompts[1].expand(b, -1, -1, -1).reshape(b * t, 2, w)], 1), 1, 2)
        torch.testing.assert_close(last, tower.finish(x, length).view(b, t, -1), rtol=0, atol=1e-6)


def test_prompt_variants_check_the_depth_the_cache_stores():
    assert visual_blocks("first", 4, 12, 0) == 0
    assert visual_blocks("last", 8, 12, 4) == 4 and visual_blocks("last", 4, 12, 4) == 8
    with pytest.raises(ValueError, match="--tokens-layer 0; or use --prompt-variant last"):
        visual_blocks("first", 4, 12, 4)
    with pytest.raises(ValueError, match=r"--tokens-layer 4 \(or less\)"):
        visual_blocks("last", 8, 12, 5)
    with pytest.raises(ValueError, match="1..12"):
        visual_blocks("last", 13, 12, 0)


# -- the head --------------------------------------------------------------------------------------
def test_shapes_no_nan_and_gradients_reach_only_the_trainable_parts(clip):
    data = token_data(clip, random_tokens(clip, 4), [0, 1, 0, 1])
    for over, trainable in (({}, ("htpc.text_prompts", "htpc.mlp", "aggregator.")),
                            ({"prompts": "coop", "aggregator": "average"}, ("ctx",))):
        head = build(data, **over)
        batch = head.inputs(data, np.arange(4), True, torch.Generator().manual_seed(0))
        logits, v_g = head.module(batch["x"])
        assert logits.shape == (4, 2) and v_g.shape == (4, 32) and torch.isfinite(logits).all()
        assert logits.dtype == torch.float32
        head.loss(batch, data.labels)[0].backward()
        for name, p in head.module.named_parameters():
            if p.requires_grad:
                assert name.startswith(trainable), name
                assert p.grad is not None and p.grad.abs().sum() > 0, name
            else:
                assert p.grad is None, name
        frozen = [n for n, p in head.module.named_parameters() if not p.requires_grad]
        assert any(n.startswith("text.tower.") for n in frozen)
        assert over or any(n.startswith("image.visual.") for n in frozen)


def test_coop_lsea_is_exactly_blind_to_frame_order_and_htpc_is_not(clip):
    data = token_data(clip, random_tokens(clip, 3, t=5), [0, 1, 0])
    perm = torch.tensor([3, 0, 4, 2, 1])
    for over, blind in (({"prompts": "coop"}, True), ({}, False), ({"aggregator": "average"}, False)):
        head = build(data, **over)
        head.module.eval()
        x = head.inputs(data, np.arange(3), False, None)["x"]
        with torch.no_grad():
            a, b = head.module(x)[0], head.module(x[:, perm])[0]
        if blind:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
        else:
            assert (a - b).abs().max() > 1e-3, over
    no_pos = build(data, frame_positions=False, aggregator="average")
    x = no_pos.inputs(data, np.arange(3), False, None)["x"]
    with torch.no_grad():  # the frame position encoding is what breaks the symmetry
        torch.testing.assert_close(no_pos.module(x)[0], no_pos.module(x[:, perm])[0], rtol=0, atol=1e-4)


def test_logits_are_fp32_cosines_under_low_precision_autocast():
    v, w = torch.randn(4, 16), torch.randn(3, 16)
    want = 100 * torch.nn.functional.normalize(v, dim=-1) @ torch.nn.functional.normalize(w, dim=-1).T
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fp32_cosine_logits(v, w, 100.0)
        rounded = 100 * torch.nn.functional.normalize(v, dim=-1) @ torch.nn.functional.normalize(w, dim=-1).T
    assert got.dtype == torch.float32 and rounded.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert (rounded.float() - want).abs().max() > 1e-2  # what autocast alone would give


def order_task(clip, n: int = 32, t: int = 4, seed: int = 0):
    """Two frame kinds A and B; class 0 shows A then B, class 1 B then A. Each clip holds the same
    multiset of frames (plus a little noise), so only the order tells the classes apart."""
    g = torch.Generator().manual_seed(seed)
    kinds = random_tokens(clip, 1, t=2, seed=seed)[0]  # [2, L, W]
    labels = torch.arange(n) % 2
    half = t // 2
    order0 = torch.tensor([0] * half + [1] * (t - half))
    seq = torch.stack([order0 if y == 0 else 1 - order0 for y in labels])  # [n, T]
    tokens = kinds[seq] + 0.05 * torch.randn(n, t, *kinds.shape[1:], generator=g)
    roles = ["test" if i % 8 >= 6 else "train" for i in range(n)]  # both classes in test
    return token_data(clip, tokens, labels, roles)


def _accuracy(head: DuSEHead, data: FeatureData) -> float:
    head.fit(data.role("train"))
    test = data.role("test")
    return float((head.predict_scores(test).argmax(1) == test.labels.numpy()).mean())


def test_on_an_order_only_task_htpc_learns_and_coop_lsea_stays_at_chance(clip):
    data = order_task(clip)
    torch.manual_seed(0)
    htpc = _accuracy(build(data, epochs=30, lr=3e-3, prompt_depth=2), data)
    torch.manual_seed(0)
    coop = _accuracy(build(data, epochs=30, lr=3e-3, prompts="coop"), data)
    assert htpc >= 0.875 and coop <= 0.625, (htpc, coop)  # 8 test clips, 4 per class


def test_checkpoint_round_trip_predicts_identically(clip, tmp_path):
    data = token_data(clip, random_tokens(clip, 4), [0, 1, 0, 1], roles=["train", "train", "test", "test"])
    head = build(data)
    head.fit(data.role("train"))
    save_checkpoint(tmp_path, head, "duse", data.keys)
    again = load_checkpoint(tmp_path, data)
    assert isinstance(again, DuSEHead) and again.config == head.config
    np.testing.assert_array_equal(again.predict_scores(data), head.predict_scores(data))
    assert set(head.state_dict()) == {n for n, p in head.module.named_parameters() if p.requires_grad}


def test_the_cache_must_hold_the_tokens_the_variant_prompts_from(clip):
    after1 = token_data(clip, random_tokens(clip, 2), [0, 1], tokens_layer=1)
    with pytest.raises(ValueError, match="--tokens-layer 0"):
        build(after1)
    build(after1, prompt_variant="last", prompt_depth=1)  # block 2 of 2 from tokens after block 1
    sap = dataclasses.replace(after1, feature_sets={"s": {**tiny_meta(), "subject_prompt": {"boxes": "manifest"}}})
    with pytest.raises(ValueError, match="--subject-prompt"):
        build(sap)
    with pytest.raises(ValueError, match="room for .* prompt tokens"):
        build(after1, prompts="coop", prompt_tokens=75)


def test_presets_parse_and_name_the_tables_rows():
    spec = get_head("duse")
    names = sorted(p.stem for p in (HEAD_PRESET_DIR / "duse").glob("*.json"))
    assert names == ["table3-coop-average", "table3-coop-lsea", "table3-htpc-average", "table4-deep",
                     "table4-normal", "table4-shallow"]
    cfgs = {n: spec.config(head_preset("duse", n)) for n in names}
    assert (cfgs["table3-coop-average"].prompts, cfgs["table3-coop-average"].aggregator) == ("coop", "average")
    assert (cfgs["table3-htpc-average"].prompts, cfgs["table3-htpc-average"].aggregator) == ("htpc", "average")
    assert (cfgs["table3-coop-lsea"].prompts, cfgs["table3-coop-lsea"].aggregator) == ("coop", "lsea")
    assert [cfgs[f"table4-{s}"].prompt_depth for s in ("shallow", "normal", "deep")] == [1, 4, 8]
    assert cfgs["table4-normal"] == spec.config() and "Normal M=4 n=4 (first layers)" in spec.config().label()
    assert spec.config({"prompt_variant": "last"}).label().endswith("(last layers) + LSEA N=4 β=0.7")
    assert DuSEConfig().large_arrays() == ("clip/tokens",) and DuSEConfig(prompts="coop").large_arrays() == ()


def test_a_run_records_the_variant_and_the_augmentation_it_could_not_replay(clip, tmp_path):
    from emo.heads.runs import train_head

    data = order_task(clip, n=8)
    result = train_head("duse", data, out=tmp_path / "run", overrides={**SMALL, "prompt_variant": "first"})
    cfg = json.loads((tmp_path / "run" / "0" / "config.json").read_text())
    assert cfg["config"]["prompt_variant"] == "first" and "(first layers)" in result.head
    assert any("random resized crop" in w and "one stored crop" in w for w in result.warnings)
    assert {"uar", "war"} <= set(result.folds["0"])


def test_cli_trains_duse_on_an_extracted_token_cache(tmp_path):
    from emo.cache.manifest import Item, Manifest, write_manifest
    from tests import videos

    root = tmp_path / "c"
    root.mkdir()
    items = []
    for i in range(8):
        videos.make_video(root / f"v{i}.mp4", 10)
        items.append(Item(id=f"v{i}", path=f"v{i}.mp4", label=CLASSES[i % 2],
                          splits={"toy": {"0": "test" if i % 4 == 3 else "train"}}))
    write_manifest(Manifest(dataset="t", classes=CLASSES, items=items, root=str(root), split_schemes={"toy": ["0"]}),
                   root / "manifest.jsonl")
    runner = CliRunner()
    res = runner.invoke(app, ["extract", "clip", str(root), "--weights", "random", "--model", TINY_MODEL,
                              "--segments", "4", "--tokens-layer", "0", "--workers", "0", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    runs = tmp_path / "runs"
    train = ["heads", "train", "duse", str(root), "--split", "toy:0", "--epochs", "1", "--frames", "4"]
    res = runner.invoke(app, [*train, "--prompt-depth", "1", "--out", str(runs / "duse")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*train, "--preset", "table3-coop-average", "--out", str(runs / "base")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*train, "--prompt-variant", "last", "--prompt-depth", "3", "--out", str(runs / "x")])
    assert res.exit_code != 0 and "M = 3 must lie in 1..2" in res.output
    res = runner.invoke(app, ["report", str(runs)])
    assert res.exit_code == 0, res.output
    assert "HTPC Shallow M=1 n=4 (first layers)" in res.output and "CoOp n=4 + average pooling" in res.output
    assert "UAR" in res.output and "RANDOM" in res.output.upper()
