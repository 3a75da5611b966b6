"""The person detector that fills the manifest's ``subject_boxes`` (``emo.datasets.subjects``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emo.cache.manifest import Item, Manifest, read_manifest, write_manifest
from emo.datasets.subjects import build_detector, detect_subjects
from emo.encoders.clip import WeightsError
from emo.extract.modalities.boxes import parse_subject_boxes
from tests import videos

TINY = "fasterrcnn_mobilenet_v3_large_320_fpn"
THRESHOLD = 0.7


@pytest.fixture(scope="module")
def net():
    return build_detector(TINY, weights="random", seed=0)


def _scripted(k: int) -> tuple[list, list, list]:
    """Detections for frame ``k`` (boxes, labels, scores); every box encodes ``k`` in its x0."""
    if k % 3 == 0:  # no person at or above the threshold; a bigger non-person box scores high
        return [[k, 0, k + 40, 40], [k, 0, k + 60, 48]], [1, 18], [THRESHOLD - 0.01, 0.99]
    small, large = [k, 0, k + 10, 10], [k, 1, k + 20, 31]
    if k % 3 == 1:  # the larger person scores lower but still at the threshold: area, not score, decides
        return [small, large, [k, 0, k + 64, 48]], [1, 1, 3], [0.95, THRESHOLD, 0.99]
    return [large, small], [1, 1], [0.9, 0.8]


def _expected(k: int):
    return None if k % 3 == 0 else [k, 1, k + 20, 31]


def _fake_forward(images):
    out = []
    for image in images:
        k = videos.decode_colour((image.permute(1, 2, 0) * 255).cpu().numpy())
        boxes, labels, scores = _scripted(k)
        out.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                    "scores": torch.tensor(scores)})
    return out


def _manifest(tmp_path, items):
    write_manifest(Manifest(dataset="d", classes=["x"], items=items, root=str(tmp_path)), tmp_path / "manifest.jsonl")


def _run(tmp_path, net, monkeypatch, **kw):
    monkeypatch.setattr(net, "forward", _fake_forward)
    opts = {"model": TINY, "weights": "random", "device": "cpu", "progress": False, "stride": 8,
            "score_threshold": THRESHOLD, "detector": net, "batch_size": 3}
    return detect_subjects(tmp_path, **(opts | kw))


def test_boxes_per_sampled_frame_with_person_filter_threshold_and_largest_box(tmp_path, net, monkeypatch):
    videos.make_video(tmp_path / "a.mp4", 30)
    videos.make_video(tmp_path / "span.mp4", 30)
    videos.make_text_as_mp4(tmp_path / "broken.mp4")
    items = [
        Item(id="a", path="a.mp4", label="x"),
        Item(id="span", path="span.mp4", label="x", start=0.2, end=0.9),  # frames 5..22 at 25 fps
        Item(id="kept", path="a.mp4", label="x", subject_boxes=[1, 2, 3, 4]),
        Item(id="broken", path="broken.mp4", label="x"),
        Item(id="missing", path="nope.mp4", label="x"),
    ]
    _manifest(tmp_path, items)
    counts = _run(tmp_path, net, monkeypatch)

    m = read_manifest(tmp_path)
    got = m.by_id()
    for item_id, frames in (("a", [0, 8, 16, 24]), ("span", [5, 13, 21])):
        boxes = got[item_id].subject_boxes
        assert [e["frame"] for e in boxes] == frames  # every 8th frame of the span, counted from the file start
        assert all(set(e) == {"frame", "box"} for e in boxes)
        assert [e["box"] for e in boxes] == [_expected(k) for k in frames]  # x0 == frame: the right frame's boxes
        track = parse_subject_boxes(boxes)
        np.testing.assert_array_equal(track.frames, frames)
        assert np.isnan(track.boxes[[k % 3 == 0 for k in frames]]).all()
    assert got["kept"].subject_boxes == [1, 2, 3, 4]
    assert got["broken"].subject_boxes is None and got["missing"].subject_boxes is None

    assert counts["items"] == 5 and counts["detected"] == 2 and counts["kept"] == 1 and counts["failed"] == 2
    assert {f["id"] for f in counts["failures"]} == {"broken", "missing"}
    assert all(f["reason"] for f in counts["failures"])
    assert counts["frames"] == 7 and counts["frames_with_subject"] == 4 and counts["items_with_subject"] == 2

    prov = m.source["subject_boxes"]
    assert prov["model"] == TINY and prov["weights"] == {"kind": "random", "seed": 0}
    assert prov["stride"] == 8 and prov["score_threshold"] == THRESHOLD and prov["label"] == 1
    assert prov["complete"] is True and prov["torchvision"]
    assert prov["counts"]["frames_with_subject"] == 4 and set(prov["counts"]["failed_ids"]) == {"broken", "missing"}
    assert not (tmp_path / "manifest.jsonl.tmp").exists()


def test_existing_boxes_are_kept_unless_overwrite(tmp_path, net, monkeypatch):
    videos.make_video(tmp_path / "a.mp4", 12)
    _manifest(tmp_path, [Item(id="a", path="a.mp4", label="x", subject_boxes=[{"frame": 0, "box": None}])])
    counts = _run(tmp_path, net, monkeypatch)
    assert counts["detected"] == 0 and counts["kept"] == 1
    assert read_manifest(tmp_path).items[0].subject_boxes == [{"frame": 0, "box": None}]
    counts = _run(tmp_path, net, monkeypatch, overwrite=True, stride=5)
    assert counts["detected"] == 1 and counts["kept"] == 0
    boxes = read_manifest(tmp_path).items[0].subject_boxes
    assert boxes == [{"frame": k, "box": _expected(k)} for k in (0, 5, 10)]


def test_real_forward_with_random_weights_writes_parseable_boxes(tmp_path, net):
    videos.make_video(tmp_path / "a.mp4", 10, size=(64, 48), colour_code=False)
    _manifest(tmp_path, [Item(id="a", path="a.mp4", label="x")])
    counts = detect_subjects(tmp_path, model=TINY, weights="random", device="cpu", progress=False, stride=4,
                             score_threshold=0.0, detector=net)
    boxes = read_manifest(tmp_path).items[0].subject_boxes
    assert [e["frame"] for e in boxes] == [0, 4, 8] and counts["frames"] == 3
    parse_subject_boxes(boxes)  # whatever random weights find is a valid entry
    assert read_manifest(tmp_path).source["subject_boxes"]["weights"]["kind"] == "random"


def test_checkpoint_loads_strictly_and_failures_name_both_options(tmp_path, net, monkeypatch):
    path = tmp_path / "det.pt"
    torch.save(net.state_dict(), path)
    loaded = build_detector(TINY, checkpoint=path)
    for (name, a), b in zip(net.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    wrong = dict(net.state_dict())
    wrong.pop(next(iter(wrong)))
    wrong["extra.weight"] = torch.zeros(1)
    torch.save(wrong, tmp_path / "wrong.pt")
    (tmp_path / "text.pt").write_text("not weights")
    for bad in ("wrong.pt", "text.pt", "missing.pt"):
        with pytest.raises(WeightsError) as e:
            build_detector(TINY, checkpoint=tmp_path / bad)
        assert "--weights pretrained" in str(e.value) and "--checkpoint" in str(e.value), bad

    import torchvision

    def offline(*a, **k):
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(WeightsError, match="--checkpoint"):
        build_detector(TINY, weights="pretrained")


def test_checkpoint_provenance_records_sha256(tmp_path, net, monkeypatch):
    videos.make_video(tmp_path / "a.mp4", 9)
    _manifest(tmp_path, [Item(id="a", path="a.mp4", label="x")])
    path = tmp_path / "det.pt"
    torch.save(net.state_dict(), path)
    _run(tmp_path, net, monkeypatch, weights="pretrained", checkpoint=path)
    weights = read_manifest(tmp_path).source["subject_boxes"]["weights"]
    assert weights["kind"] == "checkpoint" and len(weights["sha256"]) == 64 and weights["path"] == str(path.resolve())


def test_bad_options_raise(tmp_path):
    _manifest(tmp_path, [])
    with pytest.raises(ValueError, match="stride"):
        detect_subjects(tmp_path, stride=0, weights="random", progress=False)
    with pytest.raises(ValueError, match="unknown detector"):
        detect_subjects(tmp_path, model="resnet50", weights="random", progress=False)


def test_cli_detect_then_subject_prompt_marks_random_detector_boxes(tmp_path, net, monkeypatch):
    from typer.testing import CliRunner

    import emo.datasets.subjects as detect
    from emo.cache.featureset import list_feature_sets
    from emo.cli import app

    videos.make_video(tmp_path / "a.mp4", 10, size=(64, 48))
    _manifest(tmp_path, [Item(id="a", path="a.mp4", label="x")])
    monkeypatch.setattr(net, "forward", _fake_forward)
    monkeypatch.setattr(detect, "build_detector", lambda *a, **k: net)
    runner = CliRunner()
    res = runner.invoke(app, ["datasets", "detect-subjects", str(tmp_path), "--model", TINY, "--weights", "random",
                              "--device", "cpu", "--stride", "4", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("RANDOM WEIGHTS") and "1 items detected" in res.output
    clip = ["extract", "clip", str(tmp_path), "--model", "emo-tiny-ViT", "--checkpoint", str(tmp_path / "none.pt"),
            "--device", "cpu", "--segments", "2", "--workers", "0", "--no-progress", "--subject-prompt"]
    assert runner.invoke(app, clip).exit_code == 2  # real CLIP weights asked for and missing: refused
    res = runner.invoke(app, [*clip[:5], "--weights", "random", *clip[7:]])
    assert res.exit_code == 0, res.output
    (fs,) = list_feature_sets(tmp_path)
    assert fs.config["subject_prompt"]["boxes"]["source"]["weights"]["kind"] == "random" and fs.random_weights
