"""Run directories: train a registered head on one or more folds, evaluate on test, write everything.

Layout of a run (always one sub-directory per fold, also for a single fold)::

    out/summary.json                 head, split, folds, provenance, mean ± std over folds
    out/<fold>/config.json           resolved config, classes, cache keys, feature-set provenance,
                                     split, fold, seed, val ids, command line, versions (also the
                                     checkpoint's config: load it with registry.load_checkpoint)
    out/<fold>/model.safetensors
    out/<fold>/metrics.json          the task kind's metrics (emo.heads.tasks) on the test items
    out/<fold>/predictions.csv       classification: id, true, pred, score_<class>...
    out/<fold>/confusion.png         classification
    out/<fold>/ranks.csv             retrieval: id, v2t_rank, t2v_rank
    out/<fold>/log.jsonl             one record per step / epoch / tuning candidate
    out/<fold>/curves.png            training loss and validation scores per epoch (gradient-trained heads)

Several seeds (``seeds = [0, 1, 2]``, ``--seeds 0,1,2``; EK-6 has one split and PE-CLIP's paper
averages over runs): ``out/seed<k>/`` is the complete run of seed ``k`` (the layout above), and
``out/summary.json`` holds the mean ± std over every (seed, fold) pair, its ``folds`` naming them as
``seed<k>/<fold>`` directories and ``seeds`` the seeds. One seed writes the layout above, unchanged.

Protocol (README, Stage 2): the head is fitted on the fold's train items; the validation part is the fold's
official ``val`` items when it has some, else (with ``val_fraction > 0``) a stratified, seeded part
of train held out; otherwise there is none. Test items are only ever predicted, never used to choose.
A kind that does not need a test split (retrieval pre-training) is scored on the validation part when
the split has no test items; ``metrics.json`` records ``evaluated_on``. A head built on another run
(a probe of transferred features) records that run under ``source_run``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sklearn
import torch
from safetensors.torch import save_file

from emo import __version__
from emo.cache.data import FeatureData
from emo.cache.featureset import list_feature_sets, write_json_atomic
from emo.cache.loader import load_features, set_roles
from emo.cache.manifest import parse_split, read_manifest

from .curves import RANDOM_MARK, EpochProgress, plot_curves
from .metrics import mean_std
from .registry import (
    EMBEDDINGS_FILE,
    SUMMARY_FILE,
    config_to_dict,
    get_head,
    load_checkpoint,
    read_json,
    save_checkpoint,
)
from .report import RANDOM_BANNER, format_results_table, report_runs
from .tasks import get_task
from .train import TrainConfig, check_train_config

__all__ = [
    "RunResult",
    "train_head",
    "train_seeds",
    "run_fold",
    "finish_run",
    "combine_seeds",
    "parse_seeds",
    "train_from_cache",
    "evaluate_run",
    "recorded_feature_sets",
    "cache_folds",
    "read_run_result",
    "needed_modalities",
    "needed_large_arrays",
    "stratified_holdout",
    "seed_everything",
    "format_results_table",
    "report_runs",
    "RANDOM_BANNER",
    "SUMMARY_FILE",
]


Loader = Callable[[str], FeatureData]  # fold -> features with that fold's roles set


@dataclass
class RunResult:
    """What a run wrote: per-fold test metrics and their mean ± std (``metrics.mean_std``)."""

    head: str
    split: str  # "scheme:fold" for one fold, "scheme (k folds)" for several
    out: Path
    folds: dict[str, dict]  # fold -> the task's metrics
    summary: dict  # mean_std over the folds
    random_weights: bool
    task: str = "classification"
    warnings: list[str] = dataclasses.field(default_factory=list)  # what the run must say about its result

    def row(self) -> dict:
        """One row for :func:`format_results_table`."""
        return {"name": self.head, "split": self.split, "random_weights": self.random_weights, "task": self.task,
                **{m: self.summary.get(m) for m in get_task(self.task).metrics}}

    def table(self) -> str:
        return format_results_table([self.row()])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """``[n]`` bool mask of a seeded, per-class ``round(fraction * n_c)`` part (at least one item of a
    class stays out of the mask). Deterministic for a given (labels, fraction, seed)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(int(np.floor(fraction * len(idx) + 0.5)), len(idx) - 1)
        mask[rng.permutation(idx)[:k]] = True
    return mask


