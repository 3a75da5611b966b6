"""PE-CLIP (docs/papers.md#pe-clip): frozen CLIP frame embeddings -> temporal encoder (MH-Mamba) -> a
prototype-evolution decoder made of the top layers of the frozen CLIP text tower with trainable
cross-attention -> cosine against category-aggregated (CA) prompt embeddings, trained with
bidirectional supervision.

Forward, for a video with frames ``z [M, D]`` and classes ``e_1..e_C``::

    mem  = temporal(z)                                  # [M, D]
    v_0  = decoder(prototype, mem)                      # prototype: neutral prompt p_0 or S tokens
    w_i  = CLIP_text(p_i)                               # p_i = "without e_1; ...; with e_i; ...", frozen
    s_i  = cos(v_0, w_i) / τ                            # forward logits (the prediction)
    L_fwd = CE(s, y)
    v_j  = decoder(p_j, mem)   for every class j        # each class prompt as the prototype
    L_bwd = CE([cos(v_j, w_y) / τ]_j, y)                # the true class's prototype should fit best
    L    = λ L_fwd + (1 - λ) L_bwd                      # λ = 0.7, τ = 0.01

Every ablation switch of the paper's tables is a config field (``temporal``, ``decoder``, ``d``,
``prototype``/``prototype_tokens``, ``bidirectional``, ``classifier``, ``segments``, prompt wording).
The frozen text tower is the one that made the features: rebuilt in ``prepare`` from the clip feature
set's provenance (its random seed, pretrained tag, or checkpoint file with the same sha256), so
checkpoints hold only the learned parameters.

The paper's protocol (PE-CLIP §4.2, docs/papers.md#pe-clip) needs features it can be run on: CLIP ViT-B/32 OpenAI frame
embeddings (:data:`PAPER_FEATURES`, named in every report), 64 segments with a random frame per segment
in training, and one random resized crop per video (scale [0.64, 1], ratio [3/4, 4/3]) drawn afresh in
training — emo draws one of the cache's stored views per video and epoch (``emo.cache.data.sample_frames``),
so the crops are the views the extraction stored. A run says, in its report, where its features cannot
give that protocol (:func:`paper_protocol_notes`).

**Trainable parameters** (issue 16, item 3). Table 9 gives 31.3 "MB"; its MM-VEMA row, full fine-tuning
of CLIP ViT-B/32 (151,277,313 parameters), reads 577.1 = 151,277,313 × 4 B / 2^20: the unit is MiB of
fp32, so 31.3 means 8.19–8.22 M parameters. With D = 512 and the paper's stated sizes the default has::

    MH-Mamba block (inner 384, 8 heads, dt rank 16, state 4, conv 4)   610,432  × 3 = 1,831,296
      in_proj 512→2·384 393,216 · conv 1,920 · per-head x_proj 9,216 and dt_proj 6,528 ·
      A_log 1,536 · D 384 · W_O 384→512 196,608 · LayerNorm 1,024
    cross-attention of a modified text layer (d = 8: layers 8..11)    1,052,672 × 4 = 4,210,688
      q, k, v, out 4 · 512² + 4 · 512 biases · LayerNorms on queries and memory 2,048
    total                                                             6,041,984 = 23.05 MiB

    reading                                             parameters    MiB (fp32)
    the text: inner 384 in total, d = 8 (default)       6,041,984     23.05
    inner 768 (preset ``wide-mamba``)                   7,870,208     30.02
    inner 768 and a trainable text projection + ln      8,133,376     31.03
    d = 6 (six modified layers; the paper says d = 8)   8,147,328     31.08
    inner 840 (fits, but no reading gives it)           8,213,000     31.33

No reading of the paper's text reaches 31.3 MiB; the nearest one-field change is ``mamba_inner = 768``
(30.0 MiB; in decimal MB it is 31.5, not 31.3 either). The default follows the text (inner 384),
the best-supported reading; the preset ``wide-mamba`` is the other one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emo.cache.data import FeatureData, segment_array, segment_batch, subsample_segments

from .layers.clip_text import clip_text_of
from .layers.prompts import ca_prompts, check_fits, coop_prompts, emotional_prompts, neutral_prompt
from .layers.similarity import cosine_logits as scaled_cosine
from .layers.similarity import fp32, wide
from .layers.temporal import build_temporal
from .layers.text_decoder import LearnablePrototype, PrototypeDecoder, RandomDecoder
from .layers.text_tower import CoOpClassifier, FrozenTextTower, TrainableTextEncoder, prompt_states
from .registry import LogFn, register_head
from .train import TorchHead, TrainConfig

__all__ = [
    "PEClipConfig",
    "PEClipModel",
    "PEClipHead",
    "cosine_logits",
    "forward_loss",
    "backward_loss",
    "bidirectional_loss",
    "subsample_segments",
    "paper_protocol_notes",
    "PAPER_FEATURES",
]

PAPER_FEATURES = ("CLIP ViT-B/32 (OpenAI weights) frame embeddings, 64 segments (a random frame per segment in "
                  "training), one random resized crop per video and epoch (scale [0.64, 1], ratio [3/4, 4/3])")


@dataclass
class PEClipConfig(TrainConfig):
    """The paper's defaults (Adam, lr 2e-4, 50 epochs, batch 16; d = 8; CA prompts; λ = 0.7, τ = 0.01)."""

    feature: str = "clip/cls"  # frame embeddings the temporal encoder reads
    segments: int = 0  # 0: every segment of the cache; else subsample the cache's M evenly to this many
    temporal: Literal["identity", "lstm", "gru", "transformer", "mamba"] = "mamba"  # Table 5's temporal modules
    temporal_layers: int = 3  # blocks of the temporal module
    heads: int = 8  # MH-Mamba / Transformer heads
    mamba_inner: int = 384  # d_inner, all heads together (48 per head)
    mamba_dt_rank: int = 16  # rank of the Δ projection
    mamba_state: int = 4  # SSM state size N
    mamba_conv: int = 4  # causal convolution width
    scan_backend: Literal["auto", "ref", "chunked", "cuda"] = "auto"  # selective scan: mamba_ssm kernel on CUDA, else PyTorch
    decoder: Literal["pretrained", "random"] = "pretrained"  # the top text layers with cross-attention, or the random 4-layer baseline
    d: int = 8  # first modified text layer (pretrained decoder): layers d..L-1 get cross-attention
    random_layers: int = 4  # depth of the random decoder
    prototype: Literal["ca", "learnable"] = "ca"  # evolve the neutral CA prompt, or S learnable tokens
    prototype_tokens: int = 26  # S, with prototype = learnable
    bidirectional: bool = True  # add the backward loss (each class prompt evolved, the true one should fit)
    classifier: Literal["ca", "linear", "emotional", "coop"] = "ca"  # class weights: CA prompts or Table 4's others
    coop_ctx: int = 16  # CoOp classifier: learnable context tokens
    prompt_prefix: Literal["with/without", "only/no"] = "with/without"  # CA prompt wording
    prompt_separator: Literal["; ", ", "] = "; "  # between the classes of a CA prompt
    prompt_reverse: bool = False  # classes in reverse order inside the prompts (the paper: -0.5 points)
    lam: float = 0.7  # weight of the forward loss
    tau: float = 0.01  # temperature of the cosine logits
    text_checkpoint: str | None = None  # weights file, when the features came from --checkpoint elsewhere

    def __post_init__(self):
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {self.lam}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.segments < 0 or self.prototype_tokens < 1 or self.coop_ctx < 1:
            raise ValueError("segments must be >= 0, prototype_tokens and coop_ctx >= 1")


