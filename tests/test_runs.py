"""Run directories: every file written, the val part drawn from train only, reproducibility, banner."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest

import emo.heads.linear as linear_mod
from emo.cache.loader import load_features
from emo.heads.registry import CheckpointError, load_checkpoint
from emo.heads.runs import RANDOM_BANNER, report_runs, stratified_holdout, train_from_cache, train_head
from tests.cachetools import fake_feature_set, make_manifest
from tests.test_heads_linear import make_features

FOLD_FILES = [
    "config.json",
    "metrics.json",
    "predictions.csv",
    "confusion.png",
    "model.safetensors",
    "log.jsonl",
]


def fold_loader(fd):
    """Three folds: fold k tests the items with ``i % 3 == k``."""

    def load(fold: str):
        k = int(fold)
        roles = np.array(["test" if i % 3 == k else "train" for i in range(len(fd))], dtype=object)
        return dataclasses.replace(fd, roles=roles, split=f"toy:{fold}")

    return load


def test_multi_fold_run_writes_every_file_and_a_summary_with_the_banner(tmp_path):
    fd, _ = make_features(random_weights=True)
    result = train_head(
        "linear",
        fold_loader(fd),
        folds=["0", "1", "2"],
        out=tmp_path / "run",
        command=["emo", "heads", "train", "linear"],
    )
    for fold in "012":
        for name in FOLD_FILES:
            assert (tmp_path / "run" / fold / name).stat().st_size > 0, (fold, name)
    cfg = json.loads((tmp_path / "run" / "1" / "config.json").read_text())
    assert cfg["head"] == "linear" and cfg["fold"] == "1" and cfg["split"] == "toy:1" and cfg["seed"] == 0
    assert cfg["config"]["C"] == 1.0 and cfg["cache_keys"] == fd.keys and cfg["random_weights"] is True
    assert cfg["feature_sets"] == fd.feature_sets and cfg["command"] == ["emo", "heads", "train", "linear"]
    assert cfg["versions"]["emo"] and cfg["val_source"] == "none" and cfg["val_ids"] == []
    with open(tmp_path / "run" / "1" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20 and list(rows[0]) == ["id", "true", "pred", "score_c0", "score_c1", "score_c2"]
    assert {r["id"] for r in rows} == {f"v{i:03d}" for i in range(60) if i % 3 == 1}
    assert len((tmp_path / "run" / "0" / "log.jsonl").read_text().splitlines()) == 1

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["folds"] == ["0", "1", "2"] and summary["summary"]["top1"]["n"] == 3
    assert summary["summary"]["top1"]["mean"] == pytest.approx(
        np.mean([m["top1"] for m in result.folds.values()])
    )
    assert result.summary["top1"]["mean"] > 0.9
    table = result.table()
    assert table.splitlines()[0] == RANDOM_BANNER
    assert "| linear | toy (3 folds) |" in table and " ± " in table
    assert report_runs(tmp_path).splitlines()[0] == RANDOM_BANNER

    again = load_checkpoint(tmp_path / "run" / "2", fold_loader(fd)("2"))
    scores = again.predict_scores(fold_loader(fd)("2").role("test"))
    with open(tmp_path / "run" / "2" / "predictions.csv") as f:
        saved = np.array([[float(r[f"score_c{k}"]) for k in range(3)] for r in csv.DictReader(f)])
    np.testing.assert_array_equal(scores, saved)


def test_no_banner_without_random_weights_and_zero_shot_runs(tmp_path):
    fd, _ = make_features()
    result = train_head("zero-shot", fd, out=tmp_path / "zs")
    assert (tmp_path / "zs" / "0" / "model.safetensors").exists()
    assert RANDOM_BANNER not in result.table() and result.summary["top1"]["mean"] > 0.9
    assert RANDOM_BANNER not in report_runs(tmp_path)


def test_val_fraction_chooses_on_train_items_only(tmp_path, monkeypatch):
    fd, _ = make_features()
    seen: list[list[str]] = []
    real = linear_mod.pooled_video
    monkeypatch.setattr(
        linear_mod,
        "pooled_video",
        lambda data, feature: (seen.append(list(data.ids)), real(data, feature))[1],
    )
    train_head("linear", fd, out=tmp_path / "run", val_fraction=0.25, overrides={"c_grid": "0.01,1"})
    train_ids = set(fd.role("train").ids)
    test_ids = set(fd.role("test").ids)
    fit_ids, val_ids, predicted, embedded = seen  # fit: train, then val; test prediction; test embeddings
    assert set(fit_ids) <= train_ids and set(val_ids) <= train_ids and not set(fit_ids) & set(val_ids)
    assert set(predicted) == test_ids and embedded == predicted
    cfg = json.loads((tmp_path / "run" / "0" / "config.json").read_text())
    assert cfg["val_source"] == "fraction" and set(cfg["val_ids"]) == set(val_ids)
    assert (
        cfg["n"] == {"train": 40 - len(val_ids), "val": len(val_ids), "test": 20} and 9 <= len(val_ids) <= 12
    )
    assert cfg["selected"]["C"] in (0.01, 1.0)
    log = [json.loads(line) for line in (tmp_path / "run" / "0" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == ["select", "select", "fit"]


def test_same_seed_is_bit_reproducible(tmp_path):
    fd, _ = make_features()
    for run in ("a", "b"):
        train_head("linear", fold_loader(fd), folds=["0", "1"], out=tmp_path / run, val_fraction=0.2, seed=3)
    files = [f"{fold}/{name}" for fold in "01" for name in FOLD_FILES] + ["summary.json"]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_train_from_cache_end_to_end_with_string_overrides(tmp_path):
    cache = tmp_path / "cache"
    m = make_manifest(cache, n=30)
    fake_feature_set(cache, [it.id for it in m.items], dim=8, weights_kind="random")
    result = train_from_cache(
        "linear",
        cache,
        split="toy:all",
        out=tmp_path / "run",
        overrides={"feature": "fake/cls", "C": "0.5"},
        command=["emo"],
    )
    assert list(result.folds) == ["0"] and result.split == "toy:0"
    assert result.table().splitlines()[0] == RANDOM_BANNER
    cfg = json.loads((tmp_path / "run" / "0" / "config.json").read_text())
    assert (
        cfg["config"]["C"] == 0.5
        and cfg["feature_sets"][next(iter(cfg["feature_sets"]))]["weights"]["kind"] == "random"
    )
    fd = load_features(cache, split="toy:0")
    head = load_checkpoint(tmp_path / "run" / "0", fd)
    assert head.predict_scores(fd.role("test")).shape == (10, 2)

    other = tmp_path / "other"
    m2 = make_manifest(other, n=30)
    fake_feature_set(other, [it.id for it in m2.items], dim=8, seed=1, weights_kind="pretrained")
    with pytest.raises(CheckpointError, match="cache keys"):
        load_checkpoint(tmp_path / "run" / "0", load_features(other, split="toy:0"))
    with pytest.raises(ValueError, match="already holds a run"):
        train_from_cache(
            "linear", cache, split="toy:0", out=tmp_path / "run", overrides={"feature": "fake/cls"}
        )
    with pytest.raises(ValueError, match="no field 'Cee'"):
        train_from_cache("linear", cache, split="toy:0", out=tmp_path / "new", overrides={"Cee": "1"})


def test_stratified_holdout_is_per_class_and_seeded():
    labels = np.array([0] * 8 + [1] * 4 + [2] * 1)
    mask = stratified_holdout(labels, 0.25, seed=0)
    assert np.bincount(labels[mask], minlength=3).tolist() == [2, 1, 0]  # a lone item stays in train
    assert np.array_equal(mask, stratified_holdout(labels, 0.25, seed=0))
    assert not np.array_equal(mask, stratified_holdout(labels, 0.25, seed=1))


def test_official_val_split_is_used_and_val_fraction_then_refused(tmp_path):
    fd, _ = make_features()
    roles = fd.roles.copy()
    roles[[i for i in range(len(fd)) if i % 3 == 1][:6]] = "val"
    fd = dataclasses.replace(fd, roles=roles)
    train_head("linear", fd, out=tmp_path / "a", overrides={"c_grid": "0.1,1"})
    cfg = json.loads((tmp_path / "a" / "0" / "config.json").read_text())
    assert cfg["val_source"] == "official" and cfg["n"]["val"] == 6
    with pytest.raises(ValueError, match="official val"):
        train_head("linear", fd, out=tmp_path / "b", val_fraction=0.2)


# -- one pass for a run's test scores and features ------------------------------------------------------
def test_predict_gives_the_scores_and_the_embed_features_of_every_head_with_features(tmp_path):
    """A run stores head.predict(test): for each head with embed(), the same scores as predict_scores and
    the same features as embed, so the one-pass overrides change nothing but the work."""
    import torch

    from emo.heads.registry import get_head
    from tests.cachetools import emoasst_cache
    from tests.test_emoasst import SMALL
    from tests.test_pe_clip import build, tiny_features

    fd = tiny_features()
    pe = build(fd, device="cpu", epochs=1)
    pe.fit(fd.role("train"))
    emoasst_cache(tmp_path / "cache")
    meld = load_features(tmp_path / "cache", split="meld:official", modalities=("clip",))
    vfm_spec = get_head("vfm")
    torch.manual_seed(0)
    vfm = vfm_spec.build(vfm_spec.config({**SMALL, "epochs": "1"}), meld.classes)
    vfm.fit(meld.role("train"))
    for head, data in ((pe, fd), (vfm, meld)):
        scores, features = head.predict(data)
        np.testing.assert_allclose(scores, head.predict_scores(data), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(features, head.embed(data), rtol=1e-5, atol=1e-6)
