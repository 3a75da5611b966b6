"""The audio feature set: PyAV decoding at 16 kHz mono, spans, one wave per wav2vec2 pass (no padding),
ragged layers with exact lengths, failures of the audio set only, resume, keys, and the weights policy.

Models are tiny ``Wav2Vec2Config``s with random weights saved to a temporary directory."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from emo.cache.featureset import list_feature_sets
from emo.cache.loader import RaggedArray, load_features
from emo.cache.manifest import Item, Manifest, read_manifest, write_manifest
from emo.cache.shard import read_shard
from emo.cache.verify import verify_feature_set
from emo.datasets.synthetic import SynthConfig, generate
from emo.decode.audio import SAMPLE_RATE, decode_audio
from emo.decode.video import DecodeError
from emo.encoders.clip import WeightsError
from emo.extract.modalities.audio import AudioSpec, extract_audio
from emo.extract.runner import ExtractOptions
from tests import videos

LAYERS = (1, 2)
OPTS = dict(progress=False, shard_size=3)


def tiny_wav2vec2(path: Path, seed: int = 0, weights: bool = True) -> Path:
    """A 2-block wav2vec2 (hidden 32; conv stack 5x4x4 = 80 samples per frame) saved to ``path``:
    with ``weights`` by ``save_pretrained`` (a checkpoint directory), else its config.json only."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    cfg = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=8,
    )
    if weights:
        torch.manual_seed(seed)
        Wav2Vec2Model(cfg).save_pretrained(path)
    else:
        cfg.save_pretrained(path)
    return path


