"""ECPA's pieces against their definitions (seed 002): the caption vocabulary, the MLM generator's causal
mask and decoders, MLM masking, L_AUCL against a brute-force search over assignments, the ER-sentence
losses, DWA on a fixed loss history, the warm-up + linear schedule, top-K AU selection and cross-fitting."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emo.heads.ecpa import ECPAConfig
from emo.heads.layers.captions import Vocabulary, tokenize
from emo.heads.layers.cross_fit import cross_fit, fit_logistic
from emo.heads.layers.emotion_alignment import (
    au_alignment_loss,
    au_summary,
    aucl_loss,
    dwa_weights,
    er_alignment_loss,
    top_k_aus,
)
from emo.heads.layers.mlm_generator import (
    MLMGenerator,
    beam_decode,
    greedy_decode,
    mask_caption,
    prefix_causal_mask,
)
from emo.heads.train import lr_factor

# --- vocabulary --------------------------------------------------------------------------------------


def test_tokenisation_and_vocabulary_order_encode_decode_and_round_trip_through_a_tensor():
    assert tokenize("The man's brows LOWER, lips pressed!") == ["the", "man's", "brows", "lower", "lips", "pressed"]
    assert tokenize("她皱眉 angry") == ["她", "皱", "眉", "angry"]
    v = Vocabulary.build(["b a a", "c b a", "d"], min_count=2)
    assert v.tokens[5:] == ["a", "b"]  # by count, then alphabetical; c and d seen once
    assert v.encode("a b c", max_words=2) == [v.bos, 5, 6, v.eos]  # cut to 2 words, c is [UNK] but was cut
    assert v.encode("c a", max_words=5) == [v.bos, v.unk, 5, v.eos]
    assert v.decode([5, 6, v.eos, 5]) == "a b" and v.decode([v.bos, 6, v.pad, 5]) == "b a"
    ids = v.batch(["a", "b a b"], max_words=9)
    assert ids.tolist() == [[v.bos, 5, v.eos, v.pad, v.pad], [v.bos, 6, 5, 6, v.eos]]
    w = Vocabulary.build(["微笑 的 人", "smile"])
    back = Vocabulary.from_tensor(w.to_tensor())
    assert back == w and back.decode(back.encode("微笑 的 人 smile", 9)) == "微笑的人 smile"
    with pytest.raises(ValueError, match="cannot be read"):
        Vocabulary.from_tensor(torch.tensor([255, 0], dtype=torch.uint8))


# --- generator ---------------------------------------------------------------------------------------


def small_generator(seed: int = 0, vocab: int = 12) -> MLMGenerator:
    torch.manual_seed(seed)
    g = MLMGenerator(vocab, width=16, layers=2, heads=2, ffn=32, dropout=0.0, max_length=10)
    with torch.no_grad():  # sharper logits than the init's, so argmax ties are impossible
        g.head.weight.mul_(20)
    return g.eval()


def test_the_attention_mask_hides_later_words_and_the_caption_from_the_prefix():
    m = prefix_causal_mask(2, 3)
    allowed = ~m
    assert allowed[:2, :2].all() and not allowed[:2, 2:].any()  # prefix sees prefix only
    assert allowed[2:, :2].all()  # every word sees the prefix
    assert allowed[2:, 2:].tolist() == [[True, False, False], [True, True, False], [True, True, True]]


def test_a_later_caption_token_never_changes_an_earlier_positions_logits():
    g = small_generator()
    prefix = torch.randn(2, 3, 16)
    ids = torch.tensor([[1, 5, 6, 7, 8], [1, 9, 5, 3, 0]])
    base = g(prefix, ids)
    for pos in range(1, 5):
        changed = ids.clone()
        changed[:, pos:] = torch.tensor([[10, 11, 4, 6]])[:, : 5 - pos]
        out = g(prefix, changed)
        torch.testing.assert_close(out[:, :pos], base[:, :pos], rtol=0, atol=1e-5)
        assert not torch.allclose(out[:, pos:], base[:, pos:], atol=1e-3)  # the mask does not hide everything


def test_greedy_decoding_equals_step_by_step_argmax_over_full_forward_passes_and_beam_1_equals_greedy():
    g = small_generator(1)
    prefix = torch.randn(4, 3, 16)
    pad_prefix = torch.tensor([[False, False, True]] * 4)
    kw = {"bos": 1, "eos": 2, "pad": 0, "mask": 3, "banned": [0, 1, 3, 4], "max_words": 6}
    greedy = greedy_decode(g, prefix, pad_prefix, **kw)
    for b in range(4):  # the reference: one item, a full forward pass per step
        seq = [1]
        while seq[-1] != 2:
            logits = g(prefix[b : b + 1], torch.tensor([seq + [3]]), pad_prefix[b : b + 1])[0, -1]
            logits[[0, 1, 3, 4]] = -torch.inf
            if len(seq) - 1 == 6:  # six words: the caption must end
                logits[[i for i in range(12) if i != 2]] = -torch.inf
            seq.append(int(logits.argmax()))
        row = greedy[b].tolist()
        assert row[: len(seq) - 1] == seq[1:]
        assert all(t == 0 for t in row[len(seq) - 1 :])
    assert torch.equal(beam_decode(g, prefix, pad_prefix, beam=1, **kw), greedy)
    assert torch.equal(beam_decode(g, prefix, pad_prefix, beam=1, length_penalty=1.0, **kw), greedy)


def test_cached_decoding_equals_the_full_forward_pass_at_every_step():
    g = small_generator(3)
    prefix = torch.randn(5, 4, 16)
    pad_prefix = torch.tensor([[False, False, True, True]] * 2 + [[False] * 4] * 3)
    kw = {"bos": 1, "eos": 2, "pad": 0, "mask": 3, "banned": [0, 1, 3, 4], "max_words": 7}
    state = g.encode_prefix(prefix, pad_prefix)  # logits of every step, both ways
    ids = torch.tensor([[1, 6, 7, 5], [1, 9, 9, 2], [1, 5, 11, 8], [1, 10, 6, 7], [1, 8, 8, 8]])
    for t in range(4):
        full = g(prefix, torch.cat([ids[:, : t + 1], torch.full((5, 1), 3)], 1), pad_prefix)[:, -1]
        out, keys, values = g.decode_step(state, g.word(torch.stack([ids[:, t], torch.full((5,), 3)], 1)), t)
        state.keep(keys, values, 1)
        torch.testing.assert_close(out[:, -1], full, rtol=1e-4, atol=1e-4)
    assert torch.equal(greedy_decode(g, prefix, pad_prefix, **kw), greedy_decode(g, prefix, pad_prefix, cached=False, **kw))
    assert torch.equal(beam_decode(g, prefix, pad_prefix, beam=3, **kw),
                       beam_decode(g, prefix, pad_prefix, beam=3, cached=False, **kw))


def _log_prob(g, prefix, ids: list[int]) -> float:
    """Summed log-probability of generating ``ids`` (ending at [EOS]=2) one [MASK] at a time."""
    total, seq = 0.0, [1]
    for t in ids:
        logp = torch.log_softmax(g(prefix, torch.tensor([seq + [3]]))[0, -1], -1)
        logp[[0, 1, 3, 4]] = -torch.inf
        logp = logp - torch.logsumexp(logp, 0)
        total += float(logp[t].detach())
        seq.append(t)
        if t == 2:
            break
    return total


def test_beam_search_finds_a_caption_at_least_as_likely_as_greedy():
    g = small_generator(2)
    with torch.no_grad():
        g.head.weight.div_(15)  # flatter: greedy is not always optimal
    prefix = torch.randn(16, 2, 16)
    kw = {"bos": 1, "eos": 2, "pad": 0, "mask": 3, "banned": [0, 1, 3, 4], "max_words": 4}
    greedy = greedy_decode(g, prefix, None, **kw)
    beam = beam_decode(g, prefix, None, beam=4, **kw)
    better = 0
    for b in range(16):
        lg = _log_prob(g, prefix[b : b + 1], [t for t in greedy[b].tolist() if t != 0])
        lb = _log_prob(g, prefix[b : b + 1], [t for t in beam[b].tolist() if t != 0])
        assert lb >= lg - 1e-4
        better += lb > lg + 1e-4
    assert better >= 1  # the search does something greedy does not


def test_mlm_masking_never_touches_bos_or_padding_and_masks_at_least_one_word():
    ids = torch.tensor([[1, 5, 6, 7, 2, 0, 0], [1, 8, 2, 0, 0, 0, 0]])
    gen = torch.Generator().manual_seed(0)
    for prob in (1e-6, 0.5, 1.0):
        inp, tgt = mask_caption(ids, prob, pad=0, bos=1, mask=3, generator=gen)
        masked = inp == 3
        assert not masked[:, 0].any() and not masked[ids == 0].any()
        assert (masked.sum(1) >= 1).all()
        assert torch.equal(tgt[masked], ids[masked]) and (tgt[~masked] == -100).all()
        assert torch.equal(inp[~masked], ids[~masked])
    assert (mask_caption(ids, 1.0, pad=0, bos=1, mask=3)[0][ids > 1] == 3).all()


# --- L_AUCL ------------------------------------------------------------------------------------------


def brute_aucl(d: np.ndarray, t_c: float, m: float, others: str) -> float:
    """Eq. 10–12 by trying every assignment of the K rows to distinct columns (K <= J)."""
    k, j = d.shape
    best = max(itertools.permutations(range(j), k), key=lambda cols: sum(d[i, c] for i, c in enumerate(cols)))
    terms = []
    for i in range(k):
        for c in range(j):
            if best[i] == c:
                terms.append(max(0.0, m - d[i, c]) ** 2 if d[i, c] > t_c else d[i, c] ** 2)
            elif others == "all":
                terms.append(d[i, c] ** 2)
    return float(np.mean(terms))


def fixed_prompts(seed: int, k: int, j: int, w: int = 6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, k, w, generator=g), torch.randn(1, j, w, generator=g)


@pytest.mark.parametrize("others", ["matched", "all"])
def test_aucl_equals_a_brute_force_search_over_assignments(others):
    for seed in range(6):
        au, words = fixed_prompts(seed, 3, 5)
        # make some pairs clearly positive so both branches of eq. 11 occur
        words[0, 1] = au[0, 0] + 0.3 * words[0, 1]
        words[0, 4] = au[0, 2] + 0.8 * words[0, 4]
        d = (F.normalize(au, dim=-1) @ F.normalize(words, dim=-1).transpose(1, 2))[0].numpy()
        got = aucl_loss(au, words, torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool),
                        0.3, 0.5, others)
        assert float(got) == pytest.approx(brute_aucl(d.astype(np.float64), 0.3, 0.5, others), rel=1e-5)


def test_aucl_skips_masked_words_absent_aus_and_averages_over_items():
    au, words = fixed_prompts(7, 3, 5)
    au2, words2 = fixed_prompts(8, 3, 5)
    a, w = torch.cat([au, au2]), torch.cat([words, words2])
    word_valid = torch.tensor([[True, False, True, True, False], [True] * 5])
    au_valid = torch.tensor([[True, True, True], [False] * 3])  # item 2 has no valid frame: no AU prompt
    got = aucl_loss(a, w, au_valid, word_valid)
    d = (F.normalize(au, dim=-1) @ F.normalize(words, dim=-1).transpose(1, 2))[0].numpy()[:, [0, 2, 3]]
    assert float(got) == pytest.approx(brute_aucl(d.astype(np.float64), 0.3, 0.5, "matched"), rel=1e-5)
    # K > J: each word is matched once
    d2 = (F.normalize(au, dim=-1) @ F.normalize(words, dim=-1).transpose(1, 2))[0].numpy()[:, [0, 2]]
    two = aucl_loss(au, words, torch.ones(1, 3, dtype=torch.bool), torch.tensor([[1, 0, 1, 0, 0]]).bool())
    assert float(two) == pytest.approx(brute_aucl(d2.T.astype(np.float64), 0.3, 0.5, "matched"), rel=1e-5)
    none = aucl_loss(a, w, torch.zeros(2, 3, dtype=torch.bool), word_valid)
    assert float(none) == 0.0


def test_aucl_gradient_pulls_positive_pairs_up_to_the_margin_and_pushes_negatives_to_zero():
    au = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], requires_grad=True)
    # matched pairs: au0-w0 cos 0.4 (> T_C: pulled toward m = 0.5), au1-w1 cos 0.2 (<= T_C: pushed toward 0)
    words = torch.tensor([[[0.4, 0.0, 0.9165], [0.0, 0.2, 0.9798]]])
    valid_a, valid_w = torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool)
    loss = aucl_loss(au, words, valid_a, valid_w)
    assert float(loss.detach()) == pytest.approx(((0.5 - 0.4) ** 2 + 0.2**2) / 2, rel=1e-3)
    loss.backward()
    d = F.normalize(au.detach(), dim=-1) @ F.normalize(words, dim=-1).transpose(1, 2)
    d2 = F.normalize(au.detach() - 0.1 * au.grad, dim=-1) @ F.normalize(words, dim=-1).transpose(1, 2)
    assert d2[0, 0, 0] > d[0, 0, 0] + 1e-4 and d2[0, 1, 1] < d[0, 1, 1] - 1e-4
    far = torch.tensor([[[0.9, 0.0, 0.436], [0.0, 0.2, 0.9798]]])  # au0-w0 cos 0.9 >= m: no pull
    au.grad = None
    aucl_loss(au, far, valid_a, valid_w).backward()
    assert float(au.grad[0, 0].abs().max()) < 1e-7


def test_the_other_au_and_er_alignment_variants_follow_their_definitions():
    au, words = fixed_prompts(3, 2, 3)
    va, vw = torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool)
    d = (F.normalize(au, dim=-1) @ F.normalize(words, dim=-1).transpose(1, 2))[0]
    best = max(itertools.permutations(range(3), 2), key=lambda c: float(d[0, c[0]] + d[1, c[1]]))
    terms = [(1 - d[i, c]) ** 2 if best[i] == c else F.relu(0.5 - (1 - d[i, c])) ** 2 for i in range(2) for c in range(3)]
    assert float(au_alignment_loss("contrastive", au, words, va, vw)) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)
    ce = F.cross_entropy(d / 0.1, torch.tensor(best))
    assert float(au_alignment_loss("ce", au, words, va, vw)) == pytest.approx(float(ce), rel=1e-5)
    er, sent = torch.randn(4, 6), torch.randn(4, 6)
    y = torch.tensor([0, 2, 1, 2])
    lin = torch.nn.Linear(12, 3).requires_grad_(False)
    tokens = torch.randn(3, 6)
    assert float(er_alignment_loss("ce", er, sent, y, lin, tokens)) == pytest.approx(
        float(F.cross_entropy(lin(torch.cat([er, sent], 1)), y)))
    assert float(er_alignment_loss("similarity", er, sent, y, lin, tokens)) == pytest.approx(
        float((1 - F.cosine_similarity(er, sent)).mean()))
    sim = F.normalize(er, dim=-1) @ F.normalize(tokens, dim=-1).T
    assert float(er_alignment_loss("similarity-ce", er, sent, y, lin, tokens)) == pytest.approx(
        float(F.cross_entropy(sim / 0.1, y)), rel=1e-6)


# --- DWA and the schedule ----------------------------------------------------------------------------


def test_dwa_weights_on_a_fixed_loss_history():
    history = [{"mlm": 4.0, "er": 2.0, "aucl": 0.5}, {"mlm": 3.0, "er": 1.0, "aucl": 0.5},
               {"mlm": 2.4, "er": 0.9, "aucl": 0.25}]
    names = ("mlm", "er", "aucl")
    assert dwa_weights([], names) == dwa_weights(history[:1], names) == {"mlm": 1.0, "er": 1.0, "aucl": 1.0}
    w = dwa_weights(history[:2], names, temperature=2.0)
    r = np.array([3 / 4, 1 / 2, 1.0])
    want = 3 * np.exp(r / 2) / np.exp(r / 2).sum()
    assert [w[k] for k in names] == pytest.approx(list(want), rel=1e-12)
    assert w["aucl"] > w["mlm"] > w["er"]  # the loss that fell least gets the most weight
    w3 = dwa_weights(history, names, temperature=2.0)  # reads the last two epochs only
    r3 = np.array([0.8, 0.9, 0.5])
    assert [w3[k] for k in names] == pytest.approx(list(3 * np.exp(r3 / 2) / np.exp(r3 / 2).sum()), rel=1e-12)
    two = dwa_weights(history, ("mlm", "aucl"), temperature=1.0)
    assert sum(two.values()) == pytest.approx(2.0)


def test_ecpa_schedule_warms_up_for_a_tenth_of_training_then_decays_linearly_to_zero():
    cfg = ECPAConfig(epochs=10)
    assert cfg.warmup_epochs == pytest.approx(1.0) and cfg.schedule == "linear" and cfg.optimizer == "adamw"
    spe = 10  # 100 steps, 10 of warm-up
    f = [lr_factor(cfg, s, spe) for s in range(100)]
    assert f[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f[10:] == pytest.approx([(100 - s) / 90 for s in range(10, 100)])
    assert f[9] == pytest.approx(1.0) and f[55] == pytest.approx(0.5)
    assert ECPAConfig(epochs=30, warmup_fraction=0.0, warmup_epochs=2.0).warmup_epochs == 2.0
    assert ECPAConfig(epochs=30, warmup_epochs=3.0).warmup_epochs == pytest.approx(3.0)  # a saved config reloads
    with pytest.raises(ValueError, match="--warmup-fraction 0"):
        ECPAConfig(epochs=30, warmup_epochs=2.0)


# --- AUs ---------------------------------------------------------------------------------------------


def test_top_k_aus_by_confidence_over_valid_frames_with_intensity_as_tie_break():
    # 1 clip, 3 frames (the last invalid), 4 AUs; intensities 0-5, presence 0/1
    r = torch.tensor([[[5.0, 1.0, 2.0, 0.0], [5.0, 3.0, 2.0, 4.0], [0.0, 0.0, 0.0, 5.0]]])
    c = torch.tensor([[[0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]])
    valid = torch.tensor([[True, True, False]])
    conf, inten, has = au_summary(r, valid, c, scale=5.0)
    assert conf.tolist() == [[0.5, 1.0, 1.0, 0.5]]  # presence rate over the two valid frames
    assert inten[0].tolist() == pytest.approx([1.0, 0.4, 0.4, 0.4])
    assert bool(has[0])
    # AUs 1 and 2 tie on confidence and intensity: lower index first; then AU 0 beats AU 3 on intensity
    assert top_k_aus(conf, inten, 3).tolist() == [[1, 2, 0]]
    assert top_k_aus(conf, inten, 1).tolist() == [[1]]
    conf2, inten2, has2 = au_summary(r, torch.zeros(1, 3, dtype=torch.bool), c, scale=5.0)
    assert not bool(has2[0]) and float(inten2.sum()) == 0.0
    p = torch.tensor([[[0.9, 0.1, 0.5], [0.7, 0.3, 0.6]]])  # py-feat probabilities: confidence = intensity
    conf3, inten3, _ = au_summary(p, torch.ones(1, 2, dtype=torch.bool))
    assert torch.equal(conf3, inten3) and top_k_aus(conf3, inten3, 2).tolist() == [[0, 2]]
    with pytest.raises(ValueError, match="au_top_k"):
        top_k_aus(conf, inten, 5)


# --- cross-fitting -----------------------------------------------------------------------------------


def test_cross_fit_never_lets_a_classifier_see_the_item_it_embeds():
    g = np.random.default_rng(0)
    n = 40
    x = g.standard_normal((n, 5))
    y = np.repeat(np.arange(4), 10)
    ids = [f"clip{k:02d}" for k in range(n)]
    seen_by_call: list[set[str]] = []

    def fit(xs, ys):  # records which items (by their features) each classifier is fitted on
        rows = {ids[int(np.flatnonzero((x == r).all(1))[0])] for r in xs}
        seen_by_call.append(rows)
        idx = len(seen_by_call) - 1
        return lambda z: np.full((len(z), 1), idx, dtype=np.float32)  # output: which classifier embedded it

    oof, full, record = cross_fit(x, y, ids, fit, folds=5, seed=3)
    assert len(record) == 5 and len(seen_by_call) == 6 and seen_by_call[-1] == set(ids)
    embedded = set()
    for f, rec in enumerate(record):
        assert set(rec["fit_ids"]) == seen_by_call[f]
        assert not set(rec["fit_ids"]) & set(rec["embedded_ids"])
        embedded |= set(rec["embedded_ids"])
    assert embedded == set(ids)
    for k, item in enumerate(ids):  # each item's feature came from a classifier that did not see it
        assert item not in seen_by_call[int(oof[k, 0])]
    assert full(x[:2]).tolist() == [[5.0], [5.0]]


def test_the_logistic_er_classifier_covers_every_class_even_one_missing_from_train():
    g = np.random.default_rng(1)
    y = np.array([0] * 10 + [2] * 10)
    x = g.standard_normal((20, 3)) + 3 * np.eye(3)[y]
    w, b = fit_logistic(4)(x, y)
    logits = x @ w.T + b
    assert w.shape == (4, 3) and (logits.argmax(1) == y).mean() > 0.9
    assert (logits[:, [1, 3]] < logits.max(1, keepdims=True) - 5).all()
    assert math.isfinite(float(b.min()))
