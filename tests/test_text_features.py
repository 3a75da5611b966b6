"""The text feature set: every caption kept (CLIP token ids, CLIP text embeddings of the cache's clip set,
sentiment logits of a transformers classifier), items without text recorded, the weights policy, and
clip + audio + text feature sets joined on id by the loader.

Models: the tiny open_clip ViT and a tiny random RoBERTa classifier (7 labels) with a small BPE
tokenizer, saved to a temporary directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emo.cache.featureset import list_feature_sets
from emo.cache.loader import RaggedArray, load_features
from emo.cache.manifest import Item, Manifest, write_manifest
from emo.cache.shard import read_shard
from emo.cache.verify import verify_feature_set
from emo.decode.sampling import SamplingConfig
from emo.encoders.clip import TINY_MODEL, ClipSpec, WeightsError, load_clip
from emo.encoders.hf import SENTIMENT_LABELS
from emo.extract.modalities.audio import AudioSpec, extract_audio
from emo.extract.modalities.clip import extract_clip
from emo.extract.modalities.text import TextSpec, extract_text
from emo.extract.runner import ExtractOptions
from tests import videos
from tests.test_audio import tiny_wav2vec2

OPTS = dict(progress=False, shard_size=3, workers=0)
CAPTIONS = {
    "one": "a happy person smiles",
    "three": ["an angry man shouts", "she is sad and cries", "a calm dog sleeps on the rug"],
    "long": "she smiles " * 60,  # past the tokenizers' lengths: truncated, never failed
}
NO_TEXT = {"none": None, "blank": "", "empty list": [], "blank caption": ["fine words", "  "]}


def tiny_sentiment(path: Path, labels=SENTIMENT_LABELS, seed: int = 0) -> Path:
    """A 1-block RoBERTa classifier with ``labels`` (id order) and a byte-level BPE tokenizer, saved to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForSequenceClassification

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([c for cs in CAPTIONS.values() for c in ([cs] if isinstance(cs, str) else cs)], trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=64,
    )
    cfg = RobertaConfig(
        vocab_size=len(fast), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=72, pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
    )
    torch.manual_seed(seed)
    RobertaForSequenceClassification(cfg).eval().save_pretrained(path)
    fast.save_pretrained(path)
    return path


def _captions(item_text) -> list[str]:
    return [item_text] if isinstance(item_text, str) else list(item_text)


def _manifest(root: Path, texts: dict, files: dict[str, str] | None = None) -> None:
    files = files or {}
    items = [Item(id=i, path=files.get(i, f"{i}.mp4"), label="x", text=t) for i, t in texts.items()]
    m = Manifest(dataset="txt", classes=["x"], items=items, root=str(root), split_schemes={"all": ["0"]})
    write_manifest(m, root / "manifest.jsonl")


def _stored(fs) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for k in fs.done_indices():
        ids, arrays = read_shard(fs.shard_path(k))
        for row, i in enumerate(ids):
            out[i] = {n: (a[0][a[1][row] : a[1][row + 1]] if isinstance(a, tuple) else a[row]) for n, a in arrays.items()}
    return out


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory):
    """Captions only (no video files at all), CLIP given, a tiny checkpoint whose labels are shuffled."""
    root = tmp_path_factory.mktemp("txt")
    shuffled = ("joy", "anger", "surprise", "neutral", "fear", "sadness", "disgust")
    model_dir = tiny_sentiment(root.parent / f"{root.name}-sent", labels=shuffled)
    _manifest(root, {**CAPTIONS, **NO_TEXT})
    clip = ClipSpec(model=TINY_MODEL, weights="random", random_seed=3)
    spec = TextSpec(clip=clip, sentiment_checkpoint=str(model_dir))
    summary = extract_text(root, spec, ExtractOptions(**OPTS), device="cpu")
    (fs,) = list_feature_sets(root)
    return root, model_dir, shuffled, spec, summary, fs


def test_items_without_text_are_recorded_failures_of_the_text_set(text_cache):
    root, _, _, _, summary, fs = text_cache
    assert (summary.ok, summary.failed, summary.total) == (3, 4, 7)
    assert summary.done_here == 3 and summary.frames_here == 5 and "items/s" in summary.line() and "captions/s" in summary.line()
    failures = {f["id"]: f for f in fs.failures()}
    assert set(failures) == set(NO_TEXT)
    assert all(f["stage"] == "text" and f["error"] for f in failures.values())
    assert "caption 1 of 2 is empty" in failures["blank caption"]["error"]
    assert verify_feature_set(fs).ok
    assert fs.random_weights, "a random CLIP marks the text set random"


