"""ECPA: emotional video captioning from the cache (docs/papers.md#ecpa): visual and textual
emotion prompts, their cross-modal alignment, and a masked-language-model caption generator.

::

    V    = frame tokens of the clip set: CLS + 2x2 average-pooled patches per frame [B, M·5, W] (default,
           ``visual = "pooled"``) | every token [B, M·L, W] (``tokens``) | the CLS embedding per frame [B, M, D] (``cls``)
    P_ER = MLP(z)        z = logits of an emotion classifier on the clip's mean CLS        (VEP, ER level)
    P_AU = FC(E[a_i] · s_i)   i = 1..K, the K AUs of highest confidence, s_i their intensity (VEP, AU level)
    [CLASS-k]            a learnable token per class: the true class in training, the predicted one at inference
    P_W  = FC(F_T), [MASK] -> 0          word-level prompts over the caption's word embeddings F_T (TEP)
    prefix = [Lin(V) ; P_ER ; P_AU ; [CLASS-k]] + type embeddings
    logits = MLMGenerator(prefix, P_W)   causal over the caption, one [MASK] filled per decoding step
    L = w_MLM L_MLM + w_ER L_ER + w_AU L_AUCL     (DWA weights per epoch; layers.emotion_alignment)
    L_ER   = CE(Linear([P_ER ; P_S]), y)  P_S = mean of P_W over the caption's words        (ECA, eq. 8)
    L_AUCL = eq. 12 between P_AU and the non-[MASK] word prompts, Hungarian matching        (ECA)

Readings (where the paper is silent or does not fit frozen features; README "ECPA"):

- **ER classifier.** The paper's frozen ResNet-50 ER network is replaced by a multinomial logistic
  regression on the clip's L2-normalised mean CLS embedding, fitted on the train part; its C logits are
  the "features" the MLP turns into ``P_ER``. It is *cross-fitted* (``layers.cross_fit``, ``er_folds``):
  each train item's logits come from a classifier fitted on the other folds; val/test items (and other
  datasets) get the classifier fitted on all of train, which is stored in the checkpoint.
- **AUs.** OpenFace (or py-feat) AUs replace the paper's ANFL node features: ``E`` is a learnable
  embedding per AU, scaled by the AU's intensity over the clip. Confidence and intensity over the clip,
  and the rule for clips without a valid frame, are those of ``layers.emotion_alignment``.
- **[CLASS-k]** is a prefix token (appended after the caption, a causal caption could not see it). It is
  left out of ``L_ER``'s input (in training it *is* the label, which would make the loss trivially zero):
  the sentence side of ``L_ER`` is the mean word prompt. At inference it is the ER classifier's argmax.
- **L_AUCL's "others"**: ``aucl_others`` (``matched`` by default; ``all`` adds unmatched pairs).
- **MLM**: each word and ``[EOS]`` is masked with probability ``mask_prob`` (at least one per caption),
  replaced by ``[MASK]``; one reference caption per clip is drawn at random each epoch.
- **Warm-up**: ``warmup_fraction`` (10 %) of all steps, then linear decay to 0 (``schedule = "linear"``).
- **No emotion labels** (EmVidCap): ``emotion_labels = false`` turns the ER prompt, the ``[CLASS-k]`` token,
  ``L_ER`` and the captions' emotion accuracy off, and the run says so.

Evaluation is captioning (``task = "captioning"``): BLEU-4, METEOR, ROUGE-L, CIDEr of the generated captions
against every reference, plus ``emotion_acc``: a bag-of-words logistic regression fitted on the train
references (stored in the checkpoint) classifies each generated caption, scored against the clip's label
(``emotion_acc_refs``: the same classifier on the first reference, its ceiling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emo.cache.data import FeatureData, segment_array, segment_batch, take_items

from .layers.captions import Vocabulary, tokenize
from .layers.cross_fit import cross_fit, fit_logistic
from .layers.emotion_alignment import (
    au_alignment_loss,
    au_summary,
    dwa_weights,
    er_alignment_loss,
    top_k_aus,
)
from .layers.mlm_generator import MLMGenerator, beam_decode, greedy_decode, mask_caption
from .registry import register_head
from .train import TorchHead, TrainConfig

__all__ = ["ECPAConfig", "ECPAModel", "ECPAHead", "PAPER_FEATURES"]

PAPER_FEATURES = ("VidSwin / BERT fine-tuned (headline); frozen CLIP frames + tokens for the 'CLIP+CLIP+ECPA' row, "
                  "AU node features of ANFL (here OpenFace AUs), captions")
LOSSES = ("mlm", "er", "aucl")


@dataclass
class ECPAConfig(TrainConfig):
    """ECPA with the paper's defaults where it gives them (module doc for the readings)."""

    # inputs
    visual: Literal["cls", "tokens", "pooled"] = "pooled"  # CLS per frame | all tokens | CLS + pooled patch grid
    feature: str = "clip/cls"  # CLS per frame (also the ER classifier's input)
    tokens: str = "clip/tokens"  # token array for visual = tokens / pooled
    pool_grid: int = 2  # pooled: patch tokens average-pooled to grid x grid per frame
    frames: int = 0  # segments used per clip, evenly subsampled (0 = all)
    au_source: Literal["openface", "pyfeat"] = "openface"  # which AU feature set gives the AU prompts
    # VEP
    er_prompt: bool = True  # VEP: the ER-level prompt from the emotion classifier's logits
    au_prompt: bool = True  # VEP: the AU-level prompts of the top-K AUs
    au_top_k: int = 3  # K, AUs of highest confidence over the clip
    er_folds: int = 5  # cross-fitting folds of the ER classifier
    er_c: float = 1.0  # its inverse L2 strength
    # TEP
    sentence_prompt: bool = True  # [CLASS-k]
    word_prompt: bool = True  # P_W = FC(F_T), [MASK] -> 0
    # ECA
    er_align: bool = True  # ECA: L_ER between the ER and sentence prompts
    au_align: bool = True  # ECA: L_AUCL between AU and word prompts
    er_loss: Literal["ce", "similarity", "similarity-ce"] = "ce"  # Table VI variants of the ER alignment
    au_loss: Literal["aucl", "contrastive", "ce"] = "aucl"  # Table VI variants of the AU alignment
    aucl_threshold: float = 0.3  # T_C
    aucl_margin: float = 0.5  # m
    aucl_others: Literal["matched", "all"] = "matched"  # eq. 12's "others": matched pairs below T_C, or also every unmatched pair
    # generator
    width: int = 512  # generator width
    layers: int = 6  # generator transformer layers
    heads: int = 8  # generator attention heads
    ffn: int = 0  # 0: 4 x width
    dropout: float = 0.1  # generator dropout
    mask_prob: float = 0.15  # MLM: chance each word (and [EOS]) is masked, at least one per caption
    max_words: int = 40  # training captions are cut to this many words; decoding stops there
    min_count: int = 1  # vocabulary: words seen at least this often in the train references
    tokenizer: Literal["words-v1"] = "words-v1"  # how captions become words (layers.captions), recorded in the run
    # loss weights
    dwa: bool = True  # dynamic weight averaging of the losses per epoch (off: all weights 1)
    dwa_temperature: float = 2.0  # DWA's T
    # decoding
    beam: int = 1  # 1 = greedy
    length_penalty: float = 0.0  # beam search: score / length^penalty (0: none)
    # labels
    emotion_labels: bool = True  # false: a dataset without emotion labels (EmVidCap)
    # optimisation (AdamW, 10 % warm-up, linear decay)
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-4
    optimizer: Literal["adam", "adamw"] = "adamw"
    weight_decay: float = 0.01
    schedule: Literal["constant", "cosine", "step", "linear"] = "linear"
    val_metric: str = "loss"  # what patience reads: the validation MLM loss (decoding every epoch is slow)
    warmup_fraction: float = 0.1  # > 0: warmup_epochs = warmup_fraction x epochs

    def __post_init__(self):
        if self.warmup_fraction < 0 or self.warmup_fraction >= 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.warmup_fraction:
            want = self.warmup_fraction * self.epochs
            if self.warmup_epochs and not math.isclose(self.warmup_epochs, want):
                raise ValueError(f"warmup_epochs {self.warmup_epochs} and warmup_fraction {self.warmup_fraction} "
                                 f"({want:g} epochs) disagree: pass --warmup-fraction 0 to use --warmup-epochs")
            self.warmup_epochs = want
        for name in ("layers", "heads", "width", "au_top_k", "beam", "max_words", "min_count", "pool_grid"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        if not 0 < self.mask_prob <= 1:
            raise ValueError(f"mask_prob must be in (0, 1], got {self.mask_prob}")
        if self.er_folds < 2:
            raise ValueError(f"er_folds must be >= 2, got {self.er_folds}")
        if self.er_align and self.er_loss != "similarity-ce" and not self.er_prompt and self.emotion_labels:
            raise ValueError("er_align needs er_prompt (ER-sentence alignment aligns the ER prompt)")
        if self.au_align and not self.au_prompt:
            raise ValueError("au_align needs au_prompt (AU-word alignment aligns the AU prompts)")

    # label-dependent parts, off without labels
    @property
    def use_er(self) -> bool:
        return self.er_prompt and self.emotion_labels

    @property
    def use_class(self) -> bool:
        return self.sentence_prompt and self.emotion_labels

    @property
    def use_classifier(self) -> bool:
        """The cross-fitted ER classifier: the ER prompt's input, and the class [CLASS-k] takes at inference."""
        return self.use_er or self.use_class

    @property
    def use_er_align(self) -> bool:
        return self.er_align and self.emotion_labels and self.er_prompt

    def active_losses(self) -> tuple[str, ...]:
        return ("mlm",) + (("er",) if self.use_er_align else ()) + (("aucl",) if self.au_align else ())

    def au_modality(self) -> str:
        return "au" if self.au_source == "openface" else "pyfeat"

    def modalities(self) -> tuple[str, ...]:
        mods = [self.feature.split("/")[0]]
        if self.au_prompt:
            mods.append(self.au_modality())
        return tuple(dict.fromkeys(mods))

    def embed_modalities(self) -> tuple[str, ...]:
        return self.modalities()

    def large_arrays(self) -> tuple[str, ...]:
        return (self.tokens,) if self.visual != "cls" else ()

    def label(self) -> str:
        parts = [p for p, on in (("VEP-ER", self.use_er), ("VEP-AU", self.au_prompt), ("TEP-S", self.use_class),
                                 ("TEP-W", self.word_prompt), ("ECA-ER", self.use_er_align),
                                 ("ECA-AU", self.au_align)) if on]
        return "ECPA " + ("+".join(parts) if parts else "baseline")


class ECPAModel(nn.Module):
    """Prompts, prefix and generator; sizes from the features and the vocabulary."""

    def __init__(self, cfg: ECPAConfig, vocab: Vocabulary, visual_dim: int, visual_len: int, classes: int,
                 aus: int, er_dim: int):
        super().__init__()
        w = cfg.width
        self.register_buffer("vocab", vocab.to_tensor())
        self.visual = nn.Linear(visual_dim, w)
        self.visual_pos = nn.Parameter(torch.randn(visual_len, w) * 0.02)
        self.types = nn.Parameter(torch.randn(4, w) * 0.02)  # visual, ER, AU, class
        if cfg.use_classifier:
            self.register_buffer("er_weight", torch.zeros(classes, er_dim))  # the ER classifier (fitted on train)
            self.register_buffer("er_bias", torch.zeros(classes))
        if cfg.use_er:
            self.er_mlp = nn.Sequential(nn.Linear(classes, w), nn.GELU(), nn.Linear(w, w))
        if cfg.au_prompt:
            self.au_embed = nn.Parameter(torch.randn(aus, w) * 0.02)
            self.au_fc = nn.Linear(w, w)
        if cfg.use_class or (cfg.use_er_align and cfg.er_loss == "similarity-ce"):
            self.class_tokens = nn.Parameter(torch.randn(classes, w) * 0.02)
        if cfg.use_er_align:
            self.er_head = nn.Linear(2 * w, classes)
        if cfg.word_prompt:
            self.word_fc = nn.Linear(w, w)
        if cfg.emotion_labels:  # the captions' emotion classifier (bag of words), fitted on train references
            self.register_buffer("cap_weight", torch.zeros(classes, len(vocab)))
            self.register_buffer("cap_bias", torch.zeros(classes))
        self.generator = MLMGenerator(len(vocab), w, cfg.layers, cfg.heads, cfg.ffn, cfg.dropout, cfg.max_words + 2)

    def er_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled @ self.er_weight.T + self.er_bias  # [B, C]

    def prefix(self, batch: dict, class_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(prefix [B, P, W], prefix_pad [B, P], prompts {er, au, au_valid})``."""
        v = self.visual(batch["visual"]) + self.visual_pos[: batch["visual"].shape[1]] + self.types[0]  # [B, T, W]
        b = v.shape[0]
        parts, pads, prompts = [v], [torch.zeros(b, v.shape[1], dtype=torch.bool, device=v.device)], {}
        if "er" in batch and hasattr(self, "er_mlp"):
            er = self.er_mlp(batch["er"])  # [B, W]
            prompts["er"] = er
            parts.append((er + self.types[1])[:, None])
            pads.append(torch.zeros(b, 1, dtype=torch.bool, device=v.device))
        if "au_index" in batch:
            e = self.au_embed[batch["au_index"]] * batch["au_intensity"][..., None]  # [B, K, W]
            au = self.au_fc(e)
            valid = batch["au_has"][:, None].expand(-1, au.shape[1])  # [B, K]
            prompts["au"], prompts["au_valid"] = au, valid
            parts.append(au + self.types[2])
            pads.append(~valid)
        if class_ids is not None and hasattr(self, "class_tokens") and "class" in batch:
            parts.append((self.class_tokens[class_ids] + self.types[3])[:, None])
            pads.append(torch.zeros(b, 1, dtype=torch.bool, device=v.device))
        return torch.cat(parts, dim=1), torch.cat(pads, dim=1), prompts

    def words(self, ids: torch.Tensor, mask_id: int) -> torch.Tensor:
        """``[B, L, W]`` word inputs: ``P_W = FC(F_T)`` with ``[MASK]`` set to zero, or ``F_T``."""
        t = self.generator.word(ids)
        if not hasattr(self, "word_fc"):
            return t
        return self.word_fc(t).masked_fill((ids == mask_id)[..., None], 0.0)


class _Linear:
    """A fitted linear classifier ``x -> x W^T + b`` (what cross_fit hands around)."""

    def __init__(self, w: np.ndarray, b: np.ndarray):
        self.w, self.b = w, b

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w.T + self.b


class ECPAHead(TorchHead):
    """ECPA's prompts, alignment and MLM generator, trained from cached frames, AUs and captions."""

    task = "captioning"
    class_free = True  # a run on another dataset uses the source's classes, vocabulary and classifiers

    def __init__(self, config: ECPAConfig, classes: list[str]):
        super().__init__(config, classes)
        self.vocab = Vocabulary([])
        self.weights = dict.fromkeys(LOSSES, 1.0)  # DWA, set per epoch
        self.oof: dict[str, np.ndarray] = {}  # id -> cross-fitted ER logits of the train items
        self.cross_fit_record: list[dict] = []
        self._dims: tuple | None = None
        if not config.emotion_labels:
            self.warnings.append("no emotion labels (emotion_labels=false): the ER prompt, [CLASS-k], L_ER and "
                                 "the captions' emotion accuracy are off")

    # -- features -----------------------------------------------------------------------------------
    def _visual(self, data: FeatureData, idx, train: bool, gen) -> torch.Tensor:
        cfg = self.config
        if cfg.visual == "cls":
            return segment_batch(data, cfg.feature, idx, train, gen, cfg.frames)  # [B, M, D]
        x = segment_batch(data, cfg.tokens, idx, train, gen, cfg.frames)  # [B, M, L, W]
        b, m, length, w = x.shape
        if cfg.visual == "tokens":
            return x.reshape(b, m * length, w)
        side = math.isqrt(length - 1)
        if side * side != length - 1:
            raise ValueError(f"{cfg.tokens}: {length} tokens per frame is not CLS + a square patch grid")
        grid = x[:, :, 1:].reshape(b * m, side, side, w).permute(0, 3, 1, 2)
        pooled = F.adaptive_avg_pool2d(grid, cfg.pool_grid).flatten(2).transpose(1, 2)  # [B M, g², W]
        return torch.cat([x[:, :, :1], pooled.reshape(b, m, -1, w)], dim=2).reshape(b, -1, w)

    def _pooled_cls(self, data: FeatureData, idx) -> np.ndarray:
        x = take_items(segment_array(data, self.config.feature), idx).float()  # [B, M, N, V, D]
        return F.normalize(x.mean(dim=(1, 2, 3)), dim=-1).numpy()

    def _au(self, data: FeatureData, idx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.config
        mod = cfg.au_modality()
        if cfg.au_source == "openface":
            need = ("au/au_r", "au/valid")
            missing = [a for a in need if a not in data.arrays]
            if missing:
                raise ValueError(f"ECPA's AU prompts need {', '.join(need)} (emo extract au CACHE --openface-dir ...); "
                                 "or --au-prompt false")
            r = take_items(data.arrays["au/au_r"], idx).float()  # [B, M, N, 17]
            valid = take_items(data.arrays["au/valid"], idx).bool()  # [B, M, N]
            presence = None
            if "au/au_c" in data.arrays:
                meta = next((m for m in data.feature_sets.values() if m.get("modality") == mod), {})
                names_r, names_c = meta.get("au_intensity"), meta.get("au_presence")
                c = take_items(data.arrays["au/au_c"], idx).float()
                if names_r and names_c:
                    cols = [names_c.index(n) for n in names_r if n in names_c]
                    if len(cols) == len(names_r):
                        presence = c[..., cols]
            b, a = r.shape[0], r.shape[-1]
            conf, inten, has = au_summary(r.reshape(b, -1, a), valid.reshape(b, -1),
                                          presence.reshape(b, -1, a) if presence is not None else None, scale=5.0)
        else:
            for a in ("pyfeat/aus", "pyfeat/valid"):
                if a not in data.arrays:
                    raise ValueError(f"ECPA's AU prompts from py-feat need {a} (emo extract au --backend pyfeat)")
            p = take_items(data.arrays["pyfeat/aus"], idx).float()
            valid = take_items(data.arrays["pyfeat/valid"], idx).bool()
            b, a = p.shape[0], p.shape[-1]
            conf, inten, has = au_summary(p.reshape(b, -1, a), valid.reshape(b, -1))
        top = top_k_aus(conf, inten, cfg.au_top_k)  # [B, K]
        return top, inten.gather(1, top), has

    def _er(self, data: FeatureData, idx) -> torch.Tensor:
        """``[B, C]`` ER logits: cross-fitted for train items (by id), the full classifier for the rest."""
        pooled = self._pooled_cls(data, idx)
        full = self.module.er_logits(torch.from_numpy(pooled).to(self.module.er_weight.device)).cpu()
        rows = [torch.from_numpy(self.oof[data.ids[i]]) if data.ids[i] in self.oof else full[k]
                for k, i in enumerate(idx)]
        return torch.stack(rows).float()

    def inputs(self, data: FeatureData, idx: np.ndarray, train: bool, generator: torch.Generator) -> dict:
        cfg = self.config
        batch = {"visual": self._visual(data, idx, train, generator)}
        if cfg.use_classifier:
            batch["er"] = self._er(data, idx)
        if cfg.au_prompt:
            batch["au_index"], batch["au_intensity"], batch["au_has"] = self._au(data, idx)
        if cfg.use_class:
            batch["class"] = torch.ones(len(idx), dtype=torch.bool)
        if data.texts and all(data.texts[i] for i in idx):
            if train:
                pick = [int(torch.randint(len(data.texts[i]), (1,), generator=generator)) for i in idx]
            else:
                pick = [0] * len(idx)
            ids = self.vocab.batch([data.texts[i][p] for i, p in zip(idx, pick, strict=True)], cfg.max_words)
            v = self.vocab
            batch["caption_in"], batch["caption_target"] = mask_caption(ids, cfg.mask_prob, pad=v.pad, bos=v.bos,
                                                                        mask=v.mask, generator=generator)
            batch["caption"] = ids
        return batch

    # -- model --------------------------------------------------------------------------------------
    def build_module(self, data: FeatureData) -> nn.Module:
        cfg = self.config
        if (cfg.use_er or cfg.use_class or cfg.use_er_align) and not self.classes:
            raise ValueError(f"{data.dataset or 'the dataset'} has no emotion classes; a dataset without emotion "
                             "labels (EmVidCap) needs --emotion-labels false (preset emvidcap)")
        train = data.role("train") if (data.roles == "train").any() else data
        refs = [c for caps in train.texts for c in caps] if train.texts else []
        self.vocab = Vocabulary.build(refs, cfg.min_count)
        x = self._visual(data, np.arange(min(len(data), 1)), False, None)
        er_dim = segment_array(data, cfg.feature).shape[-1]
        aus = 0
        if cfg.au_prompt:
            self._au(data, np.arange(min(len(data), 1)))  # names a missing AU array now
            aus = data.arrays["au/au_r" if cfg.au_source == "openface" else "pyfeat/aus"].shape[-1]
        visual_len = x.shape[1] if len(data) else 1
        self._dims = (x.shape[-1], visual_len, len(self.classes), aus, er_dim)
        return ECPAModel(cfg, self.vocab, *self._dims)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "vocab" in state and self.module is not None:
            vocab = Vocabulary.from_tensor(state["vocab"])
            if vocab != self.vocab:  # a checkpoint's own vocabulary (another dataset's run)
                self.vocab = vocab
                self.module = ECPAModel(self.config, vocab, *self._dims).to(self.device)
        super().load_state_dict(state)

    def fit(self, train: FeatureData, val: FeatureData | None = None, log=None) -> None:
        cfg = self.config
        if self.module is None:
            self.prepare(train)
        if not train.texts or any(not t for t in train.texts):
            bad = next((train.ids[i] for i, t in enumerate(train.texts) if not t), train.ids[0] if len(train) else "")
            raise ValueError(f"ECPA trains on captions: train item {bad!r} has none in the manifest")
        if cfg.emotion_labels and (cfg.use_er or cfg.use_class or cfg.use_er_align):
            y = train.labels.numpy()
            if (y < 0).any():
                first = train.ids[int(np.flatnonzero(y < 0)[0])]
                raise ValueError(f"{int((y < 0).sum())} train items have no emotion label (first: {first!r}); a "
                                 "dataset without emotion labels (EmVidCap) needs --emotion-labels false")
        if cfg.use_classifier:
            self._fit_er(train)
        if cfg.emotion_labels and (train.labels >= 0).all():
            self._fit_caption_classifier(train)
        super().fit(train, val, log)

    def _fit_er(self, train: FeatureData) -> None:
        x = self._pooled_cls(train, np.arange(len(train)))
        y = train.labels.numpy()
        logistic = fit_logistic(len(self.classes), self.config.er_c)
        oof, full, self.cross_fit_record = cross_fit(x, y, list(train.ids), lambda a, b: _Linear(*logistic(a, b)),
                                                     self.config.er_folds, seed=int(torch.initial_seed()) % 2**31)
        self.oof = {i: oof[k] for k, i in enumerate(train.ids)}
        self.module.er_weight.copy_(torch.from_numpy(full.w))
        self.module.er_bias.copy_(torch.from_numpy(full.b))

    def _bow(self, texts: list[str]) -> np.ndarray:
        x = np.zeros((len(texts), len(self.vocab)), dtype=np.float32)
        for k, t in enumerate(texts):
            for w in tokenize(t):
                x[k, self.vocab.index.get(w, self.vocab.unk)] = 1.0
        return x

    def _fit_caption_classifier(self, train: FeatureData) -> None:
        texts = [c for caps in train.texts for c in caps]
        y = np.concatenate([np.full(len(caps), int(lab)) for caps, lab in zip(train.texts, train.labels, strict=True)])
        w, b = fit_logistic(len(self.classes))(self._bow(texts), y)
        self.module.cap_weight.copy_(torch.from_numpy(w))
        self.module.cap_bias.copy_(torch.from_numpy(b))

    def epoch_start(self, epoch: int, history: list[dict]) -> None:
        active = self.config.active_losses()
        self.weights = dict.fromkeys(LOSSES, 0.0)
        self.weights.update(dwa_weights(history, active, self.config.dwa_temperature) if self.config.dwa
                            else dict.fromkeys(active, 1.0))

    def _losses(self, batch: dict, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, m, v = self.config, self.module, self.vocab
        prefix, pad, prompts = m.prefix(batch, labels if cfg.use_class else None)
        ids = batch["caption_in"]
        words = m.words(ids, v.mask)  # [B, L, W]
        logits = m.generator(prefix, ids, pad, words=words)  # [B, L, V]
        target = batch["caption_target"]
        out = {"mlm": F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                                      ignore_index=-100)}
        word_valid = (ids > v.unk)  # words only: not [PAD] [BOS] [EOS] [MASK] [UNK]
        if cfg.use_er_align:
            n = word_valid.sum(1, keepdim=True).clamp(min=1)
            sentence = (words * word_valid[..., None]).sum(1) / n  # P_S: mean word prompt [B, W]
            out["er"] = er_alignment_loss(cfg.er_loss, prompts["er"], sentence, labels,
                                          getattr(m, "er_head", None), getattr(m, "class_tokens", None))
        if cfg.au_align:
            out["aucl"] = au_alignment_loss(cfg.au_loss, prompts["au"], words, prompts["au_valid"], word_valid,
                                            cfg.aucl_threshold, cfg.aucl_margin, cfg.aucl_others)
        return out

    def loss(self, batch: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = self._losses(batch, labels)
        total = sum(self.weights.get(k, 1.0) * v for k, v in parts.items())
        logged = {k: v.detach() for k, v in parts.items()}
        logged.update({f"w_{k}": torch.tensor(self.weights.get(k, 1.0)) for k in parts})
        return total, logged

    def scores(self, batch: dict) -> torch.Tensor:
        """``[B, C]`` the ER classifier's logits (zeros without it): the class the sentence prompt uses."""
        if "er" in batch:
            return batch["er"]
        return torch.zeros(batch["visual"].shape[0], len(self.classes), device=batch["visual"].device)

    # -- generation ---------------------------------------------------------------------------------
    def decode_ids(self, batch: dict, cached: bool = True) -> torch.Tensor:
        """``[B, T]`` generated ids of a device batch (greedy, or beam search with ``beam`` > 1); ``cached``
        False re-runs the full forward pass each step (the reference)."""
        cfg, v = self.config, self.vocab
        cls = self.scores(batch).argmax(1) if cfg.use_class else None
        prefix, pad, _ = self.module.prefix(batch, cls)
        gen = self.module.generator
        kw = {"bos": v.bos, "eos": v.eos, "pad": v.pad, "mask": v.mask, "max_words": cfg.max_words,
              "banned": [v.pad, v.bos, v.mask, v.unk], "embed": lambda ids: self.module.words(ids, v.mask),
              "cached": cached}
        if cfg.beam == 1:
            return greedy_decode(gen, prefix, pad, **kw)
        return beam_decode(gen, prefix, pad, beam=cfg.beam, length_penalty=cfg.length_penalty, **kw)

    @torch.no_grad()
    def generate(self, data: FeatureData) -> list[str]:
        if self.module is None:
            raise RuntimeError("ECPAHead: prepare() and fit() or load_state_dict() first")
        self.module.eval()
        out: list[str] = []
        for start in range(0, len(data), self.config.eval_batch_size):
            idx = np.arange(start, min(start + self.config.eval_batch_size, len(data)))
            batch = self._to_device({k: x for k, x in self.inputs(data, idx, False, None).items()
                                     if not k.startswith("caption")})
            with self._autocast():
                ids = self.decode_ids(batch).cpu()
            out.extend(self.vocab.decode(row) for row in ids)
        return out

    def caption_metrics(self, data: FeatureData, captions: list[str]) -> dict[str, float]:
        """The emotion accuracy of the generated captions (and of the first references) when the scored
        items have labels and the head has its caption classifier."""
        if not self.config.emotion_labels or len(data) == 0 or bool((data.labels < 0).any()):
            return {}
        if not (self.module.cap_weight.any() or self.module.cap_bias.any()):  # trained without labels: never fitted
            return {}
        w, b = self.module.cap_weight.cpu().numpy(), self.module.cap_bias.cpu().numpy()
        y = data.labels.numpy()
        pred = (self._bow(captions) @ w.T + b).argmax(1)
        refs = (self._bow([t[0] for t in data.texts]) @ w.T + b).argmax(1)
        return {"emotion_acc": float((pred == y).mean()), "emotion_acc_refs": float((refs == y).mean())}

    @torch.no_grad()
    def validate(self, val: FeatureData) -> dict[str, float]:
        """The MLM loss of the validation part (first reference, the training masking rate, a fixed seed)."""
        self.module.eval()
        total, n = 0.0, 0
        gen = torch.Generator().manual_seed(0)
        for start in range(0, len(val), self.config.eval_batch_size):
            idx = np.arange(start, min(start + self.config.eval_batch_size, len(val)))
            batch = self._to_device(self.inputs(val, idx, False, gen))
            with self._autocast():
                parts = self._losses(batch, self._tensor_to_device(val.labels[torch.from_numpy(idx)]))
            total += float(parts["mlm"]) * len(idx)
            n += len(idx)
        return {"loss": total / max(n, 1)}


register_head(
    "ecpa",
    ECPAConfig,
    ECPAHead,
    "ECPA: emotion prompts (ER, AU, class, word), their alignment and an MLM caption generator; captioning",
    paper_features=PAPER_FEATURES,
)