def train_head(
    name: str,
    data: FeatureData | Loader,
    *,
    folds: list[str] | None = None,
    out: str | os.PathLike,
    overrides: dict[str, str] | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    command: list[str] | None = None,
    label: str | None = None,
    cache: str | os.PathLike | None = None,
) -> RunResult:
    """Train head ``name`` on every fold, evaluate on its test items, write ``out/<fold>/`` and ``out/summary.json``.

    ``data`` is either a loader ``load(fold) -> FeatureData`` (roles set for that fold; called once per
    fold, in order) or one ``FeatureData`` whose roles are already set (then at most one fold; its
    name defaults to the fold part of ``data.split``). ``overrides`` are config fields as strings or
    values (unknown keys raise before anything is trained). The run directory must not hold a run yet.
    ``label`` names the run's row in reports (default: the head's name); ``cache`` is recorded so that
    ``emo heads eval`` finds the features again.
    """
    spec = get_head(name)
    config = spec.config(overrides)
    if isinstance(config, TrainConfig):
        check_train_config(config)  # before anything is written
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if isinstance(data, FeatureData):
        fixed = data
        folds = folds or [parse_split(data.split)[1] if data.split else "0"]
        if len(folds) != 1:
            raise ValueError("one FeatureData carries one fold's roles; pass a loader for several folds")
        load: Loader = lambda fold: fixed  # noqa: E731
    else:
        load = data
        if not folds:
            raise ValueError("train_head with a loader needs the folds to run")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a run directory")
    for path in [out / SUMMARY_FILE] + [out / f / "metrics.json" for f in folds]:
        if path.exists():
            raise ValueError(f"{path.parent} already holds a run; choose another output directory")
    per_fold: dict[str, dict] = {}
    first: FeatureData | None = None
    for fold in folds:
        fd = load(fold)
        first = fd if first is None else first
        per_fold[fold] = run_fold(name, config, fd, fold, out / fold, val_fraction, seed, command)
    return finish_run(name, config, per_fold, first, out, overrides=overrides, val_fraction=val_fraction, seed=seed,
                      command=command, label=label, cache=cache)


def finish_run(name: str, config, per_fold: dict[str, dict], first: FeatureData, out: str | os.PathLike, *,
               overrides: dict | None = None, val_fraction: float = 0.0, seed: int = 0,
               command: list[str] | None = None, label: str | None = None,
               cache: str | os.PathLike | None = None) -> RunResult:
    """Write ``out/summary.json`` from the folds' metrics (``per_fold``, in fold order) once every fold
    directory is written; ``first``: the first fold's features (dataset, split, encoders, keys)."""
    spec = get_head(name)
    out, folds = Path(out), list(per_fold)
    task = get_task(spec.task)
    summary = mean_std(list(per_fold.values()), task.metrics)
    split = first.split if len(folds) == 1 else f"{first.split.partition(':')[0]} ({len(folds)} folds)"
    label = label or run_label(name, config)
    result = RunResult(label, split, out, per_fold, summary, first.random_weights, task.name,
                       [f"{f}: {w}" for f, m in per_fold.items() for w in m.get("warnings", [])])
    sources = {f: m["source_run"] for f, m in per_fold.items() if m.get("source_run")}
    write_json_atomic(out / SUMMARY_FILE, {
        "head": name,
        "task": task.name,
        "label": label,
        "encoders": {n: describe_encoder(c) for n, c in first.feature_sets.items()},
        "paper_features": spec.paper_features,
        "settings": {k: str(v) for k, v in (overrides or {}).items()},
        "cache": str(Path(cache).resolve()) if cache is not None else None,
        "dataset": first.dataset,
        "split": split,
        "folds": list(folds),
        "random_weights": first.random_weights,
        "cache_keys": first.keys,
        "config": config_to_dict(config),
        "seed": seed,
        "val_fraction": val_fraction,
        "command": command,
        "emo_version": __version__,
        "per_fold": {f: {m: v.get(m) for m in task.metrics} for f, v in per_fold.items()},
        "evaluated_on": sorted({v.get("evaluated_on", "test") for v in per_fold.values()}),
        **({"warnings": result.warnings} if result.warnings else {}),
        **({"source_run": next(iter(sources.values()))} if sources else {}),
        "summary": summary,
    })
    return result


