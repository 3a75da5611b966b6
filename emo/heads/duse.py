"""DuSE (docs/papers.md#duse): dynamic facial-expression recognition with prompts inside the frozen CLIP
towers (HTPC) and a text-guided temporal aggregator (LSEA). Metrics UAR and WAR.

For a clip of ``T`` frames and classes ``c = 1..C`` with texts ``"<name>: <facial changes>"``::

    P^T       = text prompts [M, n, W_t]                        # layers.htpc.HTPC
    P^V       = MLP(P^T), + sinusoidal pe[τ] on the first layer  # [M, T, n, W_v]
    F_T       = TextTower(texts; P^T after [SOS] at layers 1..M) # [C, D]   eqs. 2-3, 8
    F_V[τ]    = ImageTower(frame τ; P^V at M blocks)           # [T, D]   eqs. 4-5, 7 (from stored tokens)
    logits    = LSEA(F_V, F_T) = 100 · cos(V_g, F_T)            # layers.lsea, eqs. 9-13
    L         = CE(logits, y)                                   # eq. 1

The towers are frozen and are the very CLIP that made the cache (rebuilt from the clip set's provenance);
the image tower re-runs its blocks from the tokens the cache stores (``emo extract clip --tokens-layer
k``). ``prompt_variant`` says where the visual prompts act: ``first`` (the paper's, blocks ``1..M``, needs
``--tokens-layer 0``) or ``last`` (blocks ``K-M+1..K``, needs ``--tokens-layer K-M`` or less: far cheaper,
and not the paper's); the variant is in the run's config and its report label.

Switches (Table III): ``prompts = "coop"`` replaces HTPC by CoOp (``n`` learnable context tokens at the
text input, kept through every layer; no visual prompts, so the image features are the stored
``clip/cls`` and no tokens are read), ``aggregator = "average"`` replaces LSEA by average pooling
(``100 · cos(mean_t F_V, F_T)``, no parameters). Table IV: ``prompt_depth`` M (Shallow 1, Normal 4,
Deep 8; presets ``table4-*``) and ``prompt_tokens`` n. Table V: ``heads`` N and ``beta``.

Protocol (Sec. IV-A): 16 frames, Adam, lr 1e-3, batch 16 (AMP on a GPU); the paper gives no epoch
count (emo: 30, recorded). Its augmentation (random resized crop, horizontal flip, random rotation,
colour jitter on the pixels) cannot be replayed from a feature cache: a run says so in its warnings,
naming the crops (views) the cache does hold. Logits and the loss are computed in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emo.cache.data import FeatureData, segment_array, segment_batch

from .layers.clip_text import clip_image_tower_of, clip_text_of
from .layers.htpc import HTPC, PromptedTextTower, prompted_image_features, visual_blocks
from .layers.image_tower import FrozenImageTower
from .layers.lsea import LSEA
from .layers.prompts import check_fits, described_classes
from .layers.similarity import cosine_logits
from .registry import register_head
from .train import TorchHead, TrainConfig

__all__ = ["DuSEConfig", "DuSEModel", "DuSEHead", "PAPER_FEATURES", "STRATEGIES", "fp32_cosine_logits"]

PAPER_FEATURES = ("CLIP ViT-L/14 openai (headline; ViT-B/32 and B/16 in Table IV), 16 frames, prompts from the "
                  "image tower's first block (emo: --tokens-layer 0)")
STRATEGIES = {1: "Shallow", 4: "Normal", 8: "Deep"}  # Table IV, over the text tower's 12 layers
PAPER_AUGMENTATION = "random resized crop, horizontal flip, random rotation and colour jitter"


@dataclass
class DuSEConfig(TrainConfig):
    """DuSE with the paper's defaults (n = 4, N = 4, β = 0.7; Adam, lr 1e-3, batch 16; 16 frames)."""

    feature: str = "clip/tokens"  # the stored tokens HTPC re-runs the image tower from
    cls_feature: str = "clip/cls"  # the frame embeddings CoOp reads (no visual prompts)
    frames: int = 16  # frames per clip: the cache's segments subsampled evenly (0 = every segment)
    prompts: Literal["htpc", "coop"] = "htpc"  # coop: Table III's row without HTPC
    prompt_variant: Literal["first", "last"] = "first"  # image blocks the visual prompts act on
    prompt_depth: int = 4  # M, prompted layers: Shallow 1, Normal 4, Deep 8
    prompt_tokens: int = 4  # n, learnable tokens per prompted layer
    frame_positions: bool = True  # the sinusoidal frame encoding on the first visual prompts
    aggregator: Literal["lsea", "average"] = "lsea"  # average: Table III's row without LSEA
    heads: int = 4  # N, LSEA's semantic heads
    beta: float = 0.7  # LSEA's fusion weight of the visual feature
    class_texts: str = "facial-descriptions"  # emo/configs/classes/<name>.json, or a .json path
    names_only: bool = False  # class texts = the bare emotion names
    logit_scale: float = 100.0  # logits = logit_scale · cos(V_g, F_T)
    text_checkpoint: str | None = None  # weights file, when the features came from --checkpoint elsewhere
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw"] = "adam"

    def __post_init__(self):
        if self.frames < 0 or self.prompt_depth < 1 or self.prompt_tokens < 1 or self.heads < 1:
            raise ValueError("frames must be >= 0; prompt_depth, prompt_tokens and heads >= 1")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1], got {self.beta}")

    def modalities(self) -> tuple[str, ...]:
        return (self.image_feature().split("/")[0],)

    def large_arrays(self) -> tuple[str, ...]:
        return (self.feature,) if self.prompts == "htpc" else ()

    def image_feature(self) -> str:
        """The array the image side reads: tokens for HTPC, frame embeddings for CoOp."""
        return self.feature if self.prompts == "htpc" else self.cls_feature

    def label(self) -> str:
        if self.prompts == "htpc":
            strategy = STRATEGIES.get(self.prompt_depth, "")
            prompts = f"HTPC {strategy} M={self.prompt_depth} n={self.prompt_tokens} ({self.prompt_variant} layers)"
        else:
            prompts = f"CoOp n={self.prompt_tokens}"
        agg = f"LSEA N={self.heads} β={self.beta:g}" if self.aggregator == "lsea" else "average pooling"
        return f"DuSE {prompts} + {agg}"


