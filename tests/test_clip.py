"""The CLIP adapter: the real ViT-B-32 architecture (random weights) with its tokens hook, input
normalisation, compute precision, and the strict weights policy (failed download, missing and corrupt
files, checkpoints in every accepted format)."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from emo.encoders.clip import (
    TINY_MODEL,
    ClipEncoder,
    ClipSpec,
    WeightsError,
    load_clip,
    register_tiny_model,
    resolve_device,
    resolve_dtype,
    spec_from_config,
)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's OPENAI_DATASET_MEAN / STD
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PROMPTS = ["a photo of a happy face", "an angry face", "a sad person"]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)  # [B, S, S, 3]


def tiny_spec(**kw) -> ClipSpec:
    return ClipSpec(model=TINY_MODEL, **{"weights": "random", **kw})


@pytest.fixture(scope="module")
def vitb32() -> ClipEncoder:
    return load_clip(ClipSpec(weights="random", tokens_layer=6), device="cpu")


@pytest.fixture(scope="module")
def tiny() -> ClipEncoder:
    return load_clip(tiny_spec(), device="cpu")


@pytest.fixture
def offline(monkeypatch) -> list[str]:
    """No network: open_clip's download fails at once (instead of minutes of retries); records the calls."""
    import open_clip.factory

    calls: list[str] = []

    def fail(cfg, *args, **kwargs):
        calls.append(cfg.get("hf_hub") or cfg.get("url"))
        raise OSError("network is unreachable")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", fail)
    return calls


def assert_names_both_options(err: pytest.ExceptionInfo) -> None:
    msg = str(err.value)
    assert "--pretrained TAG" in msg and "--checkpoint PATH" in msg, msg


# -- the real ViT-B-32 architecture --------------------------------------------------------------
def test_vitb32_shapes_frozen_and_text(vitb32):
    enc = vitb32
    assert (enc.image_size, enc.embed_dim, enc.width, enc.n_tokens, enc.n_blocks) == (224, 512, 768, 50, 12)
    assert enc.dtype == torch.float32 and enc.device.type == "cpu"
    assert not enc.model.training and not any(p.requires_grad for p in enc.model.parameters())
    out = enc.encode_images(frames(2, 224))
    assert out["cls"].shape == (2, 512) and out["tokens"].shape == (2, 50, 768)
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in out.values())
    assert torch.isfinite(out["cls"]).all() and torch.isfinite(out["tokens"]).all()
    text = enc.encode_text(PROMPTS)
    assert text.shape == (3, 512) and text.dtype == torch.float32 and torch.isfinite(text).all()
    assert enc.encode_text([]).shape == (0, 512)


def _finish(visual, tokens: torch.Tensor, first_block: int) -> torch.Tensor:
    """Run ``tokens [B, L, W]`` through blocks ``first_block..`` (0-based), ln_post, class-token pooling
    and the projection: the rest of the image tower after the hooked block."""
    x = tokens if visual.transformer.batch_first else tokens.transpose(0, 1)
    with torch.no_grad():
        for block in visual.transformer.resblocks[first_block:]:
            x = block(x)
        x = x if visual.transformer.batch_first else x.transpose(0, 1)  # [B, L, W]
        return visual.ln_post(x)[:, 0] @ visual.proj  # [B, D]


