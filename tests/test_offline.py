"""`--weights random` needs no network: the default models' architectures ship with emo, and what is not
shipped (the sentiment model's vocabulary) is refused with the way out, after no network attempt."""

from __future__ import annotations

import socket

import pytest

from emo.encoders.clip import TINY_MODEL, ClipSpec, load_clip
from emo.encoders.hf import DEFAULT_SENTIMENT, DEFAULT_WAV2VEC2, load_sentiment, load_wav2vec2, shipped_config
from emo.encoders.weights import WeightsError


@pytest.fixture
def no_network(monkeypatch):
    tried = []

    def refuse(*args, **kwargs):
        tried.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return tried


def test_random_wav2vec2_of_the_default_model_builds_offline_from_the_shipped_architecture(no_network):
    enc = load_wav2vec2(DEFAULT_WAV2VEC2, weights="random", seed=3, device="cpu", precision="fp32")
    assert enc.weights == {"kind": "random", "seed": 3} and no_network == []
    assert (enc.n_layers, enc.hidden_size) == (12, 768) and enc.architecture["feat_extract_norm"] == "group"
    assert enc.normalize is True  # wav2vec2-base's preprocessor: zero mean, unit variance
    assert shipped_config(DEFAULT_WAV2VEC2) is not None and shipped_config("some/other-model") is None


def test_random_clip_builds_offline(no_network):
    enc = load_clip(ClipSpec(model=TINY_MODEL, weights="random"), device="cpu", precision="fp32")
    assert enc.encode_images is not None and no_network == []


def test_random_sentiment_of_the_default_model_names_the_missing_vocabulary_offline(no_network, monkeypatch,
                                                                                      tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hugging Face cache
    with pytest.raises(WeightsError, match="tokenizer .* is not shipped .* --sentiment DIR"):
        load_sentiment(DEFAULT_SENTIMENT, weights="random", device="cpu", precision="fp32")
    assert no_network == []
