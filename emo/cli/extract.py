"""``emo extract ...``: stage 1, frozen encoders into the feature cache."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import csv_list, extract_app, friendly, report_skipped


@extract_app.command("clip")
@friendly
def extract_clip_cmd(
    cache: Path = typer.Argument(..., help="Dataset cache directory (holds manifest.jsonl)."),
    model: str = typer.Option("ViT-B-32", help="open_clip model name."),
    pretrained: str = typer.Option("openai", help="open_clip pretrained tag (downloads through open_clip)."),
    checkpoint: Path = typer.Option(None, help="Local weights file for offline boxes (wins over --pretrained)."),
    weights: str = typer.Option("pretrained", help="pretrained | random (random: tests and demo only)."),
    segments: int = typer.Option(64, "--segments", "-M", help="Uniform segments per video (M)."),
    frames_per_segment: int = typer.Option(1, "--frames-per-segment", "-N", help="Frames stored per segment (N)."),
    views: int = typer.Option(1, "--views", "-V", help="Spatial views (V); view 0 = centre crop."),
    center_crop: float = typer.Option(1.0, help="View 0's side / the shorter side (EmotionCLIP: 0.875 = 224/256)."),
    tokens_layer: int = typer.Option(None, help="Also store all tokens after this block (0: the tokens entering block 1, after ln_pre)."),
    pixels: bool = typer.Option(False, "--pixels", help="Also store the preprocessed uint8 frames."),
    subject_prompt: bool = typer.Option(False, "--subject-prompt",
                                        help="EmotionCLIP's subject token from the manifest's subject_boxes."),
    box_tolerance: int = typer.Option(12, help="--subject-prompt: frames to the nearest annotated frame."),
    seed: int = typer.Option(0, help="Seed of the random crops (and of random weights)."),
    shard_size: int = typer.Option(64, help="Items per shard."),
    workers: int = typer.Option(None, help="Decode processes, one core each (default: the cores less one; 0: decode in this process, no timeout)."),
    timeout: float = typer.Option(120.0, help="Seconds allowed to decode one video."),
    batch_size: int = typer.Option(256, help="Frames per encoder batch (frames of many videos)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    precision: str = typer.Option("auto", help="auto (fp16 on CUDA, fp32 on CPU) | fp16 | bf16 | fp32."),
    backend: str = typer.Option("auto", help="Decoder: auto (PyAV seeking where exact, else decord, else PyAV whole-stream) | decord | pyav."),
    decode_device: str = typer.Option("cpu", help="Where videos decode: cpu | cuda (the GPU's NVDEC; the CPU takes what it cannot) | auto (NVDEC when the encoder runs on CUDA and FFmpeg opens NVDEC there). cpu until NVDEC is checked on a GPU (docs/decoding.md)."),
    skip_invalid: bool = typer.Option(False, help="Skip invalid manifest rows (listed) instead of stopping."),
    retry_failed: bool = typer.Option(False, help="Try items that failed in earlier runs again."),
    verify_deep: bool = typer.Option(False, help="Also read every finished shard's sha256 and re-extract one whose bits changed."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
    local_cluster: int = typer.Option(0, help="Run shards as dask tasks on N local worker processes (one per GPU)."),
    scheduler: str = typer.Option(None, help="Run shards as dask tasks on an existing cluster: tcp://host:8786."),
) -> None:
    """CLIP image embeddings of M×N×V sampled frames per video into a feature set of CACHE."""
    from emo.decode.sampling import SamplingConfig
    from emo.encoders.clip import ClipSpec
    from emo.extract.modalities.clip import extract_clip
    from emo.extract.runner import ExtractOptions

    if weights not in ("pretrained", "random"):
        raise ValueError(f"--weights must be pretrained or random, got {weights!r}")
    spec = ClipSpec(
        model=model, pretrained=pretrained, checkpoint=str(checkpoint) if checkpoint else None,
        weights=weights, random_seed=seed, tokens_layer=tokens_layer,
    )
    sampling = SamplingConfig(segments=segments, frames_per_segment=frames_per_segment, views=views, seed=seed,
                              center_crop=center_crop)
    options = ExtractOptions(
        shard_size=shard_size, workers=workers, timeout=timeout, batch_size=batch_size, pixels=pixels,
        subject_prompt=subject_prompt, box_tolerance=box_tolerance,
        backend=backend, decode_device=decode_device, skip_invalid=skip_invalid, retry_failed=retry_failed,
        progress=progress, verify_deep=verify_deep,
    )
    if local_cluster or scheduler:
        from emo.extract.cluster import extract_clip_distributed

        summary = extract_clip_distributed(cache, spec, sampling, options, device=device, precision=precision,
                                           scheduler=scheduler, local_cluster=local_cluster)
    else:
        summary = extract_clip(cache, spec, sampling, options, device=device, precision=precision)
    _finish(summary)


@extract_app.command("audio")
@friendly
def extract_audio_cmd(
    cache: Path = typer.Argument(..., help="Dataset cache directory (holds manifest.jsonl)."),
    model: str = typer.Option("facebook/wav2vec2-base", help="transformers hub id of a Wav2Vec2Model."),
    checkpoint: Path = typer.Option(None, help="Local save_pretrained directory (wins over --model), e.g. SEGUE's."),
    weights: str = typer.Option("pretrained", help="pretrained | random (random: tests and demo only)."),
    seed: int = typer.Option(0, help="Seed of random weights."),
    layers: str = typer.Option("9,12", help="Hidden-state layers to store (0 = the input of block 1)."),
    max_seconds: float = typer.Option(600.0, help="Longer items are refused (recorded), never cut."),
    shard_size: int = typer.Option(64, help="Items per shard."),
    workers: int = typer.Option(None, help="Decode processes, one core each (default: the cores less one; 0: decode in this process, no timeout)."),
    timeout: float = typer.Option(120.0, help="Seconds allowed to decode one item's audio."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    precision: str = typer.Option("auto", help="auto (fp16 on CUDA) | fp16 | bf16 | fp32."),
    skip_invalid: bool = typer.Option(False, help="Skip invalid manifest rows (listed) instead of stopping."),
    retry_failed: bool = typer.Option(False, help="Try items that failed in earlier runs again."),
    verify_deep: bool = typer.Option(False, help="Also read every finished shard's sha256 and re-extract one whose bits changed."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
) -> None:
    """wav2vec 2.0 hidden states of each item's 16 kHz mono audio (its start/end span), exact lengths."""
    from emo.extract.modalities.audio import AudioSpec, extract_audio
    from emo.extract.runner import ExtractOptions

    spec = AudioSpec(model=model, checkpoint=str(checkpoint) if checkpoint else None, weights=weights,
                     random_seed=seed, layers=tuple(int(v) for v in csv_list(layers) or []), max_seconds=max_seconds)
    options = ExtractOptions(shard_size=shard_size, workers=workers, timeout=timeout, skip_invalid=skip_invalid,
                             retry_failed=retry_failed, progress=progress, verify_deep=verify_deep)
    _finish(extract_audio(cache, spec, options, device=device, precision=precision))