def test_vitb32_tokens_are_after_block_k(vitb32):
    px = frames(2, 224, seed=1)
    visual = vitb32.model.visual
    out6 = vitb32.encode_images(px)
    # after block 6 (1-based): blocks 7..12 plus the head reproduce cls; one block more or less does not
    torch.testing.assert_close(_finish(visual, out6["tokens"], 6), out6["cls"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_finish(visual, out6["tokens"], 5), out6["cls"], rtol=1e-2, atol=1e-2)
    assert not torch.allclose(_finish(visual, out6["tokens"], 7), out6["cls"], rtol=1e-2, atol=1e-2)
    # after the last block: only ln_post, pooling and proj remain
    last = ClipEncoder(
        vitb32.model, dataclasses.replace(vitb32.spec, tokens_layer=12), vitb32.device, vitb32.dtype
    )
    out12 = last.encode_images(px)
    torch.testing.assert_close(out12["cls"], out6["cls"])
    torch.testing.assert_close(_finish(visual, out12["tokens"], 12), out12["cls"], rtol=1e-4, atol=1e-4)


def test_tokens_layer_range():
    with pytest.raises(ValueError, match="from 1"):
        ClipSpec(tokens_layer=-1)
    enc0 = load_clip(tiny_spec(tokens_layer=0), device="cpu")  # the tokens entering block 1 (after ln_pre)
    assert enc0.encode_images(frames(2, 32))["tokens"].shape == (2, 17, 64)
    with pytest.raises(ValueError, match=r"blocks 1\.\.2"):
        load_clip(tiny_spec(tokens_layer=3), device="cpu")
    enc = load_clip(tiny_spec(tokens_layer=2), device="cpu")
    assert enc.encode_images(frames(3, 32))["tokens"].shape == (3, 17, 64)  # 1 + (32/8)^2 tokens


# -- normalisation and precision -----------------------------------------------------------------
def test_normalisation_matches_manual(tiny):
    assert tiny.mean == pytest.approx(OPENAI_MEAN) and tiny.std == pytest.approx(OPENAI_STD)
    assert tiny.preprocess_provenance() == {
        "image_size": 32,
        "resize": "shortest-side bicubic + centre crop",
        "mean": list(tiny.mean),
        "std": list(tiny.std),
    }
    px = frames(3, 32, seed=2)
    x = torch.from_numpy(px).permute(0, 3, 1, 2).float() / 255.0  # [B, 3, S, S] in [0, 1]
    x = (x - torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = tiny.model.encode_image(x)
    torch.testing.assert_close(tiny.encode_images(px)["cls"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        tiny.encode_images(torch.from_numpy(px))["cls"], expected, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 32, 32, 3), np.float32),
        np.zeros((2, 3, 32, 32), np.uint8),
        np.zeros((2, 30, 30, 3), np.uint8),
        np.zeros((32, 32, 3), np.uint8),
    ],
)
def test_bad_pixels_raise(tiny, bad):
    with pytest.raises(ValueError, match=r"uint8 \[B, 32, 32, 3\]"):
        tiny.encode_images(bad)


def test_bf16_autocast_on_cpu_close_to_fp32(tiny):
    low = ClipEncoder(tiny.model, tiny.spec, tiny.device, resolve_dtype("bf16", tiny.device))
    px = frames(4, 32, seed=3)
    a, b = tiny.encode_images(px)["cls"], low.encode_images(px)["cls"]
    assert b.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_close_to_cpu_fp32(tiny):
    gpu = load_clip(tiny_spec(tokens_layer=1), device="cuda")
    assert gpu.dtype == torch.float16
    px = frames(8, 32, seed=4)
    out = gpu.encode_images(px)
    assert out["cls"].device.type == "cpu" and out["cls"].dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(out["cls"], tiny.encode_images(px)["cls"]).min() > 0.999


def test_resolve_device_and_dtype():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    for bad in ("tpu", "gpu0"):
        with pytest.raises(ValueError, match="cpu, cuda"):
            resolve_device(bad)
    with pytest.raises(ValueError, match="precision"):
        resolve_dtype("fp64", torch.device("cpu"))


@no_cuda
def test_cuda_requested_without_cuda():
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda:0")


# -- weights policy ------------------------------------------------------------------------------
def test_random_weights_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = (load_clip(tiny_spec(random_seed=s), device="cpu") for s in (0, 0, 1))
    torch.testing.assert_close(torch.rand(3), expected_next)
    sa, sb, sc = (e.model.state_dict() for e in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["visual.proj"], sc["visual.proj"])
    px = frames(2, 32)
    assert torch.equal(a.encode_images(px)["cls"], b.encode_images(px)["cls"])
    assert not torch.allclose(a.encode_images(px)["cls"], c.encode_images(px)["cls"])
    assert c.spec.weights_provenance() == {"kind": "random", "seed": 1}


def test_failed_download_raises_and_never_goes_random(offline):
    with pytest.raises(WeightsError) as err:
        load_clip(ClipSpec(model="ViT-B-32", pretrained="openai"), device="cpu")
    assert offline == ["timm/vit_base_patch32_clip_224.openai/"]  # the real download path was tried
    assert_names_both_options(err)
    assert "openai" in str(err.value) and "network is unreachable" in str(err.value)
    assert ClipSpec().weights_provenance() == {"kind": "pretrained", "tag": "openai"}


@pytest.mark.parametrize("tag", ["no-such-tag", None])
def test_unknown_or_missing_tag(tag):
    with pytest.raises(WeightsError) as err:
        load_clip(tiny_spec(weights="pretrained", pretrained=tag), device="cpu")
    assert_names_both_options(err)


