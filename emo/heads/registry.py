"""The head interface, the table of named heads, and checkpoints (config parsing: ``config.py``).

Every stage-2 head is a :class:`Head` built from a config dataclass (the paper's defaults) and the
dataset's class names. A head registers itself with :func:`register_head` at the bottom of its file;
:func:`get_head` and :func:`list_heads` import the built-in head files on first use.

Checkpoints are a directory with ``config.json`` (head name, resolved config, classes, and the cache
keys of the features it was trained on) and ``model.safetensors``. Loading a checkpoint against
features with other cache keys raises :class:`CheckpointError`, unless it is loaded for *transfer*
(another dataset, or another sampling of the same videos): then every feature set it was trained on
must have a counterpart made by the same frozen encoder (``encoder_identity``: modality, model,
weights, preprocessing — sampling and classes may differ; when the head's config names the modalities
it embeds from with ``embed_modalities()``, only those sets), and a head whose features depend on its
class list (``Head.class_free`` False) also needs the same classes. A mismatch names both encoders.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from emo import CONFIG_DIR, __version__
from emo.cache.data import FeatureData
from emo.cache.featureset import write_json_atomic

from .config import config_from_dict, config_to_dict

__all__ = [
    "Head",
    "HeadSpec",
    "LogFn",
    "CheckpointError",
    "check_features",
    "encoder_identity",
    "checkpoint_record",
    "read_json",
    "register_head",
    "get_head",
    "list_heads",
    "config_from_dict",
    "config_to_dict",
    "save_checkpoint",
    "load_checkpoint",
    "CONFIG_FILE",
    "head_preset",
    "HEAD_PRESET_DIR",
    "WEIGHTS_FILE",
    "SUMMARY_FILE",
    "EMBEDDINGS_FILE",
]

HEAD_PRESET_DIR = CONFIG_DIR / "heads"  # <head>/<preset>.json
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SUMMARY_FILE = "summary.json"  # a run directory's summary (runs.py)
EMBEDDINGS_FILE = "embeddings.safetensors"  # a fold's test features, for t-SNE (runs.py, report.py)
# Modules whose import registers the built-in heads (name -> module).
BUILTIN_HEADS = {"linear": "emo.heads.linear", "zero-shot": "emo.heads.zero_shot", "pe-clip": "emo.heads.pe_clip",
                 "vfm": "emo.heads.vfm", "audio-adapter": "emo.heads.audio_adapter",
                 "cache-classifier": "emo.heads.cache_classifier", "probe": "emo.heads.probe",
                 "emotionclip": "emo.heads.emotionclip", "duse": "emo.heads.duse", "ecpa": "emo.heads.ecpa"}

LogFn = Callable[[dict], None]  # receives one JSON-able record per step / epoch / candidate


class CheckpointError(ValueError):
    """A checkpoint does not fit the features (other cache keys or classes) or is malformed."""


class Head(ABC):
    """A stage-2 model trained from cached features.

    Contract: ``fit`` sees only the train part (and the validation part, used for choosing
    hyper-parameters — never the test split); ``predict_scores`` returns ``[n, C]`` float scores whose
    argmax is the prediction; ``state_dict`` holds every learned value, so that a new head built from
    the same config and classes and given ``load_state_dict`` predicts exactly the same scores.
    Hyper-parameters chosen on validation data go into ``selected`` (recorded in the run's config.json).
    """

    needs_data = False  # True: load_checkpoint needs the features (prepare rebuilds frozen parts)
    task = "classification"  # the kind of task (emo.heads.tasks): decides evaluation, metrics and report columns
    class_free = False  # True: the learned features do not depend on the class list (transfer to other classes)

    def __init__(self, config: Any, classes: list[str]):
        self.config = config
        self.classes = list(classes)
        self.selected: dict[str, Any] = {}
        self.warnings: list[str] = []  # what a run must say about its result (e.g. fewer shots than asked)

    def prepare(self, data: FeatureData) -> None:  # noqa: B027 - optional hook, no-op by default
        """Build what depends on the features (sizes, frozen encoders named by their provenance);
        called with the whole dataset before ``fit`` and before ``load_state_dict``."""

    @abstractmethod
    def fit(self, train: FeatureData, val: FeatureData | None = None, log: LogFn | None = None) -> None:
        """Learn from ``train``; ``val`` (optional) may only be used to choose hyper-parameters."""

    @abstractmethod
    def predict_scores(self, data: FeatureData) -> np.ndarray:
        """``[n, C]`` scores (logits or scaled similarities), classes in ``self.classes`` order."""

    def predict(self, data: FeatureData) -> tuple[np.ndarray, np.ndarray | None]:
        """``(scores [n, C], final features [n, D] or None)``: what a run stores for its test items.
        Heads whose scores and ``embed`` features come from one pass override this to run it once."""
        embed = getattr(self, "embed", None)
        return self.predict_scores(data), (np.asarray(embed(data)) if callable(embed) else None)

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every learned value, as CPU tensors."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_dict`` returned (strict: missing or extra names raise)."""


@dataclass(frozen=True)
class HeadSpec:
    """A registered head: its name, config dataclass, and ``build(config, classes) -> Head``."""

    name: str
    config_cls: type
    build: Callable[[Any, list[str]], Head]
    description: str
    paper_features: str = ""  # the frozen encoders the paper's numbers belong to (reports compare)
    task: str = "classification"  # the head's kind (emo.heads.tasks.TASKS)

    def config(self, overrides: dict[str, Any] | None = None) -> Any:
        """The default config with ``overrides`` applied (strings are coerced, unknown keys raise)."""
        return config_from_dict(self.config_cls, overrides or {})


_HEADS: dict[str, HeadSpec] = {}


def read_json(path: str | os.PathLike) -> Any:
    """The JSON document in ``path``; a missing, unreadable or malformed file raises an error naming it
    (``FileNotFoundError`` / ``ValueError``), never a bare decoder traceback."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None


def register_head(
    name: str,
    config_cls: type,
    build: Callable[[Any, list[str]], Head],
    description: str,
    paper_features: str = "",
    task: str | None = None,
) -> HeadSpec:
    """Add a head to the table; a second head under one name raises. ``paper_features``: the encoders
    behind the paper's numbers, shown beside a run's own in reports. ``task``: its kind, by default the
    ``task`` attribute of ``build`` (a Head class). (The feature sets a head reads come from its config:
    ``emo.heads.runs.needed_modalities``.)"""
    from .tasks import TASKS

    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"head {name!r}: config class {config_cls!r} is not a dataclass")
    if name in _HEADS:
        raise ValueError(f"a head named {name!r} is already registered")
    task = task or getattr(build, "task", "classification")
    if task not in TASKS:
        raise ValueError(f"head {name!r}: unknown task kind {task!r} (known: {', '.join(TASKS)})")
    spec = HeadSpec(name, config_cls, build, description, paper_features, task)
    _HEADS[name] = spec
    return spec


def _import_builtins() -> None:
    for module in BUILTIN_HEADS.values():
        importlib.import_module(module)


def get_head(name: str) -> HeadSpec:
    """The head registered as ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    _import_builtins()
    if name not in _HEADS:
        raise ValueError(f"unknown head {name!r}; known heads: {', '.join(sorted(_HEADS))}")
    return _HEADS[name]


def list_heads() -> list[HeadSpec]:
    """Every registered head, sorted by name."""
    _import_builtins()
    return [_HEADS[k] for k in sorted(_HEADS)]


def head_preset(name: str, preset: str, preset_dir: Path = HEAD_PRESET_DIR) -> dict[str, Any]:
    """The config overrides of a named preset (``emo/configs/heads/<head>/<preset>.json``, e.g. a paper's
    ablation table) or of a JSON file path. The file holds ``{"description", "overrides"}``; its
    overrides are checked against the head's config."""
    path = Path(preset) if preset.endswith(".json") else preset_dir / name / f"{preset}.json"
    if not path.is_file():
        have = sorted(p.stem for p in (preset_dir / name).glob("*.json"))
        raise ValueError(f"no preset {preset!r} for head {name!r} ({path}); presets: {', '.join(have) or 'none'}")
    data = read_json(path)
    if not isinstance(data, dict) or set(data) - {"description", "overrides"} or not isinstance(data.get("overrides"), dict):
        raise ValueError(f"{path}: a head preset is {{\"description\": ..., \"overrides\": {{field: value}}}}")
    get_head(name).config(data["overrides"])  # unknown or ill-typed fields fail here, naming the file's field
    return dict(data["overrides"])


# -- checkpoints ------------------------------------------------------------------------------------
def save_checkpoint(
    directory: str | os.PathLike, head: Head, name: str, cache_keys: dict[str, str], extra: dict | None = None
) -> Path:
    """Write ``config.json`` (head, config, classes, cache keys, ``extra``) and ``model.safetensors``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    # One metadata entry: safetensors writes several in a random order, which would break bit-reproducibility.
    meta = {"emo": json.dumps({"head": name, "cache_keys": cache_keys, "emo_version": __version__}, sort_keys=True)}
    save_file(state, str(directory / WEIGHTS_FILE), metadata=meta)
    record = {
        "head": name,
        "config": config_to_dict(head.config),
        "classes": head.classes,
        "cache_keys": dict(cache_keys),
        "selected": head.selected,
        "emo_version": __version__,
        **(extra or {}),
    }
    write_json_atomic(directory / CONFIG_FILE, record)
    return directory


def checkpoint_record(directory: str | os.PathLike) -> dict:
    """The ``config.json`` of a checkpoint directory, checked to be one."""
    directory = Path(directory)
    record = read_json(directory / CONFIG_FILE)
    if not isinstance(record, dict):
        raise CheckpointError(f"{directory / CONFIG_FILE} is not a head checkpoint's config (not a JSON object)")
    for field in ("head", "config", "classes", "cache_keys"):
        if field not in record:
            raise CheckpointError(f"{directory / CONFIG_FILE} has no {field!r}; not a head checkpoint")
    return record


def load_checkpoint(directory: str | os.PathLike, data: FeatureData | None = None, transfer: bool = False) -> Head:
    """The head saved in ``directory``; with ``data``, check it has the same cache keys and classes, or with
    ``transfer``, the same frozen encoders (module doc)."""
    directory = Path(directory)
    record = checkpoint_record(directory)
    if data is not None:
        check_features(record, data, where=str(directory), transfer=transfer)
    spec = get_head(record["head"])
    head = spec.build(config_from_dict(spec.config_cls, record["config"]), record["classes"])
    head.selected = record.get("selected", {})
    if data is not None:
        head.prepare(data)
    elif head.needs_data:
        raise CheckpointError(
            f"{directory}: a {record['head']} head rebuilds its frozen parts from the features it was "
            "trained on; load it with those features (load_checkpoint(directory, data))"
        )
    head.load_state_dict(_read_weights(directory / WEIGHTS_FILE))
    return head


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors (safetensors: no code runs); a missing or malformed file names itself."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (a checkpoint directory holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a damaged or foreign file
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(e).strip()[:200]})") from None


def encoder_identity(meta: dict) -> dict:
    """What makes two feature sets come from the same frozen encoder: modality, model, weights (without
    unkeyed notes such as a checkpoint's path), preprocessing and the centre crop. Sampling (segments,
    frames, views, seed), the boxes, the dataset and its classes are not part of it."""
    weights = {k: v for k, v in (meta.get("weights") or {}).items() if k != "path"}
    sampling = meta.get("sampling") or {}
    return {"modality": meta.get("modality"), "model": meta.get("model"), "weights": weights,
            "preprocess": meta.get("preprocess"), "center_crop": sampling.get("center_crop", 1.0)}


def _describe(meta: dict) -> str:
    w = meta.get("weights") or {}
    weights = w.get("tag") or (f"sha256 {str(w.get('sha256', ''))[:12]}" if w.get("sha256") else w.get("kind"))
    return f"{meta.get('modality')}: {meta.get('model')} ({weights})"


def check_features(record: dict, data: FeatureData, where: str = "checkpoint", transfer: bool = False) -> None:
    """Raise :class:`CheckpointError` unless ``data`` holds every trained-on cache key and the classes; with
    ``transfer``, unless every trained-on feature set has one made by the same encoder (``encoder_identity``)
    and, for a head that is not ``class_free``, the classes are the same."""
    trained: dict[str, str] = record["cache_keys"]
    have = data.keys
    if transfer:
        _check_transfer(record, data, where)
        return
    missing = {n: k for n, k in trained.items() if k not in set(have.values())}
    if missing:
        raise CheckpointError(
            f"{where} was trained on features with cache keys {trained}, but these features have {have} "
            f"(missing: {', '.join(missing)}); load the feature sets it was trained on"
        )
    if list(record["classes"]) != list(data.classes):
        raise CheckpointError(f"{where} was trained on classes {record['classes']}, these features have {data.classes}")


def _check_transfer(record: dict, data: FeatureData, where: str) -> None:
    trained_sets: dict[str, dict] = record.get("feature_sets") or {}
    if set(trained_sets) != set(record["cache_keys"]):
        raise CheckpointError(f"{where} does not record the feature sets it was trained on; it cannot be transferred")
    spec = get_head(record["head"])
    embeds = getattr(config_from_dict(spec.config_cls, record["config"]), "embed_modalities", None)
    if callable(embeds):  # a head that reads more to train than to embed (text targets) transfers its embedding
        trained_sets = {n: m for n, m in trained_sets.items() if m.get("modality") in set(embeds())}
    for name, meta in trained_sets.items():
        same = [n for n, m in data.feature_sets.items() if encoder_identity(m) == encoder_identity(meta)]
        if not same:
            ours = "; ".join(_describe(m) for m in data.feature_sets.values()) or "none"
            raise CheckpointError(
                f"{where} was trained on {name} ({_describe(meta)}); these features come from other encoders "
                f"({ours}): a transferred head needs the same frozen encoder, weights and preprocessing"
            )
    class_free = getattr(spec.build, "class_free", False)
    if not class_free and list(record["classes"]) != list(data.classes):
        raise CheckpointError(
            f"{where}: a {record['head']} head's features depend on its classes {record['classes']}; "
            f"these features have {data.classes}"
        )
