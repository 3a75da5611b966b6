"""emo installed from a wheel, away from the source tree: the presets, class texts and model architectures
travel as package data, and a dataset preset runs from the installed copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests import videos

REPO = Path(__file__).resolve().parents[1]


def test_a_wheel_built_elsewhere_carries_the_configs_and_runs_a_preset(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "emo", src / "emo", ignore=shutil.ignore_patterns("__pycache__"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = (tmp_path / "dist").glob("emo-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    for shipped in ("emo/configs/datasets/ve8.json", "emo/configs/datasets/folder.json",
                    "emo/configs/heads/duse/table4-deep.json", "emo/configs/classes/facial-descriptions.json",
                    "emo/configs/models/emo-tiny-ViT.json", "emo/configs/models/facebook--wav2vec2-base/config.json"):
        assert shipped in names, shipped
    root = tmp_path / "videos" / "joy"
    root.mkdir(parents=True)
    for i in range(2):
        videos.make_video(root / f"v{i}.mp4", 8)
    (tmp_path / "videos" / "anger").mkdir()
    videos.make_video(tmp_path / "videos" / "anger" / "v.mp4", 8)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}  # the wheel's emo, not the checkout's
    where = subprocess.run([sys.executable, "-c", "import emo; print(emo.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(tmp_path / "site"))
    res = subprocess.run([sys.executable, "-m", "emo.cli", "extract", "preset", "folder", "--root",
                          str(tmp_path / "videos"), "--cache", str(tmp_path / "cache"), "--weights", "random",
                          "--set", "model=emo-tiny-ViT", "--set", "segments=2", "--workers", "0", "--device", "cpu"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert str(tmp_path / "site" / "emo" / "configs" / "datasets" / "folder.json") in res.stdout + res.stderr
    res = subprocess.run([sys.executable, "-m", "emo.cli", "heads", "config", "duse", "--preset", "table4-deep"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert '"prompt_depth": 8' in res.stdout
