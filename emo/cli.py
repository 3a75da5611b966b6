"""The ``emo`` command line: parse options, build config objects, call one library function.

Library modules are imported inside each command so that ``emo --help`` stays fast. Errors the user
can fix (a malformed manifest, a bad option, weights that failed to load) print one line naming the
problem and exit with status 2; set ``EMO_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
datasets_app = typer.Typer(no_args_is_help=True, help="Turn a dataset's release layout into a manifest.")
prepare_app = typer.Typer(no_args_is_help=True, help="Write <out>/manifest.jsonl from a dataset's files.")
extract_app = typer.Typer(no_args_is_help=True, help="Stage 1: run frozen encoders into the feature cache.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect and check feature caches.")
heads_app = typer.Typer(no_args_is_help=True, help="Stage 2: train and evaluate heads from a cache.")
app.add_typer(datasets_app, name="datasets")
datasets_app.add_typer(prepare_app, name="prepare")
app.add_typer(extract_app, name="extract")
app.add_typer(cache_app, name="cache")
app.add_typer(heads_app, name="heads")

EXIT_USAGE = 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from emo.cache.featureset import FeatureSetError
    from emo.cache.manifest import ManifestError

    errors: list[type[BaseException]] = [ManifestError, FeatureSetError, ValueError, FileNotFoundError, ImportError]
    try:
        from emo.encoders.clip import WeightsError
        from emo.extract.cluster import ClusterError

        errors += [WeightsError, ClusterError]
    except ImportError:  # pragma: no cover - clip adapter always present in a full install
        pass
    return tuple(errors)


def friendly(fn):
    """Turn the errors a user can fix into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _user_errors() as e:
            if os.environ.get("EMO_DEBUG"):
                raise
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper


def _csv_list(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def _report_skipped(skipped) -> None:
    for row, item_id, reason in skipped:
        typer.echo(f"skipped manifest row {row} (id {item_id!r}): {reason}", err=True)


# -- datasets -----------------------------------------------------------------------------------
@prepare_app.command("folder")
@friendly
def prepare_folder(
    root: Path = typer.Option(..., help="Dataset root holding one folder per class."),
    out: Path = typer.Option(..., help="Cache directory to write manifest.jsonl into."),
    test_ratio: float = typer.Option(0.33, help="Fraction of each class put in test."),
    val_ratio: float = typer.Option(0.0, help="Fraction of the train part held out as val."),
    folds: int = typer.Option(1, help="Number of seeded random splits (folds 0..K-1)."),
    seed: int = typer.Option(0, help="Seed of fold 0; fold k uses seed + k."),
    classes: str = typer.Option(None, help="Comma-separated class order (default: sorted folder names)."),
    dataset: str = typer.Option(None, help="Dataset name (default: the out folder's name)."),
    skip_invalid: bool = typer.Option(False, help="Drop invalid rows (listed) instead of stopping."),
) -> None:
    """A `root/<class>/<video>` tree, with seeded stratified train/test splits (scheme `folder`)."""
    from emo.extract.datasets import prepare_folder as run

    manifest, skipped = run(
        root, out, dataset=dataset, test_ratio=test_ratio, val_ratio=val_ratio, folds=folds, seed=seed,
        classes=_csv_list(classes), skip_invalid=skip_invalid,
    )
    _report_skipped(skipped)
    typer.echo(f"{out / 'manifest.jsonl'}: {len(manifest.items)} items, {len(manifest.classes)} classes, folds {manifest.split_schemes}")


@prepare_app.command("csv")
@friendly
def prepare_csv(
    file: Path = typer.Option(..., help="CSV or JSONL with columns id, path, label[, start, end, text, speaker, split…]."),
    out: Path = typer.Option(..., help="Cache directory to write manifest.jsonl into."),
    classes: str = typer.Option(None, help="Comma-separated class order (default: sorted labels seen)."),
    root: Path = typer.Option(None, help="Directory relative paths start from (default: the file's folder)."),
    label_type: str = typer.Option("single", help="single | multi (';'-separated) | continuous | none."),
    dataset: str = typer.Option(None, help="Dataset name (default: the out folder's name)."),
    skip_invalid: bool = typer.Option(False, help="Drop invalid rows (listed) instead of stopping."),
) -> None:
    """Any CSV/JSONL item list (SPEC §3.1 columns)."""
    from emo.extract.datasets import prepare_csv as run

    manifest, skipped = run(
        file, out, dataset=dataset, classes=_csv_list(classes), root=str(root) if root else None,
        label_type=label_type, skip_invalid=skip_invalid,
    )
    _report_skipped(skipped)
    typer.echo(f"{out / 'manifest.jsonl'}: {len(manifest.items)} items, {len(manifest.classes)} classes")


PAPER_DATASETS = {  # key -> one-line help; each reads the official release layout (DATASETS.md)
    "ve8": "VideoEmotion-8: class folders; 10 seeded 2:1 splits, or VAANet-style list files under root/splits.",
    "ek6": "Ekman-6: class folders + the official 1:1 split lists (root/splits/train.txt, test.txt).",
    "mv6": "MusicVideo-6: class folders; 3 seeded 2:1 splits, or list files under root/splits.",
    "meld": "MELD.Raw: utterance clips with text and speaker; official train/dev(val)/test.",
    "dfew": "DFEW: EmoLabel_DataSplit set_1..5 (single-labeled) and the clip folders; 5 folds.",
    "ferv39k": "FERV39k: 4_setups/All_scenes train/test lists and 2_ClipsforFaceCrop.",
    "mafw": "MAFW: clips, 5 folds (single) and the with_caption folds with every caption.",
    "emvidcap": "EmVidCap: caption tables; ECPA's train/test needs --set split_file=PATH.",
}


def _adapter_value(fn, key: str, text: str):
    """``--set key=text`` coerced by the adapter's default for ``key`` (bool, int, float, list, text)."""
    import inspect

    params = inspect.signature(fn).parameters
    extra = [n for n, p in params.items() if p.kind == p.KEYWORD_ONLY and n not in ("dataset", "skip_invalid")]
    if key not in extra:
        raise ValueError(f"--set {key}: not an option of this adapter; options: {', '.join(extra)}")
    default = params[key].default
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ValueError(f"--set {key} expects true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes", "on")
    if isinstance(default, int | float) and not isinstance(default, bool):
        try:
            return type(default)(text)
        except ValueError:
            kind = "an integer" if isinstance(default, int) else "a number"
            raise ValueError(f"--set {key} expects {kind}, got {text!r}") from None
    if isinstance(default, tuple | list) or key == "captions":
        return [v.strip() for v in text.split(",") if v.strip()]
    return text


def _paper_dataset_command(key: str, help_text: str):
    def command(
        root: Path = typer.Option(..., help="The dataset's release root."),
        out: Path = typer.Option(..., help="Cache directory to write manifest.jsonl into."),
        dataset: str = typer.Option(None, help="Dataset name (default: the out folder's name)."),
        set_: list[str] = typer.Option(None, "--set", help="Adapter option OPTION=VALUE (see docs; repeatable)."),
        skip_invalid: bool = typer.Option(False, help="Drop invalid rows (listed) instead of stopping."),
    ) -> None:
        from emo.extract.datasets import ADAPTERS

        fn = ADAPTERS[key]
        options = {}
        for s in set_ or []:
            k, eq, v = s.partition("=")
            if not eq:
                raise ValueError(f"--set expects OPTION=VALUE, got {s!r}")
            options[k.strip().replace("-", "_")] = _adapter_value(fn, k.strip().replace("-", "_"), v)
        manifest, skipped = fn(root, out, dataset=dataset, skip_invalid=skip_invalid, **options)
        _report_skipped(skipped)
        typer.echo(f"{out / 'manifest.jsonl'}: {len(manifest.items)} items, {len(manifest.classes)} classes, "
                   f"folds {manifest.split_schemes}")

    command.__doc__ = help_text
    prepare_app.command(key)(friendly(command))


for _key, _help in PAPER_DATASETS.items():
    _paper_dataset_command(_key, _help)


@prepare_app.command("subtitles")
@friendly
def prepare_subtitles(
    videos: Path = typer.Option(..., "--videos", "--root", help="Folder of videos (searched recursively)."),
    out: Path = typer.Option(..., help="Cache directory to write manifest.jsonl into."),
    subs: Path = typer.Option(None, help="Folder of .srt/.vtt files mirroring the videos' tree (default: beside them)."),
    language: str = typer.Option(None, help="Only read NAME.LANG.srt|vtt files of this language tag."),
    min_duration: float = typer.Option(None, help="Drop cues shorter than this (seconds; EmotionCLIP: 2)."),
    max_duration: float = typer.Option(None, help="Drop cues longer than this (seconds; EmotionCLIP: 10)."),
    dataset: str = typer.Option(None, help="Dataset name (default: the out folder's name)."),
    skip_invalid: bool = typer.Option(False, help="Drop invalid rows (listed) instead of stopping."),
) -> None:
    """Videos with SRT/WebVTT subtitles: one item per cue, with its text, speaker and start/end."""
    from emo.extract.adapters import prepare_subtitles as run

    manifest, skipped = run(videos, out, dataset=dataset, language=language, min_duration=min_duration,
                            max_duration=max_duration, subs=subs, skip_invalid=skip_invalid)
    _report_skipped(skipped)
    typer.echo(f"{out / 'manifest.jsonl'}: {len(manifest.items)} cues from {manifest.source['subtitle_files']} "
               "subtitle files")


@datasets_app.command("detect-subjects")
@friendly
def detect_subjects_cmd(
    cache: Path = typer.Argument(..., help="Dataset cache directory (its manifest.jsonl gets subject_boxes)."),
    model: str = typer.Option("fasterrcnn_resnet50_fpn_v2", help="torchvision detection model."),
    checkpoint: Path = typer.Option(None, help="Local weights file of that model (offline boxes)."),
    weights: str = typer.Option("pretrained", help="pretrained | random (random: tests and demo only)."),
    seed: int = typer.Option(0, help="Seed of random weights."),
    stride: int = typer.Option(8, help="Detect on every STRIDE-th decoded frame."),
    score_threshold: float = typer.Option(0.7, help="Person boxes below this score are ignored."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    overwrite: bool = typer.Option(False, help="Replace boxes items already have."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
) -> None:
    """Person boxes (largest per frame) from a torchvision detector into the manifest's subject_boxes."""
    from emo.extract.detect import detect_subjects

    counts = detect_subjects(cache, model=model, checkpoint=str(checkpoint) if checkpoint else None, weights=weights,
                             seed=seed, stride=stride, score_threshold=score_threshold, device=device,
                             overwrite=overwrite, progress=progress)
    for f in counts.get("failures", []):
        typer.echo(f"failed {f['id']}: {f['reason']}", err=True)
    mark = "RANDOM WEIGHTS — " if weights == "random" and not checkpoint else ""
    typer.echo(f"{mark}{counts['detected']} items detected ({counts['items_with_subject']} with a subject, "
               f"{counts['frames_with_subject']}/{counts['frames']} frames), {counts['kept']} kept, {counts['failed']} failed")
    if counts["failed"]:
        raise typer.Exit(1)


@datasets_app.command("synth")
@friendly
def datasets_synth(
    out: Path = typer.Argument(..., help="Folder to write <class>/<video>.mp4 into."),
    classes: int = typer.Option(4, help="Number of classes."),
    per_class: int = typer.Option(12, help="Videos per class."),
    frames: int = typer.Option(48, help="Frames per video."),
    seed: int = typer.Option(0),
) -> None:
    """Generate emo's small synthetic dataset (appearance + event timing classes, with audio)."""
    from emo.extract.synthetic import SynthConfig, generate

    generate(out, SynthConfig(classes=classes, per_class=per_class, frames=frames, seed=seed))
    typer.echo(f"{out}: {classes} classes × {per_class} videos")


# -- extract ------------------------------------------------------------------------------------
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
    tokens_layer: int = typer.Option(None, help="Also store all tokens after this block."),
    pixels: bool = typer.Option(False, "--pixels", help="Also store the preprocessed uint8 frames."),
    subject_prompt: bool = typer.Option(False, "--subject-prompt",
                                        help="EmotionCLIP's subject token from the manifest's subject_boxes."),
    box_tolerance: int = typer.Option(12, help="--subject-prompt: frames to the nearest annotated frame."),
    seed: int = typer.Option(0, help="Seed of the random crops (and of random weights)."),
    shard_size: int = typer.Option(64, help="Items per shard."),
    workers: int = typer.Option(4, help="Decode processes (0: decode in this process, no timeout)."),
    timeout: float = typer.Option(120.0, help="Seconds allowed to decode one video."),
    batch_size: int = typer.Option(256, help="Frames per encoder batch (frames of many videos)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    precision: str = typer.Option("auto", help="auto (fp16 on CUDA, fp32 on CPU) | fp16 | bf16 | fp32."),
    backend: str = typer.Option("auto", help="Decoder: auto (decord, PyAV fallback) | decord | pyav."),
    skip_invalid: bool = typer.Option(False, help="Skip invalid manifest rows (listed) instead of stopping."),
    retry_failed: bool = typer.Option(False, help="Try items that failed in earlier runs again."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
    local_cluster: int = typer.Option(0, help="Run shards as dask tasks on N local worker processes (one per GPU)."),
    scheduler: str = typer.Option(None, help="Run shards as dask tasks on an existing cluster: tcp://host:8786."),
) -> None:
    """CLIP image embeddings of M×N×V sampled frames per video into a feature set of CACHE."""
    from emo.encoders.clip import ClipSpec
    from emo.extract.pipeline import ExtractOptions, extract_clip
    from emo.extract.sampling import SamplingConfig

    if weights not in ("pretrained", "random"):
        raise ValueError(f"--weights must be pretrained or random, got {weights!r}")
    spec = ClipSpec(
        model=model, pretrained=pretrained, checkpoint=str(checkpoint) if checkpoint else None,
        weights=weights, random_seed=seed, tokens_layer=tokens_layer,
    )
    sampling = SamplingConfig(segments=segments, frames_per_segment=frames_per_segment, views=views, seed=seed)
    options = ExtractOptions(
        shard_size=shard_size, workers=workers, timeout=timeout, batch_size=batch_size, pixels=pixels,
        subject_prompt=subject_prompt, box_tolerance=box_tolerance,
        backend=backend, skip_invalid=skip_invalid, retry_failed=retry_failed, progress=progress,
    )
    if local_cluster or scheduler:
        from emo.extract.cluster import extract_clip_distributed

        summary = extract_clip_distributed(cache, spec, sampling, options, device=device, precision=precision,
                                           scheduler=scheduler, local_cluster=local_cluster)
    else:
        summary = extract_clip(cache, spec, sampling, options, device=device, precision=precision)
    _report_skipped(summary.skipped_rows)
    typer.echo(summary.line())
    if summary.failed:
        typer.echo(f"{summary.failed} item(s) failed: see {summary.path / 'failures.jsonl'}", err=True)
        raise typer.Exit(1)


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
    workers: int = typer.Option(4, help="Decode processes (0: decode in this process, no timeout)."),
    timeout: float = typer.Option(120.0, help="Seconds allowed to decode one item's audio."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    precision: str = typer.Option("auto", help="auto (fp16 on CUDA) | fp16 | bf16 | fp32."),
    skip_invalid: bool = typer.Option(False, help="Skip invalid manifest rows (listed) instead of stopping."),
    retry_failed: bool = typer.Option(False, help="Try items that failed in earlier runs again."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
) -> None:
    """wav2vec 2.0 hidden states of each item's 16 kHz mono audio (its start/end span), exact lengths."""
    from emo.extract.audio import AudioSpec, extract_audio
    from emo.extract.runner import ExtractOptions

    spec = AudioSpec(model=model, checkpoint=str(checkpoint) if checkpoint else None, weights=weights,
                     random_seed=seed, layers=tuple(int(v) for v in _csv_list(layers) or []), max_seconds=max_seconds)
    options = ExtractOptions(shard_size=shard_size, workers=workers, timeout=timeout, skip_invalid=skip_invalid,
                             retry_failed=retry_failed, progress=progress)
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
    progress: bool = typer.Option(True, help="Show the progress bar."),
) -> None:
    """Utterance/caption CLIP tokens and text embeddings (all references) and 7-way sentiment logits."""
    from emo.encoders.clip import ClipSpec
    from emo.extract.runner import ExtractOptions
    from emo.extract.text import TextSpec, extract_text

    clip = None
    if clip_model:
        clip = ClipSpec(model=clip_model, pretrained=clip_pretrained,
                        checkpoint=str(clip_checkpoint) if clip_checkpoint else None, weights=weights, random_seed=seed)
    spec = TextSpec(clip=clip, clip_set=clip_set, clip_checkpoint=None if clip_model or not clip_checkpoint else str(clip_checkpoint),
                    sentiment=sentiment, sentiment_checkpoint=str(sentiment_checkpoint) if sentiment_checkpoint else None,
                    sentiment_weights="pretrained" if sentiment_checkpoint else weights, random_seed=seed)
    options = ExtractOptions(shard_size=shard_size, batch_size=batch_size, skip_invalid=skip_invalid,
                             retry_failed=retry_failed, progress=progress)
    _finish(extract_text(cache, spec, options, device=device, precision=precision))


def _finish(summary) -> None:
    """Print an extraction's summary; exit 1 (with the count) when any item failed."""
    _report_skipped(summary.skipped_rows)
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
    progress: bool = typer.Option(True, help="Show the progress bar."),
) -> None:
    """Facial action units (OpenFace CSVs, or py-feat), at the sampled frames of a clip feature set."""
    from emo.extract.au import import_openface, import_pyfeat

    if backend == "py-feat":
        kwargs = {k: v for k, v in {"au_model": au_model, "face_model": face_model, "device": detector_device}.items() if v}
        summary = import_pyfeat(cache, align_to=align_to, detector_kwargs=kwargs, face_threshold=face_threshold,
                                shard_size=shard_size, retry_failed=retry_failed, progress=progress)
    elif backend == "openface":
        if openface_dir is None:
            raise ValueError("--backend openface needs --openface-dir (the folder of OpenFace CSVs)")
        summary = import_openface(cache, openface_dir, align_to=align_to, confidence=confidence, tolerance=tolerance,
                                  shard_size=shard_size, retry_failed=retry_failed, progress=progress)
    else:
        raise ValueError(f"--backend must be openface or py-feat, got {backend!r}")
    _report_skipped(summary.skipped_rows)
    typer.echo(summary.line())
    if summary.failed:
        typer.echo(f"{summary.failed} item(s) failed: see {summary.path / 'failures.jsonl'}", err=True)
        raise typer.Exit(1)


@extract_app.command("preset")
@friendly
def extract_preset(
    dataset: str = typer.Argument(..., help="Preset name in configs/datasets/ (unknown names use folder.json)."),
    root: Path = typer.Option(..., help="The dataset's release root."),
    cache: Path = typer.Option(None, help="Cache directory (default: cache/<dataset>)."),
    weights: str = typer.Option(None, help="Override the preset's weights (random: tests and demo only)."),
    workers: int = typer.Option(None, help="Override decode processes."),
    device: str = typer.Option("auto"),
    set_: list[str] = typer.Option(None, "--set", help="Override a clip option in every step, e.g. --set segments=16."),
    preset_dir: Path = typer.Option(None, help="Folder of preset files (default: configs/datasets)."),
) -> None:
    """`make extract`: prepare the manifest, then run every extraction the preset lists."""
    from emo.extract.presets import PRESET_DIR, parse_sets, run_preset

    failed = run_preset(
        dataset, root, cache or Path("cache") / dataset, weights=weights, workers=workers, device=device,
        overrides=parse_sets(set_ or []), preset_dir=preset_dir or PRESET_DIR, echo=typer.echo,
    )
    if failed:
        raise typer.Exit(1)


# -- cache --------------------------------------------------------------------------------------
def _fmt_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@cache_app.command("ls")
@friendly
def cache_ls(cache: Path = typer.Argument(..., help="Dataset cache directory.")) -> None:
    """Feature sets of a dataset cache: name, key, items ok/failed, size, created."""
    from emo.cache.featureset import list_feature_sets

    sets = list_feature_sets(cache)
    if not sets:
        typer.echo(f"{cache}: no feature sets yet")
        return
    typer.echo(f"{'feature set':<44} {'key':<12} {'ok':>6} {'failed':>6} {'size':>9}  created")
    for fs in sets:
        status = fs.item_status()
        ok = sum(1 for s in status.values() if s == "ok")
        mark = "  [RANDOM WEIGHTS]" if fs.random_weights else ""
        typer.echo(
            f"{fs.name:<44} {fs.key[:12]:<12} {ok:>6} {len(status) - ok:>6} {_fmt_size(fs.size_bytes()):>9}  "
            f"{fs.meta.get('created', '?')}{mark}"
        )


@cache_app.command("verify")
@friendly
def cache_verify(target: Path = typer.Argument(..., help="A dataset cache directory or one feature set.")) -> None:
    """Check every shard against its .done.json; exit 1 on any fault."""
    from emo.cache.featureset import FeatureSet, list_feature_sets
    from emo.cache.verify import verify_feature_set

    sets = [FeatureSet(target)] if (target / "config.json").exists() else list_feature_sets(target)
    faults = 0
    for fs in sets:
        rep = verify_feature_set(fs)
        for fault in rep.faults:
            typer.echo(f"FAULT {fs.name}: {fault}")
        extra = f", {len(rep.unfinished)} unfinished shards" if rep.unfinished else ""
        typer.echo(f"{'ok   ' if rep.ok else 'BAD  '}{fs.name}: {rep.shards} shards, {rep.items_ok} ok, {rep.items_failed} failed{extra}")
        faults += len(rep.faults)
    if faults:
        raise typer.Exit(1)


@cache_app.command("info")
@friendly
def cache_info(feature_set: Path = typer.Argument(..., help="A feature-set directory.")) -> None:
    """Config, key, counts and failures of one feature set."""
    from emo.cache.featureset import FeatureSet

    fs = FeatureSet(feature_set)
    status = fs.item_status()
    ok = sum(1 for s in status.values() if s == "ok")
    if fs.random_weights:
        typer.echo("RANDOM WEIGHTS — features from an untrained encoder (tests and demo only)")
    typer.echo(f"name:    {fs.name}\nkey:     {fs.key}\ncreated: {fs.meta.get('created')}")
    typer.echo(f"items:   {ok} ok, {len(status) - ok} failed, {len(fs.done_indices())} shards, {_fmt_size(fs.size_bytes())}")
    typer.echo("config:")
    typer.echo(json.dumps(fs.config, indent=2))
    failures = {}
    for k in fs.done_indices():  # the .done.json records are authoritative; failures.jsonl is their log
        for i, err in fs.done_record(k).get("errors", {}).items():
            if status.get(i) != "ok":
                failures[i] = err
    typer.echo(f"failures: {len(failures)}")
    for i, err in failures.items():
        typer.echo(f"  {i}: [{err['stage']}] {err['error']}")


# -- heads --------------------------------------------------------------------------------------
@heads_app.command("list")
def heads_list() -> None:
    """The registered heads."""
    from emo.heads.registry import list_heads

    for spec in list_heads():
        typer.echo(f"{spec.name:<17} {spec.description}")


@heads_app.command("config")
@friendly
def heads_config(name: str = typer.Argument(..., help="Head name (see `emo heads list`).")) -> None:
    """Every config field of head NAME with its default (each is a `--field` option), and its presets."""
    from emo.heads.registry import HEAD_PRESET_DIR, config_to_dict, get_head

    spec = get_head(name)
    typer.echo(json.dumps(config_to_dict(spec.config()), indent=2))
    presets = sorted(p.stem for p in (HEAD_PRESET_DIR / name).glob("*.json"))
    if presets:
        typer.echo(f"presets (--preset): {', '.join(presets)}")


def _parse_overrides(args: list[str], sets: list[str]) -> dict[str, str]:
    """``--field value`` / ``--flag`` extra options and ``--set field=value`` -> {field: value}."""
    out: dict[str, str] = {}
    for s in sets:
        k, eq, v = s.partition("=")
        if not eq:
            raise ValueError(f"--set expects FIELD=VALUE, got {s!r}")
        out[k.replace("-", "_")] = v
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise ValueError(f"unexpected argument {a!r}")
        k, eq, v = a[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                v, i = args[i + 1], i + 1
            else:
                v = "true"
        out[k.replace("-", "_")] = v
        i += 1
    return out


def _preset_overrides(name: str, preset: str | None) -> dict:
    from emo.heads.registry import head_preset

    return {k: v for k, v in head_preset(name, preset).items()} if preset else {}


@heads_app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def heads_train(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Head name (see `emo heads list`)."),
    cache: Path = typer.Argument(..., help="Dataset cache directory."),
    split: str = typer.Option(..., help="SCHEME:FOLD, or SCHEME:all for every fold (mean ± std)."),
    out: Path = typer.Option(..., help="Run directory to write."),
    features: list[str] = typer.Option(None, help="Feature set name(s) to use (default: the only one)."),
    val_fraction: float = typer.Option(0.0, help="Stratified part of train held out for tuning."),
    seed: int = typer.Option(0),
    set_: list[str] = typer.Option(None, "--set", help="Config override FIELD=VALUE (repeatable)."),
    preset: str = typer.Option(None, help="configs/heads/NAME/PRESET.json (e.g. table5) or a .json path."),
) -> None:
    """Train head NAME on a cache; any config field is an option (`--C 0.5` or `--set C=0.5`)."""
    from emo.heads.runs import train_from_cache

    overrides = _preset_overrides(name, preset) | _parse_overrides(list(ctx.args), set_ or [])
    result = train_from_cache(
        name, cache, split=split, out=out, feature_sets=features or None, overrides=overrides,
        val_fraction=val_fraction, seed=seed, command=sys.argv,
    )
    typer.echo(result.table())


@heads_app.command("sweep", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def heads_sweep(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Head name (see `emo heads list`)."),
    cache: Path = typer.Argument(..., help="Dataset cache directory."),
    split: str = typer.Option(..., help="SCHEME:FOLD, or SCHEME:all for every fold."),
    grid: list[str] = typer.Option(..., help="FIELD=V1,V2,... (repeatable; every combination is run)."),
    out: Path = typer.Option(..., help="Sweep directory: one run directory per grid cell."),
    features: list[str] = typer.Option(None, help="Feature set name(s) to use (default: the only one)."),
    val_fraction: float = typer.Option(0.0, help="Stratified part of train held out for tuning."),
    seed: int = typer.Option(0),
    set_: list[str] = typer.Option(None, "--set", help="Fixed config override FIELD=VALUE for every cell."),
    preset: str = typer.Option(None, help="configs/heads/NAME/PRESET.json (e.g. table5) or a .json path."),
) -> None:
    """Train NAME for every cell of the grid × every fold; finished cells are kept (resumable)."""
    from emo.heads.runs import format_results_table, sweep_from_cache

    overrides = _preset_overrides(name, preset) | _parse_overrides(list(ctx.args), set_ or [])
    results = sweep_from_cache(
        name, cache, split=split, grid=grid, out=out, feature_sets=features or None, overrides=overrides,
        val_fraction=val_fraction, seed=seed, command=sys.argv, echo=typer.echo,
    )
    typer.echo(format_results_table([r.row() for r in results]))


def _stacked_run(name: str, cache: Path, runs: dict[str, Path | None], split: str | None, out: Path | None,
                 suffix: str, overrides: dict, features: list[str] | None, val_fraction: float, seed: int) -> None:
    """Train a head that reads the features of other runs (probe, cache classifier): the split and the
    output directory default to the first run's."""
    from emo.heads.from_run import run_split
    from emo.heads.runs import train_from_cache

    given = {k: v for k, v in runs.items() if v is not None}
    if not given:
        raise ValueError(f"{name} needs " + " or ".join(f"--{k}" for k in runs) + " (a trained run directory)")
    first = next(iter(given.values()))
    split = split or run_split(first)
    out = out or first.with_name(first.name + suffix)
    result = train_from_cache(
        name, cache, split=split, out=out, feature_sets=features or None,
        overrides={**overrides, **{k: str(v) for k, v in given.items()}},
        val_fraction=val_fraction, seed=seed, command=sys.argv,
    )
    typer.echo(result.table())
    typer.echo(f"run: {out}")


@heads_app.command("cache-classifier", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def heads_cache_classifier(
    ctx: typer.Context,
    cache: Path = typer.Argument(..., help="Dataset cache directory."),
    video: Path = typer.Option(None, help="Run directory of a VFM (video features)."),
    audio: Path = typer.Option(None, help="Run directory of an auditory adapter (audio features)."),
    split: str = typer.Option(None, help="SCHEME:FOLD (default: the split of the runs)."),
    out: Path = typer.Option(None, help="Run directory to write (default: beside the first run, NAME-cache)."),
    features: list[str] = typer.Option(None, help="Feature set names (default: the runs' modalities)."),
    val_fraction: float = typer.Option(0.0, help="Stratified part of train for the α/β search when there is no val split."),
    seed: int = typer.Option(0),
    set_: list[str] = typer.Option(None, "--set", help="Config override FIELD=VALUE (repeatable)."),
    preset: str = typer.Option(None, help="configs/heads/cache-classifier/PRESET.json (e.g. release) or a .json path."),
) -> None:
    """EmoAsst's zero-shot + K-shot cache classifier over VFM / adapter runs (--shots K, --search val|none,
    --finetune-keys for Tip-F; every config field is an option, see `emo heads config cache-classifier`)."""
    overrides = _preset_overrides("cache-classifier", preset) | _parse_overrides(list(ctx.args), set_ or [])
    suffix = "-tipf" if str(overrides.get("finetune_keys", "false")).lower() in ("true", "1", "yes", "on") else "-cache"
    _stacked_run("cache-classifier", cache, {"video": video, "audio": audio}, split, out, suffix, overrides,
                 features, val_fraction, seed)


@heads_app.command("probe", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def heads_probe(
    ctx: typer.Context,
    cache: Path = typer.Argument(..., help="Dataset cache directory."),
    run: Path = typer.Option(..., "--features", help="Run directory whose head makes the features (e.g. runs/vfm)."),
    split: str = typer.Option(None, help="SCHEME:FOLD (default: the run's split)."),
    out: Path = typer.Option(None, help="Run directory to write (default: beside the run, NAME-probe)."),
    val_fraction: float = typer.Option(0.0, help="Stratified part of train for choosing C when there is no val split."),
    seed: int = typer.Option(0),
    set_: list[str] = typer.Option(None, "--set", help="Config override FIELD=VALUE (C, c_grid, max_iter)."),
) -> None:
    """Linear probe (logistic regression) on the features of a trained run (EmoAsst Table 2)."""
    _stacked_run("probe", cache, {"features": run}, split, out, "-probe",
                 _parse_overrides(list(ctx.args), set_ or []), None, val_fraction, seed)


@heads_app.command("adapt")
@friendly
def heads_adapt(
    run: Path = typer.Argument(..., help="A cache-classifier run directory (updated in place)."),
    add: Path = typer.Option(..., help="CSV with id,label columns: the new labelled clips."),
    cache: Path = typer.Option(None, help="Cache holding the new clips' features (default: the run's cache)."),
) -> None:
    """Add labelled clips from a new setting to a cache classifier, without training."""
    from emo.heads.cache_classifier import adapt_run

    counts = adapt_run(run, add, cache)
    typer.echo(f"{run}: added {counts['added']} item(s) to the cache of fold(s) {', '.join(counts['folds'])}")


@heads_app.command("eval")
@friendly
def heads_eval(
    run: Path = typer.Argument(..., help="A run directory (from `emo heads train`)."),
    split: str = typer.Option(None, help="SCHEME:FOLD or SCHEME:all (default: the run's own split)."),
    cache: Path = typer.Option(None, help="Dataset cache (default: the one the run was trained from)."),
    features: list[str] = typer.Option(None, help="Feature set name(s) (default: the only one)."),
) -> None:
    """Reload a run's checkpoints and score the test items again (refuses other features)."""
    from emo.heads.runs import evaluate_run

    typer.echo(evaluate_run(run, split=split, cache=cache, feature_sets=features or None).table())


@app.command("report")
@friendly
def report(
    runs: Path = typer.Argument(..., help="A run directory or a folder of them (e.g. a sweep)."),
    csv: Path = typer.Option(None, "--csv", help="Also write the rows as CSV to this file."),
    tsne: bool = typer.Option(False, "--tsne", help="t-SNE plot per fold (tsne.png) and silhouette column."),
) -> None:
    """A results table of every run under RUNS (RANDOM WEIGHTS banner when any used random features)."""
    from emo.heads.runs import report_runs

    typer.echo(report_runs(runs, csv_path=csv, tsne=tsne))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
