"""Classification metrics against hand-computed values, the confusion PNG, mean ± std over folds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emo.heads.metrics import classification_metrics, mean_std, plot_confusion

CLASSES = ["a", "b", "c"]  # "c" never occurs in y_true below
Y_TRUE = [0, 0, 0, 0, 1, 1]
Y_PRED = [0, 0, 0, 1, 1, 2]


def test_metrics_match_hand_computed_values_with_an_absent_class():
    m = classification_metrics(Y_TRUE, Y_PRED, CLASSES)
    # a: 3 of 4 right (recall 3/4, precision 3/3); b: 1 of 2 right (recall 1/2, precision 1/2)
    assert m["n"] == 6
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["war"] == pytest.approx(4 / 6)
    assert m["uar"] == pytest.approx((3 / 4 + 1 / 2) / 2)  # 0.625: mean over present classes only
    assert m["uar"] != pytest.approx(m["war"])
    f1_a = 2 * 1.0 * 0.75 / (1.0 + 0.75)  # 6/7
    f1_b = 0.5
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b) / 2)  # 19/28
    assert m["weighted_f1"] == pytest.approx((4 * f1_a + 2 * f1_b) / 6)  # 31/42
    assert m["per_class_recall"] == {"a": pytest.approx(0.75), "b": pytest.approx(0.5), "c": None}
    assert m["absent_classes"] == ["c"]
    assert m["support"] == {"a": 4, "b": 2, "c": 0}
    assert m["confusion"] == [[3, 1, 0], [0, 1, 1], [0, 0, 0]]


def test_scores_are_argmaxed_like_predictions():
    scores = np.full((6, 3), -1.0)
    scores[np.arange(6), Y_PRED] = 2.0
    assert classification_metrics(np.array(Y_TRUE), scores, CLASSES) == classification_metrics(
        Y_TRUE, Y_PRED, CLASSES
    )


def test_unlabelled_items_and_wrong_widths_raise():
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, -1], [0, 0], CLASSES)
    with pytest.raises(ValueError, match="columns"):
        classification_metrics([0, 1], np.zeros((2, 2)), CLASSES)


def test_plot_confusion_writes_a_png_with_an_empty_row(tmp_path):
    m = classification_metrics(Y_TRUE, Y_PRED, CLASSES)
    path = plot_confusion(m["confusion"], CLASSES, tmp_path / "cm.png", title="toy")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mean_std_over_folds_uses_sample_std_and_skips_absent_classes():
    f1 = classification_metrics(Y_TRUE, Y_PRED, CLASSES)  # top1 2/3, c absent
    f2 = classification_metrics([0, 1, 2, 2], [0, 1, 2, 0], CLASSES)  # top1 3/4, c recall 1/2
    s = mean_std([f1, f2])
    mean = (2 / 3 + 3 / 4) / 2
    std = math.sqrt(((2 / 3 - mean) ** 2 + (3 / 4 - mean) ** 2) / 1)  # ddof=1
    assert s["top1"] == {"mean": pytest.approx(mean), "std": pytest.approx(std), "n": 2}
    assert s["per_class_recall"]["c"] == {"mean": 0.5, "std": 0.0, "n": 1}
    assert mean_std([f1])["uar"] == {"mean": pytest.approx(0.625), "std": 0.0, "n": 1}