def parse_seeds(text: str | None, seed: int = 0) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (``None`` or empty: ``[seed]``); repeated or non-integer seeds raise."""
    if text is None or not str(text).strip():
        return [seed]
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds expects integers separated by commas, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds expects distinct integers separated by commas, got {text!r}")
    return seeds


def train_seeds(name: str, data: FeatureData | Loader, *, seeds: list[int], out: str | os.PathLike,
                label: str | None = None, **kwargs) -> RunResult:
    """:func:`train_head` once per seed: one seed writes ``out`` itself; several write ``out/seed<k>/``
    (each a complete run) and ``out/summary.json``, the mean ± std over every (seed, fold) pair (module
    doc). ``kwargs`` are :func:`train_head`'s (not ``seed``)."""
    if len(seeds) == 1:
        return train_head(name, data, out=out, seed=seeds[0], label=label, **kwargs)
    out = Path(out)
    if (out / SUMMARY_FILE).exists():
        raise ValueError(f"{out} already holds a run; choose another output directory")
    per_seed = [train_head(name, data, out=out / f"seed{s}", seed=s, label=label, **kwargs) for s in seeds]
    return combine_seeds(seeds, per_seed, out)


def combine_seeds(seeds: list[int], per_seed: list[RunResult], out: str | os.PathLike) -> RunResult:
    """``out/summary.json`` over the finished runs of several seeds (``out/seed<k>/``): the mean ± std over
    every (seed, fold) pair (module doc)."""
    out = Path(out)
    first = read_json(out / f"seed{seeds[0]}" / SUMMARY_FILE)
    task = get_task(first["task"])
    units = {f"seed{s}/{fold}": metrics for s, r in zip(seeds, per_seed, strict=True) for fold, metrics in r.folds.items()}
    folds = list(per_seed[0].folds)
    shown = first["split"] if len(folds) == 1 else first["split"].replace(" folds)", " folds")
    split = f"{shown} ({len(seeds)} seeds)" if len(folds) == 1 else f"{shown} × {len(seeds)} seeds)"
    summary = mean_std(list(units.values()), task.metrics)
    warnings = [f"seed{s}/{w}" for s, r in zip(seeds, per_seed, strict=True) for w in r.warnings]
    write_json_atomic(out / SUMMARY_FILE, {
        **{k: v for k, v in first.items() if k not in ("seed", "warnings")},
        "split": split,
        "folds": list(units),
        "seeds": list(seeds),
        "per_fold": {u: {m: v[m] for m in task.metrics} for u, v in units.items()},
        "per_seed": {str(s): r.summary for s, r in zip(seeds, per_seed, strict=True)},
        "evaluated_on": sorted({e for r in per_seed for e in read_json(r.out / SUMMARY_FILE)["evaluated_on"]}),
        **({"warnings": warnings} if warnings else {}),
        "summary": summary,
    })
    return RunResult(per_seed[0].head, split, out, units, summary, per_seed[0].random_weights, task.name, warnings)


def needed_modalities(config) -> tuple[str, ...]:
    """The feature-set modalities a head config reads: its ``modalities()`` method, else the group of
    its ``feature`` array (``"clip/cls"`` -> ``("clip",)``), else none (the cache must hold one set)."""
    own = getattr(config, "modalities", None)
    if callable(own):
        return tuple(own())
    feature = getattr(config, "feature", None)
    return (feature.split("/", 1)[0],) if isinstance(feature, str) and "/" in feature else ()


def needed_large_arrays(config) -> tuple[str, ...]:
    """The large arrays (``clip/tokens``, ``clip/pixels``) a head config reads: its ``large_arrays()``
    method, else none. They load as views read per batch (``emo.cache.data.take_items``)."""
    own = getattr(config, "large_arrays", None)
    return tuple(own()) if callable(own) else ()


def run_label(name: str, config) -> str:
    """A run's row name in reports: the config's ``label()`` when it has one (e.g. ``VFM + prompt``),
    else the head's name."""
    own = getattr(config, "label", None)
    return own() if callable(own) else name


