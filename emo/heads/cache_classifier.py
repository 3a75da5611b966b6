"""EmoAsst's joint zero-shot + K-shot cache classifier (EmoAsst paper §3.4; docs/papers.md#emoasst), Tip-Adapter style.

Over the unit features ``f_m`` of the modalities in use (``m`` = video from a VFM run, audio from an
auditory-adapter run), unit class text weights ``W [C, D]``, cache keys ``K_m [NK, D]`` (the
features of K training items per class) and their one-hot labels ``L [NK, C]``::

    zero-shot  = s · mean_m f_m Wᵀ                        (s = 100; the paper's (f_v Wᵀ + f_a Wᵀ) / 2)
    cache      = Σ_m α_m φ(f_m K_mᵀ) L,   φ(x) = exp(-β (1 - x)),  one β shared
    prediction = zero-shot + cache

Keys: every shot item's feature is computed ``views`` times with training-time sampling (a random
frame per segment and a random stored view), averaged as the feature head outputs it (not normalised),
then normalised: Tip-Adapter's augmented cache (its ``build_cache_model`` averages the encoder's
features over the augmentation epochs, then divides by the norm). EmoAsst itself is silent. Shots: ``shots`` items per class drawn from the train part with ``shot_seed`` (all of
a class when it has fewer; ``shots = 0`` takes every train item). ``α_m`` and ``β`` are searched on the
validation part (the official dev split, or ``--val-fraction``; never test) over the grids
``0.1 + i (scale - 0.1) / steps``, ``i = 0..steps-1``, by accuracy (ties: the first in β, α_video,
α_audio order); ``search = none`` keeps the given ``alpha``/``beta``. ``finetune_keys`` (Tip-F) makes the
keys trainable: AdamW (lr 1e-3, eps 1e-4), cosine schedule, ``ft_epochs`` over the shot items with a
fresh view each epoch, cross-entropy of the prediction with the initial α, β; the search runs after.

The classifier is updated without training by :func:`adapt_run` (``emo heads adapt``): new labelled
items' features are appended to the keys and values.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from emo.cache.data import FeatureData
from emo.cache.featureset import write_json_atomic

from .from_run import load_run_head, run_modalities, run_summary
from .layers.clip_text import clip_text_of
from .layers.similarity import dot_logits, fp32
from .layers.utterance_prompts import CLASS_FORMATS
from .registry import Head, LogFn, register_head
from .text_guided import class_text_weights

__all__ = [
    "CacheClassifierConfig",
    "CacheClassifierHead",
    "search_grid",
    "tip_logits",
    "zero_shot_logits",
    "search_alpha_beta",
    "select_shots",
    "averaged_keys",
    "adapt_run",
    "MODALITIES",
]

MODALITIES = ("video", "audio")


@dataclass
class CacheClassifierConfig:
    video: str | None = None  # run directory of a VFM (or any head with embed()) for the video features
    audio: str | None = None  # run directory of an auditory adapter for the audio features
    shots: int = 16  # K per class (the release uses 128); 0 = every train item
    shot_seed: int = 1  # seed of the K-shot draw
    views: int = 10  # training-time samplings averaged into each video key
    search: Literal["val", "none"] = "val"  # choose α, β on the validation part, or take --alpha/--beta
    alpha: float = 1.0  # α of every modality when not searched (and during Tip-F training)
    beta: float = 1.0  # β (sharpness of the cache affinities) when not searched
    alpha_scale: float = 3.0  # α searched over (0, alpha_scale]
    alpha_steps: int = 20  # grid points of the α search
    beta_scale: float = 7.0  # β searched over (0, beta_scale]
    beta_steps: int = 200  # grid points of the β search
    class_formats: list[int] = field(default_factory=lambda: list(CLASS_FORMATS))  # zero-shot class prompt formats
    logit_scale: float = 100.0  # zero-shot scores = logit_scale · cos
    finetune_keys: bool = False  # Tip-F
    ft_epochs: int = 20  # Tip-F: epochs of key training
    ft_lr: float = 1e-3  # Tip-F: learning rate of the keys
    ft_batch_size: int = 256  # Tip-F: items per step

    def __post_init__(self):
        if self.shots < 0 or self.views < 1 or self.alpha_steps < 1 or self.beta_steps < 1 or self.ft_epochs < 0:
            raise ValueError("shots >= 0, views >= 1, alpha_steps/beta_steps >= 1 and ft_epochs >= 0 are required")

    def runs(self) -> dict[str, str]:
        """Modality -> run directory, for the modalities in use (video first); none raises."""
        runs = {m: r for m, r in (("video", self.video), ("audio", self.audio)) if r}
        if not runs:
            raise ValueError("the cache classifier needs --video RUN, --audio RUN, or both")
        return runs

    def modalities(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m for r in self.runs().values() for m in run_modalities(r)))

    def label(self) -> str:
        """``cache 16-shot: VFM + prompt + AA + prompt`` (``(Tip-F)`` with trained keys)."""
        subs = " + ".join(run_summary(r).get("label", m) for m, r in self.runs().items())
        shots = f"{self.shots}-shot" if self.shots else "all-shot"
        return f"cache {shots}: {subs}" + (" (Tip-F)" if self.finetune_keys else "")


# -- the formulas ------------------------------------------------------------------------------------
def search_grid(scale: float, steps: int) -> list[float]:
    """Tip-Adapter's grid ``[0.1 + i (scale - 0.1) / steps for i in 0..steps-1]``."""
    return [0.1 + i * (scale - 0.1) / steps for i in range(steps)]


