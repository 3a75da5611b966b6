"""The user's path around a training run: a per-epoch progress bar on a terminal (silent otherwise),
learning curves per fold and side by side in ``emo report --curves``, pictures of random-weight runs
marked as such, a run-directory column in reports, ``emo --version``."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from emo import __version__
from emo.cli import app
from emo.heads.curves import EpochProgress, epoch_records, plot_curves, plot_runs
from emo.heads.metrics import plot_confusion
from emo.heads.report import report_runs
from emo.heads.runs import train_head
from tests.test_heads_linear import make_features
from tests.test_pe_clip import SMALL as PE_SMALL
from tests.test_pe_clip import tiny_features


def red_top(png) -> int:
    """Pixels of strong red in the top tenth of a PNG (where the RANDOM WEIGHTS line goes)."""
    img = imread(png)[..., :3]
    top = img[: max(1, img.shape[0] // 10)]
    return int(((top[..., 0] > 0.8) & (top[..., 1] < 0.3) & (top[..., 2] < 0.3)).sum())


def test_a_gradient_run_writes_its_curves_and_marks_random_weight_pictures(tmp_path):
    train_head("pe-clip", tiny_features(), out=tmp_path / "pe", overrides={**PE_SMALL, "epochs": 3})
    fold = tmp_path / "pe" / "0"
    records = epoch_records(fold / "log.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for png in ("curves.png", "confusion.png"):
        assert (fold / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert red_top(fold / png) > 50, png  # the features came from random weights
    fd, _ = make_features()  # pretrained-weights features: no mark
    train_head("linear", fd, out=tmp_path / "lin")
    assert red_top(tmp_path / "lin" / "0" / "confusion.png") == 0
    assert not (tmp_path / "lin" / "0" / "curves.png").exists()  # no epochs to draw


def test_the_mark_follows_the_title_not_the_picture_kind(tmp_path):
    cm = np.array([[3, 1], [0, 4]])
    plot_confusion(cm, ["a", "b"], tmp_path / "r.png", "x · RANDOM WEIGHTS")
    plot_confusion(cm, ["a", "b"], tmp_path / "p.png", "x")
    assert red_top(tmp_path / "r.png") > 50 and red_top(tmp_path / "p.png") == 0
    records = [{"epoch": e, "loss": 1.0 / e, "val_top1": 0.1 * e} for e in (1, 2, 3)]
    assert plot_curves(records, tmp_path / "c.png", "run") is not None and red_top(tmp_path / "c.png") == 0
    assert plot_curves([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_progress_shows_epochs_losses_and_eta_on_a_terminal_and_nothing_otherwise(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    bar = EpochProgress(3, "pe-clip toy:0", enabled=True)
    for e in (1, 2):
        bar.update({"epoch": e, "loss": 0.5 / e, "val_top1": 0.25 * e, "seconds": 0.1})
    bar.update({"candidate": 1, "score": 0.3})  # not an epoch: no step
    bar.close()
    text = out.getvalue()
    assert "2/3" in text and "loss=0.25" in text and "val_top1=0.5" in text and "<" in text  # tqdm's ETA
    quiet = io.StringIO()
    monkeypatch.setattr("sys.stderr", quiet)  # not a terminal
    bar = EpochProgress(3, "x")
    bar.update({"epoch": 1, "loss": 1.0})
    bar.close()
    assert quiet.getvalue() == ""


def test_report_draws_runs_side_by_side_and_names_each_rows_directory(tmp_path):
    runs = tmp_path / "runs"
    for epochs in (2, 4):
        train_head("pe-clip", tiny_features(), out=runs / f"e{epochs}", overrides={**PE_SMALL, "epochs": epochs})
    text = report_runs(runs, curves=tmp_path / "curves.png")
    assert (tmp_path / "curves.png").exists() and red_top(tmp_path / "curves.png") > 50
    rows = [line for line in text.splitlines() if line.startswith("| pe-clip |")]
    assert [r.rsplit("|", 2)[1].strip() for r in rows] == ["e2", "e4"]
    fd, _ = make_features()
    train_head("linear", fd, out=tmp_path / "lin")
    text = report_runs(tmp_path / "lin", curves=tmp_path / "none.png")
    assert "no run under" in text and not (tmp_path / "none.png").exists()
    assert plot_runs({"a": [[]]}, tmp_path / "x.png") is None


def test_a_heads_help_lists_every_field_with_type_default_choices_and_meaning():
    from emo.heads.config import field_help
    from emo.heads.duse import DuSEConfig

    res = CliRunner().invoke(app, ["heads", "train", "duse", "--help"])
    assert res.exit_code == 0
    for h in field_help(DuSEConfig):
        assert h.option in res.output and h.meaning and h.meaning in res.output, h.name
    assert "--prompt-variant first|last  (default first)" in res.output  # choices and default
    assert "M, prompted layers: Shallow 1, Normal 4, Deep 8" in res.output  # the comment beside the field
    assert "--epochs INT  (default 30)" in res.output  # the head's own default, not TrainConfig's 50
    res = CliRunner().invoke(app, ["heads", "sweep", "pe-clip", "--help"])
    assert "--temporal identity|lstm|gru|transformer|mamba  (default mamba)" in res.output


def test_every_field_of_every_head_has_its_meaning_beside_it():
    from emo.heads.config import field_help
    from emo.heads.registry import BUILTIN_HEADS, list_heads

    missing = {s.name: [h.name for h in field_help(s.config_cls) if not h.meaning] for s in list_heads()
               if s.name in BUILTIN_HEADS}  # other tests register toy heads of their own
    assert set(missing) == set(BUILTIN_HEADS)
    assert not {k: v for k, v in missing.items() if v}


def test_a_config_file_round_trips_through_heads_config_and_train(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["heads", "config", "linear"])
    cfg = json.loads(res.stdout)
    cfg["max_iter"] = 7
    path = tmp_path / "lin.json"
    path.write_text(json.dumps(cfg))
    from emo.cli.heads import _config_overrides

    assert _config_overrides("linear", path)["max_iter"] == 7
    path.write_text(json.dumps({**cfg, "max_itter": 3}))
    with pytest.raises(ValueError, match=r"lin.json: .*no field 'max_itter' \(did you mean 'max_iter'\?\)"):
        _config_overrides("linear", path)
    res = runner.invoke(app, ["heads", "train", "linear", str(tmp_path), "--split", "x:0", "--out",
                              str(tmp_path / "run"), "--config", str(path)])  # refused before any data is read
    assert res.exit_code == 2 and "did you mean 'max_iter'" in res.output and not (tmp_path / "run").exists()


def test_a_mistyped_option_gets_a_did_you_mean():
    from emo.heads.config import config_from_dict
    from emo.heads.duse import DuSEConfig

    with pytest.raises(ValueError, match=r"no field 'prompt_dept' \(did you mean 'prompt_depth'\?\)"):
        config_from_dict(DuSEConfig, {"prompt_dept": "2"})
    with pytest.raises(ValueError, match=r"no field 'zzz'; valid fields"):
        config_from_dict(DuSEConfig, {"zzz": "2"})


def test_eval_and_probe_find_the_runs_own_feature_sets_in_a_cache_with_several(tmp_path):
    from emo.cache.featureset import list_feature_sets
    from emo.heads.runs import recorded_feature_sets

    runner = CliRunner()
    cache = tmp_path / "cache"
    extract = ["extract", "clip", str(cache), "--weights", "random", "--model", "emo-tiny-ViT", "--workers", "0",
               "--device", "cpu"]
    for args in (["datasets", "synth", str(tmp_path / "v"), "--classes", "2", "--per-class", "4"],
                 ["datasets", "prepare", "folder", "--root", str(tmp_path / "v"), "--out", str(cache), "--dataset",
                  "synth", "--test-ratio", "0.5"],
                 [*extract, "--segments", "4"], [*extract, "--segments", "2"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    four, two = sorted(list_feature_sets(cache), key=lambda fs: -fs.config["sampling"]["segments"])
    res = runner.invoke(app, ["heads", "train", "linear", str(cache), "--split", "folder:0", "--features", two.name,
                              "--out", str(tmp_path / "lin")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["heads", "eval", str(tmp_path / "lin")])  # two clip sets: the run's, by key
    assert res.exit_code == 0, res.output
    assert recorded_feature_sets(cache, {"x": two.key}) == [two.name]
    assert recorded_feature_sets(cache, {"x": four.key, "y": "0" * 64}) is None  # not all there: choose by modality
    res = runner.invoke(app, ["heads", "probe", str(cache), "--split", "folder:0"])
    assert res.exit_code == 2 and "--run RUN" in res.output


def test_random_clip_weights_are_announced_in_emos_words_not_open_clips(capfd, caplog):
    import logging

    from emo.encoders.clip import TINY_MODEL, ClipSpec, build_model

    before = list(logging.getLogger().handlers)
    build_model(ClipSpec(model=TINY_MODEL, weights="random", random_seed=4))
    err = capfd.readouterr().err
    assert "emo: emo-tiny-ViT with RANDOM weights (seed 4)" in err and "No pretrained weights" not in err
    assert not any("No pretrained weights" in r.getMessage() for r in caplog.records)  # open_clip's line is gone
    assert logging.getLogger().handlers == before  # open_clip did not configure logging behind our back


def test_version():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"emo {__version__}"