def test_unknown_model_and_bad_options():
    with pytest.raises(ValueError, match="unknown model"):
        load_clip(ClipSpec(model="ViT-Q-99", weights="random"), device="cpu")
    with pytest.raises(ValueError, match="weights"):
        ClipSpec(weights="randn")
    assert register_tiny_model() == register_tiny_model() == TINY_MODEL


def test_missing_checkpoint(tmp_path, offline):
    spec = ClipSpec(model=TINY_MODEL, checkpoint=str(tmp_path / "absent.pt"))
    with pytest.raises(WeightsError, match="no such file") as err:
        load_clip(spec, device="cpu")
    assert_names_both_options(err)
    with pytest.raises(WeightsError):
        spec.weights_provenance()
    assert offline == []  # a checkpoint never falls back to the tag


def _corrupt(kind: str, tiny: ClipEncoder, path) -> None:
    sd = tiny.model.state_dict()
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint" * 100)
    elif kind == "truncated":
        torch.save(sd, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "missing key":
        torch.save({k: v for k, v in sd.items() if k != "visual.proj"}, path)
    elif kind == "wrong shape":
        torch.save({**sd, "visual.proj": torch.zeros(64, 16)}, path)
    elif kind == "empty":
        torch.save({}, path)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "missing key", "wrong shape", "empty"])
def test_corrupt_checkpoint(tiny, tmp_path, kind, offline):
    path = tmp_path / "weights.pt"
    _corrupt(kind, tiny, path)
    with pytest.raises(WeightsError) as err:
        load_clip(ClipSpec(model=TINY_MODEL, checkpoint=str(path)), device="cpu")
    assert_names_both_options(err)
    assert str(path) in str(err.value)
    assert offline == []


class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _script_holder(state_dict: dict[str, torch.Tensor]) -> torch.jit.ScriptModule:
    """Parameters under their state_dict names in a TorchScript module: stands in for OpenAI's .pt files."""
    holder = _Identity()
    for name, value in state_dict.items():
        *parents, leaf = name.split(".")
        module = holder
        for p in parents:
            if not hasattr(module, p):
                module.add_module(p, _Identity())
            module = getattr(module, p)
        module.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))
    return torch.jit.script(holder)


