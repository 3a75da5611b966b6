"""A multimodal transformer that writes captions by filling ``[MASK]`` tokens (SwinBERT-style, as ECPA's
generator, ECPA eqs. 13–14), with greedy and beam decoding.

::

    seq  = [prefix_1 .. prefix_P ; w_0 .. w_{L-1}]     # prefix: visual tokens and prompts [B, P, W]
    mask : prefix -> prefix only; caption i -> prefix and caption j <= i   # no one sees a later word
    h    = Encoder(seq, mask)                          # pre-norm transformer, ``layers`` x ``heads``
    logits[i] = Linear(LN(h[P + i]))                   # [B, L, V]

Training (MLM): some caption tokens are replaced by ``[MASK]`` and their logits scored against the true
tokens (cross-entropy over masked positions, eq. 14). Under the causal mask a ``[MASK]`` at position i sees
only the words before it, which is exactly the situation of decoding: ``[BOS] w_1 .. w_t [MASK]`` -> the
logits at the ``[MASK]`` give ``w_{t+1}``, which replaces it, and one more ``[MASK]`` is appended.

Decoding keeps the keys and values of what can no longer change (``cached=True``, the default): the
prefix never sees the caption, so its keys and values are computed once; a caption position sees only
itself and earlier ones, so once its ``[MASK]`` is replaced by the chosen word it is final. Each step then
runs two tokens (the word just chosen and the new ``[MASK]``) instead of the whole sequence. The
reference path (``cached=False``) re-runs the full forward pass each step; tests hold the two equal.
Tokens in ``banned`` (``[PAD] [BOS] [MASK] [UNK]``) are never generated; a caption that reaches
``max_words`` words is ended with ``[EOS]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLMGenerator", "DecodeState", "prefix_causal_mask", "mask_caption", "greedy_decode", "beam_decode"]


def prefix_causal_mask(prefix: int, length: int, device=None) -> torch.Tensor:
    """``[P + L, P + L]`` bool, True where attention is NOT allowed (torch's convention)."""
    s = prefix + length
    m = torch.zeros(s, s, dtype=torch.bool, device=device)
    m[:prefix, prefix:] = True  # the prefix never sees the caption
    m[prefix:, prefix:] = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)  # causal
    return m


class MLMGenerator(nn.Module):
    """Prefix ``[B, P, W]`` + caption ids ``[B, L]`` -> logits ``[B, L, V]`` (module doc)."""

    def __init__(self, vocab_size: int, width: int = 512, layers: int = 6, heads: int = 8, ffn: int = 0,
                 dropout: float = 0.1, max_length: int = 64):
        super().__init__()
        self.width, self.max_length = width, max_length
        self.word = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.randn(max_length, width) * 0.02)  # caption positions
        layer = nn.TransformerEncoderLayer(width, heads, ffn or 4 * width, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, prefix: torch.Tensor, ids: torch.Tensor, prefix_pad: torch.Tensor | None = None,
                words: torch.Tensor | None = None) -> torch.Tensor:
        """``prefix [B, P, W]``, ``ids [B, L]``; ``prefix_pad [B, P]`` True = an absent prefix token;
        ``words [B, L, W]`` replaces ``word(ids)`` (the caller's own word embeddings)."""
        b, p, _ = prefix.shape
        length = ids.shape[1]
        if length > self.max_length:
            raise ValueError(f"caption of {length} tokens; the generator has {self.max_length} positions")
        x = (self.word(ids) if words is None else words) + self.pos[:length]  # [B, L, W]
        seq = torch.cat([prefix, x.to(prefix.dtype)], dim=1)  # [B, P + L, W]
        mask = prefix_causal_mask(p, length, seq.device)
        pad = None
        if prefix_pad is not None:
            pad = torch.cat([prefix_pad, torch.zeros(b, length, dtype=torch.bool, device=seq.device)], dim=1)
        h = self.encoder(seq, mask=mask, src_key_padding_mask=pad)  # [B, P + L, W]
        return self.head(self.norm(h[:, p:]))  # [B, L, V]

    # -- cached decoding (eval mode: no dropout) -------------------------------------------------------
    def encode_prefix(self, prefix: torch.Tensor, prefix_pad: torch.Tensor | None) -> DecodeState:
        """The prefix's keys and values at every layer (``DecodeState``), computed once per caption."""
        b, p, _ = prefix.shape
        pad = prefix_pad if prefix_pad is not None else torch.zeros(b, p, dtype=torch.bool, device=prefix.device)
        state = DecodeState([None] * len(self.encoder.layers), [None] * len(self.encoder.layers), pad)
        allowed = ~pad[:, None, None, :]  # [B, 1, P, P]: the prefix sees the prefix
        x = prefix
        for i, layer in enumerate(self.encoder.layers):
            x, state.keys[i], state.values[i] = _layer_step(layer, x, None, None, allowed)
        return state

    def decode_step(self, state: DecodeState, words: torch.Tensor, start: int) -> tuple[torch.Tensor, list, list]:
        """Logits ``[B, n, V]`` of ``n`` new caption tokens (``words [B, n, W]`` at caption positions
        ``start..start+n-1``) after the cached ones, and their keys and values per layer (not yet kept)."""
        b, n, _ = words.shape
        x = words + self.pos[start : start + n]  # [B, n, W]
        causal = torch.ones(n, n, dtype=torch.bool, device=words.device).tril()
        allowed = torch.cat([~state.pad[:, None, None, :].expand(b, 1, n, -1),
                             causal[None, None].expand(b, 1, n, n)], dim=-1)  # [B, 1, n, S + n]
        keys, values = [], []
        for i, layer in enumerate(self.encoder.layers):
            x, k, v = _layer_step(layer, x, state.keys[i], state.values[i], allowed)
            keys.append(k)
            values.append(v)
        return self.head(self.norm(x)), keys, values