def describe_encoder(meta: dict) -> str:
    """One line naming the frozen encoder behind a feature set: model and weights."""
    w = meta.get("weights") or {}
    kind = w.get("kind")
    if kind == "random":
        weights = f"RANDOM weights (seed {w.get('seed')})"
    elif kind == "pretrained":
        weights = f"pretrained {w.get('id') or w.get('tag')}"
    elif kind == "checkpoint":
        weights = f"checkpoint sha256 {str(w.get('sha256', ''))[:12]}"
        source = w.get("converted_from") or {}
        if source.get("source"):
            weights += f", converted from {source['source']} (sha256 {str(source.get('sha256', ''))[:12]})"
    else:
        weights = "weights: " + ", ".join(f"{k}={v}" for k, v in w.items() if isinstance(v, (str, int)))
    sap = ", subject-aware prompt" if meta.get("subject_prompt") else ""
    return f"{meta.get('modality', '?')}: {meta.get('model', '?')}, {weights}{sap}"


def cache_folds(
    cache: str | os.PathLike, split: str, feature_sets: list[str] | None, modalities: tuple[str, ...] = (),
    large: tuple[str, ...] = (), allow_partial: bool = False,
) -> tuple[list[str], Loader, FeatureData]:
    """Read the cache once (``large`` arrays as per-batch views); return the folds of ``split`` and a
    loader setting each fold's roles.

    Partial data never trains in silence: a fold whose split names items that have no features (failed
    or not extracted yet in a chosen set) is refused with how many and which, unless ``allow_partial``;
    then the fold's features say what was left out (``FeatureData.incomplete["split"]``), and runs
    record it.
    """
    manifest = read_manifest(Path(cache) / "manifest.jsonl")
    scheme, fold = parse_split(split)
    folds = manifest.folds(scheme) if fold == "all" else [fold]
    data = load_features(cache, feature_sets=feature_sets, modalities=modalities, large=large,
                         **({"partial": True} if allow_partial else {}))
    have = set(data.ids)

    def load(f: str) -> FeatureData:
        fd = set_roles(dataclasses.replace(data), manifest, f"{scheme}:{f}")  # shallow copy, own roles
        missing = [it.id for it in manifest.items if it.splits.get(scheme, {}).get(f) and it.id not in have]
        if missing and not allow_partial:
            sets = ", ".join(fd.feature_sets)
            raise ValueError(
                f"split {scheme}:{f}: {len(missing)} of its items have no features in {sets} (first: "
                f"{', '.join(missing[:5])}): they failed or are not extracted yet (see each set's failures.jsonl "
                "and `emo cache ls`); pass --allow-partial to train and score on the rest"
            )
        if missing:
            fd.incomplete = {**fd.incomplete, "split": {"items": len(missing), "first": missing[:20]}}
        return fd

    load(folds[0])  # an unknown scheme or fold fails here, before anything is trained
    return folds, load, data


def train_from_cache(
    name: str,
    cache: str | os.PathLike,
    *,
    split: str,
    out: str | os.PathLike,
    feature_sets: list[str] | None = None,
    overrides: dict[str, str] | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    command: list[str] | None = None,
    allow_partial: bool = False,
    seeds: list[int] | None = None,
) -> RunResult:
    """Load ``cache`` once and :func:`train_head` on ``split`` (``"scheme:fold"`` or ``"scheme:all"``) for
    ``seeds`` (default ``[seed]``; several: :func:`train_seeds`); ``allow_partial`` trains on the finished
    part of unfinished feature sets (see :func:`cache_folds`)."""
    config = get_head(name).config(overrides)  # a typo in an option fails before the cache is read
    folds, load, _ = cache_folds(cache, split, feature_sets, needed_modalities(config), needed_large_arrays(config),
                                 allow_partial)
    return train_seeds(name, load, seeds=seeds or [seed], folds=folds, out=out, overrides=overrides,
                       val_fraction=val_fraction, command=command, cache=cache)


def read_run_result(run: Path) -> RunResult:
    s = read_json(run / SUMMARY_FILE)
    folds = {fold: read_json(run / fold / "metrics.json") for fold in s["folds"]}
    return RunResult(s.get("label", s["head"]), s["split"], run, folds, s["summary"], s["random_weights"],
                     s.get("task", "classification"))


