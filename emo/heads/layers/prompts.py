"""Prompt builders: PE-CLIP's category-aggregated (CA) prompts, the emotional prompt, CoOp placeholders.

CA prompts (PE-CLIP paper, §3.4): for classes ``e_1..e_n`` the prompt of class ``i`` tags every class,
``"with"`` for ``e_i`` and ``"without"`` for the others, joined by ``"; "``::

    p_i = "without e_1; ...; with e_i; ...; without e_n"
    p_0 = "without e_1; ...; without e_n"        (the neutral prompt, the decoder's prototype)

Table 7's variants are options of :class:`CAPromptConfig`: ``prefix="only/no"`` (``"only"`` replaces
``"with"``, ``"no"`` replaces ``"without"``), ``separator=", "``, and ``reverse=True`` (the tags run
from ``e_n`` to ``e_1``; the list of prompts stays in class order, so ``p_i`` is still class ``i``'s).
Class names are used as given except that underscores become spaces; nothing is lower-cased or
punctuated (the paper's prompts have no trailing period).

Prompts are never silently truncated: :func:`check_fits` raises naming the prompt that does not fit
the text tower's context.

Described classes (DuSE, docs/papers.md#duse): :func:`described_classes` gives each class its name followed by a
short description of its facial changes, from a data file in ``emo/configs/classes/`` that says it is
emo's own wording (the paper does not print its texts); ``names_only`` gives the bare names.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from emo import CONFIG_DIR

__all__ = [
    "CAPromptConfig",
    "PREFIXES",
    "SEPARATORS",
    "EMOTIONAL_TEMPLATE",
    "class_phrase",
    "ca_prompts",
    "neutral_prompt",
    "emotional_prompts",
    "coop_prompts",
    "check_fits",
    "described_classes",
    "CLASS_TEXT_DIR",
]

CLASS_TEXT_DIR = CONFIG_DIR / "classes"  # <name>.json: {"description", "texts"}

PREFIXES = ("with/without", "only/no")  # "POSITIVE/NEGATIVE" tag words: the paper's, Table 7's
SEPARATORS = ("; ", ", ")  # the paper's, Table 7's
EMOTIONAL_TEMPLATE = "this picture evokes a feeling like {}"  # Table 4's "emotional prompt" classifier


@dataclass(frozen=True)
class CAPromptConfig:
    """How CA prompts are worded (paper default; the other values are Table 7's variants).

    ``prefix`` is ``"POSITIVE/NEGATIVE"``: ``"with/without"`` or ``"only/no"``; ``separator`` joins the
    tags: ``"; "`` or ``", "``; ``reverse`` lists the tags from the last class to the first.
    """

    prefix: str = "with/without"
    separator: str = "; "
    reverse: bool = False

    def __post_init__(self):
        if self.prefix not in PREFIXES:
            raise ValueError(f"CA prompt prefix must be one of {PREFIXES}, got {self.prefix!r}")
        if self.separator not in SEPARATORS:
            raise ValueError(f"CA prompt separator must be one of {SEPARATORS}, got {self.separator!r}")

    @property
    def words(self) -> tuple[str, str]:
        """``(positive, negative)`` tag words, e.g. ``("with", "without")``."""
        pos, neg = self.prefix.split("/")
        return pos, neg


def class_phrase(name: str) -> str:
    """A class name as it appears in a prompt: underscores become spaces, nothing else changes."""
    phrase = name.replace("_", " ").strip()
    if not phrase:
        raise ValueError(f"class name {name!r} is empty")
    return phrase


def _tags(classes: Sequence[str], positive: int | None, cfg: CAPromptConfig) -> str:
    """Tags for every class (``positive`` gets the positive word; None: none does), joined."""
    if len(classes) == 0:
        raise ValueError("CA prompts need at least one class")
    pos, neg = cfg.words
    tags = [f"{pos if i == positive else neg} {class_phrase(c)}" for i, c in enumerate(classes)]
    if cfg.reverse:
        tags.reverse()
    return cfg.separator.join(tags)


def ca_prompts(
    classes: Sequence[str], *, prefix: str = "with/without", separator: str = "; ", reverse: bool = False
) -> list[str]:
    """``[p_1, ..., p_n]``: class ``i``'s CA prompt at index ``i`` (whatever the tag order)."""
    cfg = CAPromptConfig(prefix, separator, reverse)
    return [_tags(classes, i, cfg) for i in range(len(classes))]


def neutral_prompt(
    classes: Sequence[str], *, prefix: str = "with/without", separator: str = "; ", reverse: bool = False
) -> str:
    """``p_0``: every class tagged with the negative word (the decoder's prototype prompt)."""
    return _tags(classes, None, CAPromptConfig(prefix, separator, reverse))


def emotional_prompts(classes: Sequence[str], template: str = EMOTIONAL_TEMPLATE) -> list[str]:
    """One prompt per class from ``template`` (default: "this picture evokes a feeling like {}")."""
    return [template.format(class_phrase(c)) for c in classes]


def coop_prompts(classes: Sequence[str], n_ctx: int, placeholder: str = "X") -> list[str]:
    """CoOp's ``"X X ... X {class}."`` with ``n_ctx`` placeholder words whose embeddings the learnable
    context replaces (class token at the end, as in CoOp's default)."""
    if n_ctx < 1:
        raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
    ctx = " ".join([placeholder] * n_ctx)
    return [f"{ctx} {class_phrase(c)}." for c in classes]


def check_fits(
    tokenize: Callable[[list[str]], torch.Tensor], prompts: Sequence[str], context_length: int = 77
) -> torch.Tensor:
    """Tokenize ``prompts`` and return the ``[P, context_length]`` ids, or raise ``ValueError`` naming
    every prompt that does not fit.

    ``tokenize(texts) -> [P, L]`` int ids with zero padding (open_clip's tokenizer, which truncates
    silently and keeps an end token in the last place). A prompt whose ids fill the last position is
    rejected: a truncated prompt looks exactly like one that fits with no room to spare, so the rule is
    conservative by one token.
    """
    prompts = list(prompts)
    ids = tokenize(prompts)  # [P, L]
    if ids.ndim != 2 or ids.shape[0] != len(prompts):
        raise ValueError(f"tokenizer returned shape {tuple(ids.shape)} for {len(prompts)} prompts")
    if ids.shape[1] != context_length:
        raise ValueError(f"tokenizer returned {ids.shape[1]} positions, expected context length {context_length}")
    full = (ids[:, -1] != 0).nonzero().flatten().tolist()
    if full:
        names = "; ".join(repr(prompts[i]) for i in full)
        raise ValueError(
            f"{len(full)} prompt(s) do not fit the text context of {context_length} tokens "
            f"(they would be truncated): {names}"
        )
    return ids


def described_classes(classes: Sequence[str], source: str = "facial-descriptions", names_only: bool = False,
                      folder: Path = CLASS_TEXT_DIR) -> list[str]:
    """One text per class: ``"<name>: <description of its facial changes>"`` from ``folder/<source>.json``
    (``{"description", "texts": {class: text}}``), or the bare :func:`class_phrase` with ``names_only``.
    A class the file does not describe raises ``ValueError`` naming the class and the file."""
    if names_only:
        return [class_phrase(c) for c in classes]
    path = Path(source) if source.endswith(".json") else folder / f"{source}.json"
    try:
        texts = json.loads(path.read_text(encoding="utf-8"))["texts"]
    except FileNotFoundError:
        raise ValueError(f"no class texts {source!r} ({path})") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a class-text file ({{'description', 'texts': {{class: text}}}}): {e}") from None
    missing = [c for c in classes if c not in texts]
    if missing:
        raise ValueError(f"{path} describes no class {missing} (it has {sorted(texts)}); add them or use names only")
    return [str(texts[c]) for c in classes]