@dataclass
class DecodeState:
    """Per layer the keys and values ``[B, H, S, d]`` of the tokens that can no longer change, and which
    of them are padding ``[B, S]``."""

    keys: list
    values: list
    pad: torch.Tensor

    def keep(self, keys: list, values: list, n: int) -> None:
        """Append the first ``n`` new tokens' keys and values (they are final)."""
        for i in range(len(self.keys)):
            self.keys[i] = torch.cat([self.keys[i], keys[i][:, :, :n]], dim=2)
            self.values[i] = torch.cat([self.values[i], values[i][:, :, :n]], dim=2)
        self.pad = torch.cat([self.pad, torch.zeros(self.pad.shape[0], n, dtype=torch.bool, device=self.pad.device)], 1)

    def select(self, rows: torch.Tensor) -> None:
        """Keep rows ``rows`` (beam search: each hypothesis takes its parent's cache)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self.pad = self.pad[rows]


def _layer_step(layer: nn.TransformerEncoderLayer, x: torch.Tensor, k_old, v_old, allowed: torch.Tensor):
    """One pre-norm encoder layer on new tokens ``x [B, n, W]`` attending to cached keys/values and to
    themselves (``allowed [B, 1, n, S + n]``, True = may attend): the same arithmetic as the layer's own
    forward in eval mode. Returns ``(x', k [B, H, n, d], v)``."""
    attn = layer.self_attn
    b, n, w = x.shape
    h = attn.num_heads
    q, k, v = F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, h, w // h).transpose(1, 2) for t in (q, k, v))  # [B, H, n, d]
    keys = k if k_old is None else torch.cat([k_old, k], dim=2)
    values = v if v_old is None else torch.cat([v_old, v], dim=2)
    o = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed)  # [B, H, n, d]
    x = x + attn.out_proj(o.transpose(1, 2).reshape(b, n, w))
    x = x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))
    return x, k, v


