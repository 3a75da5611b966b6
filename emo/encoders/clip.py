"""Frozen CLIP encoders through open_clip: the only module of ``emo`` that imports ``open_clip``.

``load_clip(ClipSpec(...))`` builds an open_clip ViT, loads its weights by the weights policy
(README, Stage 1) and wraps it in a ``ClipEncoder`` that turns uint8 frames into projected image
embeddings (and optionally all tokens after block ``k``) and prompts into text embeddings. Given the
patches' subject coverage (``emo.extract.modalities.boxes``), ``encode_images`` adds EmotionCLIP's subject-aware
prompt (docs/papers.md#emotionclip; see ``ClipEncoder.encode_images``).

Weights policy, strict:
- ``weights="pretrained"`` with ``pretrained=TAG`` downloads through open_clip as usual;
- ``checkpoint=PATH`` (wins over the tag) loads a local file: an open_clip checkpoint, a plain
  ``state_dict``, a ``.safetensors`` file or OpenAI's TorchScript ``.pt``, always strictly; a file made
  by ``emo extract convert-emotionclip`` also brings the mean/std its weights were trained with.
  No checkpoint runs code: pickles are read ``weights_only`` (tensors and plain containers only), a
  TorchScript archive is opened by ``torch.jit.load`` (no Python unpickling) and only its tensors are
  kept, and open_clip is handed nothing it would unpickle freely. The same holds for a checkpoint
  that a feature set's ``config.json`` names and heads rebuild (its path is data, never a trust grant);
- ``weights="random"`` builds the architecture with random init under a fixed seed, and only then.
Any load failure raises ``WeightsError`` naming both ``--pretrained`` and ``--checkpoint``; a model
that failed to load is never replaced by random weights.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emo import CONFIG_DIR

from .weights import WeightsError, checkpoint_preprocess, file_sha256, resolve_device, resolve_dtype

__all__ = [
    "WeightsError",
    "ClipSpec",
    "ClipEncoder",
    "load_clip",
    "build_model",
    "resolve_device",
    "resolve_dtype",
    "register_tiny_model",
    "TINY_MODEL",
    "MODEL_CONFIG_DIR",
    "file_sha256",
    "spec_from_config",
    "checkpoint_preprocess",
]

MODEL_CONFIG_DIR = CONFIG_DIR / "models"  # repo-local architectures
TINY_MODEL = "emo-tiny-ViT"  # 32 px, patch 8, width 64, 2 blocks: tests and the demo
_WEIGHTS = ("pretrained", "random")
_TEXT_BATCH = 256  # prompts per text-tower batch


def _weights_hint(model: str) -> str:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model)
    known = (
        f"tags for {model}: {', '.join(tags[:8])}{', ...' * (len(tags) > 8)}"
        if tags
        else "no tags for " + model
    )
    return (
        f"Give weights either as --pretrained TAG (downloads through open_clip; {known}) or as "
        "--checkpoint PATH (a local weights file, for offline boxes). Random weights are never used instead."
    )


@dataclass(frozen=True)
class ClipSpec:
    """Which encoder and which weights. ``checkpoint`` wins over ``pretrained``; ``weights="random"``
    ignores both (tests and the demo only)."""

    model: str = "ViT-B-32"
    pretrained: str | None = "openai"  # open_clip tag, downloaded through open_clip
    checkpoint: str | None = None  # local weights file; wins over pretrained
    weights: str = "pretrained"  # "pretrained" | "random"
    random_seed: int = 0  # torch seed of the random init, so random caches are reproducible
    tokens_layer: int | None = None  # also return all tokens after block k (1..n_blocks; 0: entering block 1)

    def __post_init__(self):
        if self.weights not in _WEIGHTS:
            raise ValueError(f"weights must be one of {_WEIGHTS}, got {self.weights!r}")
        if self.tokens_layer is not None and (isinstance(self.tokens_layer, bool) or self.tokens_layer < 0):
            raise ValueError(f"tokens_layer counts blocks from 1 (0: the tokens entering block 1), got {self.tokens_layer!r}")
        if self.model.startswith(("hf-hub:", "local-dir:")):
            raise ValueError(
                f"model {self.model!r}: name an architecture (e.g. ViT-B-32) and give weights with "
                "--pretrained TAG or --checkpoint PATH"
            )

    @property
    def source(self) -> str:
        """Where the weights come from: "random", "checkpoint" or "pretrained"."""
        if self.weights == "random":
            return "random"
        return "checkpoint" if self.checkpoint else "pretrained"

    def weights_provenance(self) -> dict:
        """What identifies the weights in a cache key: the tag, the file's sha256, or the random seed."""
        if self.source == "random":
            return {"kind": "random", "seed": self.random_seed}
        if self.source == "checkpoint":
            path = Path(self.checkpoint).expanduser().resolve()
            try:
                digest = file_sha256(path)
            except OSError as e:
                raise WeightsError(f"checkpoint {path}: {e}. {_weights_hint(self.model)}") from e
            own = checkpoint_preprocess(path)  # a converted release names its source file
            converted = {"converted_from": {"source": own["source"], "sha256": own["source_sha256"]}} if own else {}
            return {"kind": "checkpoint", "path": str(path), "sha256": digest, **converted}
        return {"kind": "pretrained", "tag": self.pretrained}


