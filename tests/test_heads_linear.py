"""The registry and configs, the linear probe and the zero-shot classifier on synthetic features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emo import CONFIG_DIR
from emo.cache.data import FeatureData
from emo.heads.linear import LinearConfig, LinearHead
from emo.heads.registry import (
    CheckpointError,
    config_from_dict,
    get_head,
    list_heads,
    load_checkpoint,
    save_checkpoint,
)
from emo.heads.zero_shot import ZeroShotConfig, ZeroShotHead

ROOT = Path(__file__).resolve().parents[1]


def make_features(
    n: int = 60,
    grid=(8, 3, 2),
    dim: int = 16,
    n_classes: int = 3,
    seed: int = 0,
    random_weights: bool = False,
    key: str = "ab12cd" + "0" * 58,
    noise: float = 0.6,
) -> tuple[FeatureData, torch.Tensor]:
    """Items of class ``i % C`` whose frames scatter around a class mean; roles: every 3rd item test.

    Returns the features (``clip/cls`` ``[n, M, N, V, D]`` fp16, class_text ``[C, 2, D]`` whose two
    templates are the class mean at two scales) and the class means ``[C, D]``.
    """
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=g), dim=-1)  # [C, D]
    labels = (torch.arange(n) // 3) % n_classes  # [n]: every residue mod 3 holds every class
    x = means[labels][:, None, None, None, :] + noise * torch.randn(
        n, *grid, dim, generator=g
    )  # [n, M, N, V, D]
    roles = np.array(["test" if i % 3 == 0 else "train" for i in range(n)], dtype=object)
    name = f"clip-fake-{key[:6]}"
    fd = FeatureData(
        dataset="toy",
        ids=[f"v{i:03d}" for i in range(n)],
        classes=[f"c{k}" for k in range(n_classes)],
        labels=labels,
        arrays={"clip/cls": x.half()},
        roles=roles,
        split="toy:0",
        feature_sets={
            name: {
                "key": key,
                "modality": "clip",
                "weights": {"kind": "random" if random_weights else "pretrained"},
            }
        },
        class_text={"clip": torch.stack([means, 3.0 * means], dim=1)},  # [C, T=2, D]
        class_prompts=["a video of {}", "{}"],
    )
    return fd, means


# -- registry and configs ---------------------------------------------------------------------------
def test_registry_lists_builtins_and_unknown_name_lists_known_heads():
    names = [s.name for s in list_heads()]
    assert {"linear", "zero-shot"} <= set(names)
    assert get_head("linear").config_cls is LinearConfig
    with pytest.raises(ValueError, match="known heads: .*linear.*zero-shot"):
        get_head("lineer")


def test_unknown_config_key_raises_naming_it_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"no field 'c'.*valid fields: feature, C, c_grid, max_iter"):
        config_from_dict(LinearConfig, {"c": "0.5"})


def test_config_values_are_coerced_from_strings():
    cfg = config_from_dict(LinearConfig, {"C": "0.5", "c_grid": "0.1,1,10", "max_iter": "20"})
    assert cfg == LinearConfig(C=0.5, c_grid=[0.1, 1.0, 10.0], max_iter=20)
    assert config_from_dict(LinearConfig, {"c_grid": "[1, 2]"}).c_grid == [1.0, 2.0]
    with pytest.raises(ValueError, match="max_iter"):
        config_from_dict(LinearConfig, {"max_iter": "many"})

    from dataclasses import dataclass

    @dataclass
    class Flags:
        on: bool = False
        k: int | None = 3

    assert config_from_dict(Flags, {"on": "true", "k": "none"}) == Flags(on=True, k=None)
    assert config_from_dict(Flags, {"on": "0", "k": "7"}) == Flags(on=False, k=7)
    with pytest.raises(ValueError, match="true or false"):
        config_from_dict(Flags, {"on": "maybe"})


@pytest.mark.parametrize("name", [s.name for s in list_heads()])  # every registered head has its preset
def test_presets_are_the_config_defaults(name):
    preset = json.loads((CONFIG_DIR / "heads" / f"{name}.json").read_text())
    spec = get_head(name)
    assert config_from_dict(spec.config_cls, preset) == spec.config_cls()


# -- linear probe -----------------------------------------------------------------------------------
def test_linear_probe_learns_and_roundtrips_exactly(tmp_path):
    fd, _ = make_features()
    head = LinearHead(LinearConfig(), fd.classes)
    head.fit(fd.role("train"))
    test = fd.role("test")
    scores = head.predict_scores(test)
    assert scores.shape == (len(test), 3) and np.isfinite(scores).all()
    assert (scores.argmax(1) == test.labels.numpy()).mean() > 0.9

    save_checkpoint(tmp_path, head, "linear", fd.keys)
    state = head.state_dict()
    assert set(state) == {"coef", "intercept", "scaler_mean", "scaler_scale"} and state["coef"].shape == (
        3,
        16,
    )
    again = load_checkpoint(tmp_path, fd)
    assert isinstance(again, LinearHead)
    np.testing.assert_array_equal(again.predict_scores(test), scores)


def test_loading_against_other_cache_keys_raises(tmp_path):
    fd, _ = make_features()
    head = LinearHead(LinearConfig(), fd.classes)
    head.fit(fd.role("train"))
    save_checkpoint(tmp_path, head, "linear", fd.keys)
    other, _ = make_features(key="ff" * 32)
    with pytest.raises(CheckpointError, match="cache keys"):
        load_checkpoint(tmp_path, other)
    renamed = make_features()[0]
    renamed.classes = ["x", "y", "z"]
    with pytest.raises(CheckpointError, match="classes"):
        load_checkpoint(tmp_path, renamed)


def test_linear_validation_chooses_c_from_the_grid_and_logs_each_candidate():
    fd, _ = make_features()
    train = fd.role("train")
    records = []
    head = LinearHead(LinearConfig(c_grid=[0.001, 1.0]), fd.classes)
    head.fit(
        train.select(np.arange(len(train)) % 4 != 0),
        train.select(np.arange(len(train)) % 4 == 0),
        log=records.append,
    )
    assert [r["C"] for r in records if r["step"] == "select"] == [0.001, 1.0]
    assert head.selected["C"] in (0.001, 1.0) and records[-1]["step"] == "fit"
    assert records[-1]["C"] == head.selected["C"]


def test_binary_probe_and_a_class_missing_from_train():
    fd, _ = make_features(n_classes=3)
    train = fd.role("train")
    two = train.select(train.labels.numpy() != 2)  # class c2 never seen in train
    head = LinearHead(LinearConfig(), fd.classes)
    head.fit(two)
    scores = head.predict_scores(fd.role("test"))
    assert np.isneginf(scores[:, 2]).all() and np.isfinite(scores[:, :2]).all()
    keep = fd.role("test").labels.numpy() != 2
    assert (scores.argmax(1)[keep] == fd.role("test").labels.numpy()[keep]).mean() > 0.9


# -- zero-shot --------------------------------------------------------------------------------------
def test_zero_shot_scores_are_100_cosine_and_accurate(tmp_path):
    fd, means = make_features()
    head = ZeroShotHead(ZeroShotConfig(), fd.classes)
    head.fit(fd.role("train"))
    test = fd.role("test")
    scores = head.predict_scores(test)

    x = test.arrays["clip/cls"].float().numpy()[:, :, 1, 0]  # [n, M, D]: centre of N=3, view 0
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    v = x.mean(axis=1)
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)  # [n, D]
    w = means.numpy() / np.linalg.norm(means.numpy(), axis=-1, keepdims=True)  # [C, D]
    np.testing.assert_allclose(scores, 100.0 * v @ w.T, rtol=1e-5, atol=1e-4)
    assert (scores.argmax(1) == test.labels.numpy()).mean() > 0.9

    save_checkpoint(tmp_path, head, "zero-shot", fd.keys)
    np.testing.assert_array_equal(load_checkpoint(tmp_path, fd).predict_scores(test), scores)
    assert head.warnings == []  # pretrained features: nothing to say
    rnd, _ = make_features(random_weights=True)
    noisy = ZeroShotHead(ZeroShotConfig(), rnd.classes)
    noisy.fit(rnd.role("train"))
    assert any("random weights have none, so this row is noise" in w for w in noisy.warnings)


def test_zero_shot_without_class_prompts_says_what_is_missing():
    fd, _ = make_features()
    fd.class_text = {}
    with pytest.raises(ValueError, match="class-prompt embeddings for 'clip'"):
        ZeroShotHead(ZeroShotConfig(), fd.classes).fit(fd)


def test_validation_log_loss_matches_sklearn():
    from sklearn.metrics import log_loss

    from emo.heads.linear import _log_loss

    scores = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-3.0, 4.0, 0.0]])
    y = np.array([0, 2, 1])
    probs = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    assert _log_loss(scores, y) == pytest.approx(log_loss(y, probs, labels=[0, 1, 2]))
    with_absent = np.concatenate([scores, np.full((3, 1), -np.inf)], axis=1)  # a class never seen in train
    assert _log_loss(with_absent, y) == pytest.approx(_log_loss(scores, y))
