"""The ``text`` feature set: every utterance/caption of an item -> CLIP token ids, CLIP text embeddings
and emotion (sentiment) logits.

Per item, ragged over its captions (the manifest's ``text``: one string, or a list of captions of
which ALL are kept, in manifest order)::

    /text/tokens     ragged [n_caps, L] int64    CLIP token ids (L = 77: start, text, end, zero padding)
    /text/clip       ragged [n_caps, D] float16  CLIP text embedding (projected, not normalised)
    /text/sentiment  ragged [n_caps, K] float16  classifier logits, columns in ``config["sentiment"]["labels"]``
    /text/count      [n] int64                   n_caps

The CLIP text tower is the one of the dataset's ``clip`` feature set (its ``config.json`` names the
weights; a checkpoint-made set is rebuilt from the same file, checked by sha256) unless a ``ClipSpec``
is given. Sentiment: a transformers sequence classifier, by default
``j-hartmann/emotion-english-distilroberta-base`` (K = 7: anger, disgust, fear, joy, neutral, sadness,
surprise; a model with exactly these labels in another order is stored in this order).
No video is decoded: rows are validated without checking that their files exist. An item without
text (none, empty string, empty list, an empty caption) is a recorded failure of this set (stage
``text``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emo.cache.featureset import FeatureSet, list_feature_sets, open_feature_set
from emo.cache.manifest import Item, read_manifest
from emo.encoders.clip import ClipEncoder, ClipSpec, load_clip, spec_from_config
from emo.encoders.hf import DEFAULT_SENTIMENT, SentimentModel, load_sentiment

from ..runner import ExtractOptions, ExtractSummary, Filled, Progress, run_extraction

__all__ = ["TextSpec", "item_captions", "text_config", "resolve_clip_spec", "extract_text"]


@dataclass(frozen=True)
class TextSpec:
    """Which CLIP text tower and which sentiment classifier.

    ``clip``: the CLIP to embed with; None = the one of the cache's ``clip`` feature set (``clip_set``
    names it when there are several; ``clip_checkpoint`` is the weights file of a checkpoint-made set
    when it moved). ``sentiment``: hub id (with ``sentiment_weights="random"`` also a local directory
    with ``config.json`` and tokenizer); ``sentiment_checkpoint``: a local ``save_pretrained``
    directory, wins over ``sentiment``; ``sentiment_weights="random"``: random init under
    ``random_seed`` (tests and the demo only; the tokenizer is still read from the model's files).
    """

    clip: ClipSpec | None = None
    clip_set: str | None = None
    clip_checkpoint: str | None = None
    sentiment: str = DEFAULT_SENTIMENT
    sentiment_checkpoint: str | None = None
    sentiment_weights: str = "pretrained"  # "pretrained" | "random"
    random_seed: int = 0

    def __post_init__(self):
        if self.sentiment_weights not in ("pretrained", "random"):
            raise ValueError(f"sentiment weights must be pretrained or random, got {self.sentiment_weights!r}")


def item_captions(item: Item) -> list[str]:
    """The item's captions (a string -> one caption). Raises ValueError saying why there is no text."""
    text = item.text
    if text is None or (isinstance(text, (str, list)) and len(text) == 0):
        raise ValueError("no text in the manifest")
    caps = [text] if isinstance(text, str) else text
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise ValueError(f"text must be a string or a list of strings, got {type(text).__name__}")
    empty = [k for k, c in enumerate(caps) if not c.strip()]
    if empty:
        raise ValueError(f"caption {empty[0]} of {len(caps)} is empty")
    return list(caps)


def resolve_clip_spec(cache_dir: str | os.PathLike, spec: TextSpec) -> ClipSpec:
    """``spec.clip``, or the ``ClipSpec`` that made the cache's clip feature set."""
    if spec.clip is not None:
        return spec.clip
    if spec.clip_set:
        fs = open_feature_set(cache_dir, spec.clip_set)
    else:
        sets = [s for s in list_feature_sets(cache_dir) if s.meta.get("modality") == "clip"]
        if len(sets) != 1:
            names = ", ".join(s.name for s in sets) or "none"
            raise ValueError(
                f"{cache_dir} holds {len(sets)} clip feature sets ({names}): name one with --clip-set, "
                "or give the CLIP model with --clip-model"
            )
        fs = sets[0]
    return spec_from_config(fs.meta, checkpoint=spec.clip_checkpoint)


def _combined_weights(clip_w: dict, sent_w: dict) -> dict:
    """The set's ``weights``: random if either model is, so the cache is marked random (README, Stage 1)."""
    kinds = {clip_w["kind"], sent_w["kind"]}
    kind = "random" if "random" in kinds else "checkpoint" if "checkpoint" in kinds else "pretrained"
    out: dict = {"kind": kind, "clip": clip_w, "sentiment": sent_w}
    if kind == "pretrained":
        out["tag"] = clip_w["tag"]
    elif kind == "checkpoint":
        blob = json.dumps([clip_w, sent_w], sort_keys=True).encode()
        out["sha256"] = hashlib.sha256(blob).hexdigest()
    else:
        out["seed"] = (sent_w if sent_w["kind"] == "random" else clip_w)["seed"]
    return out


def text_config(spec: TextSpec, clip: ClipEncoder, sentiment: SentimentModel) -> dict:
    """Everything that affects the stored values; its sha256 is the feature set's key."""
    clip_w = clip.spec.weights_provenance()
    notes = {"clip_checkpoint_path": clip_w.pop("path")} if "path" in clip_w else {}
    notes |= {f"sentiment_{k}": v for k, v in sentiment.notes.items()}
    sent_model = spec.sentiment if sentiment.weights["kind"] == "pretrained" else sentiment.architecture["model_type"]
    return {
        "modality": "text",
        "model": clip.spec.model,
        "weights": _combined_weights(clip_w, dict(sentiment.weights)),
        "notes": notes,
        "clip": {"model": clip.spec.model, "context_length": int(clip.tokenize([""]).shape[1]),
                 "embed_dim": clip.embed_dim},
        "sentiment": {"model": sent_model, "labels": list(sentiment.labels), "max_length": sentiment.max_length,
                      "architecture": sentiment.architecture},
        "text": "manifest text: a string or a list of captions, all kept in manifest order",
        "dtype": "float16",
        "compute": {"clip": str(clip.dtype).replace("torch.", ""), "sentiment": str(sentiment.dtype).replace("torch.", "")},
    }


def extract_text(
    cache_dir: str | os.PathLike,
    spec: TextSpec,
    options: ExtractOptions | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> ExtractSummary:
    """Extract the text feature set of ``cache_dir``'s manifest; returns counts for the summary line.

    Both models are loaded before anything is written (a weights failure raises ``WeightsError``).
    ``options.batch_size`` is captions per sentiment batch; ``workers``, ``timeout``, ``pixels`` and
    ``backend`` do not apply.
    """
    options = options or ExtractOptions()
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir / "manifest.jsonl")
    skipped = manifest.validate(check_files=False, skip_invalid=options.skip_invalid)  # no file is read
    clip = load_clip(resolve_clip_spec(cache_dir, spec), device=device, precision=precision)
    sentiment = load_sentiment(
        spec.sentiment, spec.sentiment_checkpoint, spec.sentiment_weights, spec.random_seed,
        device=device, precision=precision,
    )
    fs = FeatureSet.create(cache_dir, text_config(spec, clip, sentiment))
    fill = _TextFill(clip, sentiment, options.batch_size)
    return run_extraction(
        fs, manifest, options, fill, skipped=skipped, ragged={"text/tokens", "text/clip", "text/sentiment"},
        dists=("emo", "torch", "open_clip_torch", "transformers", "h5py"), units=("items", "captions"),
    )


class _TextFill:
    """Fills one shard: all captions of its items through CLIP's tokenizer and text tower and the
    sentiment classifier, in batches of captions."""

    def __init__(self, clip: ClipEncoder, sentiment: SentimentModel, batch_size: int):
        self.clip, self.sentiment, self.batch_size = clip, sentiment, batch_size

    def __call__(self, k: int, items: list[Item], progress: Progress) -> Filled:
        filled = Filled()
        caps: dict[str, list[str]] = {}
        for it in items:
            try:
                caps[it.id] = item_captions(it)
            except ValueError as e:
                filled.errors[it.id] = ("text", str(e))
                progress.failed()
        texts = [c for cs in caps.values() for c in cs]
        if not texts:
            return filled
        tokens = self.clip.tokenize(texts).numpy().astype(np.int64)  # [C, L]
        emb = self.clip.encode_text(texts).numpy().astype(np.float16)  # [C, D]
        logits = self.sentiment.logits(texts, self.batch_size).numpy().astype(np.float16)  # [C, K]
        at = 0
        for item_id, cs in caps.items():
            rows = slice(at, at + len(cs))
            filled.arrays[item_id] = {
                "text/tokens": tokens[rows],
                "text/clip": emb[rows],
                "text/sentiment": logits[rows],
                "text/count": np.int64(len(cs)),
            }
            at += len(cs)
            progress.done(len(cs))
        return filled
