"""The training entry point every gradient-trained head shares (README, Stage 2).

A head subclasses :class:`TorchHead`, builds its ``nn.Module`` in ``build_module`` and says how a batch
becomes a loss and scores; ``TorchHead.fit`` does the rest: Adam/AdamW, a per-step schedule (constant,
cosine, step, linear decay) with optional linear warm-up, epochs and batches, a per-epoch hook
(``epoch_start``, e.g. for loss weights that follow earlier epochs' losses), AMP on CUDA, gradient clipping, a
seeded generator for shuffling and frame/view sampling (CPU runs are bit-reproducible), one log
record per epoch. On CUDA, heads whose batches have static shapes replay the step as one CUDA graph
(``cuda_graph``, :mod:`emo.heads.cuda_graph`); the loop reads losses back once per epoch, not per step.

Protocol (README, Stage 2): by default a fixed schedule on the whole train part and the LAST epoch is kept
(the papers' protocol). With a validation part, each epoch is scored on it (``validate``: top-1 and
cross-entropy for classifiers, what the head reports for other kinds, logged as ``val_<name>``); with
``patience > 0`` training stops when ``val_metric`` (default: the task's, top-1 for classifiers) has
not improved for ``patience`` epochs and the best epoch's weights are restored (recorded in
``selected``). The test split never reaches ``fit``. Heads of a kind that needs no labels
(``emo.heads.tasks``) train on unlabelled items.

Frozen parts (a CLIP text tower, fixed prompt embeddings) are not learned and not saved: checkpoints
hold trainable parameters and persistent buffers only (minus any ``frozen_prefixes``), and
``prepare(data)`` rebuilds the rest from the features' provenance.
"""

from __future__ import annotations

import contextlib
import math
import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emo.cache.data import FeatureData

from .cuda_graph import GraphedStep
from .metrics import lower_is_better
from .registry import Head, LogFn
from .tasks import get_task

__all__ = ["TrainConfig", "TorchHead", "resolve_device", "lr_factor", "trainable_parameters", "check_train_config"]


