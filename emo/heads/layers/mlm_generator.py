"""A multimodal transformer that writes captions by filling ``[MASK]`` tokens (SwinBERT-style, as ECPA's
generator, seed 002 eq. 13–14), with greedy and beam decoding.

::

    seq  = [prefix_1 .. prefix_P ; w_0 .. w_{L-1}]     # prefix: visual tokens and prompts [B, P, W]
    mask : prefix -> prefix only; caption i -> prefix and caption j <= i   # no one sees a later word
    h    = Encoder(seq, mask)                          # pre-norm transformer, ``layers`` x ``heads``
    logits[i] = Linear(LN(h[P + i]))                   # [B, L, V]

Training (MLM): some caption tokens are replaced by ``[MASK]`` and their logits scored against the true
tokens (cross-entropy over masked positions, eq. 14). Under the causal mask a ``[MASK]`` at position i sees
only the words before it, which is exactly the situation of decoding: ``[BOS] w_1 .. w_t [MASK]`` -> the
logits at the ``[MASK]`` give ``w_{t+1}``, which replaces it, and one more ``[MASK]`` is appended.

Decoding recomputes the whole sequence each step (no key/value cache): the prefix is short (frames and
prompts) and the reference path is the runtime path. Tokens in ``banned`` (``[PAD] [BOS] [MASK] [UNK]``)
are never generated; a caption that reaches ``max_words`` words is ended with ``[EOS]``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLMGenerator", "prefix_causal_mask", "mask_caption", "greedy_decode", "beam_decode"]


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


def _next_logits(gen: MLMGenerator, prefix, prefix_pad, ids: torch.Tensor, mask_id: int) -> torch.Tensor:
    """``[B, V]`` float logits at a ``[MASK]`` appended to ``ids [B, t]``."""
    inp = torch.cat([ids, torch.full_like(ids[:, :1], mask_id)], dim=1)
    return gen(prefix, inp, prefix_pad)[:, -1].float()


@torch.no_grad()
def greedy_decode(gen: MLMGenerator, prefix: torch.Tensor, prefix_pad: torch.Tensor | None, *, bos: int, eos: int,
                  pad: int, mask: int, banned: list[int], max_words: int) -> torch.Tensor:
    """``[B, T]`` generated ids (after ``[BOS]``; ``[EOS]`` then ``[PAD]`` once a caption ends): the argmax
    at each appended ``[MASK]``."""
    b = prefix.shape[0]
    ids = torch.full((b, 1), bos, dtype=torch.int64, device=prefix.device)
    done = torch.zeros(b, dtype=torch.bool, device=prefix.device)
    for t in range(max_words + 1):
        logits = _next_logits(gen, prefix, prefix_pad, ids, mask)  # [B, V]
        logits[:, banned] = -torch.inf
        if t == max_words:  # the longest caption: end it
            keep = logits[:, eos].clone()
            logits.fill_(-torch.inf)
            logits[:, eos] = keep
        nxt = torch.where(done, torch.full_like(done, pad, dtype=torch.int64), logits.argmax(-1))
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done |= nxt == eos
        if bool(done.all()):
            break
    return ids[:, 1:]


@torch.no_grad()
def beam_decode(gen: MLMGenerator, prefix: torch.Tensor, prefix_pad: torch.Tensor | None, *, bos: int, eos: int,
                pad: int, mask: int, banned: list[int], max_words: int, beam: int,
                length_penalty: float = 0.0) -> torch.Tensor:
    """``[B, T]`` ids of the best of ``beam`` hypotheses per item by summed log-probability divided by
    ``length ** length_penalty`` (length counts the words and ``[EOS]``); beam 1 is greedy decoding."""
    b, k = prefix.shape[0], beam
    dev = prefix.device
    pre = prefix.repeat_interleave(k, 0)  # [B k, P, W]
    pre_pad = prefix_pad.repeat_interleave(k, 0) if prefix_pad is not None else None
    ids = torch.full((b * k, 1), bos, dtype=torch.int64, device=dev)
    score = torch.zeros(b, k, device=dev)
    score[:, 1:] = -torch.inf  # all beams start equal: keep one
    done = torch.zeros(b * k, dtype=torch.bool, device=dev)
    length = torch.zeros(b * k, device=dev)
    for t in range(max_words + 1):
        logits = _next_logits(gen, pre, pre_pad, ids, mask)  # [B k, V]
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
        ids = torch.cat([ids[rows], tok[:, None]], dim=1)
        length = length[rows] + (~done[rows]).float()
        done = done[rows] | (tok == eos)
        if bool(done.all()):
            break
    norm = score / length.reshape(b, k).clamp(min=1) ** length_penalty if length_penalty else score
    best = norm.argmax(dim=1)
    return ids.reshape(b, k, -1)[torch.arange(b, device=dev), best, 1:]
