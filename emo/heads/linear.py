"""Linear probe on mean-pooled features — the baseline every head is compared with (docs/papers.md#shared-baselines).

Each frame's feature is L2-normalised, frames are mean-pooled over segments (eval sampling: the
centre frame of each segment, view 0), the pooled vectors are standardised, and a multinomial
logistic regression (scikit-learn, lbfgs) is fitted. With a validation part, ``C`` is chosen from
``c_grid`` by validation accuracy (ties: lower validation log-loss, then the earlier C) and the model fitted on train without the validation part is kept.
Scores are the logits ``((x - mean) / scale) @ coef.T + intercept``, computed here from the stored
tensors so that a reloaded checkpoint reproduces them exactly.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from emo.cache.data import FeatureData, sample_frames

from .registry import Head, LogFn, register_head

__all__ = ["LinearConfig", "LinearHead", "pooled_video"]


@dataclass
class LinearConfig:
    feature: str = "clip/cls"  # array of FeatureData.arrays: [n, M, N, V, D], [n, M, D] or [n, D]
    C: float = 1.0  # inverse L2 strength when no validation part chooses it
    c_grid: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0, 100.0])  # C searched on a val part
    max_iter: int = 1000  # L-BFGS iterations of the logistic regression


def pooled_video(data: FeatureData, feature: str) -> torch.Tensor:
    """``[n, D]`` float32: mean over segments of L2-normalised frames (centre frame, view 0)."""
    if feature not in data.arrays:
        raise ValueError(f"features have no array {feature!r} (have: {', '.join(sorted(data.arrays)) or 'none'})")
    x = data.arrays[feature]
    if x.ndim == 5:  # [n, M, N, V, D]
        x = sample_frames(x, train=False)  # [n, M, D]
    elif x.ndim == 2:  # [n, D]: one vector per item
        x = x[:, None]  # [n, 1, D]
    elif x.ndim != 3:
        raise ValueError(f"{feature!r} has shape {tuple(x.shape)}; expected [n, M, N, V, D], [n, M, D] or [n, D]")
    x = F.normalize(x.float(), dim=-1)  # [n, M, D], unit length per frame
    return x.mean(dim=1)  # [n, D]


class LinearHead(Head):
    """Standardise + logistic regression on :func:`pooled_video` features."""

    def __init__(self, config: LinearConfig, classes: list[str]):
        super().__init__(config, classes)
        self.mean: np.ndarray | None = None  # [D] float64
        self.scale: np.ndarray | None = None  # [D] float64
        self.coef: np.ndarray | None = None  # [C, D] float64
        self.intercept: np.ndarray | None = None  # [C] float64; -inf for classes absent from train
        self._fit_info: dict = {}  # n_iter, converged of the last sklearn fit

    def fit(self, train: FeatureData, val: FeatureData | None = None, log: LogFn | None = None) -> None:
        log = log or (lambda record: None)
        x = pooled_video(train, self.config.feature).double().numpy()  # [n, D]
        y = _labels(train)
        scaler = StandardScaler().fit(x)
        z = scaler.transform(x)
        self.mean, self.scale = scaler.mean_, scaler.scale_
        if val is None or len(val) == 0:
            self._set(self._logreg(z, y, self.config.C))
            log({"step": "fit", "C": self.config.C, "n_train": len(y), **self._fit_info})
            return
        zv = scaler.transform(pooled_video(val, self.config.feature).double().numpy())  # [n_val, D]
        yv = _labels(val)
        best = None
        for c in self.config.c_grid:  # best accuracy; ties -> lower val log-loss, then the earlier C
            self._set(self._logreg(z, y, c))
            sv = self._scores(zv)  # [n_val, C]
            acc, loss = float((sv.argmax(1) == yv).mean()), _log_loss(sv, yv)
            log({"step": "select", "C": c, "n_train": len(y), "n_val": len(yv), "val_top1": acc,
                 "val_loss": loss, **self._fit_info})
            if best is None or (acc, -loss) > (best[0], -best[1]):
                best = (acc, loss, c, self.coef, self.intercept, dict(self._fit_info))
        acc, loss, c, self.coef, self.intercept, info = best
        self.selected = {"C": c, "val_top1": acc, "val_loss": loss}
        log({"step": "fit", "C": c, "n_train": len(y), "val_top1": acc, "val_loss": loss, **info})

    def _logreg(self, z: np.ndarray, y: np.ndarray, c: float) -> LogisticRegression:
        if len(np.unique(y)) < 2:
            raise ValueError(f"linear probe needs at least two classes in train, got {np.unique(y).tolist()}")
        clf = LogisticRegression(C=c, solver="lbfgs", max_iter=self.config.max_iter, class_weight=None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit(z, y)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        if not converged:  # recorded in the log too; said once here, not swallowed
            warnings.warn(f"linear probe: lbfgs did not converge in max_iter={self.config.max_iter} (C={c})",
                          ConvergenceWarning, stacklevel=3)
        self._fit_info = {"n_iter": int(np.max(clf.n_iter_)), "converged": converged}
        return clf

    def _set(self, clf: LogisticRegression) -> None:
        """Spread sklearn's rows (only classes seen in train) into ``[C, D]`` / ``[C]``."""
        n_cls, dim = len(self.classes), clf.coef_.shape[1]
        coef = np.zeros((n_cls, dim))
        intercept = np.full(n_cls, -np.inf)  # a class never seen in train is never predicted
        seen = clf.classes_.astype(np.int64)
        if len(seen) == 2:  # binary: sklearn keeps one row w for class seen[1]; softmax([0, s]) = sigmoid(s)
            coef[seen[0]], intercept[seen[0]] = 0.0, 0.0
            coef[seen[1]], intercept[seen[1]] = clf.coef_[0], clf.intercept_[0]
        else:
            coef[seen], intercept[seen] = clf.coef_, clf.intercept_
        self.coef, self.intercept = coef, intercept

    def _scores(self, z: np.ndarray) -> np.ndarray:
        return z @ self.coef.T + self.intercept  # [n, C]

    def predict_scores(self, data: FeatureData) -> np.ndarray:
        if self.coef is None:
            raise RuntimeError("linear head: fit() or load_state_dict() first")
        x = pooled_video(data, self.config.feature).double().numpy()  # [n, D]
        return self._scores((x - self.mean) / self.scale)

    def embed(self, data: FeatureData) -> np.ndarray:
        """``[n, D]`` the features the probe sees (pooled, before standardising): for t-SNE / silhouette."""
        return pooled_video(data, self.config.feature).numpy()

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.coef is None:
            raise RuntimeError("linear head: nothing to save before fit()")
        arrays = {"coef": self.coef, "intercept": self.intercept, "scaler_mean": self.mean, "scaler_scale": self.scale}
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = {"coef", "intercept", "scaler_mean", "scaler_scale"}
        if set(state) != expected:
            raise ValueError(f"linear head state has {sorted(state)}, expected {sorted(expected)}")
        if state["coef"].shape[0] != len(self.classes):
            raise ValueError(f"linear head state is for {state['coef'].shape[0]} classes, head has {len(self.classes)}")
        self.coef = state["coef"].double().numpy()
        self.intercept = state["intercept"].double().numpy()
        self.mean = state["scaler_mean"].double().numpy()
        self.scale = state["scaler_scale"].double().numpy()


def _log_loss(scores: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of softmax(scores) ``[n, C]`` (columns of -inf have probability 0)."""
    m = scores.max(axis=1, keepdims=True)  # [n, 1]
    lse = m[:, 0] + np.log(np.exp(scores - m).sum(axis=1))  # [n]
    return float(np.mean(lse - scores[np.arange(len(y)), y]))


def _labels(data: FeatureData) -> np.ndarray:
    y = data.labels.numpy().astype(np.int64)
    if (y < 0).any():
        raise ValueError(f"{int((y < 0).sum())} items have no single label; the linear probe needs one per item")
    return y


register_head(
    "linear",
    LinearConfig,
    LinearHead,
    "Linear probe: L2-normalised, mean-pooled frames, standardised, logistic regression (docs/papers.md#shared-baselines)",
)
