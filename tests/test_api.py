"""The Python API of the README: features as a torch Dataset and a table, and a trained run's head
predicting on a second cache of new videos (examples/api.py runs as written)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import emo.api as emo
from emo.cli import app

REPO = Path(__file__).resolve().parents[1]
EXTRACT = ["--weights", "random", "--model", "emo-tiny-ViT", "--segments", "4", "--workers", "0", "--device", "cpu"]


def _cache(root: Path, seed: int) -> Path:
    runner = CliRunner()
    for args in (["datasets", "synth", str(root / "videos"), "--classes", "2", "--per-class", "4", "--seed", str(seed)],
                 ["datasets", "prepare", "folder", "--root", str(root / "videos"), "--out", str(root / "cache"),
                  "--dataset", "synth", "--test-ratio", "0.5", "--seed", "0"],
                 ["extract", "clip", str(root / "cache"), *EXTRACT]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    return root / "cache"


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    old, new = _cache(root / "a", 0), _cache(root / "b", 1)
    res = CliRunner().invoke(app, ["heads", "train", "linear", str(old), "--split", "folder:0", "--out",
                                   str(root / "runs" / "lin")])
    assert res.exit_code == 0, res.output
    return old, root / "runs" / "lin", new


def test_features_as_a_torch_dataset_and_a_table(caches):
    old, _, _ = caches
    data = emo.load_features(old, split="folder:0")
    ds = emo.FeatureDataset(data, ["clip/cls"])
    item = ds[3]
    assert item["id"] == data.ids[3] and item["label"] == int(data.labels[3])
    torch.testing.assert_close(item["clip/cls"], data.arrays["clip/cls"][3].float())
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["clip/cls"].shape == (3, *data.arrays["clip/cls"].shape[1:]) and batch["id"] == data.ids[:3]
    with pytest.raises(ValueError, match="no array 'clip/tokens'"):
        emo.FeatureDataset(data, ["clip/tokens"])
    table = emo.to_dataframe(data)
    x = data.arrays["clip/cls"].float()
    mean = x.reshape(len(data), -1, x.shape[-1]).mean(1).numpy()
    assert list(table["id"]) == data.ids and set(table["role"]) == {"train", "test"}
    assert list(table["label"]) == [data.classes[y] for y in data.labels]
    np.testing.assert_allclose(table[[f"clip/cls/{k}" for k in range(x.shape[-1])]].to_numpy(), mean, rtol=1e-6)


def test_a_run_predicts_on_new_videos_as_on_its_own_cache(caches, tmp_path):
    old, run, new = caches
    head, data = emo.load_head(run)  # its own cache, recorded in the run
    pred = emo.predict(run, new)
    assert len(pred.ids) == 8 and pred.scores.shape == (8, 2) and set(pred.predicted) <= set(head.classes)
    again = emo.predict(run, old)
    np.testing.assert_allclose(again.scores, head.predict_scores(data), rtol=1e-6)
    other = tmp_path / "other"
    res = CliRunner().invoke(app, ["datasets", "synth", str(other / "videos"), "--classes", "2", "--per-class", "2"])
    res = CliRunner().invoke(app, ["datasets", "prepare", "folder", "--root", str(other / "videos"), "--out",
                                   str(other / "cache"), "--dataset", "synth"])
    res = CliRunner().invoke(app, ["extract", "clip", str(other / "cache"), *EXTRACT[:-4], "--segments", "2",
                                   "--workers", "0", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    with pytest.raises(ValueError, match="no feature set with the keys run .* was trained on"):
        emo.predict(run, other / "cache")  # other sampling: another key


def test_the_readme_example_runs(caches):
    old, run, new = caches
    res = subprocess.run([sys.executable, str(REPO / "examples" / "api.py"), str(old), str(run), str(new)],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "batch ['id', 'label', 'clip/cls'] (4, 4, 1, 1," in res.stdout and "predicted" in res.stdout