# -- losses ------------------------------------------------------------------------------------------
# The similarities and losses are computed in float32 with autocast off (layers.similarity): at τ = 0.01 a
# bf16 cosine would put the logits on steps of 0.5, coarser than the CA prompts' differences.
def cosine_logits(v: torch.Tensor, w: torch.Tensor, tau: float) -> torch.Tensor:
    """``cos(v, w_i) / τ``: ``v [..., D]``, ``w [C, D]`` -> ``[..., C]`` (float32 at least, autocast off)."""
    with fp32(v.device):
        return scaled_cosine(v, w) / tau


def forward_loss(v0: torch.Tensor, w: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """``L_fwd``: cross-entropy of ``cos(v_0, w_i)/τ`` over classes ``i``; ``v0 [B, D]``, ``y [B]``."""
    with fp32(v0.device):
        return F.cross_entropy(cosine_logits(v0, w, tau), y)


def backward_loss(vj: torch.Tensor, w: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """``L_bwd``: for video ``b``, logits over prototypes ``j`` are ``cos(v_bj, w_{y_b})/τ``; CE towards
    ``j = y_b``. ``vj [B, C, D]`` (class ``j``'s prompt as the prototype), ``w [C, D]``, ``y [B]``."""
    with fp32(vj.device):
        vj, w = wide(vj, w)
        target = F.normalize(w[y], dim=-1)  # [B, D]  w_+ of each video
        logits = torch.einsum("bjd,bd->bj", F.normalize(vj, dim=-1), target) / tau  # [B, C]
        return F.cross_entropy(logits, y)


def bidirectional_loss(
    v0: torch.Tensor, vj: torch.Tensor | None, w: torch.Tensor, y: torch.Tensor, lam: float, tau: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``λ L_fwd + (1 - λ) L_bwd`` (just ``L_fwd`` when ``vj`` is None: bidirectional off)."""
    fwd = forward_loss(v0, w, y, tau)  # float32, as is bwd
    if vj is None:
        return fwd, {"loss_fwd": fwd.detach()}
    bwd = backward_loss(vj, w, y, tau)
    return lam * fwd + (1 - lam) * bwd, {"loss_fwd": fwd.detach(), "loss_bwd": bwd.detach()}


def paper_protocol_notes(data: FeatureData, cfg: PEClipConfig) -> list[str]:
    """Sentences for a run's report, one per way ``data``'s features cannot give the paper's protocol
    (encoder, segments, frames per segment, crops; the module doc); none when they can."""
    group = cfg.feature.split("/")[0]
    meta = next((m for m in data.feature_sets.values() if m.get("modality") == group), {})
    weights = meta.get("weights") or {}
    notes = []
    if meta.get("model") != "ViT-B-32" or weights.get("kind") != "pretrained" or weights.get("tag") != "openai":
        how = weights.get("tag") or weights.get("kind") or "unknown weights"
        notes.append(f"features from {meta.get('model', 'an unknown model')} ({how}), not the paper's CLIP ViT-B/32 "
                     "OpenAI: the paper's rows (Tables 1-2) do not apply")
    _, m, n_frames, n_views = segment_array(data, cfg.feature).shape[:4]
    used = cfg.segments or m
    if used != 64:
        notes.append(f"{used} segments per video; the paper's headline rows use 64 (Table 6; Table 7 uses 16)")
    if n_frames == 1:
        notes.append("one stored frame per segment: training cannot draw a random frame per segment as the paper does")
    if n_views == 1:
        notes.append("one stored view (the centre crop): training sees no random resized crop, the paper's only "
                     "augmentation; extract with --views V (V - 1 random crops, e.g. the PE-CLIP dataset presets)")
    elif n_views - 1 < cfg.epochs:
        notes.append(f"training draws among {n_views - 1} stored random crops and the centre view, each about "
                     f"{cfg.epochs / n_views:.0f} times in {cfg.epochs} epochs; the paper draws a fresh crop every epoch")
    return notes


# -- the model ---------------------------------------------------------------------------------------
class PEClipModel(nn.Module):
    """Temporal encoder + decoder + classifier weights. ``forward(z [B, M, D]) -> v_0 [B, D]``."""

    def __init__(self, cfg: PEClipConfig, classes: list[str], tower: FrozenTextTower, tokenize, feat_dim: int):
        super().__init__()
        self.cfg, self.n_classes = cfg, len(classes)
        ctx = tower.context_length
        words = {"prefix": cfg.prompt_prefix, "separator": cfg.prompt_separator, "reverse": cfg.prompt_reverse}
        ca_ids = check_fits(tokenize, ca_prompts(classes, **words), ctx)  # [C, L]
        neutral_ids = check_fits(tokenize, [neutral_prompt(classes, **words)], ctx)  # [1, L]
        mamba = {"d_inner": cfg.mamba_inner, "dt_rank": cfg.mamba_dt_rank, "d_state": cfg.mamba_state,
                 "d_conv": cfg.mamba_conv, "scan_backend": cfg.scan_backend} if cfg.temporal == "mamba" else {}
        self.temporal = build_temporal(cfg.temporal, d_model=feat_dim, layers=cfg.temporal_layers, heads=cfg.heads,
                                       **mamba)
        self.tower = tower  # frozen; shared by the decoder and the classifier
        if cfg.decoder == "pretrained":
            self.decoder = PrototypeDecoder(tower, d=cfg.d, memory_dim=feat_dim)
            states = self.decoder.precompute  # prompts -> states after layers 0..d-1 (video-independent)
        else:
            self.decoder = RandomDecoder(cfg.random_layers, tower.width, tower.heads, feat_dim, tower.embed_dim)
            states = functools.partial(prompt_states, tower, layers=0)  # token + positional embeddings
        if cfg.prototype == "learnable":
            self.prototype = LearnablePrototype(cfg.prototype_tokens, tower.width)
        else:
            self.prototype = states(neutral_ids)  # PrefixStates [1, L, W], not saved
        self.class_prototypes = states(ca_ids) if cfg.bidirectional else None  # [C, L, W] for L_bwd
        # Training with the CA prototype and L_bwd evolves p_0 and every p_j: one decoder pass over 1 + C
        # prompts (positions after a prompt's [EOS] never reach it, so sharing one padded length is exact).
        self.joint_prototypes = (states(torch.cat([neutral_ids, ca_ids])) if cfg.bidirectional
                                 and cfg.prototype == "ca" else None)  # [1 + C, L, W]
        if cfg.classifier == "ca":
            with torch.no_grad():
                self.register_buffer("ca_weights", tower.encode(ca_ids), persistent=False)  # [C, D]
        elif cfg.classifier == "linear":
            self.linear = nn.Linear(tower.embed_dim, self.n_classes)
        elif cfg.classifier == "emotional":
            self.text_encoder = TrainableTextEncoder(tower)
            self.register_buffer("emotional_ids", check_fits(tokenize, emotional_prompts(classes), ctx), persistent=False)
        else:
            ids = check_fits(tokenize, coop_prompts(classes, cfg.coop_ctx), ctx)
            self.coop = CoOpClassifier(tower, ids, n_ctx=cfg.coop_ctx)

    def class_weights(self) -> torch.Tensor:
        """``[C, D]`` classifier weights ``w_i`` (frozen CA embeddings, or the trainable variants)."""
        kind = self.cfg.classifier
        if kind == "ca":
            return self.ca_weights
        if kind == "linear":
            return self.linear.weight
        if kind == "emotional":
            return self.text_encoder(self.emotional_ids)
        return self.coop()

    def memory(self, z: torch.Tensor) -> torch.Tensor:
        return self.temporal(z)  # [B, M, D]

    def evolve(self, memory: torch.Tensor) -> torch.Tensor:
        """``v_0 [B, D]``: the prototype evolved against each video."""
        return self.decoder(self.prototype, memory)[:, 0]

    def evolve_classes(self, memory: torch.Tensor) -> torch.Tensor:
        """``v_j [B, C, D]``: every class prompt evolved against each video (for ``L_bwd``)."""
        return self.decoder(self.class_prototypes, memory)

    def evolve_both(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v_0 [B, D], v_j [B, C, D])`` for the bidirectional loss, in one decoder pass when possible."""
        if self.joint_prototypes is not None:
            v = self.decoder(self.joint_prototypes, memory)  # [B, 1 + C, D]
            return v[:, 0], v[:, 1:]
        return self.evolve(memory), self.evolve_classes(memory)

    def logits(self, v0: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.cfg.classifier == "linear":  # the conventional classifier: W v + b on the unit feature
            return self.linear(F.normalize(v0, dim=-1))
        return cosine_logits(v0, w, self.cfg.tau)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.evolve(self.memory(z))


class PEClipHead(TorchHead):
    """PE-CLIP trained by the shared :class:`~emo.heads.train.TorchHead` loop."""

    static_batches = True  # [B, segments, D] frames: the step can be replayed as a CUDA graph

    def build_module(self, data: FeatureData) -> nn.Module:
        cfg = self.config
        x = segment_array(data, cfg.feature, cfg.segments)  # [n, M, N, V, D]
        tower, tokenize = clip_text_of(data, cfg.feature, cfg.text_checkpoint)
        if cfg.decoder == "pretrained" and not 0 <= cfg.d < tower.n_layers:
            raise ValueError(
                f"d must be in 0..{tower.n_layers - 1} for this {tower.n_layers}-layer text tower, got {cfg.d} "
                f"(d = {tower.n_layers} modifies no layer: the video would never reach the prediction)"
            )
        return PEClipModel(cfg, self.classes, tower, tokenize, feat_dim=x.shape[-1])

    def fit(self, train: FeatureData, val: FeatureData | None = None, log: LogFn | None = None) -> None:
        self.warnings += [w for w in paper_protocol_notes(train, self.config) if w not in self.warnings]
        super().fit(train, val, log)

    def inputs(self, data: FeatureData, idx: np.ndarray, train: bool, generator: torch.Generator) -> dict:
        return {"z": segment_batch(data, self.config.feature, idx, train, generator, self.config.segments)}  # [B, M, D]

    def loss(self, batch: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m: PEClipModel = self.module
        mem = m.memory(batch["z"])  # [B, M, D]
        w = m.class_weights()  # [C, D]
        v0, vj = m.evolve_both(mem) if m.cfg.bidirectional else (m.evolve(mem), None)  # [B, D], [B, C, D]
        if m.cfg.classifier == "linear":
            fwd = F.cross_entropy(m.logits(v0, w).float(), labels)
            if vj is None:
                return fwd, {"loss_fwd": fwd.detach()}
            bwd = backward_loss(vj, w, labels, m.cfg.tau)
            loss = m.cfg.lam * fwd + (1 - m.cfg.lam) * bwd
            return loss, {"loss_fwd": fwd.detach(), "loss_bwd": bwd.detach()}
        return bidirectional_loss(v0, vj, w, labels, m.cfg.lam, m.cfg.tau)

    def scores(self, batch: dict) -> torch.Tensor:
        m: PEClipModel = self.module
        return m.logits(m(batch["z"]), m.class_weights())  # [B, C]

    def scores_and_features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        m: PEClipModel = self.module
        v0 = m(batch["z"])  # [B, D]
        return m.logits(v0, m.class_weights()), F.normalize(v0.float(), dim=-1)  # what embed() gives

    @torch.no_grad()
    def embed(self, data: FeatureData) -> np.ndarray:
        """``[n, D]`` the evolved prototypes ``v_0`` (unit length): the final features, for t-SNE."""
        self.module.eval()
        out = []
        for start in range(0, len(data), self.config.eval_batch_size):
            idx = np.arange(start, min(start + self.config.eval_batch_size, len(data)))
            z = self._to_device(self.inputs(data, idx, False, torch.Generator()))["z"]
            with self._autocast():
                out.append(F.normalize(self.module(z).float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.module.tower.embed_dim), np.float32)


register_head(
    "pe-clip",
    PEClipConfig,
    PEClipHead,
    "PE-CLIP: MH-Mamba + prototype-evolution decoder on the CLIP text tower, CA prompts, bidirectional loss",
    paper_features=PAPER_FEATURES,
)