def write_pcm(path: Path, wave: np.ndarray, rate: int) -> Path:
    """Lossless audio-only file (pcm_s16le) of ``wave [C, S]`` in [-1, 1] at ``rate`` Hz: exact lengths."""
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout=layout)
        pcm = np.round(wave.T * 32767).astype(np.int16)  # [S, C] interleaved
        for s in range(0, pcm.shape[0], 1000):
            frame = av.AudioFrame.from_ndarray(pcm[s : s + 1000].reshape(1, -1), format="s16", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, s, Fraction(1, rate)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def chirp(seconds: float, rate: int) -> np.ndarray:
    """``[S]`` a tone sweeping 200 -> 2000 Hz: every instant differs, so a misplaced cut shows."""
    t = np.arange(round(seconds * rate)) / rate
    return 0.5 * np.sin(2 * np.pi * (200 * t + 900 * t**2 / seconds))


def _decoded_samples(path: Path) -> tuple[int, int]:
    """(samples, rate) of the first audio stream as PyAV decodes it, no resampling."""
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        return sum(f.samples for f in c.decode(s)), s.rate


# --- decoding ------------------------------------------------------------------------------------


def test_resampled_length_is_the_duration_at_16k_and_stereo_becomes_mono(tmp_path):
    wave = chirp(1.3, 44100)
    pcm = write_pcm(tmp_path / "tone.mkv", np.stack([wave, wave]), 44100)
    got = decode_audio(pcm)
    assert got.wave.dtype == np.float32 and got.wave.ndim == 1 and got.source_channels == 2
    assert abs(len(got.wave) - 1.3 * SAMPLE_RATE) <= 1
    ref = np.interp(np.arange(len(got.wave)) / SAMPLE_RATE, np.arange(len(wave)) / 44100, wave)
    # FFmpeg's downmix is (L + R) / sqrt(2): the same signal, scaled (wav2vec2's normalisation removes scale)
    assert np.abs(got.wave[50:-50] / np.sqrt(2) - ref[50:-50]).max() < 0.02

    aac = videos.make_video(tmp_path / "v.mp4", 30, audio=True)  # AAC 48 kHz, 1.2 s of tone
    n, rate = _decoded_samples(aac)
    got = decode_audio(aac)
    assert abs(len(got.wave) - n * SAMPLE_RATE / rate) <= 320  # within one wav2vec2 frame (20 ms)


def test_span_is_cut_at_start_and_end_also_after_a_seek(tmp_path):
    wave = chirp(5.0, 48000)[None]
    path = write_pcm(tmp_path / "long.mkv", wave, 48000)
    full = decode_audio(path).wave
    near = decode_audio(path, 0.5, 1.25)  # decoded from the file's start
    assert len(near.wave) == 12000 and near.start == pytest.approx(0.5)
    np.testing.assert_array_equal(near.wave, full[8000:20000])
    far = decode_audio(path, 3.5, 4.0)  # seeks first (start > 2 s)
    assert len(far.wave) == 8000
    np.testing.assert_allclose(far.wave, full[56000:64000], atol=0.03)  # at most a sub-sample phase apart
    tail = decode_audio(path, start=4.5)
    assert len(tail.wave) == 8000
    with pytest.raises(DecodeError, match=r"no audio in \[6\.0, 7\.0\)"):
        decode_audio(path, 6.0, 7.0)


def test_decode_refuses_no_audio_and_too_long(tmp_path):
    silent = videos.make_video(tmp_path / "silent.mp4", 5)
    with pytest.raises(DecodeError, match="no audio stream \\(video only\\)"):
        decode_audio(silent)
    path = write_pcm(tmp_path / "two.mkv", chirp(2.0, 16000)[None], 16000)
    with pytest.raises(DecodeError, match="--max-seconds"):
        decode_audio(path, max_seconds=1.0)
    assert len(decode_audio(path, 0.2, 1.1, max_seconds=1.0).wave) == 14400  # the span is what counts


def test_decode_worker_module_does_not_import_torch():
    from emo.encoders import hf
    from emo.extract.modalities import audio

    assert (audio.DEFAULT_MODEL, audio.SAMPLE_RATE) == (hf.DEFAULT_WAV2VEC2, hf.SAMPLE_RATE)
    code = "import sys, emo.decode.audio; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- the feature set -----------------------------------------------------------------------------


def _manifest(root: Path, items: list[Item]) -> None:
    m = Manifest(dataset="aud", classes=["x"], items=items, root=str(root), split_schemes={"all": ["0"]})
    write_manifest(m, root / "manifest.jsonl")


@pytest.fixture(scope="module")
def audio_cache(tmp_path_factory):
    """Synthetic clips (16 kHz AAC), a span of one, a 44.1 kHz stereo PCM file, a video without audio
    and a 1 ms sound, extracted with a tiny checkpoint through one decode worker."""
    root = tmp_path_factory.mktemp("aud")
    generate(root / "synth", SynthConfig(classes=1, per_class=2, frames=24, fps=12, size=(32, 32)))
    write_pcm(root / "tone.mkv", np.stack([chirp(1.3, 44100)] * 2), 44100)
    videos.make_video(root / "silent.mp4", 10)
    write_pcm(root / "blip.wav", chirp(0.001, 16000)[None], 16000)
    synth = sorted(p.relative_to(root).as_posix() for p in (root / "synth").rglob("*.mp4"))
    items = [Item(id=f"s{k}", path=p, label="x") for k, p in enumerate(synth)]
    items += [
        Item(id="span", path=synth[0], label="x", start=0.5, end=1.25),
        Item(id="tone", path="tone.mkv", label="x"),
        Item(id="silent", path="silent.mp4", label="x"),
        Item(id="blip", path="blip.wav", label="x"),
    ]
    _manifest(root, items)
    ckpt = tiny_wav2vec2(root.parent / f"{root.name}-w2v")
    spec = AudioSpec(checkpoint=str(ckpt), layers=LAYERS)
    summary = extract_audio(root, spec, ExtractOptions(workers=1, **OPTS), device="cpu")
    (fs,) = list_feature_sets(root)
    return root, ckpt, spec, summary, fs


def _stored(fs) -> dict[str, dict]:
    out = {}
    for k in fs.done_indices():
        ids, arrays = read_shard(fs.shard_path(k))
        for row, i in enumerate(ids):
            out[i] = {}
            for name, a in arrays.items():
                if isinstance(a, tuple):  # ragged: (values, offsets)
                    values, offsets = a
                    out[i][name] = values[offsets[row] : offsets[row + 1]]
                else:
                    out[i][name] = a[row]
    return out


def test_missing_audio_and_too_short_audio_fail_the_audio_set_only(audio_cache):
    root, _, _, summary, fs = audio_cache
    assert (summary.ok, summary.failed, summary.total) == (4, 2, 6)
    assert summary.done_here == 4 and summary.units == ("videos", "audio frames")
    failures = {f["id"]: f for f in fs.failures()}
    assert set(failures) == {"silent", "blip"}
    assert failures["silent"]["stage"] == "decode" and "no audio stream" in failures["silent"]["error"]
    assert "too short" in failures["blip"]["error"]
    assert verify_feature_set(fs).ok
    assert fs.config["modality"] == "audio" and fs.config["layers"] == list(LAYERS)
    assert fs.config["weights"]["kind"] == "checkpoint" and not fs.random_weights


def test_stored_states_equal_a_direct_unpadded_call_with_exact_lengths(audio_cache):
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    root, ckpt, _, _, fs = audio_cache
    ref = Wav2Vec2Model.from_pretrained(ckpt).eval()
    extractor = Wav2Vec2FeatureExtractor()  # do_normalize=True, as facebook/wav2vec2-base
    stored = _stored(fs)
    by_id = read_manifest(root).by_id()
    assert set(stored) == {"s0", "s1", "span", "tone"}
    lengths = set()
    for i, arrays in stored.items():
        it = by_id[i]
        wave = decode_audio(root / it.path, it.start, it.end).wave
        x = extractor(wave, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values  # [1, S]
        with torch.inference_mode():
            hs = ref(x, output_hidden_states=True).hidden_states
        t = hs[0].shape[1]
        assert int(arrays["audio/length"]) == t == len(arrays["audio/layer01"]) == len(arrays["audio/layer02"])
        assert arrays["audio/seconds"] == pytest.approx(len(wave) / SAMPLE_RATE)
        for k in LAYERS:
            got = arrays[f"audio/layer{k:02d}"]
            assert got.dtype == np.float16 and got.shape == (t, 32)
            np.testing.assert_allclose(got.astype(np.float32), hs[k][0].numpy(), atol=2e-2, rtol=1e-2)
        lengths.add(t)
    assert len(lengths) == 3  # the two synthetic clips share a length; spans and files differ


def test_padding_would_have_changed_the_states(audio_cache):
    """The check above has teeth: batching the short span with a longer wave (zero padding) changes it."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    root, ckpt, _, _, fs = audio_cache
    ref = Wav2Vec2Model.from_pretrained(ckpt).eval()
    stored = _stored(fs)
    synth0 = sorted((root / "synth").rglob("*.mp4"))[0]
    short, long = decode_audio(synth0, 0.5, 1.25).wave, decode_audio(synth0).wave
    batch = Wav2Vec2FeatureExtractor()([short, long], sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt")
    with torch.inference_mode():
        padded = ref(batch.input_values, output_hidden_states=True).hidden_states[2][0]
    t = int(stored["span"]["audio/length"])
    gap = np.abs(padded[:t].numpy() - stored["span"]["audio/layer02"].astype(np.float32)).max()
    assert gap > 0.1, gap


def test_loader_gives_ragged_layers_with_their_lengths(audio_cache):
    root, _, _, _, fs = audio_cache
    fd = load_features(root)
    assert fd.ids == ["s0", "s1", "span", "tone"]
    layer = fd.arrays["audio/layer02"]
    assert isinstance(layer, RaggedArray) and layer.item_shape == (32,)
    assert layer.lengths.tolist() == fd.arrays["audio/length"].tolist()
    stored = _stored(fs)
    for row, i in enumerate(fd.ids):
        np.testing.assert_array_equal(layer[row].numpy(), stored[i]["audio/layer02"])
    padded, lengths = layer.padded()
    assert padded.shape == (4, int(lengths.max()), 32) and torch.equal(padded[2, : lengths[2]], layer[2])
    sub = fd.select([3, 0])
    assert sub.ids == ["tone", "s0"] and torch.equal(sub.arrays["audio/layer02"][0], layer[3])


def test_rerun_writes_nothing_and_layers_and_seed_change_the_key(audio_cache, tmp_path):
    root, ckpt, spec, _, fs = audio_cache
    mtimes = {p: p.stat().st_mtime_ns for p in (fs.path / "shards").glob("*")}
    again = extract_audio(root, spec, ExtractOptions(workers=0, **OPTS), device="cpu")
    assert again.done_here == 0 and again.feature_set == fs.name and (again.ok, again.failed) == (4, 2)
    assert {p: p.stat().st_mtime_ns for p in (fs.path / "shards").glob("*")} == mtimes
    assert len(fs.failures()) == 2, "failures are recorded once"

    one = root.parent / f"{root.name}-one"
    one.mkdir()
    _manifest(one, [Item(id="tone", path=str(root / "tone.mkv"), label="x")])
    opts = ExtractOptions(workers=0, **OPTS)
    keys = {
        extract_audio(one, AudioSpec(checkpoint=str(ckpt), layers=layers), opts, device="cpu").feature_set
        for layers in [(1, 2), (2,), (2, 1)]
    }
    assert len(keys) == 2  # (2, 1) is (1, 2)
    cfg_dir = tiny_wav2vec2(tmp_path / "cfg", weights=False)
    for seed in (0, 1):
        s = extract_audio(one, AudioSpec(model=str(cfg_dir), weights="random", random_seed=seed, layers=(2,)),
                          opts, device="cpu")
        assert s.random_weights and s.line().startswith("RANDOM WEIGHTS") and "-random-" in s.feature_set
        keys.add(s.feature_set)
    assert len(keys) == 4


def test_long_items_are_refused_and_recorded(tmp_path):
    write_pcm(tmp_path / "two.mkv", chirp(2.0, 16000)[None], 16000)
    _manifest(tmp_path, [Item(id="two", path="two.mkv", label="x")])
    ckpt = tiny_wav2vec2(tmp_path.parent / f"{tmp_path.name}-w2v")
    s = extract_audio(tmp_path, AudioSpec(checkpoint=str(ckpt), layers=(2,), max_seconds=1.5),
                      ExtractOptions(workers=0, **OPTS), device="cpu")
    assert (s.ok, s.failed) == (0, 1)
    (fs,) = list_feature_sets(tmp_path)
    assert "--max-seconds" in fs.failures()[0]["error"]


def test_failed_weights_stop_the_run_and_never_become_random(tmp_path):
    from safetensors.torch import load_file, save_file

    videos.make_video(tmp_path / "v.mp4", 10, audio=True)
    _manifest(tmp_path, [Item(id="v", path="v.mp4", label="x")])
    opts = ExtractOptions(workers=0, **OPTS)
    with pytest.raises(WeightsError, match="--checkpoint") as e:
        extract_audio(tmp_path, AudioSpec(checkpoint=str(tmp_path / "missing")), opts, device="cpu")
    assert "--model" in str(e.value)
    with pytest.raises(WeightsError, match="--checkpoint"):
        extract_audio(tmp_path, AudioSpec(model=str(tmp_path / "no" / "such" / "model")), opts, device="cpu")
    broken = tiny_wav2vec2(tmp_path.parent / f"{tmp_path.name}-broken")
    weights = load_file(broken / "model.safetensors")
    del weights[next(k for k in weights if k.startswith("encoder.layers.1."))]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsError, match="missing or mismatched"):
        extract_audio(tmp_path, AudioSpec(checkpoint=str(broken), layers=(2,)), opts, device="cpu")
    good = tiny_wav2vec2(tmp_path.parent / f"{tmp_path.name}-good")
    with pytest.raises(ValueError, match="hidden states 0..2"):
        extract_audio(tmp_path, AudioSpec(checkpoint=str(good)), opts, device="cpu")  # default layers 9, 12
    assert list_feature_sets(tmp_path) == [], "no feature set may be created when the model fails"
    with pytest.raises(ValueError, match="layers"):
        AudioSpec(layers=())


def test_cli_extract_audio_resumes_and_counts_failures(audio_cache):
    from typer.testing import CliRunner

    from emo.cli import app

    root, ckpt, spec, summary, fs = audio_cache
    args = ["extract", "audio", str(root), "--checkpoint", str(ckpt), "--layers", ",".join(map(str, LAYERS)),
            "--no-progress"]
    res = CliRunner().invoke(app, args)  # the same config: the fixture's feature set, nothing to do
    assert res.exit_code == 1 and "this run 0 videos" in res.output and f"{summary.failed} item(s) failed" in res.output
    assert [s.name for s in list_feature_sets(root)] == [fs.name]
    bad = CliRunner().invoke(app, ["extract", "audio", str(root), "--checkpoint", str(root / "nowhere")])
    assert bad.exit_code == 2 and "--checkpoint" in bad.output


def test_a_preset_runs_clip_then_audio_steps(tmp_path):
    from emo.extract.presets import run_preset

    generate(tmp_path / "videos", SynthConfig(classes=2, per_class=2, frames=24, fps=12, size=(32, 32)))
    ckpt = tiny_wav2vec2(tmp_path / "w2v")
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "mini.json").write_text(json.dumps({
        "adapter": "folder", "prepare": {"test_ratio": 0.5},
        "extract": [{"encoder": "clip", "model": "emo-tiny-ViT", "weights": "random", "segments": 4},
                    {"encoder": "audio", "checkpoint": str(ckpt), "layers": list(LAYERS)}],
    }))
    lines = []
    failed = run_preset("mini", tmp_path / "videos", tmp_path / "cache", workers=0, device="cpu",
                        preset_dir=presets, echo=lines.append)
    assert failed == 0
    assert sorted(fs.config["modality"] for fs in list_feature_sets(tmp_path / "cache")) == ["audio", "clip"]
    assert sum("4 ok, 0 failed of 4 items" in line for line in lines) == 2


# -- SEGUE's release -> a wav2vec2 checkpoint directory ------------------------------------------------
def _segue_release(path: Path, legacy_names: bool = True) -> tuple[Path, dict]:
    """A replica of SEGUE's release directory around the tiny wav2vec2: config.json (model_type segue)
    and pytorch_model.bin with ``speech_encoder.*`` (weight-norm under its pre-parametrisation names,
    as transformers 4.21 saved it) and ``text_encoder.*``."""
    from transformers import Wav2Vec2Model

    speech = Wav2Vec2Model.from_pretrained(tiny_wav2vec2(path.parent / f"{path.name}-speech", seed=5))
    own = {k: v.clone() for k, v in speech.state_dict().items()}
    state = {}
    for k, v in own.items():
        if legacy_names:
            k = k.replace(".parametrizations.weight.original0", ".weight_g").replace(
                ".parametrizations.weight.original1", ".weight_v")
        state["speech_encoder." + k] = v
    state["text_encoder.embeddings.word_embeddings.weight"] = torch.randn(10, 4)
    path.mkdir(parents=True)
    torch.save(state, path / "pytorch_model.bin")
    (path / "config.json").write_text(json.dumps({
        "architectures": ["SegueModel"], "model_type": "segue", "n_classes": 0,
        "speech_encoder_checkpoint": "facebook/wav2vec2-base-960h",
        "text_encoder_checkpoint": "sentence-transformers/all-mpnet-base-v2"}))
    return path, own


def test_segue_conversion_keeps_every_speech_weight_and_loads_strictly(tmp_path):
    from emo.encoders.clip import file_sha256
    from emo.encoders.hf import load_wav2vec2
    from emo.encoders.segue import convert_segue

    src, own = _segue_release(tmp_path / "segue")
    base = tmp_path / "segue-speech"  # the tiny architecture stands for wav2vec2-base-960h
    summary = convert_segue(src, tmp_path / "segue-w2v2", base_config=str(base))
    assert summary["dropped"] == ["text_encoder"] and summary["tensors"] == len(own)
    enc = load_wav2vec2(checkpoint=summary["output"], device="cpu")  # emo's strict loader: no weight unset
    loaded = enc.model.state_dict()
    assert set(loaded) == set(own)
    for k, v in own.items():
        assert torch.equal(loaded[k], v), k
    assert enc.normalize  # wav2vec2-base's preprocessor: zero-mean unit-variance input
    from emo.encoders.hf import dir_provenance
    from emo.heads.runs import describe_encoder

    weights = dir_provenance(summary["output"])  # what an audio set's key holds
    assert weights["converted_from"] == {"source": "SEGUE", "sha256": file_sha256(src / "pytorch_model.bin")}
    assert "converted from SEGUE" in describe_encoder({"modality": "audio", "model": "wav2vec2", "weights": weights})


def test_segue_conversion_refuses_what_it_cannot_place(tmp_path):
    from typer.testing import CliRunner

    from emo.cli import app
    from emo.encoders.segue import convert_segue

    src, _ = _segue_release(tmp_path / "segue")
    with pytest.raises(WeightsError, match="does not fit the wav2vec2 architecture"):  # base-960h != tiny
        convert_segue(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    plain = tiny_wav2vec2(tmp_path / "plain")
    with pytest.raises(WeightsError, match="not SEGUE"):
        convert_segue(plain, tmp_path / "out2")
    res = CliRunner().invoke(app, ["extract", "convert-segue", str(src), "--out", str(tmp_path / "o3"),
                                   "--base-config", str(tmp_path / "segue-speech")])
    assert res.exit_code == 0, res.output
    assert f"--checkpoint {tmp_path / 'o3'}" in res.output
