"""The ECPA head (seed 002): contract (gradients, shapes, save/load with its vocabulary), the cross-fitted
ER prompt checked by ids, the switch for datasets without emotion labels, the presets, the synthetic task
whose AU phrase only the AU arrays carry, and the user's path end to end through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocoevalcap.bleu.bleu import Bleu
from typer.testing import CliRunner

from emo.cache.manifest import Item, Manifest, write_manifest
from emo.cli import app
from emo.heads.ecpa import ECPAConfig, ECPAHead
from emo.heads.layers.captions import Vocabulary
from emo.heads.metrics import java_runtime
from emo.heads.registry import HEAD_PRESET_DIR, get_head, head_preset, load_checkpoint, save_checkpoint
from tests.cachetools import write_set
from tests.ecpa_data import AU_META, CLIP_META, caption_task

SMALL = {"visual": "cls", "width": 32, "layers": 2, "heads": 2, "ffn": 64, "dropout": 0.0, "batch_size": 16, "er_folds": 3,
         "lr": 3e-3, "epochs": 2}


def build(fd, **over) -> ECPAHead:
    spec = get_head("ecpa")
    head = spec.build(spec.config({**SMALL, **over}), fd.classes)
    head.prepare(fd)
    return head


def test_every_trainable_parameter_gets_a_gradient_and_the_losses_are_finite():
    fd = caption_task(60, 10, invalid_every=7)
    head = build(fd)
    train = fd.role("train")
    head._fit_er(train)
    head.epoch_start(1, [])
    batch = head.inputs(train, np.arange(12), True, torch.Generator().manual_seed(0))
    assert batch["visual"].shape == (12, 4, 16) and batch["au_index"].shape == (12, 3)
    assert not bool(batch["au_has"][0]) and bool(batch["au_has"][1])  # clip 0 has no valid AU frame
    loss, parts = head.loss(batch, train.labels[:12])
    assert set(parts) >= {"mlm", "er", "aucl"} and all(torch.isfinite(v) for v in parts.values())
    loss.backward()
    no_grad = [n for n, p in head.module.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert no_grad == []
    frozen = {n for n, _ in head.module.named_buffers()}
    assert {"vocab", "er_weight", "er_bias", "cap_weight", "cap_bias"} <= frozen
    assert {"vocab", "er_weight"} <= set(head.state_dict())  # saved with the checkpoint, not trained


def test_each_epochs_loss_weights_are_dwa_of_the_two_epochs_before_it():
    from emo.heads.layers.emotion_alignment import dwa_weights

    fd = caption_task(40, 8)
    for dwa in (True, False):
        head = build(fd, epochs=4, dwa=dwa)
        records: list[dict] = []
        head.fit(fd.role("train"), log=records.append)
        for e, rec in enumerate(records):
            want = dwa_weights(records[:e], ("mlm", "er", "aucl"), 2.0) if dwa else dict.fromkeys(("mlm", "er", "aucl"), 1.0)
            assert [rec[f"w_{k}"] for k in want] == pytest.approx(list(want.values()), rel=1e-6)
            parts = sum(rec[f"w_{k}"] * rec[k] for k in want)
            assert rec["loss"] == pytest.approx(parts, rel=1e-4)  # the logged parts are the unweighted losses
        assert not dwa or records[3]["w_mlm"] != 1.0


def test_the_baseline_has_no_prompts_and_only_the_mlm_loss():
    fd = caption_task(40, 8)
    cfg = ECPAConfig(**{**SMALL}, **head_preset("ecpa", "table4-baseline"))
    assert not (cfg.er_prompt or cfg.au_prompt or cfg.sentence_prompt or cfg.word_prompt or cfg.er_align or cfg.au_align)
    assert cfg.active_losses() == ("mlm",) and cfg.label() == "ECPA baseline" and cfg.modalities() == ("clip",)
    head = ECPAHead(cfg, fd.classes)
    head.prepare(fd)
    names = {n.split(".")[0] for n, _ in head.module.named_parameters()}
    assert names == {"visual", "visual_pos", "types", "generator"}
    head.epoch_start(1, [])
    batch = head.inputs(fd.role("train"), np.arange(4), True, torch.Generator().manual_seed(0))
    assert set(batch) == {"visual", "caption", "caption_in", "caption_target"}
    assert set(head.loss(batch, fd.labels[:4])[1]) == {"mlm", "w_mlm"}


def test_every_preset_is_a_valid_config_and_the_tables_differ_in_their_switch():
    presets = sorted(p.stem for p in (HEAD_PRESET_DIR / "ecpa").glob("*.json"))
    assert {"table4-baseline", "table4-vep", "table4-vep-tep", "table4-full", "table5-er-only", "table5-au-only",
            "table6-er-similarity", "table6-au-contrastive", "emvidcap"} <= set(presets)
    configs = {p: ECPAConfig(**head_preset("ecpa", p)) for p in presets}
    assert configs["table4-vep"].er_prompt and not configs["table4-vep"].sentence_prompt
    assert configs["table4-full"].active_losses() == ("mlm", "er", "aucl")
    assert configs["table5-er-only"].active_losses() == ("mlm", "er")
    assert configs["table6-er-similarity"].er_loss == "similarity"
    assert not configs["emvidcap"].emotion_labels


def test_train_items_get_cross_fitted_er_features_and_other_items_the_full_classifier():
    fd = caption_task(60, 12)
    head = build(fd)
    train, test = fd.role("train"), fd.role("test")
    head._fit_er(train)
    for rec in head.cross_fit_record:
        assert not set(rec["fit_ids"]) & set(rec["embedded_ids"])
    assert sorted(i for r in head.cross_fit_record for i in r["embedded_ids"]) == sorted(train.ids)
    er_train = head._er(train, np.arange(len(train)))
    full = head.module.er_logits(torch.from_numpy(head._pooled_cls(train, np.arange(len(train)))))
    for k, item in enumerate(train.ids):
        assert torch.allclose(er_train[k], torch.from_numpy(head.oof[item]))
    assert not torch.allclose(er_train, full, atol=1e-3)  # out-of-fold differs from the all-train classifier
    er_test = head._er(test, np.arange(len(test)))
    torch.testing.assert_close(er_test, head.module.er_logits(torch.from_numpy(head._pooled_cls(test, np.arange(len(test))))))


@pytest.mark.parametrize("over", [{}, {"er_prompt": False, "er_align": False}])
def test_at_inference_the_class_token_is_the_er_classifiers_prediction(over):
    fd = caption_task(80, 30)
    head = build(fd, **over)
    train, test = fd.role("train"), fd.role("test")
    head._fit_er(train)
    assert hasattr(head.module, "er_mlp") == ("er_prompt" not in over)
    seen = []
    prefix = head.module.prefix
    head.module.prefix = lambda batch, class_ids: seen.append(class_ids) or prefix(batch, class_ids)
    head.config.max_words = 2
    head.generate(test)
    predicted = head._er(test, np.arange(len(test))).argmax(1)
    assert torch.equal(torch.cat(seen), predicted) and len(set(predicted.tolist())) == 3
    assert (predicted == test.labels).float().mean() > 0.6  # the frames carry the emotion: a real prediction


def test_a_checkpoint_keeps_its_vocabulary_and_generates_the_same_captions_on_other_data(tmp_path):
    fd = caption_task(60, 10)
    head = build(fd)
    head.fit(fd.role("train"))
    caps = head.generate(fd.role("test"))
    save_checkpoint(tmp_path / "ck", head, "ecpa", fd.keys, extra={"feature_sets": fd.feature_sets})
    other = caption_task(60, 10)
    other.texts = [["completely different words here"] for _ in other.texts]  # another vocabulary from train
    back = load_checkpoint(tmp_path / "ck", other)
    assert back.vocab == head.vocab and back.vocab != Vocabulary.build(["completely different words here"])
    assert back.generate(fd.role("test")) == caps
    batch = back._to_device({k: x for k, x in back.inputs(fd.role("test"), np.arange(10), False, None).items()
                             if not k.startswith("caption")})
    for beam in (1, 3):  # the head's word prompts through the cached decoder and the reference
        back.config.beam = beam
        assert torch.equal(back.decode_ids(batch), back.decode_ids(batch, cached=False))
    torch.testing.assert_close(back.module.er_weight, head.module.er_weight)


def test_without_emotion_labels_the_label_parts_are_off_and_labels_are_never_invented():
    fd = caption_task(50, 10)
    fd.labels = torch.full((len(fd),), -1, dtype=torch.int64)
    with pytest.raises(ValueError, match="--emotion-labels false"):  # classes, but no item has a label
        build(fd).fit(fd.role("train"))
    fd.classes = []
    with pytest.raises(ValueError, match="--emotion-labels false"):  # no classes at all
        build(fd)
    head = build(fd, emotion_labels=False)
    assert head.config.active_losses() == ("mlm", "aucl") and any("no emotion labels" in w for w in head.warnings)
    head.fit(fd.role("train"))
    assert not hasattr(head.module, "er_mlp") and not hasattr(head.module, "class_tokens")
    caps = head.generate(fd.role("test"))
    assert len(caps) == 10 and head.caption_metrics(fd.role("test"), caps) == {}


def test_the_au_prompts_carry_a_phrase_the_frames_do_not_and_captions_reach_a_clear_bleu4():
    """Captions end with a facial action that only the AU arrays show: with AU prompts the head names it,
    without them it can only guess (1 in 4); both learn the rest of the caption from the frames."""
    fd = caption_task(240, 40)
    test = fd.role("test")
    phrases = fd.au_phrase[-40:]
    over = {"width": 64, "layers": 2, "heads": 4, "epochs": 15, "batch_size": 16, "lr": 3e-3, "mask_prob": 0.3}
    result = {}
    for au in (True, False):
        torch.manual_seed(0)
        head = build(fd, **over, **({} if au else {"au_prompt": False, "au_align": False}))
        head.fit(fd.role("train"))
        caps = head.generate(test)
        bleu = Bleu(4).compute_score({i: r for i, r in enumerate(test.texts)}, {i: [c] for i, c in enumerate(caps)},
                                     verbose=0)[0][3]
        result[au] = (np.mean([p in c for p, c in zip(phrases, caps, strict=True)]), bleu)
    assert result[True][0] > 0.8 and result[False][0] < 0.5, result
    assert result[True][1] > 0.8 and result[True][1] > result[False][1], result


# --- the CLI path ----------------------------------------------------------------------------------------


def write_cache(root, fd, scheme: str, fold: str, labels: bool = True):
    items = [Item(id=i, path=f"{i}.mp4", label=fd.classes[int(y)] if labels else None, text=t,
                  splits={scheme: {fold: r}}) for i, y, t, r in zip(fd.ids, fd.labels, fd.texts, fd.roles, strict=True)]
    m = Manifest(dataset=root.name, classes=list(fd.classes) if labels else [], items=items, root=str(root),
                 split_schemes={scheme: [fold]}, label_type="single" if labels else "none")
    write_manifest(m, root / "manifest.jsonl")
    clip = {k: v for k, v in CLIP_META.items() if k != "key"}
    au = {k: v for k, v in AU_META.items() if k != "key"}
    write_set(root, {**clip, "sampling": {"segments": 4, "frames_per_segment": 1, "views": 1}},
              {i: {"clip/cls": fd.arrays["clip/cls"][k].numpy()} for k, i in enumerate(fd.ids)})
    write_set(root, au, {i: {"au/au_r": fd.arrays["au/au_r"][k].numpy(), "au/au_c": fd.arrays["au/au_c"][k].numpy(),
                             "au/valid": fd.arrays["au/valid"][k].numpy()} for k, i in enumerate(fd.ids)})


@pytest.mark.skipif(java_runtime() is None, reason="pycocoevalcap's tokenizer and METEOR need Java")
def test_train_report_and_evaluate_on_a_dataset_without_labels_through_the_cli(tmp_path):
    mafw, emv, runs = tmp_path / "mafw", tmp_path / "emvidcap", tmp_path / "runs"
    mafw.mkdir()
    emv.mkdir()
    write_cache(mafw, caption_task(60, 12), "mafw_caption", "1")
    write_cache(emv, caption_task(30, 10, seed=1), "emvidcap", "ecpa", labels=False)
    runner = CliRunner()
    small = [x for k, v in SMALL.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    res = runner.invoke(app, ["heads", "train", "ecpa", str(mafw), "--split", "mafw_caption:1", "--out",
                              str(runs / "ecpa"), *small])
    assert res.exit_code == 0, res.output
    rows = [json.loads(r) for r in (runs / "ecpa" / "1" / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(len(r["references"]) == 2 for r in rows)
    metrics = json.loads((runs / "ecpa" / "1" / "metrics.json").read_text())
    assert {"bleu4", "meteor", "rouge_l", "cider", "emotion_acc", "emotion_acc_refs"} <= set(metrics)
    res = runner.invoke(app, ["heads", "train", "ecpa", str(emv), "--split", "emvidcap:ecpa", "--out",
                              str(runs / "emv"), *small])
    assert res.exit_code != 0 and "--emotion-labels false" in res.output
    res = runner.invoke(app, ["heads", "train", "ecpa", str(emv), "--split", "emvidcap:ecpa", "--preset", "emvidcap",
                              "--out", str(runs / "emv"), *small])
    assert res.exit_code == 0, res.output
    emv_metrics = json.loads((runs / "emv" / "ecpa" / "metrics.json").read_text())
    assert "emotion_acc" not in emv_metrics and any("no emotion labels" in w for w in emv_metrics["warnings"])
    res = runner.invoke(app, ["heads", "eval", str(runs / "ecpa"), "--cache", str(emv), "--split", "emvidcap:ecpa"])
    assert res.exit_code == 0, res.output
    assert "BLEU-4" in res.output or "bleu4" in res.output
    res = runner.invoke(app, ["report", str(runs)])
    assert res.exit_code == 0 and "BLEU-4" in res.output and "ECPA" in res.output, res.output


def test_visual_inputs_cls_tokens_and_pooled_patch_grids():
    fd = caption_task(20, 4)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(20, 4, 1, 1, 17, 8, generator=g)  # [n, M, N, V, L = 1 + 4x4 patches, W]
    fd.arrays["clip/tokens"] = tokens.half()
    idx = np.arange(3)
    cls = build(fd)._visual(fd, idx, False, None)
    assert cls.shape == (3, 4, 16)
    every = build(fd, visual="tokens")._visual(fd, idx, False, None)
    torch.testing.assert_close(every, tokens[:3, :, 0, 0].half().float().reshape(3, 68, 8))
    pooled = build(fd, visual="pooled", pool_grid=2)._visual(fd, idx, False, None)  # [B, M * (1 + 4), W]
    x = tokens[:3, :, 0, 0].half().float()
    grid = x[:, :, 1:].reshape(3, 4, 4, 4, 8)  # [B, M, rows, cols, W]
    top_left = grid[:, :, :2, :2].mean(dim=(2, 3))
    bottom_right = grid[:, :, 2:, 2:].mean(dim=(2, 3))
    got = pooled.reshape(3, 4, 5, 8)
    torch.testing.assert_close(got[:, :, 0], x[:, :, 0])
    torch.testing.assert_close(got[:, :, 1], top_left)
    torch.testing.assert_close(got[:, :, 4], bottom_right)
    assert ECPAConfig(visual="pooled").large_arrays() == ("clip/tokens",) and ECPAConfig(visual="cls").large_arrays() == ()


def test_pyfeat_aus_and_a_validation_part_scored_by_its_mlm_loss():
    fd = caption_task(60, 10)
    probs = fd.arrays.pop("au/au_r").float() / 5  # the same AU signal as py-feat probabilities
    fd.arrays["pyfeat/aus"] = probs.half()
    fd.arrays["pyfeat/valid"] = fd.arrays.pop("au/valid")
    del fd.arrays["au/au_c"]
    fd.feature_sets["pyfeat-p"] = {"modality": "pyfeat", "key": "p" * 64}
    with pytest.raises(ValueError, match="au/au_r"):
        build(fd)  # OpenFace by default: the missing arrays are named
    head = build(fd, au_source="pyfeat", epochs=3, patience=2)
    assert head.config.modalities() == ("clip", "pyfeat")
    batch = head.inputs(fd, np.arange(5), False, None)
    conf = probs[:5].mean(dim=(1, 2))  # [B, 17] mean probability over the valid frames
    assert torch.equal(batch["au_index"][:, 0], conf.argmax(1))
    torch.testing.assert_close(batch["au_intensity"][:, 0], conf.max(1).values, rtol=1e-3, atol=1e-3)
    train = fd.role("train")
    records: list[dict] = []
    head.fit(train.select(np.arange(40)), train.select(np.arange(40, 50)), log=records.append)
    assert all(np.isfinite(r["val_loss"]) for r in records) and "epoch" in head.selected
