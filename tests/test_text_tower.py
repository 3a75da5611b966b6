"""The frozen CLIP text tower in pieces and the decoders built on it (SPEC §4.1): exact agreement with
open_clip's ``encode_text``, the identity at initialisation, which parameters learn, memory masks, the
causal mask, batched against per-video runs, CoOp's reproduction of a hand-written prompt."""

from __future__ import annotations

import copy

import pytest
import torch

from emo.encoders.clip import TINY_MODEL, ClipSpec, load_clip
from emo.heads.layers.prompts import ca_prompts, coop_prompts, neutral_prompt
from emo.heads.layers.text_decoder import LearnablePrototype, PrototypeDecoder, RandomDecoder
from emo.heads.layers.text_tower import (
    CoOpClassifier,
    FrozenTextTower,
    PrefixStates,
    TrainableTextEncoder,
    count_trainable,
    prompt_states,
    trainable_state_dict,
)

CLASSES = ["anger", "disgust", "fear", "joy", "sadness", "surprise"]
EOS_ID = 49407  # open_clip's end-of-text id, the largest in the vocabulary
DM = 32  # tiny model's image embedding width (memory), text width 64


@pytest.fixture(scope="module")
def tiny():
    return load_clip(ClipSpec(model=TINY_MODEL, weights="random"), device="cpu")


@pytest.fixture(scope="module")
def tower(tiny):
    return FrozenTextTower(tiny.model)


@pytest.fixture(scope="module")
def ids(tiny):
    # CA prompts all have one length: two more prompts give the batch different [EOS] positions
    extra = ["joy", "a very sad and angry person crying in the rain"]
    return tiny.tokenize(ca_prompts(CLASSES) + [neutral_prompt(CLASSES)] + extra)  # [9, 77]


def memory(b: int = 3, t: int = 5, dim: int = DM, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, t, dim, generator=torch.Generator().manual_seed(seed))  # [B, T, Dm]


def perturb(decoder: PrototypeDecoder | RandomDecoder, std: float = 0.2, seed: int = 1) -> None:
    """Make every cross-attention output projection nonzero (they start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if "xattn" in name and "out_proj" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def test_tower_encode_equals_open_clip_tiny(tiny, tower, ids):
    with torch.no_grad():
        assert torch.equal(tower.encode(ids), tiny.model.encode_text(ids))
    assert (tower.width, tower.heads, tower.n_layers, tower.embed_dim) == (64, 2, 2, 32)
    assert all(not p.requires_grad for p in tower.parameters())
    # a deep copy: the tower does not alias the CLIP model's tensors
    assert tower.positional_embedding.data_ptr() != tiny.model.positional_embedding.data_ptr()


def test_vitb32_encode_and_d12_equal_encode_text():
    enc = load_clip(ClipSpec(weights="random"), device="cpu")
    tower = FrozenTextTower(enc.model)
    assert (tower.width, tower.heads, tower.n_layers, tower.embed_dim) == (512, 8, 12, 512)
    ids = enc.tokenize(ca_prompts(CLASSES)[:2] + [neutral_prompt(CLASSES)])  # [3, 77]
    with torch.no_grad():
        ref = enc.model.encode_text(ids)  # [3, 512]
        assert torch.equal(tower.encode(ids), ref)
        dec = PrototypeDecoder(tower, d=12, memory_dim=512, trim=False)
        assert len(dec.xattn) == 0 and count_trainable(dec) == 0
        pre = dec.precompute(ids)
        for seed in (0, 1):  # any memory, any number of videos
            v = dec(pre, memory(2 + seed, 7, 512, seed))  # [B, 3, 512]
            assert torch.equal(v, ref.expand_as(v))
    # trainable count of the paper's default d = 8: 4 cross-attention blocks, each
    # LN_q + LN_kv (2·2·512) + q,k,v (3·512·512 + 3·512) + out (512·512 + 512)
    per_layer = 2 * 2 * 512 + 3 * 512 * 512 + 3 * 512 + 512 * 512 + 512
    dec8 = PrototypeDecoder(tower, d=8, memory_dim=512)
    assert count_trainable(dec8) == 4 * per_layer == 4_210_688
    assert set(trainable_state_dict(dec8)) == {n for n, _ in dec8.xattn.named_parameters(prefix="xattn")}


def test_batch_first_false_layout(tiny, ids):
    """open_clip towers may run sequence-first (LND); the tower must follow the blocks' layout."""
    model = copy.deepcopy(tiny.model)
    model.transformer.batch_first = False
    for blk in model.transformer.resblocks:
        blk.attn.batch_first = False
    tower = FrozenTextTower(model)
    assert tower.batch_first is False
    with torch.no_grad():
        ref = model.encode_text(ids)
        assert torch.allclose(ref, tiny.model.encode_text(ids), atol=1e-6)  # same model, other layout
        assert torch.allclose(tower.encode(ids), ref, atol=1e-6)
        dec = PrototypeDecoder(tower, d=1, memory_dim=DM)
        v = dec(dec.precompute(ids), memory())
    assert torch.allclose(v, ref.expand_as(v), atol=1e-5)


