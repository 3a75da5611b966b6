"""Linear probe on the features of a trained run (EmoAsst paper, Table 2: "linear-probe evaluation").

``emo heads probe CACHE --features RUN``: the run's head (a VFM, an auditory adapter, PE-CLIP…) is
reloaded for the fold, its :meth:`embed` features (unit length, evaluation sampling) are computed for
every item, and the shared linear probe (:mod:`emo.heads.linear`: standardised logistic regression,
``C`` chosen on the validation part when there is one) is fitted on them. On another dataset than the
run's (EmotionCLIP's protocol: pre-train on one corpus, probe on MELD), the run is transferred
(:mod:`emo.heads.from_run`: the same frozen encoder is required) and recorded as the probe's
``source_run``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from emo.cache.data import FeatureData

from .from_run import load_run_head, run_modalities, run_source, run_summary
from .linear import LinearConfig, LinearHead
from .registry import Head, LogFn, register_head

__all__ = ["ProbeConfig", "ProbeHead"]

FEATURE = "run/feature"  # the array name the inner linear probe reads


@dataclass
class ProbeConfig:
    features: str = ""  # the run directory whose head makes the features
    C: float = 1.0  # inverse L2 strength when no validation part chooses it
    c_grid: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0, 100.0])  # C searched on a val part
    max_iter: int = 1000  # L-BFGS iterations of the logistic regression

    def modalities(self) -> tuple[str, ...]:
        return run_modalities(self.features) if self.features else ()

    def label(self) -> str:
        return f"linear probe: {run_summary(self.features).get('label', 'run')}" if self.features else "linear probe"


class ProbeHead(Head):
    """A :class:`LinearHead` over the ``embed`` features of another run's head."""

    needs_data = True

    def __init__(self, config: ProbeConfig, classes: list[str]):
        super().__init__(config, classes)
        self.linear = LinearHead(LinearConfig(feature=FEATURE, C=config.C, c_grid=list(config.c_grid),
                                              max_iter=config.max_iter), classes)
        self.source: Head | None = None
        self.source_run: dict | None = None  # provenance of transferred features (runs record it)

    def prepare(self, data: FeatureData) -> None:
        if not self.config.features:
            raise ValueError("the probe needs --features RUN (a trained run directory)")
        self.source = load_run_head(self.config.features, data)
        source = run_source(self.config.features, data)
        self.source_run = source if source["transfer"] else None

    def _with_features(self, data: FeatureData) -> FeatureData:
        if self.source is None:
            self.prepare(data)
        emb = torch.from_numpy(np.ascontiguousarray(self.source.embed(data))).float()  # [n, D]
        return dataclasses.replace(data, arrays={FEATURE: emb})

    def fit(self, train: FeatureData, val: FeatureData | None = None, log: LogFn | None = None) -> None:
        self.linear.fit(self._with_features(train), self._with_features(val) if val is not None and len(val) else None, log)
        self.selected = self.linear.selected

    def predict_scores(self, data: FeatureData) -> np.ndarray:
        return self.linear.predict_scores(self._with_features(data))

    def predict(self, data: FeatureData) -> tuple[np.ndarray, np.ndarray]:
        with_features = self._with_features(data)  # the source run's forward pass, once
        return self.linear.predict_scores(with_features), with_features.arrays[FEATURE].numpy()

    def embed(self, data: FeatureData) -> np.ndarray:
        return self.source.embed(data)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.linear.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.linear.load_state_dict(state)


register_head(
    "probe",
    ProbeConfig,
    ProbeHead,
    "Linear probe (logistic regression) on the features of a trained run, e.g. a VFM (EmoAsst Table 2)",
)
