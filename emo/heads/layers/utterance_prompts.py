"""EmoAsst's six prompt formats (EmoAsst paper Fig. 3; docs/papers.md#emoasst) and the per-class query prompt.

Each training item gets one of six sentences naming its emotion, drawn at random per step among the
formats whose fields the item has::

    1  A {emotion} video.
    2  A {emotion} person is speaking.
    3  The speaker has a {emotion} face.
    4  The speaker is saying {utterance} with a {emotion} emotion.
    5  {speaker} is {emotion} in this video.
    6  The utterance {utterance} shows the speaker's {emotion}.

The paper's "man/woman" and "He/She" become "person" and "The speaker": MELD gives no gender (docs/papers.md#emoasst).
``{emotion}`` is the class name with underscores as spaces; ``{utterance}`` is the item's first caption
and ``{speaker}`` its manifest speaker, both stripped and inserted verbatim (no quotes are added: the
paper shows none). A format needing a field the item lacks (no text, no speaker) is never drawn for it.
Formats 1-3 need only the emotion: they are the class prompts of the zero-shot classifier, and format
1 is the visual fusion module's per-class query.
"""

from __future__ import annotations

from .prompts import class_phrase

__all__ = ["FORMATS", "QUERY_FORMAT", "CLASS_FORMATS", "item_prompts", "class_prompts"]

FORMATS = (
    "A {emotion} video.",
    "A {emotion} person is speaking.",
    "The speaker has a {emotion} face.",
    "The speaker is saying {utterance} with a {emotion} emotion.",
    "{speaker} is {emotion} in this video.",
    "The utterance {utterance} shows the speaker's {emotion}.",
)
QUERY_FORMAT = 1  # "A {emotion} video.": the VFM's per-class queries (1-based, as in the paper)
CLASS_FORMATS = (1, 2, 3)  # the formats that need only the emotion: zero-shot class prompts


def _field(value: str | None) -> str | None:
    value = value.strip() if isinstance(value, str) else None
    return value or None


def item_prompts(emotion: str, utterance: str | None, speaker: str | None) -> list[str | None]:
    """The six prompts of one item (None where the format needs a field the item lacks)."""
    fields = {"emotion": class_phrase(emotion), "utterance": _field(utterance), "speaker": _field(speaker)}
    out: list[str | None] = []
    for fmt in FORMATS:
        needs = [k for k in ("utterance", "speaker") if "{" + k + "}" in fmt]
        out.append(None if any(fields[k] is None for k in needs) else fmt.format(**fields))
    return out


def class_prompts(classes: list[str], formats: tuple[int, ...] | list[int] = CLASS_FORMATS) -> list[list[str]]:
    """``[C][len(formats)]`` prompts of each class in the given label-only formats (1-based)."""
    bad = [f for f in formats if f not in CLASS_FORMATS]
    if bad or not formats:
        raise ValueError(f"class prompt formats must be among {CLASS_FORMATS} (they need only the emotion), got {list(formats)}")
    return [[FORMATS[f - 1].format(emotion=class_phrase(c)) for f in formats] for c in classes]
