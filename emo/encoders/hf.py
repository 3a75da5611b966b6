"""Frozen transformers models: the only module of ``emo`` that imports ``transformers`` (lazily, at use).

Two models, one weights policy (README, Stage 1, ``weights.py``, the same as ``clip.py``):

- ``load_wav2vec2``: ``Wav2Vec2Model`` for the ``audio`` feature set (default ``facebook/wav2vec2-base``);
- ``load_sentiment``: an ``AutoModelForSequenceClassification`` and its tokenizer for the ``text`` set
  (default ``j-hartmann/emotion-english-distilroberta-base``, 7 emotion logits).

Weights, strictly:
- ``weights="pretrained"``: ``from_pretrained(model)`` downloads through transformers as usual;
- ``checkpoint=DIR`` (wins over ``model``): a local directory written by ``save_pretrained``;
- ``weights="random"``: the architecture of ``checkpoint`` or ``model`` (its ``config.json``) with
  random init under a fixed seed, and only then. The default models' architectures ship with emo
  (``emo/configs/models/<org>--<name>/``), so random weights need no network; any other model is read from
  a local directory (``--model DIR``) or the hub. The sentiment tokenizer is the model's own vocabulary
  and is not shipped: offline it comes from the Hugging Face cache or a directory holding it, and when
  neither has it a random-weight model reads :func:`byte_tokenizer`'s tokens (said, and keyed).
A load failure, or a checkpoint that leaves any parameter of the model uninitialised (missing or
mismatched keys), raises ``WeightsError`` naming both options; random weights never stand in.

Provenance (what a cache key holds): ``{"kind": "pretrained", "tag": "hub", "id": ..., "revision": ...}``,
``{"kind": "checkpoint", "sha256": ..., "files": [...]}`` (sha256 over the names and sha256s of the
directory's weight, config and tokenizer files, so the same directory on another box is the same
feature set; the path is an unkeyed note) or ``{"kind": "random", "seed": s}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emo import CONFIG_DIR

from .weights import WeightsError, file_sha256, resolve_device, resolve_dtype

__all__ = [
    "DEFAULT_WAV2VEC2",
    "DEFAULT_SENTIMENT",
    "SENTIMENT_LABELS",
    "SAMPLE_RATE",
    "Wav2Vec2Encoder",
    "SentimentModel",
    "load_wav2vec2",
    "load_sentiment",
    "dir_provenance",
    "wav2vec2_architecture",
    "byte_tokenizer",
    "BYTE_TOKENIZER",
]

DEFAULT_WAV2VEC2 = "facebook/wav2vec2-base"
DEFAULT_SENTIMENT = "j-hartmann/emotion-english-distilroberta-base"
SENTIMENT_LABELS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
SAMPLE_RATE = 16000  # Hz, what wav2vec 2.0 was trained on
_WEIGHTS = ("pretrained", "random")
MODEL_CONFIG_DIR = CONFIG_DIR / "models"  # shipped architectures
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_CONFIG_FILES = (  # files of a model directory that change the outputs besides the weights
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
)
_CONFIG_NOT_KEYED = ("_name_or_path", "transformers_version", "_commit_hash", "architectures", "dtype", "torch_dtype")


def _hint(what: str, model_opt: str, checkpoint_opt: str, example: str) -> str:
    return (
        f"Give the {what} weights either as {model_opt} HUB_ID (downloads through transformers, e.g. "
        f"{example}) or as {checkpoint_opt} DIR (a local directory written by save_pretrained, for offline "
        "boxes). Random weights are never used instead."
    )


def dir_provenance(path: str | Path) -> dict:
    """``{"kind": "checkpoint", "sha256", "files"}`` of a model directory (its weight/config/tokenizer files)."""
    path = Path(path)
    files = sorted(
        p for p in path.iterdir() if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name in _CONFIG_FILES)
    )
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in files):
        raise OSError(f"no weights file ({', '.join('*' + s for s in _WEIGHT_SUFFIXES)}) in {path}")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
    out = {"kind": "checkpoint", "sha256": h.hexdigest(), "files": [p.name for p in files]}
    source = path / "emo_source.json"  # written by emo extract convert-segue: where the weights came from
    if source.is_file():
        meta = json.loads(source.read_text())
        out["converted_from"] = {"source": meta.get("source"), "sha256": meta.get("sha256")}
    return out


def _config_sha256(config) -> str:
    """sha256 of a transformers config without the fields that name files or versions (random-weights key)."""
    d = {k: v for k, v in config.to_dict().items() if k not in _CONFIG_NOT_KEYED}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def shipped_config(model: str) -> Path | None:
    """The directory of a model's architecture shipped with emo (``emo/configs/models/<org>--<name>/``
    holding ``config.json``), or None."""
    d = MODEL_CONFIG_DIR / model.replace("/", "--")
    return d if "/" in model and (d / "config.json").is_file() else None


@dataclass
class _Loaded:
    model: torch.nn.Module  # fp32, CPU, eval
    weights: dict  # keyed provenance
    notes: dict  # unkeyed: local paths
    source: str  # where config/tokenizer files come from: a hub id or a directory
    asked: str = ""  # the model asked for (hub id or directory)


def _load(
    auto_cls: str, model: str, checkpoint: str | None, weights: str, seed: int, what: str, hint: str
) -> _Loaded:
    """Build a transformers model by the strict weights policy (see module doc)."""
    import transformers

    if weights not in _WEIGHTS:
        raise ValueError(f"weights must be one of {_WEIGHTS}, got {weights!r}")
    cls = getattr(transformers, auto_cls)
    ckpt = Path(checkpoint).expanduser().resolve() if checkpoint else None
    source = str(ckpt) if ckpt else model
    if weights == "random":
        if ckpt is None and not Path(model).is_dir() and (shipped := shipped_config(model)) is not None:
            source = str(shipped)  # the architecture without the network
        try:
            config = transformers.AutoConfig.from_pretrained(source)
        except Exception as e:  # any failure to read the architecture stops the run
            raise WeightsError(f"could not read the {what} architecture from {source}: {e}") from e
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state untouched
            torch.manual_seed(seed)
            net = cls.from_config(config) if auto_cls.startswith("Auto") else cls(config)
        notes = {"config_path": str(ckpt)} if ckpt else {}
        return _Loaded(net.float().eval(), {"kind": "random", "seed": seed}, notes, source, model)
    if ckpt is not None:
        if not ckpt.is_dir():
            raise WeightsError(f"could not load checkpoint {ckpt} for the {what}: not a directory. {hint}")
        try:
            provenance = dir_provenance(ckpt)
        except OSError as e:
            raise WeightsError(f"could not load checkpoint {ckpt} for the {what}: {e}. {hint}") from e
        label, notes = f"checkpoint {ckpt}", {"checkpoint_path": str(ckpt)}
    else:
        provenance, label, notes = None, model, {}
    try:
        net, info = cls.from_pretrained(source, output_loading_info=True, dtype=torch.float32)
    except Exception as e:  # any failure to get or read the weights stops the run, with both options named
        raise WeightsError(f"could not load {label} for the {what}: {str(e).strip().rstrip('.')}. {hint}") from e
    missing = sorted(info.get("missing_keys") or []) + sorted(str(m) for m in info.get("mismatched_keys") or [])
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise WeightsError(
            f"{label} does not hold every weight of the {what} ({len(missing)} missing or mismatched: {shown}); "
            f"it is not used with random fill-ins. {hint}"
        )
    if provenance is None:
        revision = getattr(net.config, "_commit_hash", None)
        provenance = {"kind": "pretrained", "tag": "hub", "id": model, "revision": revision}
    return _Loaded(net.float().eval().requires_grad_(False), provenance, notes, source)


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# --- wav2vec 2.0 ------------------------------------------------------------------------------------


class Wav2Vec2Encoder:
    """A frozen ``Wav2Vec2Model``: one 16 kHz mono wave at a time -> hidden states of chosen layers.

    Never batched: padding changes the group-norm statistics of wav2vec2-base's first conv layer, so
    every wave runs alone, at its exact length. ``normalize``: zero mean, unit variance per wave
    (``Wav2Vec2FeatureExtractor``'s ``do_normalize``, on for ``facebook/wav2vec2-base``).
    Attributes: ``n_layers`` (hidden states 0..n_layers; 0 = the input of the first block),
    ``hidden_size``, ``weights`` / ``notes`` (provenance), ``device``, ``dtype`` (compute; fp16/bf16
    run under autocast over fp32 weights).
    """

    def __init__(self, loaded: _Loaded, normalize: bool, device: torch.device, dtype: torch.dtype):
        self.model = loaded.model.to(device)
        self.weights, self.notes, self.normalize = loaded.weights, loaded.notes, normalize
        self.device, self.dtype = device, dtype
        cfg = self.model.config
        self.n_layers, self.hidden_size = int(cfg.num_hidden_layers), int(cfg.hidden_size)
        self._conv = list(zip(cfg.conv_kernel, cfg.conv_stride, strict=True))  # (kernel, stride) samples
        self.architecture = {
            "model_type": cfg.model_type,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.n_layers,
            "stable_layer_norm": bool(cfg.do_stable_layer_norm),
            "feat_extract_norm": cfg.feat_extract_norm,
        }
        if loaded.weights["kind"] == "random":
            self.architecture["config_sha256"] = _config_sha256(cfg)

    def output_length(self, samples: int) -> int:
        """Frames the conv feature encoder makes of ``samples`` (0 when too short for its receptive field)."""
        n = samples
        for kernel, stride in self._conv:
            n = (n - kernel) // stride + 1 if n >= kernel else 0
        return n

    def hidden_states(self, wave: np.ndarray, layers: list[int]) -> dict[int, torch.Tensor]:
        """``{layer: [T_a, H]}`` float32 on the CPU for one float32 wave ``[S]`` at 16 kHz.

        ``T_a = output_length(S)`` (20 ms per frame for wav2vec2-base); hidden state ``k`` is the
        output of block ``k`` (``hidden_states[k]`` of ``Wav2Vec2Model(output_hidden_states=True)``).
        """
        bad = [k for k in layers if not 0 <= k <= self.n_layers]
        if bad:
            raise ValueError(f"layers {bad} are out of range: the model has hidden states 0..{self.n_layers}")
        x = torch.as_tensor(np.asarray(wave, dtype=np.float32)).view(1, -1)  # [1, S]
        if self.normalize:  # as Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm
            x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
        x = x.to(self.device)
        with torch.inference_mode(), _autocast(self.device, self.dtype):
            out = self.model(x, output_hidden_states=True)
        return {k: out.hidden_states[k][0].float().cpu() for k in layers}  # each [T_a, H]


def _normalize_flag(source: str) -> bool:
    """``do_normalize`` of the model's preprocessor config; True (the feature extractor's default) if none."""
    import transformers

    try:
        fe = transformers.Wav2Vec2FeatureExtractor.from_pretrained(source)
    except OSError:  # no preprocessor_config.json
        return True
    if fe.sampling_rate != SAMPLE_RATE:
        raise ValueError(f"{source} expects {fe.sampling_rate} Hz audio; emo decodes at {SAMPLE_RATE} Hz")
    return bool(fe.do_normalize)


def load_wav2vec2(
    model: str = DEFAULT_WAV2VEC2,
    checkpoint: str | None = None,
    weights: str = "pretrained",
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
) -> Wav2Vec2Encoder:
    """A frozen ``Wav2Vec2Model`` by the strict weights policy (module doc); WeightsError on failure.

    ``model``: hub id (with ``weights="random"`` also a local directory holding a ``config.json``);
    ``checkpoint``: a local ``save_pretrained`` directory, wins over ``model``.
    """

    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    hint = _hint("wav2vec2", "--model", "--checkpoint", DEFAULT_WAV2VEC2)
    loaded = _load("Wav2Vec2Model", model, checkpoint, weights, seed, "wav2vec2 model", hint)
    if loaded.model.config.model_type not in ("wav2vec2",):
        raise ValueError(f"{loaded.source} is a {loaded.model.config.model_type} model, not wav2vec2")
    return Wav2Vec2Encoder(loaded, _normalize_flag(loaded.source), dev, dtype)


# --- sentiment ----------------------------------------------------------------------------------------


class SentimentModel:
    """A frozen text classifier: captions -> logits ``[T, n_labels]``.

    ``labels`` is the stored column order: the model's ``id2label``, reordered to ``SENTIMENT_LABELS``
    when the model has exactly those labels in another order. ``max_length``: tokens per caption
    (longer ones are truncated).
    """

    def __init__(self, loaded: _Loaded, tokenizer, device: torch.device, dtype: torch.dtype):
        self.model = loaded.model.to(device)
        self.tokenizer, self.weights, self.notes = tokenizer, loaded.weights, loaded.notes
        self.device, self.dtype = device, dtype
        cfg = self.model.config
        names = [str(cfg.id2label[i]) for i in range(cfg.num_labels)]
        if sorted(n.lower() for n in names) == sorted(SENTIMENT_LABELS) and len(names) == len(SENTIMENT_LABELS):
            lower = [n.lower() for n in names]
            self._order = [lower.index(n) for n in SENTIMENT_LABELS]
            self.labels = list(SENTIMENT_LABELS)
        else:
            self._order, self.labels = list(range(len(names))), names
        limit = getattr(tokenizer, "model_max_length", None) or 512
        self.max_length = int(min(limit, 512))
        self.architecture = {"model_type": cfg.model_type, "num_labels": cfg.num_labels, "model_labels": names}
        if loaded.weights["kind"] == "random":
            self.architecture["config_sha256"] = _config_sha256(cfg)

    def logits(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """``[T, n_labels]`` float32 logits on the CPU, columns in ``labels`` order.

        Captions are batched with right padding under the attention mask (exact up to float rounding).
        """
        parts = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                list(texts[i : i + batch_size]), padding=True, truncation=True, max_length=self.max_length,
                return_tensors="pt",
            )
            enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            with torch.inference_mode(), _autocast(self.device, self.dtype):
                parts.append(self.model(**enc).logits.float().cpu())  # [t, n_labels]
        out = torch.cat(parts) if parts else torch.empty(0, len(self.labels))
        return out[:, self._order]


def _cached_snapshot(model: str) -> str:
    """The Hugging Face cache's local directory of ``model`` (looked up on disk, no network), or
    FileNotFoundError."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model, "tokenizer_config.json")
    if not isinstance(found, str):
        raise FileNotFoundError(f"{model}'s tokenizer is not in the Hugging Face cache")
    return str(Path(found).parent)