@pytest.mark.parametrize("d", [0, 1, 2])
def test_zero_init_decoder_is_the_text_encoder(tiny, tower, ids, d):
    ref = tiny.model.encode_text(ids).detach()
    exact = PrototypeDecoder(tower, d=d, memory_dim=DM, trim=False)
    with torch.no_grad():
        assert torch.equal(exact(exact.precompute(ids), memory()), ref.expand(3, -1, -1))
        trimmed = PrototypeDecoder(tower, d=d, memory_dim=DM)
        pre = trimmed.precompute(ids)
        assert pre.states.shape[1] == int(ids.argmax(-1).max()) + 1 < 77  # padding dropped
        assert torch.allclose(trimmed(pre, memory(4, 9, seed=3)), ref.expand(4, -1, -1), rtol=1e-5, atol=1e-5)


def test_trimming_and_batching_do_not_change_the_output(tower, ids):
    """Trimmed == untrimmed; all videos at once == each video alone; all prompts == each prompt alone.
    (d = 0: two modified layers, so the second layer's queries already differ between videos.)"""
    assert len(set(ids.argmax(-1).tolist())) == 3
    torch.manual_seed(0)
    dec = PrototypeDecoder(tower, d=0, memory_dim=DM, trim=False)
    perturb(dec)
    mem = memory(3, 6)
    with torch.no_grad():
        full = dec(dec.precompute(ids), mem)  # [3, 9, 32]
        dec.trim = True
        assert torch.allclose(dec(dec.precompute(ids), mem), full, rtol=1e-5, atol=1e-5)
        for b in range(3):
            assert torch.allclose(dec(dec.precompute(ids), mem[b : b + 1])[0], full[b], rtol=1e-5, atol=1e-5)
        for p in (0, 6, 7, 8):
            assert torch.allclose(dec(dec.precompute(ids[p : p + 1]), mem)[:, 0], full[:, p], rtol=1e-5, atol=1e-5)


def test_output_depends_on_memory_once_cross_attention_is_nonzero(tower, ids):
    torch.manual_seed(0)
    dec = PrototypeDecoder(tower, d=1, memory_dim=DM)
    pre = dec.precompute(ids)
    with torch.no_grad():
        assert torch.equal(dec(pre, memory(seed=0)), dec(pre, memory(seed=1)))  # zero init: no effect
        perturb(dec)
        a, b = dec(pre, memory(seed=0)), dec(pre, memory(seed=1))
    assert (a - b).abs().max() > 1e-3
    assert torch.equal(a, dec(pre, memory(seed=0)).detach())


