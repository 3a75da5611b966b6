"""The frozen CLIP towers that made a cache's features (text; image from stored tokens), and batched
encoding of many strings.

Heads that work in CLIP's text space (PE-CLIP's decoder, EmoAsst's prompt targets and class weights)
must use the text tower of the very CLIP whose image tower made the ``clip`` feature set: it is
rebuilt from that set's provenance (random seed, pretrained tag, or the checkpoint file with the same
sha256) through ``emo.encoders.clip``, once per process.

:func:`encode_texts` embeds a list of strings (utterances, per-item prompts): duplicates are encoded
once, each batch is cut after its last ``[EOS]`` (exact under the causal mask), and strings longer than
the context are truncated by CLIP's tokenizer (the ``[EOS]`` stays at the last position) and counted.
"""

from __future__ import annotations

import functools

import torch

from emo.cache.data import FeatureData

from .image_tower import FrozenImageTower
from .text_tower import FrozenTextTower, trim_to_eos

__all__ = ["clip_text_of", "clip_image_tower_of", "encode_texts", "TEXT_BATCH"]

TEXT_BATCH = 256  # strings per text-tower batch


@functools.lru_cache(maxsize=2)
def _clip_model(spec):
    """The CLIP encoder of a spec on the CPU, fp32 (loaded once per process: folds and heads share it)."""
    from emo.encoders.clip import load_clip  # the open_clip adapter (shared with extraction)

    return load_clip(spec, device="cpu", precision="fp32")


def clip_text_of(data: FeatureData, feature: str = "clip/cls", checkpoint: str | None = None):
    """``(FrozenTextTower, tokenize)`` of the CLIP model that made ``data``'s ``feature`` array.

    The weights are loaded once per process, but each call returns its own tower (a copy, on the CPU):
    a head moves its tower with its module (``.to("cuda")``), which must not move another head's.

    ``checkpoint``: the weights file of a checkpoint-made set when it has moved since extraction.
    """
    from emo.encoders.clip import spec_from_config

    modality = feature.split("/")[0]
    configs = [c for c in data.feature_sets.values() if c.get("modality") == modality]
    if len(configs) != 1:
        raise ValueError(
            f"need exactly one {modality} feature set to rebuild the CLIP text tower, got "
            f"{[c.get('name') for c in configs]}; choose one with --features"
        )
    enc = _clip_model(spec_from_config(configs[0], checkpoint=checkpoint))
    return FrozenTextTower(enc.model), enc.tokenize  # the tower deep-copies its parts


def clip_image_tower_of(data: FeatureData, feature: str = "clip/tokens") -> tuple[FrozenImageTower, int]:
    """``(FrozenImageTower, k)`` for the stored tokens ``feature`` of ``data``'s clip set: the frozen image
    tower that made them, and the block ``k`` they were stored after. A set made with the subject-aware
    prompt, or without stored tokens, is refused with the reason."""
    from emo.encoders.clip import spec_from_config

    modality = feature.split("/")[0]
    configs = [c for c in data.feature_sets.values() if c.get("modality") == modality]
    if len(configs) != 1:
        raise ValueError(f"need exactly one {modality} feature set to rebuild the image tower, got "
                         f"{[c.get('name') for c in configs]}; choose one with --features")
    cfg = configs[0]
    k = (cfg.get("outputs") or {}).get("tokens_layer")
    if k is None:
        raise ValueError(f"{cfg.get('name')} stores no tokens: extract it with --tokens-layer K (0: the first layer)")
    if cfg.get("subject_prompt"):
        raise ValueError(f"{cfg.get('name')} was extracted with --subject-prompt: its stored tokens leave out the "
                         "subject token every later block attended to, so the tower cannot be re-run from them")
    return FrozenImageTower(_clip_model(spec_from_config(cfg)).model.visual), int(k)


@torch.no_grad()
def encode_texts(
    tower: FrozenTextTower, tokenize, texts: list[str], device: torch.device | str = "cpu", batch: int = TEXT_BATCH
) -> tuple[torch.Tensor, int]:
    """``([len(texts), D] float32 on the CPU, number truncated)``: ``tower.encode`` of every string
    (projected, not normalised) and how many filled the whole context (truncated, or exactly full).
    Equal strings share one forward pass."""
    unique = list(dict.fromkeys(texts))
    ids = tokenize(unique) if unique else torch.zeros(0, tower.context_length, dtype=torch.long)  # [U, ctx]
    eot = int(ids.max()) if len(ids) else 0
    truncated = int(((ids[:, -1] == eot) & (ids[:, -1] != 0)).sum()) if len(ids) else 0
    was = next(tower.parameters()).device
    tower.to(device)
    try:
        out = [tower.encode(trim_to_eos(ids[i : i + batch]).to(device)).float().cpu() for i in range(0, len(ids), batch)]
    finally:
        tower.to(was)
    emb = torch.cat(out) if out else torch.zeros(0, tower.embed_dim)  # [U, D]
    row = {t: k for k, t in enumerate(unique)}
    return emb[torch.tensor([row[t] for t in texts], dtype=torch.long)] if texts else emb, truncated