def mask_caption(ids: torch.Tensor, prob: float, *, pad: int, bos: int, mask: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MLM inputs and targets of caption ids ``[B, L]``: each word and ``[EOS]`` (not ``[BOS]``, not
    ``[PAD]``) becomes ``[MASK]`` with probability ``prob``, at least one per caption; targets hold the
    true id at masked positions and -100 elsewhere (ignored by cross-entropy)."""
    can = (ids != pad) & (ids != bos)  # [B, L]
    u = torch.rand(ids.shape, generator=generator)
    u = torch.where(can, u, torch.full_like(u, 2.0))
    chosen = (u < prob) & can
    first = u.argmin(dim=1)  # the lowest draw of each caption: masked whatever prob is
    chosen[torch.arange(ids.shape[0]), first] |= can[torch.arange(ids.shape[0]), first]
    inputs = torch.where(chosen, torch.full_like(ids, mask), ids)
    targets = torch.where(chosen, ids, torch.full_like(ids, -100))
    return inputs, targets


Embed = Callable[[torch.Tensor], torch.Tensor]  # ids [B, n] -> word inputs [B, n, W]


class _Stepper:
    """Logits at the ``[MASK]`` appended to the words chosen so far: by the full forward pass (the
    reference) or from the cached keys and values."""

    def __init__(self, gen: MLMGenerator, prefix, prefix_pad, mask: int, embed: Embed | None, cached: bool,
                 first: torch.Tensor):
        self.gen, self.prefix, self.prefix_pad, self.mask, self.cached = gen, prefix, prefix_pad, mask, cached
        self.embed = embed or gen.word
        self.ids = first[:, None]  # [B, 1]: [BOS]
        self.state = gen.encode_prefix(prefix, prefix_pad) if cached else None

    def logits(self) -> torch.Tensor:
        """``[B, V]`` float logits at a ``[MASK]`` after ``self.ids``."""
        masked = torch.full_like(self.ids[:, :1], self.mask)
        if not self.cached:
            inp = torch.cat([self.ids, masked], dim=1)
            return self.gen(self.prefix, inp, self.prefix_pad, words=self.embed(inp))[:, -1].float()
        new = torch.cat([self.ids[:, -1:], masked], dim=1)  # the last chosen word (final now) and the [MASK]
        out, keys, values = self.gen.decode_step(self.state, self.embed(new), self.ids.shape[1] - 1)
        self.state.keep(keys, values, 1)
        return out[:, -1].float()

    def append(self, tokens: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        if rows is not None:
            self.ids = self.ids[rows]
            if self.state is not None:
                self.state.select(rows)
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)


@torch.no_grad()
def greedy_decode(gen: MLMGenerator, prefix: torch.Tensor, prefix_pad: torch.Tensor | None, *, bos: int, eos: int,
                  pad: int, mask: int, banned: list[int], max_words: int, embed: Embed | None = None,
                  cached: bool = True) -> torch.Tensor:
    """``[B, T]`` generated ids (after ``[BOS]``; ``[EOS]`` then ``[PAD]`` once a caption ends): the argmax
    at each appended ``[MASK]``. ``embed`` gives the word inputs (default the generator's embedding)."""
    b = prefix.shape[0]
    step = _Stepper(gen, prefix, prefix_pad, mask, embed, cached,
                    torch.full((b,), bos, dtype=torch.int64, device=prefix.device))
    done = torch.zeros(b, dtype=torch.bool, device=prefix.device)
    for t in range(max_words + 1):
        logits = step.logits()  # [B, V]
        logits[:, banned] = -torch.inf
        if t == max_words:  # the longest caption: end it
            keep = logits[:, eos].clone()
            logits.fill_(-torch.inf)
            logits[:, eos] = keep
        nxt = torch.where(done, torch.full_like(done, pad, dtype=torch.int64), logits.argmax(-1))
        step.append(nxt)
        done |= nxt == eos
        if bool(done.all()):
            break
    return step.ids[:, 1:]


@torch.no_grad()
def beam_decode(gen: MLMGenerator, prefix: torch.Tensor, prefix_pad: torch.Tensor | None, *, bos: int, eos: int,
                pad: int, mask: int, banned: list[int], max_words: int, beam: int,
                length_penalty: float = 0.0, embed: Embed | None = None, cached: bool = True) -> torch.Tensor:
    """``[B, T]`` ids of the best of ``beam`` hypotheses per item by summed log-probability (over the
    tokens that may be generated) divided by ``length ** length_penalty`` (length counts the words and
    ``[EOS]``); beam 1 is greedy decoding."""
    b, k = prefix.shape[0], beam
    dev = prefix.device
    pre = prefix.repeat_interleave(k, 0)  # [B k, P, W]
    pre_pad = prefix_pad.repeat_interleave(k, 0) if prefix_pad is not None else None
    step = _Stepper(gen, pre, pre_pad, mask, embed, cached, torch.full((b * k,), bos, dtype=torch.int64, device=dev))
    score = torch.zeros(b, k, device=dev)
    score[:, 1:] = -torch.inf  # all beams start equal: keep one
    done = torch.zeros(b * k, dtype=torch.bool, device=dev)
    length = torch.zeros(b * k, device=dev)
    for t in range(max_words + 1):
        logits = step.logits()  # [B k, V]
        logits[:, banned] = -torch.inf
        logp = torch.log_softmax(logits, dim=-1)  # over the tokens that may be generated
        v = logp.shape[1]
        if t == max_words:
            keep = logp[:, eos].clone()
            logp.fill_(-torch.inf)
            logp[:, eos] = keep
        logp[done] = -torch.inf
        logp[done, pad] = 0.0  # a finished hypothesis carries on unchanged
        cand = (score.reshape(-1, 1) + logp).reshape(b, k * v)
        score, idx = cand.topk(k, dim=1)  # [B, k]
        rows = (torch.arange(b, device=dev)[:, None] * k + idx // v).reshape(-1)  # the parent hypotheses
        tok = (idx % v).reshape(-1)
        step.append(tok, rows)
        length = length[rows] + (~done[rows]).float()
        done = done[rows] | (tok == eos)
        if bool(done.all()):
            break
    norm = score / length.reshape(b, k).clamp(min=1) ** length_penalty if length_penalty else score
    best = norm.argmax(dim=1)
    return step.ids.reshape(b, k, -1)[torch.arange(b, device=dev), best, 1:]