def load_sentiment(
    model: str = DEFAULT_SENTIMENT,
    checkpoint: str | None = None,
    weights: str = "pretrained",
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
) -> SentimentModel:
    """A frozen sequence classifier and its tokenizer by the strict weights policy (module doc)."""
    import transformers


    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    hint = _hint("sentiment", "--sentiment", "--sentiment-checkpoint", DEFAULT_SENTIMENT)
    loaded = _load("AutoModelForSequenceClassification", model, checkpoint, weights, seed, "sentiment model", hint)
    shipped = bool(loaded.asked) and loaded.source == str(shipped_config(loaded.asked))
    byte_level = False
    try:
        if shipped:  # a shipped architecture holds no vocabulary: the model's own tokenizer, from the local cache only
            tokenizer = transformers.AutoTokenizer.from_pretrained(_cached_snapshot(loaded.asked))
        else:
            tokenizer = transformers.AutoTokenizer.from_pretrained(loaded.source)
    except Exception as e:  # no tokenizer, no sentiment: stop here
        if not shipped:
            raise WeightsError(f"could not load the tokenizer of {loaded.source}: {e}. {hint}") from e
        # random weights, offline, vocabulary unavailable: the logits are noise whatever the tokens, so emo's
        # byte-level tokenizer stands in, said here and recorded in the feature set's key (never for real weights)
        tokenizer, byte_level = byte_tokenizer(int(loaded.model.config.max_position_embeddings) - 2), True
        print(f"emo: {loaded.asked}'s vocabulary is not available offline; its RANDOM-weight model reads emo's "
              f"byte-level tokens ({BYTE_TOKENIZER}), recorded in the feature set", file=sys.stderr)
    out = SentimentModel(loaded, tokenizer, dev, dtype)
    if byte_level:
        out.architecture["tokenizer"] = BYTE_TOKENIZER
    return out


BYTE_TOKENIZER = "emo-bytes-v1"  # <s> <pad> </s> <unk>, then one token per byte (ids 4..259)


def byte_tokenizer(max_length: int = 512):
    """A tokenizer with one token per UTF-8 byte after RoBERTa's specials (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2,
    ``<unk>`` 3), texts wrapped as ``<s> ... </s>``: for random-weight RoBERTa-style models whose vocabulary
    cannot be had offline (their ids 0..259 exist in any such model)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins of the bytes
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{c: 4 + i for i, c in enumerate(sorted(alphabet))}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=max_length)


def wav2vec2_architecture(base_config: str | None = None):
    """An untrained ``Wav2Vec2Model`` (fp32, CPU) to load converted weights into: the architecture of
    ``base_config`` (a directory or a config.json), or transformers' ``Wav2Vec2Config()`` defaults (the
    wav2vec2-base architecture) when None."""
    import transformers

    config = transformers.Wav2Vec2Config.from_pretrained(base_config) if base_config else transformers.Wav2Vec2Config()
    return transformers.Wav2Vec2Model(config)