@extract_app.command("text")
@friendly
def extract_text_cmd(
    cache: Path = typer.Argument(..., help="Dataset cache directory (holds manifest.jsonl)."),
    sentiment: str = typer.Option("j-hartmann/emotion-english-distilroberta-base", help="Sentiment classifier hub id."),
    sentiment_checkpoint: Path = typer.Option(None, help="Local save_pretrained directory (wins over --sentiment)."),
    clip_model: str = typer.Option(None, help="CLIP to embed with (default: the cache's clip feature set's)."),
    clip_pretrained: str = typer.Option("openai", help="With --clip-model: open_clip pretrained tag."),
    clip_checkpoint: Path = typer.Option(None, help="Weights file of the CLIP (or of a checkpoint-made clip set that moved)."),
    clip_set: str = typer.Option(None, help="The clip feature set whose CLIP to use, when the cache has several."),
    weights: str = typer.Option("pretrained", help="pretrained | random: models not given as a checkpoint (tests, demo)."),
    seed: int = typer.Option(0, help="Seed of random weights."),
    batch_size: int = typer.Option(256, help="Captions per sentiment batch."),
    shard_size: int = typer.Option(64, help="Items per shard."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    precision: str = typer.Option("auto", help="auto (fp16 on CUDA) | fp16 | bf16 | fp32."),
    skip_invalid: bool = typer.Option(False, help="Skip invalid manifest rows (listed) instead of stopping."),
    retry_failed: bool = typer.Option(False, help="Try items that failed in earlier runs again."),
    verify_deep: bool = typer.Option(False, help="Also read every finished shard's sha256 and re-extract one whose bits changed."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
) -> None:
    """Utterance/caption CLIP tokens and text embeddings (all references) and 7-way sentiment logits."""
    from emo.encoders.clip import ClipSpec
    from emo.extract.modalities.text import TextSpec, extract_text
    from emo.extract.runner import ExtractOptions

    clip = None
    if clip_model:
        clip = ClipSpec(model=clip_model, pretrained=clip_pretrained,
                        checkpoint=str(clip_checkpoint) if clip_checkpoint else None, weights=weights, random_seed=seed)
    spec = TextSpec(clip=clip, clip_set=clip_set, clip_checkpoint=None if clip_model or not clip_checkpoint else str(clip_checkpoint),
                    sentiment=sentiment, sentiment_checkpoint=str(sentiment_checkpoint) if sentiment_checkpoint else None,
                    sentiment_weights="pretrained" if sentiment_checkpoint else weights, random_seed=seed)
    options = ExtractOptions(shard_size=shard_size, batch_size=batch_size, skip_invalid=skip_invalid,
                             retry_failed=retry_failed, progress=progress, verify_deep=verify_deep)
    _finish(extract_text(cache, spec, options, device=device, precision=precision))


def _finish(summary) -> None:
    """Print an extraction's summary; exit 1 (with the count) when any item failed."""
    report_skipped(summary.skipped_rows)
    typer.echo(summary.line())
    if summary.failed:
        typer.echo(f"{summary.failed} item(s) failed: see {summary.path / 'failures.jsonl'}", err=True)
        raise typer.Exit(1)


@extract_app.command("au")
@friendly
def extract_au(
    cache: Path = typer.Argument(..., help="Dataset cache directory (holds manifest.jsonl and a clip feature set)."),
    openface_dir: Path = typer.Option(None, help="OpenFace 2.x FeatureExtraction CSVs, one per video (<stem>.csv)."),
    backend: str = typer.Option("openface", help="openface (import CSVs) | py-feat (run py-feat's detector)."),
    face_threshold: float = typer.Option(0.5, help="py-feat: face score below which a frame's AUs are invalid."),
    au_model: str = typer.Option(None, help="py-feat: its AU model (default: py-feat's)."),
    face_model: str = typer.Option(None, help="py-feat: its face detector (default: py-feat's)."),
    detector_device: str = typer.Option(None, help="py-feat: device for its models (default: py-feat's)."),
    align_to: str = typer.Option(None, help="The clip feature set whose sampled frames are looked up (default: the only one)."),
    confidence: float = typer.Option(0.7, help="OpenFace confidence below which a frame's AUs are invalid."),
    tolerance: float = typer.Option(None, help="Seconds between a sampled frame and its CSV row (default: half a frame)."),
    shard_size: int = typer.Option(64, help="Items per shard."),
    retry_failed: bool = typer.Option(False, help="Try items that failed in earlier runs again."),
    verify_deep: bool = typer.Option(False, help="Also read every finished shard's sha256 and re-extract one whose bits changed."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
) -> None:
    """Facial action units (OpenFace CSVs, or py-feat), at the sampled frames of a clip feature set."""
    from emo.extract.modalities.au import import_openface
    from emo.extract.modalities.au_pyfeat import import_pyfeat

    if backend == "py-feat":
        kwargs = {k: v for k, v in {"au_model": au_model, "face_model": face_model, "device": detector_device}.items() if v}
        summary = import_pyfeat(cache, align_to=align_to, detector_kwargs=kwargs, face_threshold=face_threshold,
                                shard_size=shard_size, retry_failed=retry_failed, progress=progress,
                                verify_deep=verify_deep)
    elif backend == "openface":
        if openface_dir is None:
            raise ValueError("--backend openface needs --openface-dir (the folder of OpenFace CSVs)")
        summary = import_openface(cache, openface_dir, align_to=align_to, confidence=confidence, tolerance=tolerance,
                                  shard_size=shard_size, retry_failed=retry_failed, progress=progress,
                                verify_deep=verify_deep)
    else:
        raise ValueError(f"--backend must be openface or py-feat, got {backend!r}")
    _finish(summary)


@extract_app.command("convert-emotionclip")
@friendly
def extract_convert_emotionclip(
    src: Path = typer.Argument(..., help="EmotionCLIP's checkpoint (emotionclip_latest.pt)."),
    out: Path = typer.Option(..., help="The open_clip weights file to write (.safetensors)."),
    model: str = typer.Option("ViT-B-32", help="open_clip architecture of its backbone."),
    trust_pickle: bool = typer.Option(False, help="Unpickle Python objects in SRC (runs code from the file)."),
) -> None:
    """EmotionCLIP's image and text towers as a weights file for `emo extract clip --checkpoint`."""
    from emo.encoders.emotionclip import convert_emotionclip

    summary = convert_emotionclip(src, out, model=model, trust_pickle=trust_pickle)
    typer.echo(f"wrote {summary['output']}: {summary['tensors']} tensors of open_clip {summary['model']} "
               f"(dropped: {', '.join(summary['dropped']) or 'nothing'}); ImageNet mean/std recorded in the file")
    typer.echo(f"extract with: emo extract clip CACHE --model {summary['model']} --checkpoint {summary['output']} "
               f"--center-crop {summary['center_crop']}")


@extract_app.command("convert-segue")
@friendly
def extract_convert_segue(
    src: Path = typer.Argument(..., help="SEGUE's release directory (config.json + pytorch_model.bin)."),
    out: Path = typer.Option(..., help="The wav2vec2 checkpoint directory to write."),
    base_config: str = typer.Option(None, help="config.json (or its directory) of SEGUE's speech encoder, "
                                               "when it is not facebook/wav2vec2-base-960h."),
    trust_pickle: bool = typer.Option(False, help="Unpickle Python objects in the weights (runs code from the file)."),
) -> None:
    """SEGUE's speech encoder as a wav2vec2 directory for `emo extract audio --checkpoint`."""
    from emo.encoders.segue import convert_segue

    summary = convert_segue(src, out, base_config=base_config, trust_pickle=trust_pickle)
    typer.echo(f"wrote {summary['output']}: {summary['tensors']} tensors of a {summary['layers']}-layer wav2vec2 "
               f"(dropped: {', '.join(summary['dropped']) or 'nothing'})")
    typer.echo(f"extract with: emo extract audio CACHE --checkpoint {summary['output']} --layers 9")


@extract_app.command("preset")
@friendly
def extract_preset(
    dataset: str = typer.Argument(..., help="Preset name in emo/configs/datasets/ (unknown names use folder.json)."),
    root: Path = typer.Option(..., help="The dataset's release root."),
    cache: Path = typer.Option(None, help="Cache directory (default: cache/<dataset>)."),
    weights: str = typer.Option(None, help="Override the preset's weights (random: tests and demo only)."),
    workers: int = typer.Option(None, help="Override decode processes."),
    device: str = typer.Option("auto"),
    set_: list[str] = typer.Option(None, "--set", help="Override a clip option in every step, e.g. --set segments=16."),
    preset_dir: Path = typer.Option(None, help="Folder of preset files (default: emo/configs/datasets)."),
) -> None:
    """`make extract`: prepare the manifest, then run every extraction the preset lists."""
    from emo.extract.presets import PRESET_DIR, parse_sets, run_preset

    failed = run_preset(
        dataset, root, cache or Path("cache") / dataset, weights=weights, workers=workers, device=device,
        overrides=parse_sets(set_ or []), preset_dir=preset_dir or PRESET_DIR, echo=typer.echo,
    )
    if failed:
        raise typer.Exit(1)


