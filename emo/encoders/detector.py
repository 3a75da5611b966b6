"""torchvision's detection models, the only module of ``emo`` that imports ``torchvision``'s detectors.

Used by ``emo datasets detect-subjects`` (``emo.datasets.subjects``) to fill a manifest's
``subject_boxes`` with the largest COCO *person* box per frame.

Weights, by emo's policy (``emo.encoders.weights``), strict:
- ``weights="pretrained"``: torchvision's ``DEFAULT`` weights of ``model`` (COCO), downloaded as usual;
- ``checkpoint=PATH`` (wins over pretrained): the architecture with no weights at all, then a strict
  ``load_state_dict`` of a local file (a plain ``state_dict``, ``{"model": state_dict}`` as torchvision's
  reference scripts save, or ``.safetensors``), read with ``weights_only``;
- ``weights="random"``: random init under ``seed``, and only then; the provenance says ``random``.
Any load failure raises ``WeightsError`` naming both ``--weights pretrained`` and ``--checkpoint``;
random weights never stand in.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .weights import WeightsError, file_sha256

__all__ = [
    "DEFAULT_DETECTOR",
    "PERSON_LABEL",
    "DETECTOR_WEIGHTS",
    "detection_models",
    "check_detector_model",
    "build_detector",
    "detector_provenance",
    "detector_versions",
    "person_detector",
]

DEFAULT_DETECTOR = "fasterrcnn_resnet50_fpn_v2"
PERSON_LABEL = 1  # COCO category id of "person" in torchvision's detection models
DETECTOR_WEIGHTS = ("pretrained", "random")
_ROUND = 2  # decimals of the stored box coordinates (source pixels)


def detection_models() -> list[str]:
    """Names of torchvision's detection models (``torchvision.models.detection``)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models.detection))


def _weights_hint(model: str) -> str:
    return (
        f"Give weights either as --weights pretrained (torchvision's DEFAULT COCO weights of {model}, "
        "downloaded through torchvision) or as --checkpoint PATH (a local state_dict of the same "
        "architecture, for offline machines). Random weights are never used instead."
    )


def check_detector_model(model: str) -> None:
    if model not in detection_models():
        raise ValueError(
            f"unknown detector {model!r}: use one of torchvision's detection models "
            f"({', '.join(detection_models())})"
        )


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # torchvision reference scripts
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"not a state_dict (a mapping of parameter names to tensors), got {type(obj).__name__}")
    return obj


def build_detector(
    model: str = DEFAULT_DETECTOR,
    checkpoint: str | os.PathLike | None = None,
    weights: str = "pretrained",
    seed: int = 0,
) -> torch.nn.Module:
    """The torchvision detection ``model`` on the CPU in eval mode, with weights by the policy (module doc).

    Raises ``WeightsError`` when the named weights cannot be loaded, ``ValueError`` for a bad option.
    """
    import torchvision

    if weights not in DETECTOR_WEIGHTS:
        raise ValueError(f"weights must be one of {DETECTOR_WEIGHTS}, got {weights!r}")
    check_detector_model(model)
    get = torchvision.models.get_model
    if weights == "random":
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state untouched
            torch.manual_seed(seed)
            net = get(model, weights=None, weights_backbone=None)
        return net.eval()
    if checkpoint is not None:
        path = Path(checkpoint).expanduser().resolve()
        if not path.is_file():
            raise WeightsError(f"could not load checkpoint {path} for {model}: no such file. {_weights_hint(model)}")
        net = get(model, weights=None, weights_backbone=None)
        try:
            net.load_state_dict(_read_state_dict(path), strict=True)
        except Exception as e:  # unreadable, not a state_dict, or another architecture's keys/shapes
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WeightsError(f"could not load checkpoint {path} for {model}: {msg}. {_weights_hint(model)}") from e
        return net.eval()
    try:
        default = torchvision.models.get_model_weights(model).DEFAULT
        net = get(model, weights=default)
    except Exception as e:  # no network, a broken download, no weights for this model
        raise WeightsError(
            f"could not load --weights pretrained for {model}: {str(e).rstrip('.')}. {_weights_hint(model)}"
        ) from e
    return net.eval()


def detector_provenance(
    model: str = DEFAULT_DETECTOR,
    checkpoint: str | os.PathLike | None = None,
    weights: str = "pretrained",
    seed: int = 0,
) -> dict:
    """What identifies the detector's weights: torchvision's weights tag, the file's sha256, or the seed."""
    if weights == "random":
        return {"kind": "random", "seed": int(seed)}
    if checkpoint is not None:
        path = Path(checkpoint).expanduser().resolve()
        try:
            digest = file_sha256(path)
        except OSError as e:
            raise WeightsError(f"checkpoint {path}: {e}. {_weights_hint(model)}") from e
        return {"kind": "checkpoint", "path": str(path), "sha256": digest}
    import torchvision

    default = torchvision.models.get_model_weights(model).DEFAULT
    return {"kind": "pretrained", "tag": f"{type(default).__name__}.{default.name}", "url": default.url}


# --- running it ---------------------------------------------------------------------------------


def _largest_person(det: dict, threshold: float) -> list[float] | None:
    """The largest person box (the first listed on a tie) scoring ``>= threshold``, or None."""
    boxes = det["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
    labels = det["labels"].detach().cpu().numpy().reshape(-1)
    scores = det["scores"].detach().float().cpu().numpy().reshape(-1)
    best, best_area = None, -1.0
    for box, label, score in zip(boxes, labels, scores, strict=True):
        if int(label) != PERSON_LABEL or not score >= threshold:
            continue
        b = [round(float(v), _ROUND) for v in box]
        if not all(np.isfinite(b)) or not (b[0] < b[2] and b[1] < b[3]):
            continue  # empty after rounding, or not finite: not a usable box
        area = (b[2] - b[0]) * (b[3] - b[1])
        if area > best_area:
            best, best_area = b, area
    return best


def person_detector(net: torch.nn.Module, device: torch.device, threshold: float):
    """``detect(frames)``: ``{k: rgb [H, W, 3] uint8}`` -> ``{k: the largest person box >= threshold, or None}``,
    one batch of frames per call of ``net``."""

    @torch.inference_mode()
    def detect(frames: dict[int, np.ndarray]) -> dict[int, list | None]:
        keys = sorted(frames)
        images = [
            torch.from_numpy(np.ascontiguousarray(frames[k])).to(device).permute(2, 0, 1).float().div_(255.0)
            for k in keys
        ]  # [3, H, W] in [0, 1], as torchvision's detection models take them
        dets = net(images)
        return {k: _largest_person(d, threshold) for k, d in zip(keys, dets, strict=True)}

    return detect


def detector_versions() -> dict:
    """The library versions a detector run records."""
    import torchvision

    return {"torchvision": torchvision.__version__, "torch": torch.__version__}
