"""Prompt builders: PE-CLIP's CA prompts in every Table 7 variant (exact strings), the emotional and
CoOp prompts, and the no-silent-truncation check against open_clip's real tokenizer."""

from __future__ import annotations

import pytest

from emo.encoders.clip import TINY_MODEL, ClipSpec, load_clip
from emo.heads.layers.prompts import (
    EMOTIONAL_TEMPLATE,
    CAPromptConfig,
    ca_prompts,
    check_fits,
    coop_prompts,
    emotional_prompts,
    neutral_prompt,
)

CLASSES = ["anger", "joy", "sadness"]

# (prefix, separator, reverse) -> [p_1, p_2, p_3, p_0], written out by hand
EXPECTED = {
    ("with/without", "; ", False): [
        "with anger; without joy; without sadness",
        "without anger; with joy; without sadness",
        "without anger; without joy; with sadness",
        "without anger; without joy; without sadness",
    ],
    ("with/without", "; ", True): [
        "without sadness; without joy; with anger",
        "without sadness; with joy; without anger",
        "with sadness; without joy; without anger",
        "without sadness; without joy; without anger",
    ],
    ("with/without", ", ", False): [
        "with anger, without joy, without sadness",
        "without anger, with joy, without sadness",
        "without anger, without joy, with sadness",
        "without anger, without joy, without sadness",
    ],
    ("with/without", ", ", True): [
        "without sadness, without joy, with anger",
        "without sadness, with joy, without anger",
        "with sadness, without joy, without anger",
        "without sadness, without joy, without anger",
    ],
    ("only/no", "; ", False): [
        "only anger; no joy; no sadness",
        "no anger; only joy; no sadness",
        "no anger; no joy; only sadness",
        "no anger; no joy; no sadness",
    ],
    ("only/no", "; ", True): [
        "no sadness; no joy; only anger",
        "no sadness; only joy; no anger",
        "only sadness; no joy; no anger",
        "no sadness; no joy; no anger",
    ],
    ("only/no", ", ", False): [
        "only anger, no joy, no sadness",
        "no anger, only joy, no sadness",
        "no anger, no joy, only sadness",
        "no anger, no joy, no sadness",
    ],
    ("only/no", ", ", True): [
        "no sadness, no joy, only anger",
        "no sadness, only joy, no anger",
        "only sadness, no joy, no anger",
        "no sadness, no joy, no anger",
    ],
}


@pytest.fixture(scope="module")
def tokenize():
    return load_clip(ClipSpec(model=TINY_MODEL, weights="random"), device="cpu").tokenize


@pytest.mark.parametrize("variant", sorted(EXPECTED), ids=lambda v: f"{v[0]}|{v[1]!r}|rev={v[2]}")
def test_ca_prompts_every_variant(variant):
    prefix, separator, reverse = variant
    *prompts, neutral = EXPECTED[variant]
    assert ca_prompts(CLASSES, prefix=prefix, separator=separator, reverse=reverse) == prompts
    assert neutral_prompt(CLASSES, prefix=prefix, separator=separator, reverse=reverse) == neutral


def test_paper_default_and_class_names():
    assert ca_prompts(CLASSES) == EXPECTED[("with/without", "; ", False)][:3]
    assert CAPromptConfig() == CAPromptConfig("with/without", "; ", False)
    # underscores -> spaces; case and everything else as given
    assert ca_prompts(["Happy_face", "sad"]) == ["with Happy face; without sad", "without Happy face; with sad"]
    assert neutral_prompt(["only"]) == "without only"


@pytest.mark.parametrize(
    "kwargs", [{"prefix": "with"}, {"prefix": "no/only"}, {"separator": ";"}, {"separator": " | "}]
)
def test_bad_options_raise(kwargs):
    with pytest.raises(ValueError, match="prefix|separator"):
        ca_prompts(CLASSES, **kwargs)


def test_empty_classes_raise():
    with pytest.raises(ValueError, match="at least one class"):
        neutral_prompt([])
    with pytest.raises(ValueError, match="empty"):
        ca_prompts(["anger", "_"])


def test_emotional_and_coop_prompts():
    assert EMOTIONAL_TEMPLATE == "this picture evokes a feeling like {}"
    assert emotional_prompts(["anger", "happy_face"]) == [
        "this picture evokes a feeling like anger",
        "this picture evokes a feeling like happy face",
    ]
    assert coop_prompts(["anger", "happy_face"], 4) == ["X X X X anger.", "X X X X happy face."]
    with pytest.raises(ValueError, match="n_ctx"):
        coop_prompts(CLASSES, 0)


def test_check_fits_with_open_clip_tokenizer(tokenize):
    ve8 = ["anger", "anticipation", "disgust", "fear", "joy", "sadness", "surprise", "trust"]
    prompts = ca_prompts(ve8) + [neutral_prompt(ve8)]
    ids = check_fits(tokenize, prompts)
    assert ids.shape == (9, 77)
    # 74 one-token words + start + end = 76 positions: fits; 75 words fill all 77: rejected, since a
    # truncated prompt looks the same (open_clip keeps an end token in the last place)
    assert check_fits(tokenize, ["a " * 74]).shape == (1, 77)
    long = "with anger " * 60
    with pytest.raises(ValueError, match="do not fit") as err:
        check_fits(tokenize, ["joy", "a " * 75, long])
    assert "2 prompt(s)" in str(err.value) and repr(long) in str(err.value) and "'joy'" not in str(err.value)


def test_described_classes_cover_dfew_and_ferv39k_in_emos_own_words(tmp_path):
    import json

    from emo.datasets.common import DFEW_CLASSES, FERV39K_CLASSES
    from emo.heads.layers.prompts import CLASS_TEXT_DIR, described_classes

    meta = json.loads((CLASS_TEXT_DIR / "facial-descriptions.json").read_text())
    assert "emo's own wording" in meta["description"]
    for classes in (DFEW_CLASSES, FERV39K_CLASSES):
        texts = described_classes(classes)
        assert [t.split(":")[0] for t in texts] == classes  # in class order, each naming its class first
        assert all(len(t.split(":", 1)[1].split()) >= 6 for t in texts)  # a description, not just the name
        assert described_classes(classes, names_only=True) == classes
    with pytest.raises(ValueError, match=r"describes no class \['contempt'\]"):
        described_classes(["happy", "contempt"])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a class-text file"):
        described_classes(["happy"], source=str(tmp_path / "bad.json"))