def _register_local_config(name: str) -> bool:
    """Make ``emo/configs/models/<name>.json`` known to open_clip (once); False if there is no such file."""
    import open_clip

    if name in open_clip.list_models():
        return True
    path = MODEL_CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        return False
    open_clip.add_model_config(path)
    return True


def register_tiny_model() -> str:
    """Register ``emo-tiny-ViT`` with open_clip and return its name (for tests and the demo)."""
    if not _register_local_config(TINY_MODEL):
        raise FileNotFoundError(f"{MODEL_CONFIG_DIR / (TINY_MODEL + '.json')} is missing")
    return TINY_MODEL


def _is_torchscript(path: Path) -> bool:
    """OpenAI's original ``.pt`` files are TorchScript archives (a zip whose root folder holds
    ``constants.pkl``, torch's own test). A file that only looks like one fails in ``torch.jit.load``;
    nothing is ever unpickled freely because of this answer."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in z.namelist())


_TORCHSCRIPT_EXTRAS = ("input_resolution", "context_length", "vocab_size")  # OpenAI's archives hold these too


def _torchscript_weights(path: Path, folder: Path) -> Path:
    """The tensors of a TorchScript archive as ``folder/weights.safetensors`` (what open_clip then reads
    without unpickling). ``torch.jit.load`` restores TorchScript modules, not arbitrary Python objects."""
    from safetensors.torch import save_file

    module = torch.jit.load(str(path), map_location="cpu")
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items() if k not in _TORCHSCRIPT_EXTRAS}
    out = folder / "weights.safetensors"
    save_file(state, str(out))
    return out


class _DropRandomNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _own_random_notice():
    """open_clip announces random init through the root logger (``WARNING:root:...``), configuring
    logging as a side effect; emo says it in its own words instead. While open_clip builds the model,
    its notice is dropped and a NullHandler keeps ``logging.warning`` from installing a root handler."""
    root, drop, null = logging.getLogger(), _DropRandomNotice(), logging.NullHandler()
    root.addFilter(drop)
    root.addHandler(null)
    try:
        yield
    finally:
        root.removeHandler(null)
        root.removeFilter(drop)


def build_model(spec: ClipSpec) -> torch.nn.Module:
    """The open_clip model in fp32 on the CPU with the weights ``spec`` names (strict; see module doc)."""
    import open_clip

    if not _register_local_config(spec.model):
        raise ValueError(
            f"unknown model {spec.model!r}: not an open_clip architecture (open_clip.list_models()) "
            f"nor a file in {MODEL_CONFIG_DIR}"
        )
    common = {"precision": "fp32", "device": "cpu", "pretrained_image": False, "pretrained_text": False}
    if spec.source == "random":
        with torch.random.fork_rng(devices=[]), _own_random_notice():  # the caller's RNG state stays
            torch.manual_seed(spec.random_seed)
            model, _, _ = open_clip.create_model_and_transforms(
                spec.model, pretrained=None, load_weights=False, **common
            )
        print(f"emo: {spec.model} with RANDOM weights (seed {spec.random_seed}), as asked; everything made from "
              "it is marked RANDOM WEIGHTS", file=sys.stderr)
        return model

    if spec.source == "checkpoint":
        path = Path(spec.checkpoint).expanduser().resolve()
        what = f"checkpoint {path}"
        if not path.is_file():
            raise WeightsError(
                f"could not load {what} for {spec.model}: no such file. {_weights_hint(spec.model)}"
            )
        kwargs = {"pretrained": str(path), "weights_only": True}  # open_clip never unpickles freely
    elif spec.pretrained:
        what = f"--pretrained {spec.pretrained}"
        tag_cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained)
        # OpenAI-trained tags need QuickGELU; open_clip 3.3 only warns when the config lacks it.
        kwargs = {"pretrained": spec.pretrained, "force_quick_gelu": bool(tag_cfg.get("quick_gelu"))}
    else:
        raise WeightsError(f"no weights named for {spec.model}. {_weights_hint(spec.model)}")
    try:
        with tempfile.TemporaryDirectory(prefix="emo-weights-") as tmp:  # private (0700): ours alone
            if spec.source == "checkpoint" and _is_torchscript(path):  # OpenAI's .pt: its tensors only
                kwargs["pretrained"] = str(_torchscript_weights(path, Path(tmp)))
            model, _, _ = open_clip.create_model_and_transforms(spec.model, **kwargs, **common)
    except Exception as e:  # any failure to get or read the weights stops the run, with both options named
        raise WeightsError(
            f"could not load {what} for {spec.model}: {str(e).rstrip('.')}. {_weights_hint(spec.model)}"
        ) from e
    if spec.source == "checkpoint":
        own = checkpoint_preprocess(path)  # a converted checkpoint names its own mean/std
        if own:
            model.visual.preprocess_cfg = {**model.visual.preprocess_cfg, "mean": own["mean"], "std": own["std"]}
    return model


class ClipEncoder:
    """A frozen open_clip ViT: uint8 frames -> projected image embeddings (+ tokens after block k).

    Attributes: ``image_size`` S (square input), ``mean``/``std`` from the model's preprocess config,
    ``embed_dim`` D (projected), ``width`` W (transformer), ``n_tokens`` L (1 + patches), ``n_blocks``,
    ``patch_size`` P and ``grid_size`` G (``G x G`` patches, ``L = 1 + G*G``),
    ``device``, ``dtype`` (compute dtype; fp16/bf16 run under autocast over fp32 weights).
    """

    def __init__(self, model: torch.nn.Module, spec: ClipSpec, device: torch.device, dtype: torch.dtype):
        visual = model.visual
        resblocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if resblocks is None or not hasattr(visual, "positional_embedding"):
            raise ValueError(f"model {spec.model!r}: emo needs an open_clip ViT image tower")
        cfg = visual.preprocess_cfg
        size = cfg["size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        if h != w:
            raise ValueError(f"model {spec.model!r}: input {h}x{w} is not square")
        self.spec, self.device, self.dtype = spec, device, dtype
        self.model = model.to(device).eval().requires_grad_(False)
        self.image_size = int(h)
        self.mean = tuple(float(m) for m in cfg["mean"])
        self.std = tuple(float(s) for s in cfg["std"])
        self.interpolation, self.resize_mode = cfg["interpolation"], cfg["resize_mode"]
        self.embed_dim = int(visual.output_dim)
        self.width = int(visual.transformer.width)
        self.n_tokens = int(visual.positional_embedding.shape[0])
        self.n_blocks = len(resblocks)
        patch = getattr(visual, "patch_size", None)
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch or (0, 0))
        self.patch_size = int(patch[0]) if patch[0] == patch[1] else 0  # 0: no square patch grid
        self.grid_size = self.image_size // self.patch_size if self.patch_size else 0
        self._batch_first = getattr(visual.transformer, "batch_first", True)
        if spec.tokens_layer is not None and not 0 <= spec.tokens_layer <= self.n_blocks:
            raise ValueError(
                f"tokens_layer {spec.tokens_layer} is out of range: {spec.model} has blocks 1..{self.n_blocks} "
                "(0: the tokens entering block 1)"
            )
        self._mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _normalise(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 ``[B, S, S, 3]`` RGB -> float32 ``[B, 3, S, S]`` normalised on the device."""
        x = torch.as_tensor(pixels)
        s = self.image_size
        if x.dtype != torch.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != (s, s, 3):
            raise ValueError(f"pixels must be uint8 [B, {s}, {s}, 3] RGB, got {x.dtype} {tuple(x.shape)}")
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # [B, 3, S, S] uint8
        x = x.float().div_(255.0)  # [0, 1]
        return (x - self._mean) / self._std

    def encode_images(
        self, pixels: torch.Tensor | np.ndarray, coverage: torch.Tensor | np.ndarray | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"cls": [B, D]}`` projected image embeddings (not L2-normalised), plus ``"tokens": [B, L, W]``
        (all tokens after block ``tokens_layer``) when asked; float32 on the CPU.

        ``coverage`` ``[B, G*G]`` (a_p in [0, 1], patches row-major; ``emo.extract.modalities.boxes``) turns on
        EmotionCLIP's subject-aware prompt: the token ``h = Σ_p a_p · pos[1+p]`` is appended after the
        class and patch tokens once the positional embedding is added, before ``ln_pre`` (as EmotionCLIP's
        code does); it goes through every block, and the output is still the class token, pooled and
        projected. ``"tokens"`` holds the ``L`` class and patch tokens only, not the prompt token.
        ``ln_pre`` normalises the token, so only the direction of ``h`` counts: coverage ``c · a`` for any
        ``c > 0`` prompts like ``a``.
        A row whose coverage is all zero (no subject) is encoded without the token, by the plain
        forward, so it gets exactly what ``encode_images(pixels)`` gives it (EmotionCLIP's code would
        append ``ln_pre(0)`` instead); a mixed batch is split into its plain and prompted rows.
        """
        x = self._normalise(pixels)  # [B, 3, S, S]
        if coverage is None:
            return self._encode(x, None)
        cover = self._coverage(coverage, x.shape[0])  # [B, G*G] float32 on the device
        subject = cover.ne(0).any(dim=1)  # [B] rows that get the prompt token
        if not subject.any():
            return self._encode(x, None)
        if subject.all():
            return self._encode(x, cover)
        plain, prompted = self._encode(x[~subject], None), self._encode(x[subject], cover[subject])
        rows = subject.cpu()
        out = {}
        for key, value in plain.items():
            out[key] = value.new_empty((len(rows), *value.shape[1:]))
            out[key][~rows], out[key][rows] = value, prompted[key]
        return out

    def _coverage(self, coverage: torch.Tensor | np.ndarray, batch: int) -> torch.Tensor:
        """Validated ``[B, G*G]`` float32 coverage on the device."""
        if not self.patch_size:
            raise ValueError(f"model {self.spec.model!r}: the subject prompt needs square patches")
        cover = torch.as_tensor(coverage).to(self.device, torch.float32)
        n = self.grid_size**2
        if tuple(cover.shape) != (batch, n):
            raise ValueError(f"coverage must be [B, G*G] = [{batch}, {n}], got {tuple(cover.shape)}")
        if not bool(((cover >= 0) & (cover <= 1)).all()):  # NaN fails too
            raise ValueError("coverage values must lie in [0, 1] (the share of a patch the subject covers)")
        return cover

    def _encode(self, x: torch.Tensor, cover: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Normalised ``[B, 3, S, S]`` -> outputs; the plain forward, or the prompted one given ``cover``."""
        captured: list[torch.Tensor] = []
        handle = None
        layout_batch_first = self._batch_first
        if self.spec.tokens_layer == 0:  # the input of block 1: ln_pre's output, always [B, L(+1), W]
            layout_batch_first = True
            handle = self.model.visual.ln_pre.register_forward_hook(lambda _m, _i, out: captured.append(out))
        elif self.spec.tokens_layer is not None:
            block = self.model.visual.transformer.resblocks[self.spec.tokens_layer - 1]
            handle = block.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            with torch.inference_mode(), self._autocast():
                if cover is None:
                    cls = self.model.encode_image(x)  # [B, D]
                else:
                    cls = self._vit_forward(x, self._subject_token(cover))  # [B, D]
        finally:
            if handle is not None:
                handle.remove()
        out = {"cls": cls.float().cpu()}
        if handle is not None:
            tokens = captured[0] if layout_batch_first else captured[0].transpose(0, 1)  # [B, L(+1), W]
            out["tokens"] = tokens[:, : self.n_tokens].float().cpu()  # without the prompt token
        return out

    def _subject_token(self, cover: torch.Tensor) -> torch.Tensor:
        """EmotionCLIP's prompt ``Σ_p a_p · pos[1+p]``: ``[B, G*G] -> [B, W]`` (pos[0] is the class token's)."""
        pos = self.model.visual.positional_embedding  # [L, W]
        return cover.to(pos.dtype) @ pos[1:]  # [B, W]

    def _vit_forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """open_clip 3.3's ``VisionTransformer.forward`` step by step through its own modules, with
        ``extra`` ``[B, W]`` appended as token ``L`` after the positional embedding. ``extra=None`` gives
        exactly ``model.encode_image(x)`` (tested). ``[B, 3, S, S] -> [B, D]``."""
        v = self.model.visual
        h = v.conv1(x)  # [B, W, G, G]
        h = h.reshape(h.shape[0], h.shape[1], -1).permute(0, 2, 1)  # [B, G*G, W]
        cls = v.class_embedding.view(1, 1, -1).expand(h.shape[0], -1, -1).to(h.dtype)  # [B, 1, W]
        h = torch.cat([cls, h], dim=1) + v.positional_embedding.to(h.dtype)  # [B, L, W]
        h = v.patch_dropout(h)  # identity in eval mode
        if extra is not None:
            h = torch.cat([h, extra.to(h.dtype)[:, None]], dim=1)  # [B, L+1, W]
        h = v.transformer(v.ln_pre(h))  # [B, L(+1), W]
        pooled, _ = v._pool(h[:, : self.n_tokens])  # the prompt token leaves before pooling
        return pooled @ v.proj if v.proj is not None else pooled  # [B, D]

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """``[T, context_length]`` int64 token ids (start, text, end, zero padding), on the CPU."""
        return _tokenizer(self.spec.model)(list(texts))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """``[T, D]`` projected text embeddings (not L2-normalised), float32 on the CPU."""
        parts = []
        for i in range(0, len(texts), _TEXT_BATCH):
            ids = self.tokenize(texts[i : i + _TEXT_BATCH]).to(self.device)  # [t, context_length]
            with torch.inference_mode(), self._autocast():
                parts.append(self.model.encode_text(ids).float().cpu())  # [t, D]
        return torch.cat(parts) if parts else torch.empty(0, self.embed_dim)

    def preprocess_provenance(self) -> dict:
        """The preprocessing the model expects (what a cache key must cover)."""
        side = {"shortest": "shortest-side", "longest": "longest-side", "squash": "squash"}.get(
            self.resize_mode, self.resize_mode
        )
        return {
            "image_size": self.image_size,
            "resize": f"{side} {self.interpolation} + centre crop",
            "mean": list(self.mean),
            "std": list(self.std),
        }


