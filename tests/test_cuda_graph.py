"""The training step replayed as a CUDA graph (emo.heads.cuda_graph, TrainConfig.cuda_graph).

On CPU: the option is inert, loss parts stay on the device until the epoch ends, and a non-finite
loss still stops training with the epoch named. On CUDA (``-m gpu``): replayed steps equal eager
steps batch for batch (plain SGD); a captured PE-CLIP run (full batches replayed, the ragged one
eager, a cosine schedule acting through the tensor learning rate) ends with the eager run's
losses and parameters; every ablation switch captures; and the VFM (dropout) captures."""

from __future__ import annotations

import math

import pytest
import torch

from emo.cache.loader import load_features
from emo.heads.cuda_graph import GraphedStep
from emo.heads.registry import get_head
from tests.cachetools import emoasst_cache
from tests.test_emoasst import SMALL as SMALL_TEXT
from tests.test_pe_clip import SWITCHES, build, tiny_features
from tests.test_train import ToyConfig, ToyHead, make_features

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_capture_needs_at_least_one_warm_up_step():
    with pytest.raises(ValueError, match="warmup"):
        GraphedStep(lambda batch, labels: (None, {}), "cuda", warmup=0)


def test_on_cpu_the_option_is_inert_and_the_log_reads_losses_per_epoch():
    fd = tiny_features()
    records = []
    head = build(fd, device="cpu", cuda_graph=True, epochs=2, batch_size=5)
    head.fit(fd.role("train"), log=records.append)
    assert head.graph_step is None
    assert [r["epoch"] for r in records] == [1, 2] and all("cuda_graph" not in r for r in records)
    for r in records:  # plain floats in the log: the loss and both parts of the bidirectional loss
        assert all(isinstance(r[k], float) and math.isfinite(r[k]) for k in ("loss", "loss_fwd", "loss_bwd", "lr"))
    # the logged loss is the item-weighted mean of the per-batch losses: λ fwd + (1 - λ) bwd holds for it
    assert records[-1]["loss"] == pytest.approx(0.7 * records[-1]["loss_fwd"] + 0.3 * records[-1]["loss_bwd"], rel=1e-5)


class NaNHead(ToyHead):
    def loss(self, batch, labels):
        loss, parts = super().loss(batch, labels)
        return loss * float("nan"), parts


def test_a_non_finite_loss_stops_training_and_names_the_epoch():
    fd, _ = make_features()
    head = NaNHead(ToyConfig(device="cpu"), fd.classes)
    with pytest.raises(FloatingPointError, match="epoch 1: the training loss is nan"):
        head.fit(fd.role("train"))


# -- CUDA ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@needs_cuda
def test_replayed_steps_equal_eager_steps_batch_for_batch():
    """The mechanics, exactly: new inputs reach each replay, the ragged batch runs eagerly, and the
    parameters move as in the eager loop (plain SGD, so no optimiser rescales rounding differences)."""
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(9)]
    data.append((torch.randn(5, 6, generator=g), torch.randint(0, 3, (5,), generator=g)))  # ragged
    runs = {}
    for graphed in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def step(batch, labels, model=model, opt=opt):
            loss = torch.nn.functional.cross_entropy(model(batch["x"]), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach(), {}

        runner = GraphedStep(step, "cuda", warmup=2) if graphed else None
        losses = []
        for _ in range(2):  # two passes: the ragged batch sits between replays
            for x, y in data:
                batch, labels = {"x": x.cuda()}, y.cuda()
                out = runner(batch, labels, full=len(y) == 8) if graphed else step(batch, labels)
                losses.append(float(out[0]))
        runs[graphed] = (losses, [p.detach().cpu() for p in model.parameters()], runner)
    (le, pe, _), (lg, pg, runner) = runs[False], runs[True]
    assert runner.failed is None and runner.replays == 2 * 9 - 2
    assert lg == pytest.approx(le, rel=1e-5)
    for a, b in zip(pg, pe, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _trained(fd, seed=0, **cfg):
    torch.manual_seed(seed)
    head = build(fd, device="cuda", **cfg)
    records = []
    torch.manual_seed(seed)  # fit's shuffling generator is seeded from the global seed
    head.fit(fd.role("train"), log=records.append)
    return head, records


@pytest.mark.gpu
@needs_cuda
def test_a_captured_pe_clip_run_follows_the_eager_run():
    fd = tiny_features(n=40)  # 30 train items, batch 4: 7 full batches (3 warm-up, then replays) + 2 eagerly
    cfg = dict(epochs=3, batch_size=4, amp=False, schedule="cosine", lr=1e-3, grad_clip=1.0)
    graphed, log_g = _trained(fd, cuda_graph=True, **cfg)
    eager, log_e = _trained(fd, cuda_graph=False, **cfg)
    step = graphed.graph_step
    assert step is not None and step.failed is None, step and step.failed
    assert step.replays == 3 * 7 - 3 and log_g[-1]["cuda_graph"] == f"{step.replays} replays"
    assert eager.graph_step is None and "cuda_graph" not in log_e[-1]
    a, b = graphed.state_dict(), eager.state_dict()
    diff = {k: float((a[k] - b[k]).abs().max()) for k in a}
    print("max |graphed - eager| per parameter:", max(diff.values()), "losses", [r["loss"] for r in log_g],
          [r["loss"] for r in log_e])
    assert [r["lr"] for r in log_g] == pytest.approx([r["lr"] for r in log_e], rel=1e-6)  # the schedule acted
    assert [r["loss"] for r in log_g] == pytest.approx([r["loss"] for r in log_e], rel=1e-3)
    assert max(diff.values()) < 1e-5, sorted(diff.items(), key=lambda kv: -kv[1])[:3]  # 0.0 on an H200


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "paper")
def test_every_switch_captures_or_trains_eagerly_with_the_reason_logged(switches):
    head, records = _trained(tiny_features(), **{"epochs": 2, "batch_size": 4, **switches})
    assert all(math.isfinite(r["loss"]) for r in records)
    step = head.graph_step
    assert records[-1]["cuda_graph"] == (f"off: {step.failed}" if step.failed else f"{step.replays} replays")
    assert step.failed is None, step.failed


@pytest.mark.gpu
@needs_cuda
def test_the_vfm_with_dropout_captures_its_step(tmp_path):
    emoasst_cache(tmp_path / "cache")
    fd = load_features(tmp_path / "cache", split="meld:official", modalities=("clip",))
    spec = get_head("vfm")
    cfg = {**SMALL_TEXT, "device": "cuda", "epochs": 2, "batch_size": 4, "dropout": 0.1, "text": "prompts"}
    head = spec.build(spec.config(cfg), fd.classes)
    records = []
    head.fit(fd.role("train"), log=records.append)
    assert head.graph_step.failed is None, head.graph_step.failed
    epochs = [r for r in records if "epoch" in r]  # the first record is the text targets'
    assert head.graph_step.replays > 0 and len(epochs) == 2 and all(math.isfinite(r["loss"]) for r in epochs)