def zero_shot_logits(feats: dict[str, torch.Tensor], weights: torch.Tensor, logit_scale: float = 100.0) -> torch.Tensor:
    """``[n, C]`` ``s · mean_m f_m Wᵀ`` over the modalities in ``feats`` (float32, autocast off)."""
    with fp32(weights.device):
        return logit_scale * torch.stack([dot_logits(feats[m], weights) for m in feats]).mean(dim=0)


def tip_logits(
    feats: dict[str, torch.Tensor],
    weights: torch.Tensor,
    keys: dict[str, torch.Tensor],
    values: torch.Tensor,
    alpha: dict[str, float],
    beta: float,
    logit_scale: float = 100.0,
) -> torch.Tensor:
    """``[n, C]`` zero-shot + cache logits. ``feats[m] [n, D]`` and ``weights [C, D]`` unit rows,
    ``keys[m] [NK, D]``, ``values [NK, C]`` one-hot, ``alpha[m]`` per modality, one ``beta``. Float32 with
    autocast off: ``exp(-β (1 - x))`` with β up to 7 magnifies a bf16 affinity's rounding."""
    zero = zero_shot_logits(feats, weights, logit_scale)  # [n, C]
    with fp32(zero.device):
        cache = sum(alpha[m] * torch.exp(-beta * (1.0 - dot_logits(feats[m], keys[m]))) @ values.to(zero.dtype)
                    for m in feats)
        return zero + cache


def search_alpha_beta(
    zero: torch.Tensor,
    affinity: dict[str, torch.Tensor],
    values: torch.Tensor,
    labels: torch.Tensor,
    alphas: list[float],
    betas: list[float],
) -> tuple[dict[str, float], float, float]:
    """The ``(α per modality, β, accuracy)`` of the grid with the best accuracy of
    ``zero + Σ_m α_m exp(-β (1 - A_m)) L`` (``zero [n, C]``, ``affinity[m] = f_m K_mᵀ [n, NK]``).
    Ties keep the first cell in β, then α order (modalities in ``affinity`` order)."""
    mods = list(affinity)
    a = torch.tensor(alphas, dtype=zero.dtype)  # [G]
    best: tuple[float, dict[str, float], float] | None = None
    for beta in betas:
        parts = [torch.exp(-beta * (1.0 - affinity[m])) @ values for m in mods]  # each [n, C]
        logits = zero  # one grid axis per modality, broadcast: [G, ..., G, n, C]
        for k, part in enumerate(parts):
            axis = [-1 if j == k else 1 for j in range(len(mods))]  # α of modality k along axis k
            logits = logits + a.view(*axis, 1, 1) * part
        acc = (logits.argmax(dim=-1) == labels).float().mean(dim=-1)  # [G, ..., G]
        flat = int(torch.argmax(acc.reshape(-1)))  # first maximum in row-major order
        if best is None or float(acc.reshape(-1)[flat]) > best[0]:
            index = np.unravel_index(flat, acc.shape)
            best = (float(acc.reshape(-1)[flat]), {m: alphas[int(i)] for m, i in zip(mods, index, strict=True)}, beta)
    acc, alpha, beta = best
    return alpha, beta, acc


