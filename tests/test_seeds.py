"""Repeated seeds (issue 16, item 4): ``--seeds 0,1,2`` trains one run per seed under ``OUT/seed<k>/`` and
reports the mean ± std over every (seed, fold) pair; train, sweep, eval and report agree on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from emo.cli import app
from emo.heads.from_run import run_summary
from emo.heads.runs import evaluate_run, parse_seeds, read_run_result, report_runs, train_from_cache
from emo.heads.sweep import sweep_from_cache
from tests.cachetools import fake_feature_set, make_manifest

LINEAR = {"feature": "fake/cls", "c_grid": "0.01,1"}


@pytest.fixture
def cache(tmp_path):
    cache = tmp_path / "cache"
    m = make_manifest(cache, n=30)
    fake_feature_set(cache, [it.id for it in m.items], dim=8)
    return cache


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds(None, 5) == [5] and parse_seeds(" ", 1) == [1]
    for bad in ("0,0", "a,1", ","):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_several_seeds_write_a_run_per_seed_and_the_mean_and_std_over_them(cache, tmp_path):
    out = tmp_path / "run"
    result = train_from_cache("linear", cache, split="toy:0", out=out, overrides=LINEAR, val_fraction=0.3,
                              seeds=[0, 1, 2])
    for k in (0, 1, 2):  # each seed a complete run, with the seed it ran under
        assert json.loads((out / f"seed{k}" / "0" / "config.json").read_text())["seed"] == k
        assert json.loads((out / f"seed{k}" / "summary.json").read_text())["seed"] == k
    s = json.loads((out / "summary.json").read_text())
    assert s["seeds"] == [0, 1, 2] and s["folds"] == ["seed0/0", "seed1/0", "seed2/0"] and "seed" not in s
    values = [json.loads((out / f"seed{k}" / "0" / "metrics.json").read_text())["top1"] for k in (0, 1, 2)]
    assert s["summary"]["top1"] == pytest.approx({"mean": np.mean(values), "std": np.std(values, ddof=1), "n": 3})
    held = [set(json.loads((out / f"seed{k}" / "0" / "config.json").read_text())["val_ids"]) for k in (0, 1, 2)]
    assert held[0] != held[1] != held[2]  # the seeds drew their own validation parts
    assert result.split == s["split"] == "toy:0 (3 seeds)" and result.summary == s["summary"]
    assert read_run_result(out).summary["top1"]["mean"] == pytest.approx(np.mean(values))
    again = evaluate_run(out)  # reloads every seed's checkpoint
    assert list(again.folds) == s["folds"] and again.summary["top1"]["mean"] == pytest.approx(np.mean(values))
    table = report_runs(tmp_path)
    rows = [line for line in table.splitlines() if line.startswith("| linear")]
    assert rows == [rows[0]] and "toy:0 (3 seeds)" in rows[0] and " ± " in rows[0]  # one row, not four
    with pytest.raises(ValueError, match="seeds; name one of them"):
        run_summary(out)  # a stacked head must read one seed's features
    with pytest.raises(ValueError, match="already holds a run"):
        train_from_cache("linear", cache, split="toy:0", out=out, overrides=LINEAR, seeds=[0, 1])


def test_one_seed_keeps_the_plain_layout_and_shows_no_spread(cache, tmp_path):
    train_from_cache("linear", cache, split="toy:0", out=tmp_path / "run", overrides=LINEAR, seeds=[3])
    assert (tmp_path / "run" / "0" / "metrics.json").exists() and not (tmp_path / "run" / "seed3").exists()
    assert json.loads((tmp_path / "run" / "0" / "config.json").read_text())["seed"] == 3
    assert " ± " not in report_runs(tmp_path)  # one fold, one seed: a number, not "x ± 0.00"


def test_sweep_and_cli_take_seeds(cache, tmp_path):
    results = sweep_from_cache("linear", cache, split="toy:0", grid=["C=0.1,1"], out=tmp_path / "sweep",
                               overrides={"feature": "fake/cls"}, val_fraction=0.3, seeds=[0, 1])
    assert [r.split for r in results] == ["toy:0 (2 seeds)"] * 2
    assert (tmp_path / "sweep" / "C=0.1" / "seed1" / "0" / "metrics.json").exists()
    kept = sweep_from_cache("linear", cache, split="toy:0", grid=["C=0.1,1"], out=tmp_path / "sweep",
                            overrides={"feature": "fake/cls"}, val_fraction=0.3, seeds=[0, 1])
    assert [r.summary for r in kept] == [r.summary for r in results]  # resumed: finished cells are kept
    r = CliRunner().invoke(app, ["heads", "train", "linear", str(cache), "--split", "toy:0", "--out",
                                 str(tmp_path / "cli"), "--seeds", "0,1", "--val-fraction", "0.3", "--feature", "fake/cls"])
    assert r.exit_code == 0, r.output
    assert "toy:0 (2 seeds)" in r.output and (tmp_path / "cli" / "seed1" / "summary.json").exists()
    bad = CliRunner().invoke(app, ["heads", "train", "linear", str(cache), "--split", "toy:0", "--out",
                                   str(tmp_path / "bad"), "--seeds", "0,0"])
    assert bad.exit_code != 0 and "--seeds" in bad.output
