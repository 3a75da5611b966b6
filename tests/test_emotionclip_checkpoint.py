"""EmotionCLIP's release checkpoint -> open_clip weights (emo.encoders.emotionclip), EmotionCLIP's
centre crop (224 of 256) as a sampling option, and cache keys that do not move for the old default.

The checkpoint is a replica of EmotionCLIP's save format built here from a random tiny open_clip
model: ``{"args", "epoch", "model": {"backbone.<open_clip name>", "visual_head.*", "logit_scale"},
"optimizer"}``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from emo.cli import app
from emo.decode.sampling import SamplingConfig, crop_boxes
from emo.encoders.clip import TINY_MODEL, ClipSpec, WeightsError, build_model, file_sha256, load_clip
from emo.encoders.emotionclip import (
    EMOTIONCLIP_CROP,
    IMAGENET_MEAN,
    IMAGENET_STD,
    convert_emotionclip,
)
from emo.encoders.weights import checkpoint_preprocess
from emo.extract.modalities.clip import sampling_key


class NotATensor:  # stands for the Python objects a training script may pickle beside the weights
    pass


def _release_file(path, extra=None, seed=3):
    """A file shaped like EmotionCLIP's checkpoint; returns it and the backbone's own state dict."""
    backbone = build_model(ClipSpec(model=TINY_MODEL, weights="random", random_seed=seed))
    own = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = {f"backbone.{k}": v for k, v in own.items()}
    model["logit_scale"] = own["logit_scale"]  # EmotionCLIP registers the backbone's scale again
    model["visual_head.fusion_layer.layers.0.linear1.weight"] = torch.randn(8, 4)
    model["visual_head.position_ids"] = torch.arange(8)
    ckpt = {"args": {"video_len": 8, "lr": 5e-5}, "epoch": 24, "model": model,
            "optimizer": {"state": {}, "param_groups": []}, **(extra or {})}
    torch.save(ckpt, path)
    return path, own


def test_the_converted_file_holds_the_backbone_under_open_clip_names(tmp_path):
    src, own = _release_file(tmp_path / "emotionclip_latest.pt")
    summary = convert_emotionclip(src, tmp_path / "ec.safetensors", model=TINY_MODEL)
    assert summary["tensors"] == len(own) and summary["dropped"] == ["logit_scale", "visual_head"]
    enc = load_clip(ClipSpec(model=TINY_MODEL, checkpoint=summary["output"]), device="cpu")
    loaded = enc.model.state_dict()
    for k, v in own.items():
        assert torch.equal(loaded[k], v), k  # every weight, image and text tower
    assert enc.mean == IMAGENET_MEAN and enc.std == IMAGENET_STD  # EmotionCLIP's normalisation
    assert enc.preprocess_provenance()["mean"] == list(IMAGENET_MEAN)
    pre = checkpoint_preprocess(summary["output"])
    assert pre["center_crop"] == EMOTIONCLIP_CROP == 0.875 and pre["source"] == "EmotionCLIP"


def test_an_ordinary_checkpoint_keeps_the_models_own_normalisation(tmp_path):
    from safetensors.torch import save_file

    model = build_model(ClipSpec(model=TINY_MODEL, weights="random"))
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    assert checkpoint_preprocess(path) == {}
    enc = load_clip(ClipSpec(model=TINY_MODEL, checkpoint=str(path)), device="cpu")
    assert enc.mean == tuple(model.visual.preprocess_cfg["mean"]) != IMAGENET_MEAN


def test_a_file_that_is_not_emotionclips_is_refused_with_what_was_found(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(WeightsError, match="not an EmotionCLIP checkpoint.*state_dict"):
        convert_emotionclip(path, tmp_path / "x.safetensors", model=TINY_MODEL)
    src, _ = _release_file(tmp_path / "ec.pt")
    with pytest.raises(WeightsError, match="does not fit open_clip ViT-B-16"):  # another architecture
        convert_emotionclip(src, tmp_path / "y.safetensors", model="ViT-B-16")
    with pytest.raises(ValueError, match=".safetensors"):
        convert_emotionclip(src, tmp_path / "y.pt", model=TINY_MODEL)
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()


def test_pickled_objects_need_an_explicit_trust(tmp_path):
    src, own = _release_file(tmp_path / "ec.pt", extra={"scheduler": NotATensor()})
    with pytest.raises(WeightsError, match="--trust-pickle"):
        convert_emotionclip(src, tmp_path / "ec.safetensors", model=TINY_MODEL)
    summary = convert_emotionclip(src, tmp_path / "ec.safetensors", model=TINY_MODEL, trust_pickle=True)
    assert summary["tensors"] == len(own)


def test_the_cli_converts_and_prints_the_extraction_command(tmp_path):
    src, _ = _release_file(tmp_path / "ec.pt")
    out = tmp_path / "ec.safetensors"
    result = CliRunner().invoke(app, ["extract", "convert-emotionclip", str(src), "--out", str(out),
                                      "--model", TINY_MODEL])
    assert result.exit_code == 0, result.output
    assert out.is_file() and f"--checkpoint {out}" in result.output and "--center-crop 0.875" in result.output
    bad = CliRunner().invoke(app, ["extract", "convert-emotionclip", str(tmp_path / "absent.pt"), "--out", str(out)])
    assert bad.exit_code == 2 and "no such file" in bad.output


def test_the_centre_crop_is_a_centred_square_of_that_fraction():
    h, w = 480, 854
    full = crop_boxes(h, w, SamplingConfig(), "a")[0]
    tight = crop_boxes(h, w, SamplingConfig(center_crop=EMOTIONCLIP_CROP), "a")[0]
    np.testing.assert_allclose(full, [(w - h) / 2, 0, (w + h) / 2, h])
    side = 0.875 * h  # = 420: EmotionCLIP resizes 480 -> 256 and keeps the central 224
    np.testing.assert_allclose(tight, [(w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2])
    for bad in (0.0, 1.5, True, "0.8"):
        with pytest.raises(ValueError, match="center_crop"):
            SamplingConfig(center_crop=bad)


def test_cache_keys_of_the_full_crop_are_unchanged():
    assert "center_crop" not in sampling_key(SamplingConfig())  # sets extracted before the option exist
    assert json.dumps(sampling_key(SamplingConfig()), sort_keys=True) == json.dumps(
        {"segments": 64, "frames_per_segment": 1, "views": 1, "image_size": 224, "crop_scale": [0.64, 1.0],
         "crop_ratio": [0.75, 4 / 3], "seed": 0}, sort_keys=True)
    assert sampling_key(SamplingConfig(center_crop=0.875))["center_crop"] == 0.875


def test_extraction_with_the_converted_checkpoint_keys_its_weights_normalisation_and_crop(tmp_path):
    """The user's flow: convert, then `emo extract clip --checkpoint ... --center-crop 0.875`."""
    runner = CliRunner()
    src, _ = _release_file(tmp_path / "ec.pt")
    ckpt = tmp_path / "ec.safetensors"
    convert_emotionclip(src, ckpt, model=TINY_MODEL)
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    assert runner.invoke(app, ["datasets", "synth", str(videos), "--classes", "2", "--per-class", "2"]).exit_code == 0
    assert runner.invoke(app, ["datasets", "prepare", "folder", "--root", str(videos), "--out", str(cache)]).exit_code == 0
    common = ["extract", "clip", str(cache), "--model", TINY_MODEL, "--segments", "4", "--workers", "0",
              "--device", "cpu", "--no-progress"]
    res = runner.invoke(app, [*common, "--checkpoint", str(ckpt), "--center-crop", "0.875"])
    assert res.exit_code == 0, res.output
    plain = runner.invoke(app, [*common, "--checkpoint", str(ckpt)])  # the same weights, CLIP's full crop
    assert plain.exit_code == 0, plain.output
    configs = [json.loads(p.read_text()) for p in sorted(cache.glob("*/config.json"))]
    assert len(configs) == 2  # two feature sets: the crop is part of the key
    tight = next(c for c in configs if "center_crop" in c["sampling"])
    assert tight["sampling"]["center_crop"] == 0.875
    assert tight["weights"]["kind"] == "checkpoint" and tight["preprocess"]["mean"] == list(IMAGENET_MEAN)
    source = tight["weights"]["converted_from"]  # the release file the weights came from, in the key
    assert source == {"source": "EmotionCLIP", "sha256": file_sha256(src)}
    from emo.heads.runs import describe_encoder

    assert f"converted from EmotionCLIP (sha256 {file_sha256(src)[:12]})" in describe_encoder(tight)
