"""EmotionCLIP's release checkpoint as an open_clip weights file (``emo extract convert-emotionclip``).

EmotionCLIP fine-tunes an open_clip ViT-B/32 (GELU). Its training code saves
``{"args", "epoch", "model": EmotionCLIP.state_dict(), "optimizer", ...}``; in ``model`` the CLIP
backbone sits under ``backbone.`` with open_clip's own names (``backbone.visual.*`` the image tower,
``backbone.transformer.*`` etc. the text tower), the temporal video head under ``visual_head.``, and
``logit_scale`` once more at the top level. EmoAsst takes its frame features from that image
tower.

:func:`convert_emotionclip` keeps the backbone under open_clip's names, drops the video head (emo's heads
learn their own temporal part from frame features), checks that the result loads strictly into the
named open_clip architecture, and writes a ``.safetensors`` file whose metadata records the source
file's sha256 and the preprocessing EmotionCLIP was trained with: shorter side resized to 256
(bicubic), centre crop 224, ImageNet mean/std. :func:`checkpoint_preprocess` reads that metadata back:
``load_clip`` normalises with those mean/std, and the crop is the sampling option
``--center-crop 0.875`` (224 / 256). EmotionCLIP's subject token has no weights of its own: it is
built from the positional embedding (``--subject-prompt``, docs/papers.md#emotionclip).

The source is read with ``torch.load(weights_only=True)``: a file that also pickles Python objects is
refused unless ``trust_pickle`` (unpickling runs code from the file; only for a file from a source you
trust).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch

from .clip import ClipSpec, build_model
from .weights import WeightsError, checkpoint_preprocess, file_sha256

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "EMOTIONCLIP_CROP", "convert_emotionclip", "checkpoint_preprocess"]  # the reader lives in weights.py

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EMOTIONCLIP_CROP = 224 / 256  # resize the shorter side to 256, centre crop 224
_PREFIX = "backbone."


def _read(src: Path, trust_pickle: bool) -> dict:
    try:
        return torch.load(src, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:200]
        raise WeightsError(
            f"{src}: the file also pickles Python objects that a weights-only load refuses ({first}). "
            "If you trust its source, pass --trust-pickle (unpickling runs code from the file)"
        ) from None
    except (OSError, RuntimeError, EOFError) as e:
        raise WeightsError(f"{src}: not a readable torch checkpoint ({str(e).strip().splitlines()[0][:200]})") from None


def backbone_state(checkpoint: dict, src: Path | str = "checkpoint") -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(open_clip state dict, dropped key prefixes)`` of an EmotionCLIP checkpoint (or its ``model``)."""
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not any(str(k).startswith(_PREFIX + "visual.") for k in state):
        keys = sorted(map(str, state))[:6] if isinstance(state, dict) else type(checkpoint).__name__
        raise WeightsError(
            f"{src} is not an EmotionCLIP checkpoint: no '{_PREFIX}visual.*' weights under 'model' "
            f"(found {keys})"
        )
    kept = {k[len(_PREFIX):]: v for k, v in state.items() if k.startswith(_PREFIX) and torch.is_tensor(v)}
    dropped = sorted({k.split(".")[0] for k in state if not k.startswith(_PREFIX)})
    return kept, dropped


def convert_emotionclip(
    src: str | os.PathLike, dst: str | os.PathLike, model: str = "ViT-B-32", trust_pickle: bool = False
) -> dict:
    """Write the image and text towers of EmotionCLIP checkpoint ``src`` to ``dst`` (.safetensors) as
    open_clip ``model`` weights; returns a summary. Raises ``WeightsError`` naming what does not fit."""
    from safetensors.torch import save_file

    src, dst = Path(src).expanduser().resolve(), Path(dst).expanduser()
    if dst.suffix != ".safetensors":
        raise ValueError(f"the output must be a .safetensors file, got {dst.name}")
    if not src.is_file():
        raise WeightsError(f"{src}: no such file")
    state, dropped = backbone_state(_read(src, trust_pickle), src)
    target = build_model(ClipSpec(model=model, weights="random"))  # the architecture, to check the fit
    try:
        result = target.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise WeightsError(f"{src} does not fit open_clip {model}: {str(e).splitlines()[1:3]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"{src} does not fit open_clip {model}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    metadata = {
        "emo.source": "EmotionCLIP",
        "emo.source_file": src.name,
        "emo.source_sha256": file_sha256(src),
        "emo.model": model,
        "emo.mean": json.dumps(IMAGENET_MEAN),
        "emo.std": json.dumps(IMAGENET_STD),
        "emo.center_crop": json.dumps(EMOTIONCLIP_CROP),
        "emo.dropped": json.dumps(dropped),
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(dst), metadata=metadata)
    return {"source": str(src), "output": str(dst), "model": model, "tensors": len(state),
            "dropped": dropped, "center_crop": EMOTIONCLIP_CROP}