def test_precompute_runs_the_prefix_layers_once(tower, ids):
    d = 1
    dec = PrototypeDecoder(tower, d=d, memory_dim=DM)
    calls = [0] * tower.n_layers
    hooks = [
        blk.attn.register_forward_hook(lambda *_a, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, blk in enumerate(tower.resblocks)
    ]
    try:
        pre = dec.precompute(ids)
        assert calls == [1, 0]
        before = pre.states.clone()
        for seed in range(3):
            dec(pre, memory(seed=seed)).sum().backward()
        assert calls == [1, 3]  # forward runs only the modified layers
    finally:
        for h in hooks:
            h.remove()
    assert isinstance(pre, PrefixStates) and len(pre) == 9
    assert dict(pre.named_buffers()).keys() == {"states", "eos_index"}
    assert not pre.states.requires_grad and pre.states.grad is None
    assert pre.state_dict() == {}  # rebuilt from the prompts, never saved
    assert torch.equal(pre.states, before)
    assert torch.equal(pre.eos_index, ids.argmax(-1))


def test_gradients_reach_only_the_cross_attention(tower, ids):
    torch.manual_seed(0)
    dec = PrototypeDecoder(tower, d=0, memory_dim=DM)
    pre = dec.precompute(ids)
    target = torch.randn(3, 9, 32)

    def step() -> dict[str, torch.Tensor]:
        dec.zero_grad(set_to_none=True)
        ((dec(pre, memory()) - target) ** 2).sum().backward()
        assert all(p.grad is None for p in tower.parameters())  # the frozen tower never gets gradient
        return {n: p.grad for n, p in dec.named_parameters() if p.requires_grad}

    # at zero init only the output projections get gradient: everything before them is multiplied by 0
    grads = step()
    assert len(grads) == 2 * 10  # 2 layers x (ln_q w+b, ln_kv w+b, q, k, v weights, in bias, out w+b)
    for name, g in grads.items():
        if "out_proj" in name:
            assert g.abs().sum() > 0, name
        else:
            assert torch.count_nonzero(g) == 0, name
    perturb(dec)
    for name, g in step().items():
        assert g is not None and g.abs().sum() > 0, name


def test_key_padding_mask_hides_masked_steps(tower, ids):
    torch.manual_seed(0)
    dec = PrototypeDecoder(tower, d=1, memory_dim=DM)
    perturb(dec)
    pre = dec.precompute(ids)
    mem = memory(2, 6)
    other = mem.clone()
    other[0, 4:] = 100.0  # garbage in video 0's padded steps
    other[1, 5:] = -7.0
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[0, 4:], pad[1, 5:] = True, True
    with torch.no_grad():
        ref = dec(pre, mem, pad)
        assert torch.allclose(dec(pre, other, pad), ref, atol=1e-6)
        assert torch.allclose(dec(pre, mem[:1, :4])[0], ref[0], rtol=1e-5, atol=1e-5)  # == the unpadded video
        assert (dec(pre, other) - ref).abs().max() > 1e-3  # unmasked, the garbage shows
    pad[1] = True
    with pytest.raises(ValueError, match="every step"):
        dec(pre, mem, pad)
    with pytest.raises(ValueError, match="bool"):
        dec(pre, mem, pad.float())


def test_causal_mask_kept(tower, ids):
    """Tokens after [EOS] never influence the output (nothing trimmed here, so only the mask protects)."""
    torch.manual_seed(0)
    dec = PrototypeDecoder(tower, d=1, memory_dim=DM, trim=False)
    perturb(dec)
    noisy = ids.clone()
    after = torch.arange(77) > ids.argmax(-1, keepdim=True)  # [P, 77]
    noisy[after] = torch.randint(1, EOS_ID - 1, (int(after.sum()),))
    assert torch.equal(noisy.argmax(-1), ids.argmax(-1))
    with torch.no_grad():
        assert torch.equal(dec(dec.precompute(noisy), memory()), dec(dec.precompute(ids), memory()))
        before = ids.clone()
        before[:, 1] = 1000  # a token before [EOS] does change it
        assert not torch.equal(dec(dec.precompute(before), memory()), dec(dec.precompute(ids), memory()))


def test_learnable_prototype(tower, ids):
    torch.manual_seed(0)
    dec = PrototypeDecoder(tower, d=1, memory_dim=DM)
    for s in (2, 26, 80):  # longer than CLIP's context too
        proto = LearnablePrototype(s, tower.width)
        out = dec(proto, memory(4))
        assert out.shape == (4, 1, 32) and torch.isfinite(out).all()
        out.sum().backward()
        assert proto.tokens.grad.shape == (s, 64) and proto.tokens.grad.abs().sum() > 0
    assert count_trainable(LearnablePrototype()) == 26 * 512
    # started from a prompt's states at layer d, it is that prompt (its [EOS] is its last token)
    perturb(dec)
    pre = dec.precompute(ids[6:7])
    proto = LearnablePrototype(pre.states.shape[1], tower.width, init=pre.states[0])
    with torch.no_grad():
        assert torch.equal(dec(proto, memory()), dec(pre, memory()))
        assert torch.equal(dec(pre.states, memory(), eos_index=pre.eos_index), dec(pre, memory()))
    with pytest.raises(ValueError, match="eos_index"):
        dec(pre.states, memory())
    with pytest.raises(ValueError, match="memory must be"):
        dec(pre, memory(dim=64))


def test_random_decoder(tower, ids):
    torch.manual_seed(0)
    dec = RandomDecoder(n_layers=4, width=64, heads=2, memory_dim=DM, out_dim=32)
    proto = LearnablePrototype(5, 64)
    mem = memory(3, 6)
    out = dec(proto, mem)
    assert out.shape == (3, 1, 32)
    out.sum().backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert proto.tokens.grad.abs().sum() > 0
    # frozen prompt embeddings as prototypes; per-video == batched; masks respected
    pre = prompt_states(tower, ids, layers=0)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[2, 3:] = True
    other = mem.clone()
    other[2, 3:] = 50.0
    with torch.no_grad():
        full = dec(pre, mem, pad)  # [3, 9, 32]
        assert full.shape == (3, 9, 32)
        assert torch.allclose(dec(pre, other, pad), full, atol=1e-6)
        assert torch.allclose(dec(pre, mem[2:, :3])[0], full[2], rtol=1e-5, atol=1e-5)
        # causal: what follows [EOS] (here: the last learnable token) does not matter
        a = torch.randn(1, 6, 64)
        b = a.clone()
        b[:, 4:] = 3.0
        eos = torch.tensor([3])
        assert torch.allclose(dec(a, mem, eos_index=eos), dec(b, mem, eos_index=eos), atol=1e-6)


def test_coop_reproduces_a_hand_written_prompt(tiny, tower):
    n_ctx = 4
    words = tiny.tokenize(["a photo of a"])  # [1, 77]: start, a, photo, of, a, end
    ctx_init = tower.token_embedding(words)[0, 1 : 1 + n_ctx]  # [4, W]
    coop = CoOpClassifier(tower, tiny.tokenize(coop_prompts(CLASSES, n_ctx)), n_ctx=n_ctx, ctx_init=ctx_init)
    assert count_trainable(coop) == n_ctx * tower.width
    assert set(coop.state_dict()) == {"ctx"} | {f"tower.{k}" for k in tower.state_dict()}
    with torch.no_grad():
        ref = tiny.model.encode_text(tiny.tokenize([f"a photo of a {c}." for c in CLASSES]))  # [C, D]
        assert torch.allclose(coop(), ref, rtol=1e-5, atol=1e-5)
    coop.zero_grad()
    coop().sum().backward()
    assert coop.ctx.grad.abs().sum() > 0 and all(p.grad is None for p in tower.parameters())
    default = CoOpClassifier(tower, tiny.tokenize(coop_prompts(CLASSES, 16)))
    assert default.ctx.shape == (16, 64) and default().shape == (6, 32)
    with pytest.raises(ValueError, match="placeholder"):
        CoOpClassifier(tower, tiny.tokenize(["X X X X anger.", "Y X X X joy."]), n_ctx=4)


def test_trainable_text_encoder(tiny, tower, ids):
    enc = TrainableTextEncoder(tower)
    assert count_trainable(enc) == sum(p.numel() for p in tower.parameters())
    out = enc(ids)
    assert torch.equal(out.detach(), tiny.model.encode_text(ids))
    out.sum().backward()
    assert enc.tower.resblocks[0].mlp.c_fc.weight.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in tower.parameters())  # the shared frozen tower is untouched