@dataclass
class TrainConfig:
    """Optimisation fields shared by every torch head (a head's config inherits them)."""

    epochs: int = 50  # passes over the train part; the last one is kept unless --patience stops earlier
    batch_size: int = 16  # items per optimiser step
    lr: float = 2e-4  # peak learning rate (after any warm-up)
    optimizer: Literal["adam", "adamw"] = "adam"  # adamw: decoupled weight decay
    weight_decay: float = 0.0  # L2 penalty (adam) or decoupled decay (adamw)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's moment decays (torch's defaults)
    eps: float = 1e-8  # Adam's epsilon (torch's default)
    schedule: Literal["constant", "cosine", "step", "linear"] = "constant"  # linear: decay to 0 after warm-up
    warmup_epochs: float = 0.0  # linear warm-up from 0, in (fractional) epochs
    step_epochs: int = 30  # "step" schedule: lr × 0.1 every step_epochs
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    patience: int = 0  # early stopping on val_metric (needs a val part); 0 = fixed schedule, last epoch
    val_metric: str = ""  # what patience reads (a name of validate(): top1, loss, r1, ...); "" = the task's
    amp: bool = True  # mixed precision on CUDA (bf16 when supported, else fp16); ignored on CPU
    cuda_graph: bool = True  # on CUDA, replay the step as one CUDA graph when the head allows it (cuda_graph.py)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_batch_size: int = 64  # items per batch when scoring


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device; use --device cpu")
    return dev


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of ``lr`` at optimiser step ``step`` (0-based): linear warm-up, then the schedule."""
    epoch = step / steps_per_epoch  # fractional epochs done
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return 0.1 ** int(epoch // cfg.step_epochs)
    if cfg.schedule == "cosine":
        span = max(total - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, span) / span))
    if cfg.schedule == "linear":
        span = max(total - warm, 1)
        return max(0.0, (total - step) / span)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def check_train_config(cfg: TrainConfig) -> None:
    """Refuse optimisation settings that would train nothing or nonsense (``--epochs 0`` reported an
    untrained model), naming the option."""
    problems = [f"--{name} must be {rule}, got {value}" for name, value, ok, rule in (
        ("epochs", cfg.epochs, cfg.epochs >= 1, ">= 1"),
        ("batch-size", cfg.batch_size, cfg.batch_size >= 1, ">= 1"),
        ("eval-batch-size", cfg.eval_batch_size, cfg.eval_batch_size >= 1, ">= 1"),
        ("lr", cfg.lr, math.isfinite(cfg.lr) and cfg.lr > 0, "a positive number"),
        ("weight-decay", cfg.weight_decay, cfg.weight_decay >= 0, ">= 0"),
        ("warmup-epochs", cfg.warmup_epochs, cfg.warmup_epochs >= 0, ">= 0"),
        ("patience", cfg.patience, cfg.patience >= 0, ">= 0"),
    ) if not ok]
    if problems:
        raise ValueError("; ".join(problems))


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class TorchHead(Head):
    """A head whose learned part is an ``nn.Module`` trained by gradient descent.

    Subclasses implement ``build_module(data)``, ``inputs(data, idx, train, generator)`` (a batch of
    model inputs from a FeatureData), ``loss(batch, labels) -> (loss, {name: float})`` and
    ``scores(batch) -> [B, C]``. ``prepare(data)`` must be called before ``fit`` or
    ``load_state_dict`` (``runs`` and ``registry.load_checkpoint`` do).
    """

    frozen_prefixes: tuple[str, ...] = ()  # state-dict names not learned, not saved (rebuilt by prepare)
    static_batches = False  # every full batch has the same tensor shapes: the step can be a CUDA graph
    needs_data = True  # load_checkpoint must be given the features: prepare() sizes and rebuilds the module

    def __init__(self, config: Any, classes: list[str]):
        super().__init__(config, classes)
        self.module: nn.Module | None = None
        self.device = torch.device("cpu")
        self.graph_step: GraphedStep | None = None  # the last fit's captured step, when it used one

    # -- what a head provides -----------------------------------------------------------------------
    @abstractmethod
    def build_module(self, data: FeatureData) -> nn.Module:
        """The model, sized from ``data`` (feature width, frozen encoders named by its provenance)."""

    @abstractmethod
    def inputs(self, data: FeatureData, idx: np.ndarray, train: bool, generator: torch.Generator) -> dict:
        """Model inputs of items ``idx`` (on the CPU); train=True samples frames/views at random."""

    @abstractmethod
    def loss(self, batch: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar training loss of a batch, and named parts of it for the log (0-d tensors: reading them
        with ``float`` here would wait for the device at every step and prevent a CUDA-graph capture)."""

    @abstractmethod
    def scores(self, batch: dict) -> torch.Tensor:
        """``[B, C]`` class scores (argmax = prediction)."""

    def epoch_start(self, epoch: int, history: list[dict]) -> None:  # noqa: B027 - optional hook
        """Called before each epoch (from 1) with the log records of the epochs before it; a head may
        change what its ``loss`` does next (e.g. loss weights from the previous epochs' parts)."""

    def validate(self, val: FeatureData) -> dict[str, float]:
        """Scores of the validation part after an epoch, logged as ``val_<name>``: for classifiers
        ``top1`` and ``loss`` (cross-entropy of the scores); heads of other kinds override it."""
        sv = torch.from_numpy(self.predict_scores(val))
        yv = val.labels
        return {"top1": float((sv.argmax(1) == yv).float().mean()), "loss": float(F.cross_entropy(sv, yv))}

    # -- the shared machinery -----------------------------------------------------------------------
    def prepare(self, data: FeatureData) -> None:
        self.device = resolve_device(self.config.device)
        self.module = self.build_module(data).to(self.device)

    def _autocast(self):
        if self.device.type != "cuda" or not self.config.amp:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def _to_device(self, batch: dict) -> dict:
        return {k: self._tensor_to_device(v) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _tensor_to_device(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the head's device. A CUDA copy goes through pinned memory so that it does not wait for
        the GPU: the next batch is assembled on the CPU while the current step runs."""
        if self.device.type == "cuda" and x.device.type == "cpu":
            x = x.pin_memory()
        return x.to(self.device, non_blocking=True)

    def _graphed(self, scaler: torch.amp.GradScaler) -> bool:
        """Whether ``fit`` replays full batches as a CUDA graph (see :mod:`emo.heads.cuda_graph`)."""
        return (self.config.cuda_graph and self.static_batches and self.device.type == "cuda"
                and not scaler.is_enabled())

    def _optimizer(self, capturable: bool = False) -> torch.optim.Optimizer:
        params = [p for p in self.module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(self).__name__}: no trainable parameters")
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[self.config.optimizer]
        # On CUDA the fused update: one kernel for all parameters instead of a few per parameter group.
        fused = {"fused": True} if self.device.type == "cuda" else {}
        if capturable:  # a tensor lr: the schedule fills it in place, so replays of a captured step see it
            lr = torch.tensor(float(self.config.lr), device=self.device)
            return cls(params, lr=lr, weight_decay=self.config.weight_decay, betas=tuple(self.config.betas),
                       eps=self.config.eps, capturable=True, **fused)
        return cls(params, lr=self.config.lr, weight_decay=self.config.weight_decay, betas=tuple(self.config.betas),
                   eps=self.config.eps, **fused)

    def _step_fn(self, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler):
        """One optimiser step on a device batch: ``(batch, labels) -> (loss, parts)``, all detached tensors,
        with no host synchronisation (the loop reads the sums once per epoch)."""
        cfg = self.config

        def step(batch: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            with self._autocast():
                loss, parts = self.loss(batch, labels)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            return loss.detach().float(), {k: torch.as_tensor(v).detach().float() for k, v in parts.items()}

        return step

    def fit(self, train: FeatureData, val: FeatureData | None = None, log: LogFn | None = None) -> None:
        log = log or (lambda record: None)
        cfg = self.config
        check_train_config(cfg)
        if len(train) == 0:
            raise ValueError("no train items to fit on")
        if self.module is None:
            self.prepare(train)
        labels = train.labels
        task = get_task(self.task)
        if task.needs_labels and (labels < 0).any():
            raise ValueError(f"{int((labels < 0).sum())} train items have no single label")
        if cfg.patience and (val is None or len(val) == 0):
            raise ValueError("patience (early stopping) needs a validation part: pass --val-fraction")
        watch = cfg.val_metric or task.val_metric  # what patience reads
        lower = lower_is_better(watch)
        gen = torch.Generator().manual_seed(int(torch.initial_seed()) % (2**63))
        n = len(train)
        steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
        scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda" and cfg.amp
                                      and not torch.cuda.is_bf16_supported())
        graphed = self._graphed(scaler)
        opt = self._optimizer(capturable=graphed)

        def set_lr(done: int) -> None:  # after `done` steps; fills a tensor lr in place, with no host sync
            lr = cfg.lr * lr_factor(cfg, done, steps_per_epoch)
            for group in opt.param_groups:
                if torch.is_tensor(group["lr"]):
                    group["lr"].fill_(lr)
                else:
                    group["lr"] = lr

        set_lr(0)
        done = 0
        step = self._step_fn(opt, scaler)
        if graphed:
            step = GraphedStep(step, self.device)
        self.graph_step = step if graphed else None
        best = None  # (val metric, epoch, state)
        since_best = 0
        history: list[dict] = []
        for epoch in range(1, cfg.epochs + 1):
            self.epoch_start(epoch, history)
            t0 = time.perf_counter()
            self.module.train()
            order = torch.randperm(n, generator=gen).numpy()
            sums: dict[str, torch.Tensor] = {}
            for start in range(0, n, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                batch = self._to_device(self.inputs(train, idx, True, gen))
                y = self._tensor_to_device(labels[torch.from_numpy(idx)])
                loss, parts = step(batch, y, len(idx) == cfg.batch_size) if graphed else step(batch, y)
                done += 1
                set_lr(done)
                for k, v in {"loss": loss, **parts}.items():
                    sums[k] = sums.get(k, 0.0) + v * len(idx)
            means = {k: float(v) / n for k, v in sums.items()}  # the epoch's one wait for the device
            if not math.isfinite(means["loss"]):
                raise FloatingPointError(f"epoch {epoch}: the training loss is {means['loss']} (non-finite features? "
                                         "`emo cache verify --deep` checks the cache; else lower --lr)")
            record = {"epoch": epoch, "lr": float(opt.param_groups[0]["lr"]),
                      "seconds": round(time.perf_counter() - t0, 3), **means}
            if graphed:
                record["cuda_graph"] = f"off: {step.failed}" if step.failed else f"{step.replays} replays"
            if val is not None and len(val):
                record.update({f"val_{k}": v for k, v in self.validate(val).items()})
                if cfg.patience:
                    if f"val_{watch}" not in record:
                        have = ", ".join(k[4:] for k in record if k.startswith("val_"))
                        raise ValueError(f"val_metric {watch!r}: {type(self).__name__} reports {have}")
                    value = record[f"val_{watch}"]
                    if best is None or (value < best[0] if lower else value > best[0]):
                        best = (value, epoch, {k: v.clone() for k, v in self.state_dict().items()})
                        since_best = 0
                    else:
                        since_best += 1
            log(record)
            history.append(record)
            if cfg.patience and since_best >= cfg.patience:
                break
        if best is not None:
            self.load_state_dict(best[2])
            self.selected = {"epoch": best[1], f"val_{watch}": best[0]}

    def scores_and_features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``([B, C] scores, [B, D] final features or None)`` of one batch; heads with ``embed`` override
        it so that a run's test scores and stored features come from one pass."""
        return self.scores(batch), None

    def predict_scores(self, data: FeatureData) -> np.ndarray:
        return self._predict(data, features=False)[0]

    def predict(self, data: FeatureData) -> tuple[np.ndarray, np.ndarray | None]:
        scores, features = self._predict(data, features=True)
        embed = getattr(self, "embed", None)
        if features is None and callable(embed):  # a head with embed() but no one-pass override
            features = np.asarray(embed(data))
        return scores, features

    @torch.no_grad()
    def _predict(self, data: FeatureData, features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if self.module is None:
            raise RuntimeError(f"{type(self).__name__}: prepare() and fit() or load_state_dict() first")
        self.module.eval()
        scores, feats = [], []
        gen = torch.Generator().manual_seed(0)  # eval sampling is deterministic; the generator is unused
        for start in range(0, len(data), self.config.eval_batch_size):
            idx = np.arange(start, min(start + self.config.eval_batch_size, len(data)))
            batch = self._to_device(self.inputs(data, idx, False, gen))
            with self._autocast():
                s, f = self.scores_and_features(batch) if features else (self.scores(batch), None)
            scores.append(s.float().cpu())
            if f is not None:
                feats.append(f.float().cpu())
        if not scores:
            return np.zeros((0, len(self.classes)), dtype=np.float32), None
        return torch.cat(scores).numpy(), (torch.cat(feats).numpy() if feats else None)

    # -- state: learned values only ------------------------------------------------------------------
    def _learned_names(self) -> set[str]:
        """State-dict names of trainable parameters and persistent buffers, minus ``frozen_prefixes``."""
        frozen = {n for n, p in self.module.named_parameters(remove_duplicate=False) if not p.requires_grad}
        return {k for k in self.module.state_dict() if k not in frozen
                and not any(k == p or k.startswith(p + ".") for p in self.frozen_prefixes)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.module is None:
            raise RuntimeError(f"{type(self).__name__}: nothing to save before prepare()")
        learned = self._learned_names()
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items() if k in learned}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.module is None:
            raise RuntimeError(f"{type(self).__name__}: prepare(data) before load_state_dict()")
        own = self._learned_names()
        if set(state) != own:
            missing, extra = sorted(own - set(state)), sorted(set(state) - own)
            raise ValueError(f"{type(self).__name__} state does not fit: missing {missing[:5]}, unexpected {extra[:5]}")
        result = self.module.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"unexpected keys {result.unexpected_keys[:5]}")