def test_every_caption_is_kept_with_clip_tokens_and_embeddings(text_cache):
    _, _, _, spec, _, fs = text_cache
    clip = load_clip(spec.clip, device="cpu")
    stored = _stored(fs)
    assert set(stored) == set(CAPTIONS)
    for i, text in CAPTIONS.items():
        caps = _captions(text)
        got = stored[i]
        assert int(got["text/count"]) == len(caps) == len(got["text/tokens"]) == len(got["text/clip"])
        assert got["text/tokens"].shape == (len(caps), 77) and got["text/tokens"].dtype == np.int64
        np.testing.assert_array_equal(got["text/tokens"], clip.tokenize(caps).numpy())
        assert got["text/clip"].dtype == np.float16
        np.testing.assert_allclose(got["text/clip"].astype(np.float32), clip.encode_text(caps).numpy(), atol=2e-3, rtol=2e-3)
    assert fs.config["clip"] == {"model": TINY_MODEL, "context_length": 77, "embed_dim": clip.embed_dim}


def test_sentiment_logits_equal_a_direct_model_call_in_canonical_label_order(text_cache):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, model_dir, shuffled, _, _, fs = text_cache
    assert fs.config["sentiment"]["labels"] == list(SENTIMENT_LABELS)
    assert fs.config["sentiment"]["architecture"]["model_labels"] == list(shuffled)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    column = [shuffled.index(name) for name in SENTIMENT_LABELS]  # model output -> stored column
    stored = _stored(fs)
    for i, text in CAPTIONS.items():
        for row, caption in enumerate(_captions(text)):  # one caption per call: no padding at all
            with torch.inference_mode():
                logits = model(**tokenizer(caption, truncation=True, return_tensors="pt")).logits[0]
            got = stored[i]["text/sentiment"][row]
            assert got.shape == (7,) and got.dtype == np.float16
            np.testing.assert_allclose(got.astype(np.float32), logits[column].numpy(), atol=2e-3, rtol=2e-3)


def test_rerun_writes_nothing_and_the_sentiment_model_is_in_the_key(text_cache, tmp_path):
    root, model_dir, _, spec, _, fs = text_cache
    mtimes = {p: p.stat().st_mtime_ns for p in (fs.path / "shards").glob("*")}
    again = extract_text(root, spec, ExtractOptions(**OPTS), device="cpu")
    assert again.done_here == 0 and again.feature_set == fs.name
    assert {p: p.stat().st_mtime_ns for p in (fs.path / "shards").glob("*")} == mtimes
    other = tiny_sentiment(tmp_path / "other", seed=1)
    s = extract_text(root, TextSpec(clip=spec.clip, sentiment_checkpoint=str(other)), ExtractOptions(**OPTS), device="cpu")
    assert s.feature_set != fs.name and len(list_feature_sets(root)) == 2


def test_failed_sentiment_weights_stop_the_run_and_name_both_options(tmp_path):
    models, tmp_path = tmp_path / "models", tmp_path / "cache"
    tmp_path.mkdir()
    _manifest(tmp_path, {"one": "hello"})
    with pytest.raises(ValueError, match="0 clip feature sets.*--clip-model"):
        extract_text(tmp_path, TextSpec(sentiment_checkpoint=str(models)), ExtractOptions(**OPTS), device="cpu")
    clip = ClipSpec(model=TINY_MODEL, weights="random")
    for spec in (
        TextSpec(clip=clip, sentiment_checkpoint=str(tmp_path / "missing")),
        TextSpec(clip=clip, sentiment=str(tmp_path / "not" / "a" / "hub" / "id")),
    ):
        with pytest.raises(WeightsError, match="--sentiment-checkpoint") as e:
            extract_text(tmp_path, spec, ExtractOptions(**OPTS), device="cpu")
        assert "--sentiment HUB_ID" in str(e.value)
    no_weights = tiny_sentiment(models / "sent")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="no weights file"):
        extract_text(tmp_path, TextSpec(clip=clip, sentiment_checkpoint=str(no_weights)), ExtractOptions(**OPTS), device="cpu")
    assert list_feature_sets(tmp_path) == [], "no feature set may be created when weights fail"