def spec_from_config(config: dict, checkpoint: str | None = None) -> ClipSpec:
    """The ``ClipSpec`` that made a clip feature set (its ``config.json``), for heads that need the
    same encoder's text tower.

    A checkpoint-made set is rebuilt from ``checkpoint`` (default: the path noted at extraction) and
    the file must have the sha256 the set was keyed on, so a head never pairs features with another
    encoder's text tower.
    """
    if config.get("modality") != "clip":
        raise ValueError(f"feature set {config.get('name')!r} is not a clip feature set")
    weights = config["weights"]
    kind = weights.get("kind")
    if kind == "random":
        return ClipSpec(model=config["model"], weights="random", random_seed=int(weights["seed"]))
    if kind == "pretrained":
        return ClipSpec(model=config["model"], pretrained=weights["tag"])
    if kind == "checkpoint":
        path = checkpoint or config.get("notes", {}).get("checkpoint_path")
        if not path:
            raise WeightsError(f"feature set {config.get('name')!r} was made from a checkpoint; give its path")
        try:
            digest = file_sha256(Path(path).expanduser().resolve())
        except OSError as e:
            raise WeightsError(f"checkpoint {path} of feature set {config.get('name')!r}: {e}") from e
        if digest != weights["sha256"]:
            raise WeightsError(
                f"checkpoint {path} has sha256 {digest[:12]}…, but feature set {config.get('name')!r} "
                f"was extracted with {weights['sha256'][:12]}…; give the same weights file"
            )
        return ClipSpec(model=config["model"], checkpoint=str(path))
    raise ValueError(f"feature set {config.get('name')!r}: unknown weights kind {kind!r}")


@functools.lru_cache(maxsize=8)
def _tokenizer(model: str):
    """open_clip's tokenizer of ``model`` (reading its BPE vocabulary takes ~0.2 s: once per process)."""
    import open_clip

    return open_clip.get_tokenizer(model)


def load_clip(spec: ClipSpec, device: str = "auto", precision: str = "auto") -> ClipEncoder:
    """Build ``spec``'s model with its weights (strict policy, see module doc) as a frozen encoder.

    Raises WeightsError when the named weights cannot be loaded, ValueError for a bad option.
    """
    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    _check_tokens_layer(spec)  # before any download; ClipEncoder checks again on the built model
    return ClipEncoder(build_model(spec), spec, dev, dtype)


def _check_tokens_layer(spec: ClipSpec) -> None:
    import open_clip

    if spec.tokens_layer is None or not _register_local_config(spec.model):
        return
    layers = open_clip.get_model_config(spec.model)["vision_cfg"].get("layers")
    if isinstance(layers, int) and spec.tokens_layer > layers:
        raise ValueError(
            f"tokens_layer {spec.tokens_layer} is out of range: {spec.model} has blocks 1..{layers}"
        )