def fp32_cosine_logits(v: torch.Tensor, w: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale · cos(v, w_c)`` in fp32 whatever autocast is on (:func:`~emo.heads.layers.similarity.cosine_logits`):
    at a scale of 100 bf16 would round the logits to steps of 0.5, enough to tie or swap close classes.
    ``v [B, D]``, ``w [C, D]`` -> ``[B, C]``."""
    return cosine_logits(v, w, scale)


class DuSEModel(nn.Module):
    """Prompts, frozen towers and the aggregator. ``forward(x) -> (logits [B, C], V_g [B, D])`` for
    ``x`` = stored tokens ``[B, T, L, W_v]`` (HTPC) or frame embeddings ``[B, T, D]`` (CoOp)."""

    def __init__(self, cfg: DuSEConfig, text_ids: torch.Tensor, text_tower, image_tower: FrozenImageTower | None,
                 stored_after: int = 0, visual_width: int = 0):
        super().__init__()
        self.cfg = cfg
        self.text = PromptedTextTower(text_tower, text_ids)
        width_t = text_tower.width
        if cfg.prompts == "htpc":
            self.image = image_tower
            self.stored_after = stored_after
            self.first_block = visual_blocks(cfg.prompt_variant, cfg.prompt_depth, image_tower.n_blocks, stored_after)
            self.htpc = HTPC(width_t, visual_width, cfg.prompt_depth, cfg.prompt_tokens, positions=cfg.frame_positions)
        else:
            self.ctx = nn.Parameter(torch.randn(1, cfg.prompt_tokens, width_t) * 0.02)  # CoOp's context
        self.aggregator = LSEA(text_tower.embed_dim, heads=cfg.heads, beta=cfg.beta,
                               pooling="attention" if cfg.aggregator == "lsea" else "average",
                               aggregate=cfg.aggregator == "lsea", logit_scale=cfg.logit_scale)

    def class_features(self) -> torch.Tensor:
        """``F_T [C, D]``: the class texts through the prompted text tower."""
        if self.cfg.prompts == "htpc":
            return self.text(self.htpc.text_prompts)  # deep prompts, leaving after layer M
        return self.text(self.ctx, keep=True)  # CoOp: the context stays an input token

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """``F_V [B, T, D]``."""
        if self.cfg.prompts != "htpc":
            return x  # the stored, unprompted frame embeddings
        prompts = self.htpc.visual_prompts(x.shape[1])  # [M, T, n, W_v]
        return prompted_image_features(self.image, x, self.stored_after, self.first_block, prompts)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.class_features()  # [C, D]
        _, _, v_g = self.aggregator.forward_features(self.frame_features(x).to(text.dtype), text)  # [B, D]
        return fp32_cosine_logits(v_g, text, self.aggregator.logit_scale), v_g


class DuSEHead(TorchHead):
    """DuSE trained by the shared :class:`~emo.heads.train.TorchHead` loop."""

    static_batches = True  # [B, T, L, W] tokens: the step can be replayed as a CUDA graph

    def build_module(self, data: FeatureData) -> nn.Module:
        cfg = self.config
        x = segment_array(data, cfg.image_feature(), cfg.frames, item_dims=2 if cfg.prompts == "htpc" else 1)
        tower, tokenize = clip_text_of(data, cfg.cls_feature, cfg.text_checkpoint)
        texts = described_classes(self.classes, cfg.class_texts, cfg.names_only)
        ids = check_fits(tokenize, texts, tower.context_length)  # [C, ctx]
        room = tower.context_length - 1 - int(ids.argmax(dim=-1).max())
        if room < cfg.prompt_tokens:
            raise ValueError(f"the longest class text leaves room for {room} prompt tokens in the text context, "
                             f"not {cfg.prompt_tokens}: shorten the class texts or lower --prompt-tokens")
        image, stored_after, width = None, 0, 0
        if cfg.prompts == "htpc":
            image, stored_after = clip_image_tower_of(data, cfg.feature)
            width = int(x.shape[-1])
        self.warnings = self._augmentation_note(data)
        return DuSEModel(cfg, ids, tower, image, stored_after, width)

    def _augmentation_note(self, data: FeatureData) -> list[str]:
        views = int(segment_array(data, self.config.image_feature(), 0, item_dims=2 if self.config.prompts == "htpc"
                                  else 1).shape[3])
        held = (f"{views} stored crops per clip, one drawn per clip and epoch" if views > 1
                else "one stored crop per clip, no augmentation")
        return [f"the paper trains with {PAPER_AUGMENTATION} on the pixels; a feature cache cannot replay that "
                f"(this run: {held})"]

    def inputs(self, data: FeatureData, idx: np.ndarray, train: bool, generator: torch.Generator) -> dict:
        return {"x": segment_batch(data, self.config.image_feature(), idx, train, generator, self.config.frames)}

    def loss(self, batch: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, _ = self.module(batch["x"])
        return F.cross_entropy(logits, labels), {}  # eq. 1, on the fp32 logits

    def scores(self, batch: dict) -> torch.Tensor:
        return self.module(batch["x"])[0]  # [B, C]

    def scores_and_features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logits, v_g = self.module(batch["x"])
        return logits, F.normalize(v_g.float(), dim=-1)  # V_g: the fused feature, for t-SNE

    @torch.no_grad()
    def embed(self, data: FeatureData) -> np.ndarray:
        """``[n, D]`` unit ``V_g`` (the fused video feature the classifier reads)."""
        return self.predict(data)[1]


register_head(
    "duse",
    DuSEConfig,
    DuSEHead,
    "DuSE: HTPC prompts inside the frozen CLIP towers (from stored tokens) + LSEA; UAR/WAR",
    paper_features=PAPER_FEATURES,
)
