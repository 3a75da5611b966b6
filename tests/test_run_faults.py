"""Stage 2 faults end with one clear message naming the option, file or items (exit 2 through the CLI),
and results that would be misread carry a warning: an untrained model (--epochs 0), a class only in
test, fewer shots than the K a cache-classifier row names, partial data, broken run files, NaN
features."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from emo.cache.manifest import read_manifest, write_manifest
from emo.cli import app
from emo.heads.registry import CheckpointError, load_checkpoint
from emo.heads.report import report_runs
from emo.heads.runs import train_head
from tests.cachetools import emoasst_cache
from tests.test_heads_linear import make_features
from tests.test_train import ToyConfig  # noqa: F401  (registers the toy-train head)

runner = CliRunner()


@pytest.fixture
def cache(tmp_path):
    root = tmp_path / "meld"
    root.mkdir()
    emoasst_cache(root)
    return root


def test_epochs_zero_is_refused_before_anything_is_written(cache, tmp_path):
    res = runner.invoke(app, ["heads", "train", "toy-train", str(cache), "--split", "meld:official",
                              "--out", str(tmp_path / "run"), "--epochs", "0", "--lr", "-1"])
    assert res.exit_code == 2
    assert "--epochs must be >= 1, got 0" in res.output and "--lr must be a positive number" in res.output
    assert not (tmp_path / "run").exists()


def test_out_naming_a_file_is_refused(cache, tmp_path):
    (tmp_path / "taken").write_text("notes")
    res = runner.invoke(app, ["heads", "train", "linear", str(cache), "--split", "meld:official",
                              "--out", str(tmp_path / "taken")])
    assert res.exit_code == 2 and "is a file, not a run directory" in res.output
    assert (tmp_path / "taken").read_text() == "notes"


def test_a_class_only_in_test_is_a_warning_in_the_run_the_cli_and_the_report(tmp_path):
    fd, _ = make_features()
    train = (fd.roles == "train") & (fd.labels.numpy() == 2)
    fd.roles = np.where(train, "", fd.roles)  # class c2 keeps test items only
    res = train_head("linear", fd, out=tmp_path / "runs" / "lin")
    assert res.warnings == ["0: class 'c2' has 6 scored item(s) and no train item"]
    metrics = json.loads((tmp_path / "runs" / "lin" / "0" / "metrics.json").read_text())
    assert metrics["warnings"] == ["class 'c2' has 6 scored item(s) and no train item"]
    assert "warning: 0: class 'c2' has 6 scored item(s) and no train item" in report_runs(tmp_path / "runs")


def test_split_items_without_features_stop_training_naming_how_many_and_which(cache, tmp_path):
    m = read_manifest(cache / "manifest.jsonl")
    from emo.cache.manifest import Item

    m.items.append(Item(id="never_extracted", path="x.mp4", label="joy", splits={"meld": {"official": "test"}}))
    write_manifest(m, cache / "manifest.jsonl")
    res = runner.invoke(app, ["heads", "train", "linear", str(cache), "--split", "meld:official",
                              "--out", str(tmp_path / "run")])
    assert res.exit_code == 2
    assert "split meld:official: 1 of its items have no features" in res.output
    assert "never_extracted" in res.output and "--allow-partial" in res.output


def test_nan_features_end_with_a_message_not_a_traceback(cache, tmp_path):
    from emo.cache.featureset import list_feature_sets
    from emo.cache.loader import load_features

    fd = load_features(cache, modalities=("clip",), split="meld:official")
    fd.arrays["clip/cls"] = fd.arrays["clip/cls"].clone()
    fd.arrays["clip/cls"][0] = float("nan")
    with pytest.raises(FloatingPointError, match="epoch 1: the training loss is nan.*emo cache verify"):
        train_head("toy-train", fd, out=tmp_path / "run", overrides={"feature": "clip/cls", "epochs": 1})
    assert list_feature_sets(cache)  # the cache itself is untouched


def test_broken_run_files_are_named(cache, tmp_path):
    fd, _ = make_features()
    train_head("linear", fd, out=tmp_path / "runs" / "lin")
    fold = tmp_path / "runs" / "lin" / "0"
    (fold / "model.safetensors").write_bytes(b"\x00" * 64)  # not a safetensors file
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_checkpoint(fold, fd)
    (fold / "config.json").write_text("{ broken")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        load_checkpoint(fold, fd)
    (tmp_path / "runs" / "lin" / "summary.json").write_text("[1, 2")
    res = runner.invoke(app, ["report", str(tmp_path / "runs")])
    assert res.exit_code == 2 and "summary.json: not valid JSON" in res.output


def test_a_cache_classifier_with_fewer_train_items_than_shots_says_so(cache, tmp_path):
    out = tmp_path / "vfm"
    res = runner.invoke(app, ["heads", "train", "vfm", str(cache), "--split", "meld:official", "--out", str(out),
                              "--epochs", "1", "--batch-size", "8", "--heads", "2", "--ffn", "32"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["heads", "cache-classifier", str(cache), "--video", str(out), "--shots", "16",
                              "--search", "none", "--out", str(tmp_path / "tip")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "tip" / "summary.json").read_text())
    assert any("--shots 16" in w and "has 12 train item(s)" in w for w in summary["warnings"]), summary.get("warnings")
    assert "warning:" in res.output


def test_allow_partial_trains_on_the_finished_part_and_the_run_says_what_was_left_out(cache, tmp_path):
    from emo.cache.featureset import list_feature_sets

    clip = next(fs for fs in list_feature_sets(cache) if fs.meta.get("modality") == "clip")
    done = sorted(clip.path.glob("shards/*.done.json"))
    done[0].unlink()  # an unfinished shard: its items must not train in silence
    args = ["heads", "train", "linear", str(cache), "--split", "meld:official"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "refused")])
    assert res.exit_code == 2 and "is unfinished" in res.output and "--allow-partial" in res.output
    assert done[0].name.replace(".done.json", ".h5") in res.output
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "run"), "--allow-partial"])
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "partial data" in res.output
    config = json.loads((tmp_path / "run" / "official" / "config.json").read_text())
    assert clip.name in config["incomplete"] and config["incomplete"]["split"]["items"] > 0
    assert "partial data" in report_runs(tmp_path / "run")
