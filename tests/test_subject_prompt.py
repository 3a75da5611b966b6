"""`emo extract clip --subject-prompt`: the subject token from the manifest's boxes, end to end."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from emo.cache.featureset import list_feature_sets
from emo.cache.manifest import Item, Manifest, write_manifest
from emo.cache.shard import read_shard
from emo.cli import app
from emo.extract.modalities.boxes import coverage_for_item
from tests import videos

TINY = ["--model", "emo-tiny-ViT", "--weights", "random", "--device", "cpu", "--no-progress", "--segments", "3",
        "--views", "2", "--workers", "0", "--batch-size", "4"]
BOXES = {
    "none": None,
    "static": [10, 4, 40, 30],
    "track": [{"frame": 0, "box": [0, 0, 20, 20]}, {"frame": 10, "box": None}, {"frame": 14, "box": [30, 10, 60, 40]}],
    "bad": [{"frame": 0, "box": [5, 5, 1, 1]}],
}


def _stored(fs) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for k in fs.done_indices():
        ids, arrays = read_shard(fs.shard_path(k))
        for j, i in enumerate(ids):
            out[i] = {n: a[j] for n, a in arrays.items()}
    return out


def test_subject_prompt_uses_the_boxes_and_leaves_subjectless_items_unchanged(tmp_path):
    for name in BOXES:
        videos.make_video(tmp_path / f"{name}.mp4", 20, size=(64, 48))
    items = [Item(id=n, path=f"{n}.mp4", label="x", subject_boxes=b) for n, b in BOXES.items()]
    write_manifest(Manifest(dataset="sp", classes=["x"], items=items, root=str(tmp_path)), tmp_path / "manifest.jsonl")
    runner = CliRunner()
    plain = runner.invoke(app, ["extract", "clip", str(tmp_path), *TINY])
    assert plain.exit_code == 0, plain.output
    prompted = runner.invoke(app, ["extract", "clip", str(tmp_path), *TINY, "--subject-prompt"])
    assert prompted.exit_code == 1 and "1 item(s) failed" in prompted.output  # the malformed boxes
    sets = {("subject_prompt" in fs.config): fs for fs in list_feature_sets(tmp_path)}
    assert set(sets) == {False, True} and sets[True].key != sets[False].key
    failures = {f["id"]: f for f in sets[True].failures()}
    assert set(failures) == {"bad"} and failures["bad"]["stage"] == "boxes"
    a, b = _stored(sets[False]), _stored(sets[True])
    np.testing.assert_array_equal(b["none"]["clip/cls"], a["none"]["clip/cls"])  # no subject: plain output
    assert (b["none"]["clip/subject_box"] == -1).all() and not b["none"]["clip/coverage"].any()
    for name in ("static", "track"):
        cover = coverage_for_item(BOXES[name], b[name]["clip/frame_index"], b[name]["clip/crop"], 32, 8)
        np.testing.assert_allclose(b[name]["clip/coverage"], cover.astype(np.float16))
        prompted_rows = cover.reshape(-1, 16).any(axis=1)
        diff = np.abs(b[name]["clip/cls"] - a[name]["clip/cls"]).reshape(-1, b[name]["clip/cls"].shape[-1]).max(axis=1)
        assert (diff[prompted_rows] > 0).all() and (diff[~prompted_rows] == 0).all()
    np.testing.assert_array_equal(b["static"]["clip/subject_box"], np.broadcast_to([10, 4, 40, 30], (3, 1, 4)))


def test_the_boxes_are_part_of_the_subject_prompt_key(tmp_path):
    videos.make_video(tmp_path / "a.mp4", 8, size=(32, 32))
    for boxes in ([0, 0, 16, 16], [0, 0, 20, 20]):
        items = [Item(id="a", path="a.mp4", label="x", subject_boxes=boxes)]
        write_manifest(Manifest(dataset="sp", classes=["x"], items=items, root=str(tmp_path)), tmp_path / "manifest.jsonl")
        res = CliRunner().invoke(app, ["extract", "clip", str(tmp_path), *TINY, "--subject-prompt"])
        assert res.exit_code == 0, res.output
    sets = list_feature_sets(tmp_path)
    assert len(sets) == 2 and len({fs.config["subject_prompt"]["boxes"]["sha256"] for fs in sets}) == 2
    assert all(fs.config["subject_prompt"]["boxes"]["source"] == "manifest" for fs in sets)
