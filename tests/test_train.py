"""The shared training entry point (emo.heads.train): schedules, reproducibility, early stopping on
val only, frozen parts kept out of checkpoints, and the checkpoint round trip through a run."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from emo.cache.data import FeatureData, sample_frames
from emo.heads.registry import CheckpointError, get_head, load_checkpoint, register_head
from emo.heads.runs import train_head
from emo.heads.train import TorchHead, TrainConfig, lr_factor
from tests.test_heads_linear import make_features


@dataclass
class ToyConfig(TrainConfig):
    feature: str = "clip/cls"
    epochs: int = 6
    batch_size: int = 8
    lr: float = 1e-2


class ToyModule(nn.Module):
    def __init__(self, dim: int, n_cls: int):
        super().__init__()
        self.frozen = nn.Linear(dim, dim).requires_grad_(False)  # stands for a frozen encoder
        self.fc = nn.Linear(dim, n_cls)

    def forward(self, x):  # [B, M, D] -> [B, C]
        return self.fc(self.frozen(x.mean(1)))


class ToyHead(TorchHead):
    """Mean pooling + a frozen linear map + a trainable classifier."""

    frozen_prefixes = ("frozen",)

    def build_module(self, data: FeatureData) -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(123)  # the frozen part is rebuilt identically from the data
            return ToyModule(data.arrays[self.config.feature].shape[-1], len(self.classes))

    def inputs(self, data, idx, train, generator):
        x = data.arrays[self.config.feature][torch.from_numpy(idx)]
        return {"x": sample_frames(x, train, generator).float()}

    def loss(self, batch, labels):
        logits = self.module(batch["x"])
        return nn.functional.cross_entropy(logits, labels), {}

    def scores(self, batch):
        return self.module(batch["x"])


register_head("toy-train", ToyConfig, ToyHead, "test-only head: mean pooling + linear, trained by TorchHead")


def test_lr_factor_warmup_then_schedules():
    cfg = TrainConfig(epochs=10, warmup_epochs=1, schedule="cosine")
    assert [lr_factor(cfg, s, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(cfg, 4, 4) == pytest.approx(1.0)
    assert lr_factor(cfg, 4 + 18, 4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 18 / 36)))
    assert lr_factor(cfg, 40, 4) == pytest.approx(0.0)
    step = TrainConfig(epochs=10, schedule="step", step_epochs=3)
    assert [lr_factor(step, s, 2) for s in (0, 5, 6, 12, 19)] == pytest.approx([1, 1, 0.1, 0.01, 0.001])
    assert lr_factor(TrainConfig(), 1000, 3) == 1.0


def _fit(fd, **cfg):
    spec = get_head("toy-train")
    head = spec.build(spec.config(cfg), fd.classes)
    torch.manual_seed(0)
    head.prepare(fd)
    log = []
    train, val = fd.role("train"), fd.role("test")
    head.fit(train, val if cfg.get("patience") else None, log=log.append)
    return head, log


def test_same_seed_gives_bit_identical_weights_and_the_log_has_one_record_per_epoch():
    fd, _ = make_features()
    a, log = _fit(fd)
    b, _ = _fit(fd)
    assert [r["epoch"] for r in log] == list(range(1, 7)) and all(np.isfinite(r["loss"]) for r in log)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert log[-1]["loss"] < log[0]["loss"]


def test_frozen_parts_get_no_gradient_and_stay_out_of_the_state():
    fd, _ = make_features()
    head, _ = _fit(fd, epochs=1)
    fresh = get_head("toy-train").build(ToyConfig(), fd.classes)
    fresh.prepare(fd)
    assert torch.equal(head.module.frozen.weight, fresh.module.frozen.weight)  # not trained
    assert set(head.state_dict()) == {"fc.weight", "fc.bias"}
    with pytest.raises(ValueError, match="missing"):
        fresh.load_state_dict({"fc.weight": head.state_dict()["fc.weight"]})
    fresh.load_state_dict(head.state_dict())
    test = fd.role("test")
    np.testing.assert_array_equal(fresh.predict_scores(test), head.predict_scores(test))


def test_patience_keeps_the_best_val_epoch_and_needs_a_val_part():
    fd, _ = make_features()
    head, log = _fit(fd, epochs=12, patience=2, lr=0.5)
    best = max(log, key=lambda r: (r["val_top1"], -r["epoch"]))
    assert head.selected == {"epoch": best["epoch"], "val_top1": best["val_top1"]}
    assert len(log) <= 12 and all("val_top1" in r for r in log)
    val = fd.role("test")
    acc = float((torch.from_numpy(head.predict_scores(val)).argmax(1) == val.labels).float().mean())
    assert acc == pytest.approx(best["val_top1"])  # the restored weights are that epoch's
    spec = get_head("toy-train")
    bare = spec.build(spec.config({"patience": 2}), fd.classes)
    bare.prepare(fd)
    with pytest.raises(ValueError, match="val-fraction"):
        bare.fit(fd.role("train"), None)


def test_run_checkpoint_needs_the_features_and_reproduces_scores(tmp_path):
    fd, _ = make_features()
    train_head("toy-train", fd, out=tmp_path / "run")
    with pytest.raises(CheckpointError, match="load it with those features"):
        load_checkpoint(tmp_path / "run" / "0")
    head = load_checkpoint(tmp_path / "run" / "0", fd)
    scores = head.predict_scores(fd.role("test"))
    rows = (tmp_path / "run" / "0" / "predictions.csv").read_text().splitlines()[1:]
    saved = np.array([[float(v) for v in r.split(",")[3:]] for r in rows])
    np.testing.assert_allclose(scores, saved, rtol=0, atol=1e-6)
    log = [json.loads(line) for line in (tmp_path / "run" / "0" / "log.jsonl").read_text().splitlines()]
    assert len(log) == ToyConfig().epochs


def test_unlabelled_train_items_are_refused():
    fd, _ = make_features()
    bad = dataclasses.replace(fd, labels=fd.labels.clone())
    bad.labels[1] = -1  # a train item (every third item, from 0, is test)
    with pytest.raises(ValueError, match="no single label"):
        _fit(bad)