def _save(fmt: str, state_dict: dict[str, torch.Tensor], path) -> None:
    if fmt == "state_dict":
        torch.save(state_dict, path)
    elif fmt == "training":  # open_clip's training checkpoint, saved from DistributedDataParallel
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state_dict.items()}}, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    elif fmt == "torchscript":
        torch.jit.save(_script_holder(state_dict), str(path))


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
@pytest.mark.parametrize("fmt", ["state_dict", "training", "safetensors", "torchscript"])
def test_checkpoint_loads_strictly_and_hashes(tiny, tmp_path, fmt, offline):
    source = load_clip(tiny_spec(random_seed=7), device="cpu")  # differs from the default-seed init
    path = tmp_path / f"tiny.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    _save(fmt, source.model.state_dict(), path)
    enc = load_clip(ClipSpec(model=TINY_MODEL, checkpoint=str(path)), device="cpu")
    assert offline == []  # the checkpoint wins over the default tag
    px = frames(3, 32, seed=5)
    assert torch.equal(enc.encode_images(px)["cls"], source.encode_images(px)["cls"])
    assert not torch.allclose(enc.encode_images(px)["cls"], tiny.encode_images(px)["cls"])
    assert torch.equal(enc.encode_text(PROMPTS), source.encode_text(PROMPTS))
    assert enc.spec.weights_provenance() == {
        "kind": "checkpoint",
        "path": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def test_spec_from_config_rebuilds_the_encoder_of_a_feature_set(tmp_path, offline):
    rnd = spec_from_config({"modality": "clip", "model": TINY_MODEL, "weights": {"kind": "random", "seed": 3}})
    assert rnd == tiny_spec(random_seed=3)
    tag = spec_from_config({"modality": "clip", "model": "ViT-B-32", "weights": {"kind": "pretrained", "tag": "openai"}})
    assert tag == ClipSpec(model="ViT-B-32", pretrained="openai")
    path = tmp_path / "w.pt"
    path.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    cfg = {"modality": "clip", "name": "fs", "model": TINY_MODEL, "weights": {"kind": "checkpoint", "sha256": digest},
           "notes": {"checkpoint_path": str(path)}}
    assert spec_from_config(cfg).checkpoint == str(path)
    other = tmp_path / "other.pt"
    other.write_bytes(b"other weights")
    with pytest.raises(WeightsError, match="was extracted with"):
        spec_from_config(cfg, checkpoint=str(other))
    with pytest.raises(WeightsError, match="give its path"):
        spec_from_config({**cfg, "notes": {}})
    with pytest.raises(ValueError, match="not a clip feature set"):
        spec_from_config({"modality": "audio", "name": "a"})


def test_tokenize_matches_what_encode_text_embeds(tiny):
    ids = tiny.tokenize(["a happy face", "sad"])
    assert ids.shape == (2, 77) and ids.dtype == torch.int64
    with torch.inference_mode():
        assert torch.equal(tiny.model.encode_text(ids).float(), tiny.encode_text(["a happy face", "sad"]))


# -- EmotionCLIP's subject-aware prompt (SPEC §4.4) ----------------------------------------------
def _with_tokens(enc: ClipEncoder, layer: int) -> ClipEncoder:
    return ClipEncoder(enc.model, dataclasses.replace(enc.spec, tokens_layer=layer), enc.device, enc.dtype)


def _batch_major(x: torch.Tensor, visual) -> torch.Tensor:
    return x if visual.transformer.batch_first else x.transpose(0, 1)  # [B, L, W]


def test_patch_geometry_attributes(tiny, vitb32):
    assert (tiny.patch_size, tiny.grid_size, tiny.n_tokens) == (8, 4, 17)
    assert (vitb32.patch_size, vitb32.grid_size, vitb32.n_tokens) == (32, 7, 50)


@pytest.mark.parametrize("name", ["tiny", "vitb32"])
def test_stepwise_forward_is_open_clips_forward(name, request):
    """The prompted path rebuilds VisionTransformer.forward from its modules; without a prompt it must be
    bit for bit open_clip's own forward."""
    enc = request.getfixturevalue(name)
    x = enc._normalise(frames(2, enc.image_size, seed=5))
    with torch.inference_mode():
        assert torch.equal(enc._vit_forward(x), enc.model.encode_image(x))


@pytest.mark.parametrize("name", ["tiny", "vitb32"])
def test_zero_coverage_is_exactly_the_plain_output(name, request):
    enc = _with_tokens(request.getfixturevalue(name), 1)
    px = frames(2, enc.image_size, seed=6)
    plain = enc.encode_images(px)
    for zeros in (torch.zeros(2, enc.grid_size**2), np.zeros((2, enc.grid_size**2), dtype=np.float32)):
        got = enc.encode_images(px, coverage=zeros)
        assert got.keys() == plain.keys() == {"cls", "tokens"}
        assert all(torch.equal(got[k], plain[k]) for k in plain)


def test_prompt_token_is_the_coverage_weighted_sum_of_patch_positions(tiny):
    """Captured at the input of ln_pre (after + pos) and of block 1: the image tokens are untouched and
    one more token, sum_p a_p pos[1+p], follows them; it changes the output but not the tokens' shape."""
    enc = _with_tokens(tiny, 1)
    visual = enc.model.visual
    cover = torch.zeros(3, 16)
    cover[0, 6] = 1.0  # one patch (row 1, col 2): the token is pos[7]
    cover[1] = torch.linspace(0.0, 1.0, 16)
    cover[2, [0, 15]] = torch.tensor([0.25, 0.5])
    pre_ln, into_block = [], []
    hooks = [
        visual.ln_pre.register_forward_pre_hook(lambda _m, args: pre_ln.append(args[0].clone())),
        visual.transformer.resblocks[0].register_forward_pre_hook(
            lambda _m, args: into_block.append(_batch_major(args[0], visual).clone())
        ),
    ]
    px = frames(3, 32, seed=7)
    try:
        plain = enc.encode_images(px)
        out = enc.encode_images(px, coverage=cover)
    finally:
        for h in hooks:
            h.remove()
    pos = visual.positional_embedding.detach()  # [17, W]; pos[0] is the class token's
    before = pre_ln[1]  # [3, 18, W]
    assert before.shape == (3, 18, enc.width)
    assert torch.equal(before[:, :17], pre_ln[0])  # class and patch tokens as in the plain forward
    assert torch.equal(before[0, 17], pos[7])
    for b in (1, 2):
        want = sum(float(cover[b, p]) * pos[1 + p] for p in range(16))
        torch.testing.assert_close(before[b, 17], want, rtol=1e-6, atol=1e-6)
    assert torch.equal(into_block[1][:, :17], into_block[0])
    with torch.no_grad():
        torch.testing.assert_close(into_block[1][0, 17], visual.ln_pre(pos[7]))  # ln_pre sees the token too
    assert out["tokens"].shape == plain["tokens"].shape == (3, 17, enc.width)  # the prompt token left out
    for b in range(3):  # every block attends to it
        assert not torch.allclose(out["cls"][b], plain["cls"][b], atol=1e-4)
        assert not torch.allclose(out["tokens"][b], plain["tokens"][b], atol=1e-4)


def test_the_prompt_depends_on_where_the_subject_is(tiny):
    px = np.repeat(frames(1, 32, seed=9), 3, axis=0)
    cover = torch.zeros(3, 16)
    cover[0, 0], cover[1, 15], cover[2, :2] = 1.0, 1.0, 0.5
    cls = tiny.encode_images(px, coverage=cover)["cls"]
    assert not torch.allclose(cls[0], cls[1], atol=1e-4)
    assert not torch.allclose(cls[0], cls[2], atol=1e-4)


def test_mixed_batch_gives_plain_rows_their_plain_output(vitb32):
    px = frames(4, 224, seed=8)
    cover = torch.zeros(4, 49)
    cover[1, 24] = 1.0  # the centre patch
    cover[3, :7] = 0.5  # half the top row
    out = vitb32.encode_images(px, coverage=cover)
    plain_rows = vitb32.encode_images(px[[0, 2]])
    prompted_rows = vitb32.encode_images(px[[1, 3]], coverage=cover[[1, 3]])
    for key in ("cls", "tokens"):
        assert out[key].shape == (4, *plain_rows[key].shape[1:])
        assert torch.equal(out[key][[0, 2]], plain_rows[key])
        assert torch.equal(out[key][[1, 3]], prompted_rows[key])
    plain = vitb32.encode_images(px[[1, 3]])
    assert not torch.allclose(out["cls"][[1, 3]], plain["cls"], atol=1e-3)


def test_item_coverage_feeds_the_encoder(tiny):
    """emo.extract.modalities.boxes -> encode_images: frames without a subject keep their plain embedding."""
    from emo.decode.sampling import SamplingConfig, crop_boxes
    from emo.extract.modalities.boxes import coverage_for_item

    crops = crop_boxes(48, 64, SamplingConfig(views=2, image_size=32), "clip")  # [V=2, 4]
    index = np.array([[0], [40]])  # [M=2, N=1]
    cover = coverage_for_item([{"frame": 0, "box": [20, 10, 44, 40]}], index, crops, 32, tiny.patch_size)
    assert cover.shape == (2, 1, 2, 16)
    px = frames(4, 32, seed=10)  # [M*N*V, S, S, 3]
    out = tiny.encode_images(px, coverage=cover.reshape(-1, 16))
    plain = tiny.encode_images(px)
    assert torch.equal(out["cls"][2:], plain["cls"][2:])  # frame 40: no subject
    assert not torch.allclose(out["cls"][:2], plain["cls"][:2], atol=1e-4)


def test_prompt_under_bf16_autocast_close_to_fp32(tiny):
    low = ClipEncoder(tiny.model, tiny.spec, tiny.device, resolve_dtype("bf16", tiny.device))
    px = frames(4, 32, seed=11)
    cover = torch.rand(4, 16, generator=torch.Generator().manual_seed(0))
    a, b = tiny.encode_images(px, coverage=cover)["cls"], low.encode_images(px, coverage=cover)["cls"]
    assert b.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99


@pytest.mark.parametrize(
    "cover, message",
    [
        (torch.zeros(2, 15), r"\[B, G\*G\] = \[2, 16\]"),
        (torch.zeros(3, 16), r"\[B, G\*G\] = \[2, 16\]"),
        (torch.full((2, 16), 1.5), r"in \[0, 1\]"),
        (torch.full((2, 16), -0.1), r"in \[0, 1\]"),
        (torch.full((2, 16), float("nan")), r"in \[0, 1\]"),
    ],
)
def test_bad_coverage_raises(tiny, cover, message):
    with pytest.raises(ValueError, match=message):
        tiny.encode_images(frames(2, 32), coverage=cover)
