"""``emo datasets ...``: manifests from release layouts, synthetic data, subject boxes."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import csv_list, datasets_app, friendly, prepare_app, report_skipped


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
    from emo.datasets import prepare_folder as run

    manifest, skipped = run(
        root, out, dataset=dataset, test_ratio=test_ratio, val_ratio=val_ratio, folds=folds, seed=seed,
        classes=csv_list(classes), skip_invalid=skip_invalid,
    )
    report_skipped(skipped)
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
    """Any CSV/JSONL item list (columns: docs/cache-format.md, manifest.jsonl)."""
    from emo.datasets import prepare_csv as run

    manifest, skipped = run(
        file, out, dataset=dataset, classes=csv_list(classes), root=str(root) if root else None,
        label_type=label_type, skip_invalid=skip_invalid,
    )
    report_skipped(skipped)
    typer.echo(f"{out / 'manifest.jsonl'}: {len(manifest.items)} items, {len(manifest.classes)} classes")


PAPER_DATASETS = {  # key -> one-line help; each reads the official release layout (docs/datasets.md)
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
        set_: list[str] = typer.Option(None, "--set", help="Adapter option OPTION=VALUE (see docs/datasets.md; repeatable)."),
        skip_invalid: bool = typer.Option(False, help="Drop invalid rows (listed) instead of stopping."),
    ) -> None:
        from emo.datasets import ADAPTERS

        fn = ADAPTERS[key]
        options = {}
        for s in set_ or []:
            k, eq, v = s.partition("=")
            if not eq:
                raise ValueError(f"--set expects OPTION=VALUE, got {s!r}")
            options[k.strip().replace("-", "_")] = _adapter_value(fn, k.strip().replace("-", "_"), v)
        manifest, skipped = fn(root, out, dataset=dataset, skip_invalid=skip_invalid, **options)
        report_skipped(skipped)
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
    from emo.datasets import prepare_subtitles as run

    manifest, skipped = run(videos, out, dataset=dataset, language=language, min_duration=min_duration,
                            max_duration=max_duration, subs=subs, skip_invalid=skip_invalid)
    report_skipped(skipped)
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
    from emo.datasets.subjects import detect_subjects

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
    from emo.datasets.synthetic import SynthConfig, generate

    generate(out, SynthConfig(classes=classes, per_class=per_class, frames=frames, seed=seed))
    typer.echo(f"{out}: {classes} classes × {per_class} videos")