def select_shots(labels: np.ndarray, shots: int, n_classes: int, seed: int) -> np.ndarray:
    """Sorted indices of ``shots`` items per class (all of a class with fewer; every item when 0)."""
    labels = np.asarray(labels)
    if shots == 0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    pick = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in range(n_classes)]
    return np.sort(np.concatenate(pick)) if pick else np.zeros(0, dtype=np.int64)


def averaged_keys(views: list[np.ndarray]) -> torch.Tensor:
    """``[n, D]`` unit keys from ``views`` samplings ``[n, D]`` each (the head's raw features): the mean
    over the views, then normalised (Tip-Adapter's order: a view with a larger feature weighs more)."""
    stack = torch.as_tensor(np.stack(views)).float()  # [R, n, D]
    return F.normalize(stack.mean(dim=0), dim=-1)


# -- the head ----------------------------------------------------------------------------------------
class CacheClassifierHead(Head):
    """Zero-shot + K-shot cache over the features of trained VFM / auditory-adapter runs."""

    needs_data = True  # the feature heads are reloaded from their runs against the features

    def __init__(self, config: CacheClassifierConfig, classes: list[str]):
        super().__init__(config, classes)
        self.feature_heads: dict[str, Head] = {}
        self.weights: torch.Tensor | None = None  # [C, D]
        self.keys: dict[str, torch.Tensor] = {}  # m -> [NK, D]
        self.values: torch.Tensor | None = None  # [NK, C]
        self.alpha: dict[str, float] = {}
        self.beta: float = config.beta

    def prepare(self, data: FeatureData) -> None:
        cfg = self.config
        self.feature_heads = {m: load_run_head(run, data) for m, run in cfg.runs().items()}
        tower, tokenize = clip_text_of(data, "clip/cls")
        self.weights = class_text_weights(tower, tokenize, self.classes, cfg.class_formats)  # [C, D]

    def features(self, data: FeatureData) -> dict[str, torch.Tensor]:
        """``m -> [n, D]`` unit features of ``data`` (evaluation sampling)."""
        return {m: torch.from_numpy(h.embed(data)).float() for m, h in self.feature_heads.items()}

    def view_features(self, data: FeatureData, views: int, seed: int) -> dict[str, list[np.ndarray]]:
        """``m -> [k × [n, D]]`` training-time samplings, as the head outputs them (not normalised):
        ``k = views``, or one when the head's sampling of ``data`` has no randomness (one stored frame and
        view; audio without cropping)."""
        out = {}
        for m, h in self.feature_heads.items():
            gen = torch.Generator().manual_seed(seed)
            k = views if h.random_sampling(data) else 1
            out[m] = [h.embed(data, train_sampling=True, generator=gen, unit=False) for _ in range(k)]
        return out

    def fit(self, train: FeatureData, val: FeatureData | None = None, log: LogFn | None = None) -> None:
        log = log or (lambda record: None)
        cfg = self.config
        if not self.feature_heads:
            self.prepare(train)
        labels = train.labels.numpy()
        if (labels < 0).any():
            raise ValueError(f"{int((labels < 0).sum())} train items have no single label")
        shots = select_shots(labels, cfg.shots, len(self.classes), cfg.shot_seed)
        cache = train.select(shots)
        views = self.view_features(cache, cfg.views, cfg.shot_seed)
        self.keys = {m: averaged_keys(v) for m, v in views.items()}
        self.values = F.one_hot(cache.labels, len(self.classes)).float()  # [NK, C]
        self.alpha = {m: cfg.alpha for m in self.keys}
        self.beta = cfg.beta
        per_class = np.bincount(cache.labels.numpy(), minlength=len(self.classes)).tolist()
        log({"step": "cache", "shots": cfg.shots, "keys": len(shots), "per_class": per_class, "views": cfg.views})
        self.selected = {"shot_ids": list(cache.ids), "per_class": per_class}
        short = {c: k for c, k in zip(self.classes, per_class, strict=True) if cfg.shots and k < cfg.shots}
        if short:  # the row is not the K-shot the label names for these classes: say so
            self.warnings.append(f"--shots {cfg.shots}: " + ", ".join(f"{c} has {k}" for c, k in short.items())
                                 + " train item(s); the cache holds all of them")
        if cfg.finetune_keys and cfg.ft_epochs:
            self._finetune(cache, views, log)
        if cfg.search == "val":
            if val is None or len(val) == 0:
                raise ValueError("search = val needs a validation part (an official val split or --val-fraction); "
                                 "or pass --search none with --alpha/--beta")
            feats = self.features(val)
            zero = zero_shot_logits(feats, self.weights, cfg.logit_scale)
            affinity = {m: dot_logits(feats[m], self.keys[m]) for m in feats}
            self.alpha, self.beta, acc = search_alpha_beta(
                zero, affinity, self.values, val.labels, search_grid(cfg.alpha_scale, cfg.alpha_steps),
                search_grid(cfg.beta_scale, cfg.beta_steps))
            self.selected.update({"alpha": self.alpha, "beta": self.beta, "val_top1": acc, "n_val": len(val)})
            log({"step": "search", "alpha": self.alpha, "beta": self.beta, "val_top1": acc, "n_val": len(val)})
        else:
            self.selected.update({"alpha": self.alpha, "beta": self.beta})

    def _finetune(self, cache: FeatureData, views: dict[str, list[np.ndarray]], log: LogFn) -> None:
        """Tip-F: the keys become parameters trained on the shot items (a fresh view per epoch)."""
        cfg = self.config
        params = {m: torch.nn.Parameter(k.clone()) for m, k in self.keys.items()}
        opt = torch.optim.AdamW(list(params.values()), lr=cfg.ft_lr, eps=1e-4)
        n = len(cache)
        steps = cfg.ft_epochs * max(1, math.ceil(n / cfg.ft_batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        gen = torch.Generator().manual_seed(cfg.shot_seed)
        y = cache.labels
        for epoch in range(cfg.ft_epochs):
            feats = {m: F.normalize(torch.from_numpy(v[epoch % len(v)]).float(), dim=-1) for m, v in views.items()}
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, cfg.ft_batch_size):
                b = order[start : start + cfg.ft_batch_size]
                logits = tip_logits({m: f[b] for m, f in feats.items()}, self.weights, params, self.values,
                                    self.alpha, self.beta, cfg.logit_scale)
                loss = F.cross_entropy(logits, y[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(b)
            log({"step": "finetune", "epoch": epoch + 1, "loss": total / n})
        self.keys = {m: p.detach().clone() for m, p in params.items()}

    def predict_scores(self, data: FeatureData) -> np.ndarray:
        return self.predict(data)[0]

    def predict(self, data: FeatureData) -> tuple[np.ndarray, np.ndarray]:
        """Scores and the features ``embed`` gives, from one pass of the feature runs."""
        if self.values is None:
            raise RuntimeError("cache classifier: fit() or load_state_dict() first")
        feats = self.features(data)
        scores = tip_logits(feats, self.weights, self.keys, self.values, self.alpha, self.beta, self.config.logit_scale)
        return scores.numpy(), torch.cat(list(feats.values()), dim=1).numpy()

    def embed(self, data: FeatureData) -> np.ndarray:
        """``[n, D·m]`` the unit features of the modalities in use, side by side (for t-SNE)."""
        return torch.cat(list(self.features(data).values()), dim=1).numpy()

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.values is None:
            raise RuntimeError("cache classifier: nothing to save before fit()")
        state = {"values": self.values.clone(), "beta": torch.tensor(self.beta, dtype=torch.float64)}
        for m in self.keys:
            state[f"keys_{m}"] = self.keys[m].clone()
            state[f"alpha_{m}"] = torch.tensor(self.alpha[m], dtype=torch.float64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        mods = list(self.config.runs())
        expected = {"values", "beta"} | {f"keys_{m}" for m in mods} | {f"alpha_{m}" for m in mods}
        if set(state) != expected:
            raise ValueError(f"cache classifier state has {sorted(state)}, expected {sorted(expected)}")
        if state["values"].shape[1] != len(self.classes):
            raise ValueError(f"cache classifier state is for {state['values'].shape[1]} classes, head has {len(self.classes)}")
        self.values = state["values"].float()
        self.beta = float(state["beta"])
        self.keys = {m: state[f"keys_{m}"].float() for m in mods}
        self.alpha = {m: float(state[f"alpha_{m}"]) for m in mods}

    def add_examples(self, data: FeatureData) -> int:
        """Append ``data``'s labelled items to the cache (keys as in ``fit``); returns how many."""
        labels = data.labels
        if (labels < 0).any():
            raise ValueError("every added item needs a label")
        views = self.view_features(data, self.config.views, self.config.shot_seed)
        for m, v in views.items():
            self.keys[m] = torch.cat([self.keys[m], averaged_keys(v)])
        self.values = torch.cat([self.values, F.one_hot(labels, len(self.classes)).float()])
        return len(data)


# -- adaptation without training ---------------------------------------------------------------------
def read_additions(path: str | os.PathLike, classes: list[str]) -> list[tuple[str, str]]:
    """``(id, label)`` rows of a CSV with ``id`` and ``label`` columns; bad rows raise naming the line."""
    import csv

    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"id", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: needs a header with 'id' and 'label' columns, got {reader.fieldnames}")
        for line, r in enumerate(reader, 2):
            item, label = (r.get("id") or "").strip(), (r.get("label") or "").strip()
            if not item or label not in classes:
                raise ValueError(f"{path} line {line}: id {item!r} / label {label!r} (labels: {', '.join(classes)})")
            rows.append((item, label))
    ids = [i for i, _ in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{path}: id {dup!r} is listed twice")
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def adapt_run(run: str | os.PathLike, add: str | os.PathLike, cache: str | os.PathLike | None = None) -> dict:
    """Add the items of ``add`` (CSV ``id,label``; their features in ``cache``, default the run's) to
    every fold's cache classifier of ``run``, in place; returns counts. Nothing is trained; items already
    in a cache are refused; each addition is recorded in the fold's ``config.json`` (``adapted``)."""
    from emo.cache.loader import load_features

    from .from_run import fold_config
    from .registry import load_checkpoint, save_checkpoint

    run = Path(run)
    summary = run_summary(run)
    if summary["head"] != "cache-classifier":
        raise ValueError(f"{run} is a {summary['head']} run; `emo heads adapt` updates cache-classifier runs")
    cache = Path(cache or summary.get("cache") or "")
    if not (cache / "manifest.jsonl").exists():
        raise ValueError(f"no cache at {cache!s}; pass --cache")
    config = CacheClassifierConfig(**summary["config"])
    data = load_features(cache, feature_sets=None, modalities=config.modalities())
    rows = read_additions(add, data.classes)
    pos = {i: k for k, i in enumerate(data.ids)}
    missing = [i for i, _ in rows if i not in pos]
    if missing:
        raise ValueError(f"{len(missing)} id(s) of {add} have no features in {cache} (first: {missing[0]!r})")
    added = data.select([pos[i] for i, _ in rows])
    added.labels = torch.tensor([data.classes.index(lab) for _, lab in rows], dtype=torch.int64)
    counts = {}
    for fold in summary["folds"]:
        record = fold_config(run, fold)
        present = set(record.get("selected", {}).get("shot_ids", [])) | {
            i for a in record.get("adapted", []) for i in a["ids"]}
        again = [i for i, _ in rows if i in present]
        if again:
            raise ValueError(f"fold {fold}: {len(again)} id(s) are in the cache already (first: {again[0]!r})")
        fd = copy.copy(added)
        fd.split = record.get("split") or ""
        head = load_checkpoint(run / fold, fd)
        counts[fold] = head.add_examples(fd)
        extra = {k: v for k, v in record.items() if k not in ("head", "config", "classes", "cache_keys", "selected", "emo_version")}
        extra["adapted"] = record.get("adapted", []) + [{"source": str(Path(add).resolve()), "cache": str(cache.resolve()),
                                                          "ids": [i for i, _ in rows], "labels": [lab for _, lab in rows]}]
        save_checkpoint(run / fold, head, "cache-classifier", record["cache_keys"], extra=extra)
    write_json_atomic(run / "summary.json", {**summary, "adapted": summary.get("adapted", 0) + len(rows)})
    return {"added": len(rows), "folds": counts}


register_head(
    "cache-classifier",
    CacheClassifierConfig,
    CacheClassifierHead,
    "EmoAsst joint zero-shot + K-shot cache classifier over VFM / auditory-adapter runs (Tip-Adapter, Tip-F)",
    paper_features="the EmotionCLIP image tower and SEGUE's wav2vec 2.0 (layer 9), through the VFM / adapter runs",
)