def evaluate_run(
    run: str | os.PathLike,
    *,
    split: str | None = None,
    cache: str | os.PathLike | None = None,
    feature_sets: list[str] | None = None,
    allow_partial: bool = False,
) -> RunResult:
    """Reload every fold's checkpoint of ``run`` and score the test items of ``split`` (default: the
    split it was trained on) in ``cache`` (default: the cache it was trained from). Checkpoints refuse
    features with other cache keys, except that a ``class_free`` head (a captioner, an embedding) trained on
    one fold is *transferred* to another cache (cross-dataset evaluation, e.g. ECPA's MAFW -> EmVidCap):
    its checkpoint scores every fold of ``split`` there, given features of the same frozen encoders.
    Nothing is written into the run."""
    run = Path(run)
    if not (run / SUMMARY_FILE).exists():
        raise FileNotFoundError(f"{run} is not a run directory (no {SUMMARY_FILE})")
    s = read_json(run / SUMMARY_FILE)
    if len(s.get("seeds") or []) > 1:  # every seed's run, then the mean ± std over all their folds
        kw = {"split": split, "cache": cache, "feature_sets": feature_sets, "allow_partial": allow_partial}
        each = {k: evaluate_run(run / f"seed{k}", **kw) for k in s["seeds"]}
        units = {f"seed{k}/{f}": m for k, r in each.items() for f, m in r.folds.items()}
        one = next(iter(each.values()))
        return RunResult(one.head, f"{one.split} ({len(each)} seeds)", run, units,
                         mean_std(list(units.values()), get_task(one.task).metrics), one.random_weights, one.task)
    own = s.get("cache")
    transfer = bool(cache and own and Path(cache).resolve() != Path(own).resolve()
                    and getattr(get_head(s["head"]).build, "class_free", False) and len(s["folds"]) == 1)
    cache = cache or own
    if not cache:
        raise ValueError(f"{run} does not record its cache; pass --cache")
    scheme = s["split"].partition(":")[0].split(" ")[0]
    split = split or (f"{scheme}:all" if len(s["folds"]) > 1 else s["split"])
    spec = get_head(s["head"])
    config = spec.config(s.get("config") or {})
    feature_sets = feature_sets or recorded_feature_sets(cache, s.get("cache_keys") or {})
    folds, load, _ = cache_folds(cache, split, feature_sets, needed_modalities(config), needed_large_arrays(config),
                                 allow_partial)
    checkpoint = (lambda f: run / s["folds"][0]) if transfer else (lambda f: run / f)
    missing = [f for f in folds if not (checkpoint(f) / "model.safetensors").exists()]
    if missing:
        raise ValueError(f"{run} has no checkpoint for fold(s) {missing} of {split}; it holds {s['folds']}")
    task = get_task(spec.task)
    per_fold = {}
    first = None
    for fold in folds:
        fd = load(fold)
        first = first or fd
        head = load_checkpoint(checkpoint(fold), fd, transfer=transfer)
        scored, evaluated_on = fd.role("test"), "test"
        if len(scored) == 0 and not task.needs_test and not transfer:  # a pre-training run: its held-out part
            held = set(read_json(run / fold / "config.json").get("val_ids") or [])
            scored, evaluated_on = fd.select([i in held for i in fd.ids]), "val"
        if len(scored) == 0:
            raise ValueError(f"split {fd.split!r} has no test items to evaluate {run} on")
        per_fold[fold] = {**task.evaluate(head, scored).metrics, "evaluated_on": evaluated_on}
    label = s.get("label", s["head"])
    shown = first.split if len(folds) == 1 else f"{scheme} ({len(folds)} folds)"
    return RunResult(label, shown, run, per_fold, mean_std(list(per_fold.values()), task.metrics),
                     first.random_weights, task.name)


def recorded_feature_sets(cache: str | os.PathLike, keys: dict[str, str]) -> list[str] | None:
    """The names of ``cache``'s feature sets with the cache keys a run recorded (``{name: key}``), so a
    cache holding several sets of one modality still gives a run its own; None when any is missing there
    (another dataset: the caller chooses by modality, and a checkpoint refuses other keys)."""
    if not keys:
        return None
    try:
        by_key = {fs.key: fs.name for fs in list_feature_sets(cache)}
    except OSError:
        return None
    found = [by_key.get(k) for k in keys.values()]
    return None if None in found else list(dict.fromkeys(found))


