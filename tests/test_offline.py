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


def test_random_sentiment_of_the_default_model_runs_offline_on_byte_tokens_and_says_so(no_network, monkeypatch,
                                                                                         tmp_path, capfd):
    import torch

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hugging Face cache: no vocabulary anywhere
    model = load_sentiment(DEFAULT_SENTIMENT, weights="random", seed=2, device="cpu", precision="fp32")
    assert no_network == []
    assert model.architecture["tokenizer"] == "emo-bytes-v1" and model.weights == {"kind": "random", "seed": 2}
    assert "RANDOM-weight model reads emo's byte-level tokens" in capfd.readouterr().err
    logits = model.logits(["I am so happy today!", "x" * 3000])  # long texts truncated to the positions
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    ids = model.tokenizer(["ab"])["input_ids"][0]
    assert ids == [0, ids[1], ids[2], 2] and ids[1] != ids[2]  # <s>, one token per byte, </s>


def test_real_weights_never_fall_back_to_byte_tokens(no_network, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsError):  # pretrained: nothing to download offline, and no stand-in
        load_sentiment(DEFAULT_SENTIMENT, weights="pretrained", device="cpu", precision="fp32")
