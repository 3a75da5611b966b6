"""EmoAsst (seed 004): losses, prompts, the VFM, the auditory adapter, the cache classifier, probe, adapt."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from emo.cache.loader import load_features
from emo.cli import app
from emo.heads.audio_adapter import AuditoryAdapter, audio_batch
from emo.heads.cache_classifier import (
    CacheClassifierConfig,
    averaged_keys,
    search_alpha_beta,
    search_grid,
    select_shots,
    tip_logits,
)
from emo.heads.layers.contrastive import clip_contrastive_loss, supcon_loss
from emo.heads.layers.utterance_prompts import class_prompts, item_prompts
from emo.heads.registry import get_head, load_checkpoint
from emo.heads.runs import train_from_cache
from emo.heads.vfm import VisualFusionModule

from .cachetools import emoasst_cache

SMALL = {"epochs": "3", "heads": "2", "ffn": "64", "batch_size": "16"}
CLASSES = ["anger", "joy", "sadness"]


# -- losses against their formulas ------------------------------------------------------------------
def _unit(rows):
    out = []
    for r in rows:
        n = math.sqrt(sum(x * x for x in r))
        out.append([x / n for x in r])
    return out


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


V = [[1.0, 0.5, -0.2], [0.1, -1.0, 0.3], [0.7, 0.7, 0.7], [-0.4, 0.2, 1.0]]
T = [[0.9, 0.4, 0.0], [0.0, -0.8, 0.5], [0.2, 0.9, 0.6], [-0.5, 0.1, 0.8]]


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_clip_contrastive_loss_equals_its_formula(scale):
    v, t = _unit(V), _unit(T)
    n = len(v)
    s = [[scale * _dot(v[i], t[k]) for k in range(n)] for i in range(n)]

    def ce_rows(m):
        return sum(math.log(sum(math.exp(x - max(row)) for x in row)) + max(row) - row[i] for i, row in enumerate(m)) / n

    expected = 0.5 * (ce_rows(s) + ce_rows([list(c) for c in zip(*s, strict=True)]))
    got = clip_contrastive_loss(torch.tensor(V, dtype=torch.float64), torch.tensor(T, dtype=torch.float64), scale)
    assert float(got) == pytest.approx(expected, rel=1e-9)


def _supcon_formula(z, y, tau):
    z = _unit(z)
    losses = []
    for i in range(len(z)):
        pos = [p for p in range(len(z)) if p != i and y[p] == y[i]]
        if not pos:
            continue
        denom = sum(math.exp(_dot(z[i], z[a]) / tau) for a in range(len(z)) if a != i)
        losses.append(-sum(math.log(math.exp(_dot(z[i], z[p]) / tau) / denom) for p in pos) / len(pos))
    return sum(losses) / len(losses) if losses else 0.0


@pytest.mark.parametrize("labels", [[0, 1, 0, 1, 0, 1, 0, 1], [0, 0, 1, 2, 3, 1, 1, 0], [0, 1, 2, 3, 4, 5, 6, 7]])
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_supcon_equals_its_formula_including_anchors_without_positives(labels, tau):
    z = V + T  # 8 rows: 4 "audio" + 4 "text"
    got = supcon_loss(torch.tensor(z, dtype=torch.float64), torch.tensor(labels), tau)
    assert float(got) == pytest.approx(_supcon_formula(z, labels, tau), rel=1e-9, abs=1e-12)


def test_supcon_without_any_positive_is_zero_and_still_differentiable():
    z = torch.tensor(V, dtype=torch.float64, requires_grad=True)
    loss = supcon_loss(z, torch.arange(4))
    loss.backward()
    assert float(loss.detach()) == 0.0 and z.grad is not None


# -- prompts ----------------------------------------------------------------------------------------
def test_the_six_prompt_formats_word_for_word_and_missing_fields_are_never_drawn():
    assert item_prompts("joy", "  Oh, me too. ", "Rachel") == [
        "A joy video.",
        "A joy person is speaking.",
        "The speaker has a joy face.",
        "The speaker is saying Oh, me too. with a joy emotion.",
        "Rachel is joy in this video.",
        "The utterance Oh, me too. shows the speaker's joy.",
    ]
    no_speaker = item_prompts("joy", "Hi", None)
    assert no_speaker[4] is None and all(p is not None for k, p in enumerate(no_speaker) if k != 4)
    nothing = item_prompts("very_sad", "", "  ")
    assert nothing == ["A very sad video.", "A very sad person is speaking.", "The speaker has a very sad face.",
                       None, None, None]
    assert class_prompts(["joy"], [1, 3]) == [["A joy video.", "The speaker has a joy face."]]
    with pytest.raises(ValueError, match="need only the emotion"):
        class_prompts(["joy"], [4])


# -- the cache classifier's formulas -----------------------------------------------------------------
def test_search_grid_is_tip_adapters():
    assert search_grid(7.0, 4) == pytest.approx([0.1, 0.1 + 6.9 / 4, 0.1 + 2 * 6.9 / 4, 0.1 + 3 * 6.9 / 4])
    assert len(search_grid(7.0, 200)) == 200 and search_grid(3.0, 20)[0] == pytest.approx(0.1)


def _tip_formula(fv, fa, w, kv, ka, lab, av, aa, beta, scale=100.0):
    """Independent loops: zero-shot mean of the modalities present plus Σ α φ(f·k) one-hot."""
    n_cls = len(w)
    out = []
    for i in range(len(fv if fv is not None else fa)):
        feats = [(f[i], k, a) for f, k, a in ((fv, kv, av), (fa, ka, aa)) if f is not None]
        row = []
        for c in range(n_cls):
            zero = scale * sum(_dot(f, w[c]) for f, _, _ in feats) / len(feats)
            cache = sum(a * sum(math.exp(-beta * (1 - _dot(f, k[j]))) for j in range(len(k)) if lab[j] == c)
                        for f, k, a in feats)
            row.append(zero + cache)
        out.append(row)
    return out


FV = _unit([[1, 0, 0.2], [0.1, 1, 0], [0.5, 0.5, 0.5]])
FA = _unit([[0, 1, 0.1], [1, 0.2, 0], [0.3, -0.2, 1]])
W = _unit([[1, 0.1, 0], [0, 1, 0.1], [0.1, 0, 1]])
KV = _unit([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0, 1]])
KA = _unit([[0, 1, 0], [1, 0, 0], [0.2, 0.2, 1], [0, 0.1, 1]])
LAB = [0, 0, 1, 2]


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


@pytest.mark.parametrize("alpha,beta", [((1.0, 2.0), 5.5), ((0.0, 0.0), 3.0), ((0.3, 0.0), 1.0)])
def test_joint_cache_logits_equal_their_formula(alpha, beta):
    values = torch.nn.functional.one_hot(torch.tensor(LAB), 3).double()
    got = tip_logits({"video": _t(FV), "audio": _t(FA)}, _t(W), {"video": _t(KV), "audio": _t(KA)}, values,
                     {"video": alpha[0], "audio": alpha[1]}, beta)
    assert torch.allclose(got, _t(_tip_formula(FV, FA, W, KV, KA, LAB, *alpha, beta)), rtol=1e-12, atol=0)
    one = tip_logits({"video": _t(FV)}, _t(W), {"video": _t(KV)}, values, {"video": alpha[0]}, beta)
    assert torch.allclose(one, _t(_tip_formula(FV, None, W, KV, None, LAB, alpha[0], 0.0, beta)), rtol=1e-12, atol=0)
    if alpha == (0.0, 0.0):  # α = 0: exactly the zero-shot classifier
        zero = 100 * (_t(FV) @ _t(W).T + _t(FA) @ _t(W).T) / 2
        assert torch.equal(got, zero)


def test_an_affinity_of_one_everywhere_adds_alpha_times_the_shots_per_class():
    values = torch.nn.functional.one_hot(torch.tensor(LAB), 3).double()
    keys = _t(FV[:1]).repeat(4, 1)  # every key equals the query: f·k = 1, φ = 1 for any β
    got = tip_logits({"video": _t(FV[:1])}, _t(W), {"video": keys}, values, {"video": 0.5}, 9.0)
    zero = 100 * _t(FV[:1]) @ _t(W).T
    assert torch.allclose(got - zero, _t([[0.5 * 2, 0.5 * 1, 0.5 * 1]]), rtol=0, atol=1e-12)


def test_the_search_finds_the_grid_cell_a_brute_force_loop_finds():
    g = torch.Generator().manual_seed(3)
    n, nk, c = 30, 9, 3
    zero = torch.randn(n, c, generator=g, dtype=torch.float64)
    aff = {"video": torch.rand(n, nk, generator=g, dtype=torch.float64),
           "audio": torch.rand(n, nk, generator=g, dtype=torch.float64)}
    values = torch.nn.functional.one_hot(torch.arange(nk) % c, c).double()
    y = torch.randint(c, (n,), generator=g)
    alphas, betas = search_grid(3.0, 5), search_grid(7.0, 6)
    best = None
    for b in betas:
        for av in alphas:
            for aa in alphas:
                logits = zero + av * torch.exp(-b * (1 - aff["video"])) @ values + aa * torch.exp(-b * (1 - aff["audio"])) @ values
                acc = float((logits.argmax(1) == y).double().mean())
                if best is None or acc > best[0]:
                    best = (acc, {"video": av, "audio": aa}, b)
    alpha, beta, acc = search_alpha_beta(zero, aff, values, y, alphas, betas)
    assert (acc, alpha, beta) == (pytest.approx(best[0]), best[1], best[2])


def test_keys_are_normalised_view_means_and_shots_are_per_class():
    views = [np.array([[3.0, 0.0]]), np.array([[0.0, 1.0]])]  # raw features: averaged, then normalised
    assert torch.allclose(averaged_keys(views), torch.tensor([[3.0, 1.0]]) / math.sqrt(10.0))
    # (normalising each view first would give [√½, √½]: Tip-Adapter's order weighs the longer view more)
    labels = np.array([0, 1, 1, 1, 2, 0, 1, 0, 2])
    picked = select_shots(labels, 2, 3, seed=0)
    assert np.bincount(labels[picked], minlength=3).tolist() == [2, 2, 2]
    assert np.array_equal(picked, select_shots(labels, 2, 3, seed=0))
    assert len(select_shots(labels, 0, 3, seed=0)) == len(labels)


# -- modules: parameter counts, padding ----------------------------------------------------------------
def test_parameter_counts_are_the_papers():
    vfm = VisualFusionModule(torch.zeros(7, 512), heads=8, ffn=2048, encoder_layers=1, decoder_layers=2, dropout=0.1)
    assert sum(p.numel() for p in vfm.parameters() if p.requires_grad) == 11_564_032  # 11.56 M
    aa = AuditoryAdapter(768, 512, heads=8, ffn=2048, layers=3, dropout=0.1)
    assert sum(p.numel() for p in aa.encoder.parameters()) == 9_457_152  # 9.46 M without the projection
    assert sum(p.numel() for p in aa.proj.parameters()) == 768 * 512 + 512


def test_an_audio_feature_does_not_depend_on_its_batch():
    from emo.cache.loader import RaggedArray

    torch.manual_seed(0)
    aa = AuditoryAdapter(12, 16, heads=2, ffn=32, layers=2, dropout=0.0).eval()
    arr = RaggedArray.from_list([torch.randn(4, 12), torch.randn(11, 12), torch.randn(7, 12)])
    gen = torch.Generator()
    alone = aa(*audio_batch(arr, np.array([0]), 0, False, gen))
    together = aa(*audio_batch(arr, np.array([1, 0, 2]), 0, False, gen))
    assert torch.allclose(alone[0], together[1], atol=1e-5)
    x, lengths = audio_batch(arr, np.array([1]), 5, False, gen)  # centred crop of an 11-row item
    assert lengths.tolist() == [5] and torch.equal(x[0], arr[1][3:8])


# -- heads from a MELD-like cache ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def meld(tmp_path_factory):
    root = tmp_path_factory.mktemp("meld")
    emoasst_cache(root / "cache", extra_ids=3)
    return root


def _data(meld, modalities=("clip", "audio")):
    return load_features(meld / "cache", split="meld:official", modalities=modalities)


@pytest.mark.parametrize("name,extra", [("vfm", {}), ("vfm", {"text": "prompts"}),
                                        ("audio-adapter", {}), ("audio-adapter", {"text": "prompts"})])
def test_text_guided_heads_shapes_gradients_and_no_label_in_the_feature(meld, name, extra):
    fd = _data(meld)
    spec = get_head(name)
    torch.manual_seed(0)
    head = spec.build(spec.config({**SMALL, **extra}), fd.classes)
    head.prepare(fd)
    train = fd.role("train")
    from emo.heads.text_guided import text_targets

    head._targets, record = text_targets(train, head.config.text, head.tower, head.tokenize)
    assert record["targets"] == (len(train) if head.config.text == "utterance" else int(head._targets.valid.sum()))
    idx = np.arange(16)
    batch = head.inputs(train, idx, True, torch.Generator().manual_seed(0))
    assert batch["text"].shape == (16, 32)
    loss, _ = head.loss(batch, train.labels[:16])
    assert torch.isfinite(loss)
    loss.backward()
    trainable = [(n, p) for n, p in head.module.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in trainable), \
        [n for n, p in trainable if p.grad is None]
    assert all(not p.requires_grad for p in head.tower.parameters())  # the text tower stays frozen
    head._targets = None
    scores = head.predict_scores(fd)
    assert scores.shape == (len(fd), 3) and np.isfinite(scores).all()
    shuffled = fd.select(np.arange(len(fd)))
    shuffled.labels = shuffled.labels.flip(0)  # other labels: same video / audio features, same scores
    assert np.array_equal(head.predict_scores(shuffled), scores)
    assert head.embed(fd).shape == (len(fd), 32)


def test_utterance_targets_refuse_items_without_text(meld):
    fd = _data(meld).role("train")
    fd.texts[2] = []
    spec = get_head("vfm")
    head = spec.build(spec.config(SMALL), fd.classes)
    with pytest.raises(ValueError, match=r"1 train item\(s\) have no utterance"):
        head.fit(fd)


@pytest.fixture(scope="module")
def runs(meld):
    out = meld / "runs"
    train_from_cache("vfm", meld / "cache", split="meld:official", out=out / "vfm",
                     overrides={**SMALL, "text": "prompts"})
    train_from_cache("audio-adapter", meld / "cache", split="meld:official", out=out / "aa",
                     overrides={**SMALL, "lr": "1e-3"})
    return out


def test_runs_round_trip_their_checkpoints_and_name_their_rows(meld, runs):
    fd = _data(meld)
    for run, label in (("vfm", "VFM + prompt"), ("aa", "AA")):
        summary = json.loads((runs / run / "summary.json").read_text())
        assert summary["label"] == label and summary["paper_features"]
        head = load_checkpoint(runs / run / "official", fd)
        scores = head.predict_scores(fd.role("test"))
        saved = np.loadtxt(runs / run / "official" / "predictions.csv", delimiter=",", skiprows=1,
                           usecols=(3, 4, 5))
        assert np.allclose(scores, saved, rtol=1e-5, atol=1e-5)


def _cache_run(meld, runs, out, **over):
    cfg = {"video": str(runs / "vfm"), "shots": "4", "beta_steps": "10", "alpha_steps": "5", **over}
    return train_from_cache("cache-classifier", meld / "cache", split="meld:official", out=runs / out, overrides=cfg)


def test_cache_classifier_searches_on_val_and_reloads_exactly(meld, runs):
    result = _cache_run(meld, runs, "tip", audio=str(runs / "aa"))
    record = json.loads((runs / "tip" / "official" / "config.json").read_text())
    sel = record["selected"]
    assert sel["per_class"] == [4, 4, 4] and sel["n_val"] == 12 and set(sel["alpha"]) == {"video", "audio"}
    assert sel["beta"] in search_grid(7.0, 10) and sel["alpha"]["video"] in search_grid(3.0, 5)
    assert result.summary["top1"]["mean"] > 0.6  # the toy classes are separable
    fd = _data(meld)
    head = load_checkpoint(runs / "tip" / "official", fd)
    assert head.keys["video"].shape == (12, 32) and head.values.shape == (12, 3)
    saved = np.loadtxt(runs / "tip" / "official" / "predictions.csv", delimiter=",", skiprows=1, usecols=(3, 4, 5))
    assert np.allclose(head.predict_scores(fd.role("test")), saved, rtol=1e-6, atol=1e-6)
    # the test split chose nothing: the search saw the 12 val items only
    assert json.loads((runs / "tip" / "official" / "log.jsonl").read_text().splitlines()[-1])["n_val"] == 12


def test_tip_f_at_step_zero_is_the_training_free_classifier_and_training_moves_the_keys(meld, runs):
    fixed = {"search": "none", "alpha": "1.5", "beta": "4"}
    _cache_run(meld, runs, "free", **fixed)
    _cache_run(meld, runs, "tipf0", finetune_keys="true", ft_epochs="0", **fixed)
    _cache_run(meld, runs, "tipf", finetune_keys="true", ft_epochs="3", **fixed)
    fd = _data(meld)
    free, f0, f3 = (load_checkpoint(runs / r / "official", fd) for r in ("free", "tipf0", "tipf"))
    test = fd.role("test")
    assert np.array_equal(free.predict_scores(test), f0.predict_scores(test))
    assert not torch.equal(free.keys["video"], f3.keys["video"])
    assert json.loads((runs / "tipf" / "summary.json").read_text())["label"] == "cache 4-shot: VFM + prompt (Tip-F)"


def test_adapt_adds_labelled_clips_without_training_and_refuses_them_twice(meld, runs, tmp_path):
    _cache_run(meld, runs, "adapt", search="none")
    new = tmp_path / "new.csv"
    new.write_text("id,label\ndia15_utt0,anger\ndia15_utt1,joy\n")
    before = load_checkpoint(runs / "adapt" / "official", _data(meld))
    res = CliRunner().invoke(app, ["heads", "adapt", str(runs / "adapt"), "--add", str(new)])
    assert res.exit_code == 0, res.output
    after = load_checkpoint(runs / "adapt" / "official", _data(meld))
    assert after.keys["video"].shape[0] == before.keys["video"].shape[0] + 2
    assert torch.equal(after.keys["video"][:-2], before.keys["video"])
    assert after.values[-2:].argmax(1).tolist() == [0, 1]
    record = json.loads((runs / "adapt" / "official" / "config.json").read_text())
    assert record["adapted"][0]["ids"] == ["dia15_utt0", "dia15_utt1"]
    again = CliRunner().invoke(app, ["heads", "adapt", str(runs / "adapt"), "--add", str(new)])
    assert again.exit_code == 2 and "in the cache already" in again.output
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\ndia15_utt2,happy\n")
    res = CliRunner().invoke(app, ["heads", "adapt", str(runs / "adapt"), "--add", str(bad)])
    assert res.exit_code == 2 and "line 2" in res.output


def test_cli_cache_classifier_probe_and_report(meld, runs):
    r = CliRunner()
    res = r.invoke(app, ["heads", "cache-classifier", str(meld / "cache"), "--video", str(runs / "vfm"),
                         "--audio", str(runs / "aa"), "--shots", "4", "--beta-steps", "5", "--alpha-steps", "3"])
    assert res.exit_code == 0, res.output
    assert (runs / "vfm-cache" / "summary.json").exists() and "cache 4-shot: VFM + prompt + AA" in res.output
    res = r.invoke(app, ["heads", "probe", str(meld / "cache"), "--run", str(runs / "vfm")])
    assert res.exit_code == 0, res.output
    assert json.loads((runs / "vfm-probe" / "summary.json").read_text())["label"] == "linear probe: VFM + prompt"
    res = r.invoke(app, ["report", str(runs)])
    assert res.exit_code == 0 and "RANDOM WEIGHTS" in res.output
    for row in ("| VFM + prompt |", "| AA |", "| linear probe: VFM + prompt |", "| cache 4-shot: VFM + prompt + AA |"):
        assert row in res.output
    assert "The paper's numbers used the EmotionCLIP" in res.output
    res = r.invoke(app, ["heads", "cache-classifier", str(meld / "cache"), "--shots", "4"])
    assert res.exit_code == 2 and "--video or --audio" in res.output


def test_config_of_the_cache_classifier_names_its_runs():
    with pytest.raises(ValueError, match="--video RUN, --audio RUN"):
        CacheClassifierConfig().runs()


@pytest.mark.parametrize("head,preset", [("vfm", "prompt"), ("audio-adapter", "prompt"), ("cache-classifier", "release")])
def test_emoasst_presets_are_valid_configs(head, preset):
    from emo.heads.registry import head_preset

    cfg = get_head(head).config(head_preset(head, preset))
    assert getattr(cfg, "text", None) == "prompts" or cfg.shots == 128


def test_a_probe_checkpoint_reloads_with_its_run_and_reproduces_its_scores(meld, runs):
    train_from_cache("probe", meld / "cache", split="meld:official", out=runs / "probe-rt",
                     overrides={"features": str(runs / "vfm")})
    fd = _data(meld)
    head = load_checkpoint(runs / "probe-rt" / "official", fd)
    saved = np.loadtxt(runs / "probe-rt" / "official" / "predictions.csv", delimiter=",", skiprows=1, usecols=(3, 4, 5))
    assert np.allclose(head.predict_scores(fd.role("test")), saved, rtol=1e-9, atol=1e-9)
    assert head.selected["C"] in head.config.c_grid  # chosen on the official dev split


def test_stacked_heads_run_their_feature_runs_once_per_prediction(meld, runs):
    """A probe and a cache classifier read features from other runs: predict() (what a run stores) runs
    each of those once for both scores and features, and gives what predict_scores and embed give."""
    fd = _data(meld)
    test = fd.role("test")
    spec = get_head("probe")
    probe = spec.build(spec.config({"features": str(runs / "vfm")}), fd.classes)
    probe.fit(fd.role("train"), fd.role("val"))
    _cache_run(meld, runs, "tip-once", audio=str(runs / "aa"))
    cache = load_checkpoint(runs / "tip-once" / "official", fd)
    for head, sources in ((probe, [probe.source]), (cache, list(cache.feature_heads.values()))):
        calls = []
        for src in sources:
            real = src.embed
            src.embed = lambda data, *a, _real=real, _calls=calls, **k: _calls.append(1) or _real(data, *a, **k)
        scores, features = head.predict(test)
        assert len(calls) == len(sources) == (1 if head is probe else 2)  # one pass of each feature run
        for src in sources:
            del src.embed  # back to the class's method
        np.testing.assert_allclose(scores, head.predict_scores(test), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(features, head.embed(test), rtol=1e-6, atol=1e-6)
