"""SEGUE's release (EmoAsst's audio encoder) as a wav2vec2 checkpoint directory (``emo extract convert-segue``).

SEGUE (Tan et al. 2023) distils a sentence embedder into wav2vec 2.0; EmoAsst takes layer 9
of that speech encoder. The release (``declare-lab/segue-w2v2-base``) is a ``SegueModel``: a
``config.json`` with ``model_type: segue`` and the speech encoder's name, and one weights file holding
``speech_encoder.*`` (a ``Wav2Vec2Model``) and ``text_encoder.*`` (the sentence embedder). transformers
cannot load it as wav2vec2, and emo refuses a checkpoint that leaves weights unset, so it is converted
once: the speech encoder becomes a ``save_pretrained`` directory that ``emo extract audio --checkpoint``
loads strictly. The wav2vec2 architecture comes from ``hf.py``, the only file that imports ``transformers``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .hf import SAMPLE_RATE, wav2vec2_architecture
from .weights import WeightsError, file_sha256

__all__ = ["SEGUE_SPEECH", "convert_segue"]


SEGUE_SPEECH = "facebook/wav2vec2-base-960h"  # the speech encoder SEGUE's released checkpoint distils into
_SEGUE_PREFIX = "speech_encoder."
_WAV2VEC2_PREPROCESSOR = {  # wav2vec2-base(-960h)'s feature extractor: 16 kHz mono, zero-mean unit-var input
    "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": SAMPLE_RATE,
    "padding_value": 0.0, "padding_side": "right", "do_normalize": True, "return_attention_mask": False,
}
_WEIGHT_NORM_NAMES = ((".weight_g", ".parametrizations.weight.original0"),
                      (".weight_v", ".parametrizations.weight.original1"))


def _segue_state(src: Path, trust_pickle: bool) -> tuple[dict[str, torch.Tensor], Path]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = src / name
        if not path.is_file():
            continue
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(path)), path
        try:
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle), path
        except Exception as e:  # noqa: BLE001 - an unpickling refusal or a damaged file: say which
            raise WeightsError(
                f"{path}: cannot be read weights-only ({str(e).strip().splitlines()[0][:200]}); if you trust its "
                "source, pass --trust-pickle (unpickling runs code from the file)"
            ) from None
    raise WeightsError(f"{src}: no model.safetensors or pytorch_model.bin")


def convert_segue(
    src: str | Path, out: str | Path, base_config: str | None = None, trust_pickle: bool = False
) -> dict:
    """Write the speech encoder of SEGUE's release directory ``src`` (``config.json`` with
    ``model_type: segue`` + weights; ``SegueModel`` holds ``speech_encoder.*`` and ``text_encoder.*``)
    to ``out`` as a ``Wav2Vec2Model`` ``save_pretrained`` directory, with wav2vec2-base's preprocessor
    config. The architecture is ``base_config`` (a directory or file with the speech encoder's
    config.json), or, for the released ``facebook/wav2vec2-base-960h`` encoder, transformers'
    ``Wav2Vec2Config()`` defaults, which are that base architecture. Every weight of the model must
    come from the file (legacy weight-norm names are mapped); else ``WeightsError`` and nothing is written.
    """
    src, out = Path(src).expanduser().resolve(), Path(out).expanduser()
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise WeightsError(f"{src}: no config.json (SEGUE's release is a directory: config.json + pytorch_model.bin)")
    segue = json.loads(cfg_path.read_text())
    if segue.get("model_type") != "segue":
        raise WeightsError(f"{src} holds a {segue.get('model_type')!r} model, not SEGUE (model_type 'segue')")
    speech = segue.get("speech_encoder_checkpoint")
    if not base_config and speech != SEGUE_SPEECH:
        raise WeightsError(f"SEGUE's speech encoder here is {speech!r}: give its config.json with --base-config")
    state, weights_file = _segue_state(src, trust_pickle)
    speech_state = {k[len(_SEGUE_PREFIX):]: v for k, v in state.items() if k.startswith(_SEGUE_PREFIX)}
    if not speech_state:
        raise WeightsError(f"{weights_file}: no '{_SEGUE_PREFIX}*' weights (found {sorted(state)[:5]})")
    net = wav2vec2_architecture(base_config)
    own = set(net.state_dict())

    def current(key: str) -> str:
        for old, new in _WEIGHT_NORM_NAMES:
            for a, b in ((old, new), (new, old)):
                if key not in own and key.endswith(a) and key[: -len(a)] + b in own:
                    return key[: -len(a)] + b
        return key

    mapped = {current(k): v for k, v in speech_state.items()}
    missing, extra = sorted(own - set(mapped)), sorted(set(mapped) - own)
    if missing or extra:
        raise WeightsError(f"{weights_file} does not fit the wav2vec2 architecture: missing {missing[:5]}, "
                           f"unexpected {extra[:5]}")
    try:
        net.load_state_dict(mapped, strict=True)
    except RuntimeError as e:  # shape mismatches
        raise WeightsError(f"{weights_file} does not fit the wav2vec2 architecture: {str(e).splitlines()[1:3]}") from None
    out.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(_WAV2VEC2_PREPROCESSOR, indent=1) + "\n")
    dropped = sorted({k.split(".")[0] for k in state if not k.startswith(_SEGUE_PREFIX)})
    source = {"source": "SEGUE", "speech_encoder": speech, "file": weights_file.name,
              "sha256": file_sha256(weights_file), "dropped": dropped}
    (out / "emo_source.json").write_text(json.dumps(source, indent=1) + "\n")
    return {"output": str(out), "tensors": len(mapped), "layers": net.config.num_hidden_layers, **source}
