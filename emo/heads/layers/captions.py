"""Caption text as token ids: one recorded tokenisation rule and a vocabulary built from training captions.

A captioning head builds its :class:`Vocabulary` from the train part's references, stores it in its
checkpoint (``to_tensor`` / ``from_tensor``: the token list as UTF-8 JSON bytes in a ``uint8`` buffer, so
it travels inside ``model.safetensors``), and a run on another dataset decodes with the source's
vocabulary (words it never saw become ``[UNK]``).

Tokenisation ``TOKENIZER`` (``words-v1``): NFKC, lower case; a token is a run of letters, digits,
underscores and apostrophes (``\\w+('\\w+)*``); each CJK ideograph is a token of its own (Chinese captions
have no spaces); punctuation is dropped. Detokenisation joins tokens with one space (CJK ones without),
which is what pycocoevalcap's PTB tokenizer reads back.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

import torch

__all__ = ["Vocabulary", "tokenize", "detokenize", "TOKENIZER", "PAD", "BOS", "EOS", "MASK", "UNK", "SPECIALS"]

TOKENIZER = "words-v1"
PAD, BOS, EOS, MASK, UNK = "[PAD]", "[BOS]", "[EOS]", "[MASK]", "[UNK]"
SPECIALS = (PAD, BOS, EOS, MASK, UNK)  # ids 0..4 in every vocabulary
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+(?:'[^\W{_CJK}]+)*")


def tokenize(text: str) -> list[str]:
    """The ``words-v1`` tokens of ``text`` (module doc)."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def _is_cjk(token: str) -> bool:
    return len(token) == 1 and bool(re.match(rf"[{_CJK}]", token))


def detokenize(tokens: Iterable[str]) -> str:
    """Tokens joined by one space, none between two CJK characters."""
    out: list[str] = []
    for t in tokens:
        if out and not (_is_cjk(t) and _is_cjk(out[-1])):
            out.append(" ")
        out.append(t)
    return "".join(out)


class Vocabulary:
    """Token <-> id; ids 0..4 are ``[PAD] [BOS] [EOS] [MASK] [UNK]``, then the words by falling count
    (ties alphabetical), so the same captions always give the same ids."""

    def __init__(self, words: Iterable[str]):
        words = list(words)
        clash = [w for w in words if w in SPECIALS]
        if clash:
            raise ValueError(f"vocabulary words may not be special tokens: {clash[:3]}")
        self.tokens = [*SPECIALS, *words]
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("vocabulary has a repeated word")

    pad, bos, eos, mask, unk = range(5)

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocabulary:
        """From every caption's tokens, keeping words seen at least ``min_count`` times."""
        counts = Counter(t for c in captions for t in tokenize(c))
        return cls(w for w, k in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if k >= min_count)

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    def encode(self, text: str, max_words: int) -> list[int]:
        """``[BOS] w_1 .. w_k [EOS]`` with at most ``max_words`` words (longer captions are cut)."""
        ids = [self.index.get(t, self.unk) for t in tokenize(text)[:max_words]]
        return [self.bos, *ids, self.eos]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of generated ids: stops at ``[EOS]``; ``[BOS]``/``[PAD]``/``[MASK]`` are skipped."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if i in (self.bos, self.pad, self.mask):
                continue
            words.append(self.tokens[i])
        return detokenize(words)

    def batch(self, texts: list[str], max_words: int) -> torch.Tensor:
        """``[B, L]`` int64 ids, ``[PAD]``-filled after each caption's ``[EOS]``; L = the longest + 2."""
        rows = [self.encode(t, max_words) for t in texts]
        out = torch.full((len(rows), max(map(len, rows), default=2)), self.pad, dtype=torch.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.as_tensor(r)
        return out

    def to_tensor(self) -> torch.Tensor:
        """The words as a ``uint8`` tensor (UTF-8 JSON with the tokenizer's name), for a checkpoint."""
        blob = json.dumps({"tokenizer": TOKENIZER, "words": self.tokens[len(SPECIALS):]}, ensure_ascii=False)
        return torch.frombuffer(bytearray(blob.encode("utf-8")), dtype=torch.uint8).clone()

    @classmethod
    def from_tensor(cls, blob: torch.Tensor) -> Vocabulary:
        try:
            data = json.loads(bytes(blob.to(torch.uint8).tolist()).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"the stored vocabulary cannot be read ({e})") from None
        if not isinstance(data, dict) or data.get("tokenizer") != TOKENIZER or not isinstance(data.get("words"), list):
            raise ValueError(f"the stored vocabulary is not a {TOKENIZER} vocabulary")
        return cls(data["words"])
