"""The user's path through the command line, as the README documents it: synthetic videos ->
`make extract` (a preset) -> `emo heads train` -> `emo report`, with the RANDOM WEIGHTS banner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emo.cache.featureset import list_feature_sets
from emo.cli import app
from emo.extract.presets import load_preset, parse_sets
from emo.heads.runs import RANDOM_BANNER

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "videos"
    res = runner.invoke(app, ["datasets", "synth", str(root), "--classes", "2", "--per-class", "6"])
    assert res.exit_code == 0, res.output
    return root


@pytest.fixture(scope="module")
def made_cache(videos, tmp_path_factory):
    """`make extract` itself, with a tiny encoder so that it runs in seconds."""
    cache = tmp_path_factory.mktemp("cache") / "synth"
    args = "--weights random --workers 1 --device cpu --set model=emo-tiny-ViT --set segments=6 --set shard_size=5"
    res = subprocess.run(
        ["make", "-o", ".venv/.emo-installed", "extract", "DATASET=synth", f"ROOT={videos}", f"CACHE={cache}",
         f"EMO={sys.executable} -m emo.cli", f"EXTRACT_ARGS={args}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return cache, res.stdout


def test_make_extract_runs_the_folder_preset_with_overrides(made_cache):
    cache, out = made_cache
    assert "configs/datasets/folder.json" in out  # synth has no preset of its own
    manifest = (cache / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 1 + 12 and json.loads(manifest[0])["dataset"] == "synth"
    (fs,) = list_feature_sets(cache)
    assert fs.random_weights and fs.config["model"] == "emo-tiny-ViT"
    assert fs.config["sampling"]["segments"] == 6 and len(fs.done_indices()) == 3  # 12 items, 5 per shard
    assert set(fs.item_status().values()) == {"ok"}


def test_make_extract_without_dataset_prints_usage():
    res = subprocess.run(["make", "-o", ".venv/.emo-installed", "extract"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode != 0 and "usage: make extract DATASET=name ROOT=" in res.stdout


def test_heads_train_and_report_from_the_command_line(made_cache, tmp_path):
    cache, _ = made_cache
    res = runner.invoke(app, ["heads", "list"])
    assert res.exit_code == 0 and "linear" in res.output and "zero-shot" in res.output
    lin = runner.invoke(app, ["heads", "train", "linear", str(cache), "--split", "folder:0",
                              "--out", str(tmp_path / "runs" / "lin"), "--C", "0.5"])
    assert lin.exit_code == 0, lin.output
    assert lin.output.splitlines()[0] == RANDOM_BANNER
    cfg = json.loads((tmp_path / "runs" / "lin" / "0" / "config.json").read_text())
    (fs,) = list_feature_sets(cache)
    assert cfg["config"]["C"] == 0.5 and cfg["cache_keys"] == {fs.name: fs.key} and cfg["random_weights"] is True
    metrics = json.loads((tmp_path / "runs" / "lin" / "0" / "metrics.json").read_text())
    assert {"top1", "macro_f1", "weighted_f1", "per_class_recall"} <= set(metrics)
    assert (tmp_path / "runs" / "lin" / "0" / "confusion.png").stat().st_size > 0
    zs = runner.invoke(app, ["heads", "train", "zero-shot", str(cache), "--split", "folder:0",
                             "--out", str(tmp_path / "runs" / "zs")])
    assert zs.exit_code == 0, zs.output
    rep = runner.invoke(app, ["report", str(tmp_path / "runs")])
    assert rep.exit_code == 0
    lines = rep.output.splitlines()
    assert lines[0] == RANDOM_BANNER
    assert any(line.startswith("| linear |") for line in lines) and any(line.startswith("| zero-shot |") for line in lines)


def test_heads_train_rejects_bad_options_naming_them(made_cache, tmp_path):
    cache, _ = made_cache
    base = ["heads", "train", "linear", str(cache), "--out", str(tmp_path / "r")]
    bad_field = runner.invoke(app, [*base, "--split", "folder:0", "--bogus", "1"])
    assert bad_field.exit_code == 2 and "bogus" in bad_field.output
    bad_fold = runner.invoke(app, [*base, "--split", "folder:7"])
    assert bad_fold.exit_code == 2 and "7" in bad_fold.output
    bad_head = runner.invoke(app, ["heads", "train", "nope", str(cache), "--split", "folder:0", "--out", str(tmp_path / "n")])
    assert bad_head.exit_code == 2 and "linear" in bad_head.output


def test_preset_overrides_are_checked():
    assert parse_sets(["segments=8", "model=ViT-B-16", "pixels=true"]) == {"segments": 8, "model": "ViT-B-16", "pixels": True}
    with pytest.raises(ValueError, match="not a clip extraction option"):
        parse_sets(["segmnets=8"])
    with pytest.raises(ValueError, match="OPTION=VALUE"):
        parse_sets(["segments"])


def test_bad_preset_files_are_rejected(tmp_path):
    (tmp_path / "folder.json").write_text(json.dumps({"adapter": "folder", "extract": [{"encoder": "clip"}]}))
    assert load_preset("anything", tmp_path)["adapter"] == "folder"
    (tmp_path / "x.json").write_text(json.dumps({"adapter": "folder", "extra": 1}))
    with pytest.raises(ValueError, match="unknown preset key"):
        load_preset("x", tmp_path)
    (tmp_path / "y.json").write_text(json.dumps({"adapter": "nope"}))
    with pytest.raises(ValueError, match="adapter 'nope'"):
        load_preset("y", tmp_path)
    (tmp_path / "z.json").write_text(json.dumps({"adapter": "folder", "extract": [{"encoder": "wav2vec"}]}))
    with pytest.raises(ValueError, match="has no extractor"):
        load_preset("z", tmp_path)


def test_sweep_runs_every_cell_resumes_and_reports_a_row_per_setting(made_cache, tmp_path):
    cache, _ = made_cache
    args = ["heads", "sweep", "linear", str(cache), "--split", "folder:0", "--grid", "C=0.1,10",
            "--grid", "max_iter=200,300", "--out", str(tmp_path / "sweep")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    cells = sorted(p.name for p in (tmp_path / "sweep").iterdir())
    assert cells == ["C=0.1,max_iter=200", "C=0.1,max_iter=300", "C=10,max_iter=200", "C=10,max_iter=300"]
    cfg = json.loads((tmp_path / "sweep" / "C=10,max_iter=300" / "0" / "config.json").read_text())
    assert cfg["config"]["C"] == 10.0 and cfg["config"]["max_iter"] == 300
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and again.output.count("done earlier, kept") == 4
    rep = runner.invoke(app, ["report", str(tmp_path / "sweep"), "--csv", str(tmp_path / "sweep.csv")])
    assert rep.exit_code == 0
    assert sum(line.startswith("| linear C=") for line in rep.output.splitlines()) == 4
    rows = (tmp_path / "sweep.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("name,split,random_weights,top1_mean,top1_std,top1_n")
    bad = runner.invoke(app, [*args[:6], "--grid", "bogus=1,2", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "bogus" in bad.output and not (tmp_path / "bad").exists()


def test_eval_reloads_checkpoints_and_gets_the_same_metrics(made_cache, tmp_path):
    cache, _ = made_cache
    run = tmp_path / "lin"
    assert runner.invoke(app, ["heads", "train", "linear", str(cache), "--split", "folder:0", "--out", str(run)]).exit_code == 0
    trained = json.loads((run / "0" / "metrics.json").read_text())
    res = runner.invoke(app, ["heads", "eval", str(run)])
    assert res.exit_code == 0, res.output
    assert f"{100 * trained['top1']:.2f}" in res.output
    from emo.heads.runs import evaluate_run

    again = evaluate_run(run)
    assert again.folds["0"]["confusion"] == trained["confusion"]


def test_report_tsne_writes_plots_and_a_silhouette_column(made_cache, tmp_path):
    cache, _ = made_cache
    run = tmp_path / "runs" / "lin"
    assert runner.invoke(app, ["heads", "train", "linear", str(cache), "--split", "folder:0", "--out", str(run)]).exit_code == 0
    assert (run / "0" / "embeddings.safetensors").exists()
    res = runner.invoke(app, ["report", str(tmp_path / "runs"), "--tsne"])
    assert res.exit_code == 0, res.output
    assert "silhouette" in res.output and (run / "0" / "tsne.png").stat().st_size > 0
    from safetensors.torch import load_file
    from sklearn.metrics import silhouette_score

    emb = load_file(str(run / "0" / "embeddings.safetensors"))["test"].double().numpy()
    import csv as _csv

    with open(run / "0" / "predictions.csv") as f:
        true = [r["true"] for r in _csv.DictReader(f)]
    expected = silhouette_score(emb, true, metric="cosine")
    assert f"{expected:.3f}" in res.output


SMALL_PE = ["--d", "1", "--mamba-inner", "32", "--heads", "4", "--mamba-dt-rank", "4", "--epochs", "2"]


def test_pe_clip_from_the_command_line_with_a_preset_and_a_verbatim_grid(made_cache, tmp_path):
    cache, _ = made_cache
    run = runner.invoke(app, ["heads", "train", "pe-clip", str(cache), "--split", "folder:0", "--out",
                              str(tmp_path / "pe"), "--temporal", "gru", "--prototype", "learnable",
                              "--prototype-tokens", "14", *SMALL_PE])
    assert run.exit_code == 0, run.output
    cfg = json.loads((tmp_path / "pe" / "0" / "config.json").read_text())["config"]
    assert (cfg["temporal"], cfg["prototype"], cfg["prototype_tokens"], cfg["bidirectional"]) == ("gru", "learnable", 14, True)
    sweep = runner.invoke(app, ["heads", "sweep", "pe-clip", str(cache), "--split", "folder:0", "--preset", "table4",
                                "--grid", "prompt_separator=; |, ", "--out", str(tmp_path / "sw"), *SMALL_PE])
    assert sweep.exit_code == 0, sweep.output
    cells = sorted(p.name for p in (tmp_path / "sw").iterdir())
    assert cells == ["prompt_separator=%2C%20", "prompt_separator=%3B%20"]
    cfg = json.loads((tmp_path / "sw" / "prompt_separator=%2C%20" / "0" / "config.json").read_text())["config"]
    assert cfg["prompt_separator"] == ", " and cfg["prototype"] == "learnable" and cfg["bidirectional"] is False
    rep = runner.invoke(app, ["report", str(tmp_path / "sw")])
    assert '| pe-clip prompt_separator=", " |' in rep.output and '| pe-clip prompt_separator="; " |' in rep.output


def test_heads_config_lists_fields_defaults_and_presets():
    res = runner.invoke(app, ["heads", "config", "pe-clip"])
    assert res.exit_code == 0
    cfg = json.loads(res.stdout)  # stdout is the config file alone; the presets go to stderr
    assert cfg["d"] == 8 and cfg["lam"] == 0.7 and cfg["tau"] == 0.01 and cfg["epochs"] == 50
    assert "table5" in res.stderr
    assert runner.invoke(app, ["heads", "config", "nope"]).exit_code == 2
