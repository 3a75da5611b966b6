"""Cross-fitted features of a classifier trained on the same items it must describe.

A head that feeds a classifier's output to its model (ECPA's ER-level prompt) and fits that classifier on
its own train items must not show the model, for a train item, a feature from a classifier that saw the
item: it would be sharper than at test time. :func:`cross_fit` gives every train item the output of a
classifier fitted on the *other* folds (out-of-fold), and returns the classifier fitted on all of train for
the items outside it (val, test, another dataset). Which ids each classifier was fitted on and which it
embedded is returned with the features, so the promise can be checked.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

__all__ = ["cross_fit", "fit_logistic", "Predictor"]

Predictor = Callable[[np.ndarray], np.ndarray]  # [n, D] -> [n, C]


def cross_fit(x: np.ndarray, y: np.ndarray, ids: list[str], fit: Callable[[np.ndarray, np.ndarray], Predictor],
              folds: int = 5, seed: int = 0) -> tuple[np.ndarray, Predictor, list[dict]]:
    """``(out-of-fold outputs [n, C], the classifier fitted on all n, record)``; ``record[f]`` holds the
    ``fit_ids`` and ``embedded_ids`` of fold f's classifier. Folds are stratified by ``y`` when every class
    has at least ``folds`` items, else plain (shuffled with ``seed`` either way)."""
    n = len(y)
    if len(ids) != n or len(x) != n:
        raise ValueError(f"cross_fit: {len(x)} rows, {n} labels and {len(ids)} ids")
    if folds < 2 or n < folds:
        raise ValueError(f"cross-fitting needs 2 <= folds <= items, got {folds} folds for {n} items")
    counts = np.bincount(y)
    counts = counts[counts > 0]
    splitter = (StratifiedKFold(folds, shuffle=True, random_state=seed) if counts.min() >= folds
                else KFold(folds, shuffle=True, random_state=seed))
    out: np.ndarray | None = None
    record = []
    for fit_idx, emb_idx in splitter.split(x, y):
        predict = fit(x[fit_idx], y[fit_idx])
        z = np.asarray(predict(x[emb_idx]), dtype=np.float32)
        if out is None:
            out = np.zeros((n, z.shape[1]), dtype=np.float32)
        out[emb_idx] = z
        record.append({"fit_ids": [ids[i] for i in fit_idx], "embedded_ids": [ids[i] for i in emb_idx]})
    return out, fit(x, y), record


def fit_logistic(classes: int, c: float = 1.0) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A multinomial logistic regression (L-BFGS, inverse regularisation ``c``) as ``(x, y) -> (W [C, D],
    b [C])`` over all ``classes``: a class missing from ``y`` gets zero weights and a bias 10 below the
    lowest, so it is never predicted."""
    from sklearn.linear_model import LogisticRegression

    def fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = np.zeros((classes, x.shape[1]), dtype=np.float32)
        present = np.unique(y)
        if len(present) == 1:
            b = np.full(classes, -10.0, dtype=np.float32)
            b[present[0]] = 0.0
            return w, b
        m = LogisticRegression(C=c, max_iter=2000).fit(x, y)
        coef, icpt = m.coef_, m.intercept_
        if len(present) == 2:  # sklearn's binary form: one row for the second class
            coef, icpt = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
        b = np.full(classes, float(icpt.min()) - 10.0, dtype=np.float32)
        w[m.classes_], b[m.classes_] = coef, icpt
        return w, b

    return fit