def unlearned_classes(train: FeatureData, scored: FeatureData, classes: list[str]) -> list[str]:
    """Warnings for classes that scored items hold but no train item does (a head cannot have learned them)."""
    have = np.bincount(train.labels.numpy()[train.labels.numpy() >= 0], minlength=len(classes))
    y = scored.labels.numpy()
    seen = np.bincount(y[y >= 0], minlength=len(classes))
    return [f"class {classes[c]!r} has {int(seen[c])} scored item(s) and no train item"
            for c in range(len(classes)) if seen[c] and not have[c]]


def run_fold(
    name: str, config, fd: FeatureData, fold: str, out: Path, val_fraction: float, seed: int, command: list[str] | None
) -> dict:
    spec = get_head(name)
    task = get_task(spec.task)
    seed_everything(seed)
    train, test = fd.role("train"), fd.role("test")
    if len(test) == 0 and task.needs_test:
        raise ValueError(f"split {fd.split or fold!r} has no test items")
    val, val_source = fd.role("val"), "official"
    if len(val) and val_fraction > 0:
        raise ValueError(f"split {fd.split!r} has an official val part ({len(val)} items); drop val_fraction")
    if len(val) == 0:
        val, val_source = None, "none"
        if val_fraction > 0:
            held = stratified_holdout(train.labels.numpy(), val_fraction, seed)
            train, val, val_source = train.select(~held), train.select(held), "fraction"
    scored, evaluated_on = test, "test"
    if len(test) == 0:  # a kind that may pre-train without a test split: scored on the held-out part
        if val is None or len(val) == 0:
            raise ValueError(f"split {fd.split or fold!r} has no test items and no validation part to score "
                             f"a {spec.task} run on: pass --val-fraction (e.g. 0.05)")
        scored = val
        evaluated_on = "val (also used for early stopping)" if getattr(config, "patience", 0) else "val"
    head = spec.build(copy.deepcopy(config), fd.classes)
    head.prepare(fd)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{name} · {fd.split or fold}" + (f" · {RANDOM_MARK}" if fd.random_weights else "")
    progress = EpochProgress(getattr(config, "epochs", None), f"{name} {fd.split or fold}")
    records: list[dict] = []
    with open(out / "log.jsonl", "w", encoding="utf-8") as logf:

        def log(record: dict) -> None:
            logf.write(json.dumps(record, sort_keys=True) + "\n")
            logf.flush()
            progress.update(record)
            if "epoch" in record:
                records.append(record)

        try:
            head.fit(train, val, log=log)
        finally:
            progress.close()
    plot_curves(records, out / "curves.png", title)
    evaluation = task.evaluate(head, scored)
    source = getattr(head, "source_run", None)  # a head stacked on another run (transfer) names it
    incomplete = dict(fd.incomplete)  # what --allow-partial left out
    own = [*getattr(head, "warnings", []), *evaluation.warnings]
    if incomplete:
        own.insert(0, "trained and scored on partial data (--allow-partial): " + "; ".join(
            f"{name}: {info.get('items', '?')} items left out" for name, info in incomplete.items()))
    warnings = [*unlearned_classes(train, scored, fd.classes), *own] if task.needs_labels else own
    metrics = {**evaluation.metrics, "evaluated_on": evaluated_on, **({"source_run": source} if source else {}),
               **({"warnings": warnings} if warnings else {})}
    save_checkpoint(out, head, name, fd.keys, extra={
        "task": task.name,
        "dataset": fd.dataset,
        "split": fd.split,
        "fold": fold,
        "seed": seed,
        "val_fraction": val_fraction,
        "val_source": val_source,
        "evaluated_on": evaluated_on,
        "n": {"train": len(train), "val": len(val) if val is not None else 0, "test": len(test)},
        "val_ids": list(val.ids) if val is not None else [],
        "random_weights": fd.random_weights,
        "feature_sets": fd.feature_sets,
        **({"source_run": source} if source else {}),
        **({"incomplete": incomplete} if incomplete else {}),
        "command": command,
        "versions": {"emo": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "scikit-learn": sklearn.__version__, "python": platform.python_version()},
    })
    write_json_atomic(out / "metrics.json", metrics)
    evaluation.write(out, title)
    if evaluation.features is not None:  # the head's final features of the scored items, in their order (t-SNE)
        save_file({"test": torch.as_tensor(evaluation.features).float().contiguous()}, str(out / EMBEDDINGS_FILE))
    return metrics