def test_clip_audio_and_text_sets_join_on_id(tmp_path):
    """clip ok for all four; audio fails the silent video; text fails the item without text."""
    models, tmp_path = tmp_path / "models", tmp_path / "cache"
    tmp_path.mkdir()
    files = {"a": "a.mp4", "b": "b.mp4", "silent": "silent.mp4", "mute text": "c.mp4"}
    for i, f in files.items():
        videos.make_video(tmp_path / f, 12 + len(i), audio=(i != "silent"))
    texts = {"a": "a happy person smiles", "b": ["she is sad and cries", "an angry man shouts"],
             "silent": "a calm dog sleeps on the rug", "mute text": None}
    _manifest(tmp_path, texts, files)
    opts = ExtractOptions(**OPTS)
    clip = extract_clip(tmp_path, ClipSpec(model=TINY_MODEL, weights="random", random_seed=5),
                        SamplingConfig(segments=2), opts, device="cpu")
    w2v = tiny_wav2vec2(models / "w2v")
    audio = extract_audio(tmp_path, AudioSpec(checkpoint=str(w2v), layers=(2,)), opts, device="cpu")
    sent = tiny_sentiment(models / "sent")
    text = extract_text(tmp_path, TextSpec(sentiment=str(sent), sentiment_weights="random", random_seed=1),
                        opts, device="cpu")  # CLIP: the cache's clip set; sentiment: random init of that config
    assert (clip.failed, audio.failed, text.failed) == (0, 1, 1)
    text_fs = next(fs for fs in list_feature_sets(tmp_path) if fs.name == text.feature_set)
    clip_fs = next(fs for fs in list_feature_sets(tmp_path) if fs.name == clip.feature_set)
    assert text_fs.config["weights"]["clip"] == clip_fs.config["weights"] == {"kind": "random", "seed": 5}
    assert text_fs.config["weights"]["sentiment"] == {"kind": "random", "seed": 1} and text_fs.random_weights

    fd = load_features(tmp_path, feature_sets=[clip.feature_set, audio.feature_set, text.feature_set],
                       arrays=["clip/cls", "audio/layer02", "audio/length", "text/clip", "text/tokens", "text/count"])
    assert fd.ids == ["a", "b"]  # in both audio and text, manifest order
    assert fd.arrays["clip/cls"].shape[0] == 2
    assert isinstance(fd.arrays["text/clip"], RaggedArray) and fd.arrays["text/count"].tolist() == [1, 2]
    assert fd.arrays["text/clip"].lengths.tolist() == [1, 2]
    assert fd.arrays["audio/layer02"].lengths.tolist() == fd.arrays["audio/length"].tolist()
    encoder = load_clip(ClipSpec(model=TINY_MODEL, weights="random", random_seed=5), device="cpu")
    for row, i in enumerate(fd.ids):
        emb = encoder.encode_text(_captions(texts[i])).numpy()
        np.testing.assert_allclose(fd.arrays["text/clip"][row].float().numpy(), emb, atol=2e-3, rtol=2e-3)
    audio_fs = next(fs for fs in list_feature_sets(tmp_path) if fs.name == audio.feature_set)
    stored = _stored(audio_fs)
    for row, i in enumerate(fd.ids):
        np.testing.assert_array_equal(fd.arrays["audio/layer02"][row].numpy(), stored[i]["audio/layer02"])
    test_only = fd.select(np.array([False, True]))
    assert test_only.ids == ["b"] and len(test_only.arrays["text/tokens"][0]) == 2


def test_cli_extract_text_uses_the_same_feature_set(text_cache):
    from typer.testing import CliRunner

    from emo.cli import app

    root, model_dir, _, spec, summary, fs = text_cache
    args = ["extract", "text", str(root), "--sentiment-checkpoint", str(model_dir), "--clip-model", spec.clip.model,
            "--weights", "random", "--seed", str(spec.clip.random_seed), "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert "this run 0 items" in res.output, res.output
    assert res.exit_code == 1 and f"{summary.failed} item(s) failed" in res.output
    assert fs.name in res.output
