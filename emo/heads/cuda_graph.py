"""A head's training step replayed as one CUDA graph (``TrainConfig.cuda_graph``).

From the cache a head's step is small: at batch 16 PE-CLIP's forward, backward and Adam update are
thousands of kernels of a few microseconds each, so on a GPU the step is bound by issuing them from
Python, not by arithmetic (BENCHMARKS.md). Capturing the whole step once (forward, backward, gradient
clipping, the optimiser update) and replaying it for every later batch of the same shape removes that
overhead. A replay runs the captured kernels in the captured order, so it computes what the eager step
computes; ``tests/test_cuda_graph.py`` checks this on CUDA.

What the capture relies on (PyTorch's "whole-network capture"):

- static shapes: only full batches replay; an epoch's ragged last batch runs eagerly;
- static memory: each batch is copied into the input buffers the graph reads, and the loss and its
  parts come back in the graph's output tensors (read them before the next step);
- warm-up: the first ``warmup`` full batches run eagerly on a side stream (real steps on real batches,
  so no batch is skipped or seen twice), which also creates the optimiser's state before capture;
  the capture runs on that same stream, so autograd's gradient accumulators match it;
- an optimiser built with ``capturable=True`` and a tensor learning rate, so the schedule, which fills
  that tensor, still acts on replays (``TorchHead._optimizer``);
- nothing in the step waits for the host: no ``.item()``, loss parts are tensors;
- no fp16 GradScaler (its inf check syncs with the host); bf16 autocast needs none;
- the head's GPU as the current device while stepping: on ``cuda:1`` the side stream and the capture
  must belong to that GPU, not to GPU 0 (not exercised here: the lent machines have one GPU).

If capture fails (an operation of some head or ablation that cannot be captured), the reason is kept
in ``failed``, the training log says so, and that batch and every later one run eagerly: a run never
stops or changes its results because the faster path is unavailable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["GraphedStep"]

StepFn = Callable[[dict, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class GraphedStep:
    """Runs ``step(batch, labels) -> (loss, parts)`` eagerly ``warmup`` times, then as a captured graph.

    ``step`` must do the whole optimiser step (zero grads, backward, update) on the current stream.
    Call with ``full=False`` for a batch of another shape: it runs eagerly.
    """

    def __init__(self, step: StepFn, device: torch.device | str = "cuda", warmup: int = 3):
        if warmup < 1:
            raise ValueError("warmup must be >= 1: the optimiser state must exist before capture")
        self.device = torch.device(device)  # streams and the capture belong to the head's GPU, not GPU 0
        self.step = step
        self.warmup = warmup
        self.warmed = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[dict, torch.Tensor] | None = None
        self.outputs: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None
        self.replays = 0
        self.failed: str | None = None
        self.stream: torch.cuda.Stream | None = None  # warm-up and capture share one side stream

    def __call__(self, batch: dict, labels: torch.Tensor, full: bool = True):
        with torch.cuda.device(self.device):
            return self._call(batch, labels, full)

    def _call(self, batch: dict, labels: torch.Tensor, full: bool):
        if not full or self.failed is not None:
            return self.step(batch, labels)
        if self.graph is None and self.warmed < self.warmup:
            self.warmed += 1
            self.stream = self.stream or torch.cuda.Stream()
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                out = self.step(batch, labels)
            torch.cuda.current_stream().wait_stream(self.stream)
            return out
        if self.graph is None:
            return self._capture(batch, labels)
        static, static_labels = self.inputs
        for k, v in batch.items():
            static[k].copy_(v, non_blocking=True)
        static_labels.copy_(labels, non_blocking=True)
        self.graph.replay()
        self.replays += 1
        return self.outputs

    def _capture(self, batch: dict, labels: torch.Tensor):
        bad = [k for k, v in batch.items() if not torch.is_tensor(v)]
        if bad:
            self.failed = f"batch entries {bad} are not tensors"
            return self.step(batch, labels)
        self.inputs = ({k: v.clone() for k, v in batch.items()}, labels.clone())
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                self.outputs = self.step(dict(self.inputs[0]), self.inputs[1])  # a copy: steps may pop entries
        except Exception as err:  # noqa: BLE001 - any capture failure means: train eagerly
            self.failed = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            self.inputs = self.outputs = None
            torch.cuda.synchronize()
            return self.step(batch, labels)  # nothing ran during the failed capture: this batch, eagerly
        self.graph = graph
        graph.replay()  # capture records without running: this batch's step
        self.replays += 1
        return self.outputs
