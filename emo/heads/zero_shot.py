"""Zero-shot CLIP classifier from class prompts — the second shared baseline (docs/papers.md#shared-baselines).

Class weights: for each class, the T prompt-template text embeddings (``FeatureData.class_text[text]``,
``[C, T, D]``) are L2-normalised, averaged, and renormalised. The video is the mean over segments of
L2-normalised frames (:func:`emo.heads.linear.pooled_video`), renormalised. Scores are
``logit_scale * cosine`` (CLIP's 100). Nothing is trained: ``fit`` only builds the class weights,
which are still saved as a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from emo.cache.data import FeatureData

from .layers.similarity import dot_logits
from .linear import pooled_video
from .registry import Head, LogFn, register_head

__all__ = ["ZeroShotConfig", "ZeroShotHead", "class_weights"]


@dataclass
class ZeroShotConfig:
    feature: str = "clip/cls"  # image features, same layouts as the linear probe
    text: str = "clip"  # key of FeatureData.class_text: prompt embeddings in the same space
    logit_scale: float = 100.0  # scores = logit_scale · cos (CLIP's 100)


def class_weights(class_text: torch.Tensor) -> torch.Tensor:
    """``[C, T, D] -> [C, D]``: mean of unit-length template embeddings, renormalised."""
    t = F.normalize(class_text.float(), dim=-1)  # [C, T, D]
    return F.normalize(t.mean(dim=1), dim=-1)  # [C, D]


class ZeroShotHead(Head):
    """Cosine similarity between the pooled video feature and averaged class-prompt embeddings."""

    def __init__(self, config: ZeroShotConfig, classes: list[str]):
        super().__init__(config, classes)
        self.weights: torch.Tensor | None = None  # [C, D] float32, unit rows

    def fit(self, train: FeatureData, val: FeatureData | None = None, log: LogFn | None = None) -> None:
        if self.config.text not in train.class_text:
            have = ", ".join(sorted(train.class_text)) or "none"
            raise ValueError(
                f"zero-shot needs class-prompt embeddings for {self.config.text!r} "
                f"(FeatureData.class_text has: {have}); extract the feature set with class prompts"
            )
        text = train.class_text[self.config.text]  # [C, T, D]
        if text.shape[0] != len(self.classes):
            raise ValueError(f"class_text has {text.shape[0]} classes, head has {len(self.classes)}")
        self.weights = class_weights(text)
        if train.random_weights:  # nothing is learned: with random towers the row is noise, often below chance
            self.warnings.append("zero-shot matches class prompts to frames through CLIP's shared text-image "
                                 "space; random weights have none, so this row is noise (it may sit below chance)")
        if log is not None:
            log({"step": "fit", "templates": int(text.shape[1]), "trained": False})

    def predict_scores(self, data: FeatureData) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("zero-shot head: fit() or load_state_dict() first")
        v = F.normalize(pooled_video(data, self.config.feature), dim=-1)  # [n, D]
        if v.shape[1] != self.weights.shape[1]:
            raise ValueError(f"{self.config.feature!r} has width {v.shape[1]}, class prompts {self.weights.shape[1]}")
        return dot_logits(v, self.weights, self.config.logit_scale).numpy()  # [n, C], float32

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.weights is None:
            raise RuntimeError("zero-shot head: nothing to save before fit()")
        return {"class_weights": self.weights.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != {"class_weights"}:
            raise ValueError(f"zero-shot head state has {sorted(state)}, expected ['class_weights']")
        if state["class_weights"].shape[0] != len(self.classes):
            raise ValueError(f"zero-shot state is for {state['class_weights'].shape[0]} classes, head has {len(self.classes)}")
        self.weights = state["class_weights"].float()


register_head(
    "zero-shot",
    ZeroShotConfig,
    ZeroShotHead,
    "Zero-shot CLIP: cosine of mean-pooled frames with averaged class-prompt embeddings (docs/papers.md#shared-baselines)",
)
