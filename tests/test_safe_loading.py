"""No checkpoint emo reads runs code (issue: a shared cache no one can poison).

Each route that takes a weights file gets a malicious pickle whose unpickling would create a marker
file (the payload): ``emo extract clip --checkpoint`` (a plain pickle, a pickle dressed up as a
TorchScript archive, one with ``constants.pkl`` where torch would not look), the checkpoint a feature
set's ``config.json`` names and heads rebuild, ``emo extract audio --checkpoint`` (transformers), the
detector's ``--checkpoint``, and the two release converters without ``--trust-pickle``. Every route must
refuse the file with a clear message, and the marker must not exist afterwards.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from emo.cache.data import FeatureData
from emo.encoders.clip import TINY_MODEL, ClipSpec, WeightsError, load_clip

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit's deprecation notices


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the file's existence proves code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_pickle(path: Path, marker: Path, wrap=lambda p: {"visual.proj": p}) -> Path:
    torch.save(wrap(Payload(marker)), path)
    return path


def with_constants(src: Path, dst: Path, where: str) -> Path:
    """``src`` (a torch zip) with a ``constants.pkl`` entry added at ``<root>/<where>``."""
    dst.write_bytes(src.read_bytes())
    with zipfile.ZipFile(dst, "a") as z:
        root = z.namelist()[0].split("/")[0]
        z.writestr(f"{root}/{where}", b"\x80\x02).")
    return dst


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "a checkpoint ran code while being read"


@pytest.mark.parametrize("disguise", ["plain", "torchscript-root", "torchscript-nested"])
def test_extract_clip_checkpoint_never_unpickles_code(tmp_path, marker, disguise):
    path = evil_pickle(tmp_path / "evil.pt", marker)
    if disguise == "torchscript-root":  # looks like OpenAI's archive to a zip listing: torch.jit.load refuses it
        path = with_constants(path, tmp_path / "evil-ts.pt", "constants.pkl")
    elif disguise == "torchscript-nested":  # emo once took this for TorchScript and unpickled freely
        path = with_constants(path, tmp_path / "evil-nested.pt", "x/constants.pkl")
    with pytest.raises(WeightsError, match="could not load checkpoint"):
        load_clip(ClipSpec(model=TINY_MODEL, checkpoint=str(path)), device="cpu")


def test_a_checkpoint_named_by_a_feature_set_is_read_as_safely_by_the_heads_that_rebuild_it(tmp_path, marker):
    from emo.heads.layers.clip_text import clip_text_of

    path = evil_pickle(tmp_path / "lab-weights.pt", marker)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    meta = {"modality": "clip", "name": "clip-x", "model": TINY_MODEL, "key": "k" * 64,
            "weights": {"kind": "checkpoint", "sha256": digest}, "notes": {"checkpoint_path": str(path)}}
    data = FeatureData(dataset="d", ids=["a"], classes=["c"], labels=torch.zeros(1, dtype=torch.int64),
                       arrays={"clip/cls": torch.zeros(1, 1, 1, 1, 32)}, roles=np.array(["train"], dtype=object),
                       feature_sets={"clip-x": meta})
    with pytest.raises(WeightsError):
        clip_text_of(data)


def test_audio_checkpoint_directory_with_a_pickled_payload_is_refused(tmp_path, marker):
    from emo.encoders.hf import load_wav2vec2
    from tests.test_audio import tiny_wav2vec2

    d = tiny_wav2vec2(tmp_path / "w2v", weights=False)  # config.json only
    evil_pickle(d / "pytorch_model.bin", marker, wrap=lambda p: {"masked_spec_embed": p})
    with pytest.raises(WeightsError):
        load_wav2vec2(checkpoint=str(d), device="cpu")


def test_detector_checkpoint_with_a_pickled_payload_is_refused(tmp_path, marker):
    from emo.encoders.detector import build_detector

    path = evil_pickle(tmp_path / "frcnn.pth", marker)
    with pytest.raises(WeightsError, match="could not load checkpoint"):
        build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", checkpoint=str(path))


def test_emotionclip_converter_asks_for_trust_and_names_the_flag(tmp_path, marker):
    from emo.encoders.emotionclip import convert_emotionclip

    path = evil_pickle(tmp_path / "emotionclip_latest.pt", marker, wrap=lambda p: {"model": {}, "args": p})
    with pytest.raises(WeightsError, match="--trust-pickle"):
        convert_emotionclip(path, tmp_path / "out.safetensors")


def test_segue_converter_asks_for_trust_and_names_the_flag(tmp_path, marker):
    from emo.encoders.segue import convert_segue

    src = tmp_path / "segue"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "segue",
                                                 "speech_encoder_checkpoint": "facebook/wav2vec2-base-960h"}))
    evil_pickle(src / "pytorch_model.bin", marker, wrap=lambda p: {"speech_encoder.x": p})
    with pytest.raises(WeightsError, match="--trust-pickle"):
        convert_segue(src, tmp_path / "out")


def test_a_real_torchscript_archive_still_loads(tmp_path):
    """OpenAI's original files are TorchScript: their tensors load (tests/test_clip.py checks the values)."""
    source = load_clip(ClipSpec(model=TINY_MODEL, weights="random", random_seed=4), device="cpu")
    from tests.test_clip import _save

    path = tmp_path / "openai-like.pt"
    _save("torchscript", source.model.state_dict(), path)
    enc = load_clip(ClipSpec(model=TINY_MODEL, checkpoint=str(path)), device="cpu")
    assert torch.equal(enc.model.visual.proj, source.model.visual.proj)
