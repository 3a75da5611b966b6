"""Video + SRT/WebVTT folders: one item per subtitle cue, with its text, speaker and span."""

from __future__ import annotations

from pathlib import Path

from emo.cache.manifest import Item, Manifest, ManifestError

from .common import (
    SUBTITLE_EXTENSIONS,
    Problem,
    dataset_root,
    finish_manifest,
    is_hidden,
    relative_path,
)
from .folder import (
    VIDEO_EXTENSIONS,
)
from .subtitles import decode_subtitles, parse_subtitles

# --- subtitles -----------------------------------------------------------------------------------


def prepare_subtitles(
    root: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    language: str | None = None,
    min_duration: float | None = None,
    max_duration: float | None = None,
    subs: str | Path | None = None,
    skip_invalid: bool = False,
) -> tuple[Manifest, list[tuple[int, str | None, str]]]:
    """Videos + SRT/WebVTT files under ``root`` -> one item per subtitle cue (``label_type="none"``).

    ``subs``: a separate folder of subtitle files mirroring the videos' tree (``subs/<dir>/<name>.srt``
    for ``root/<dir>/<name>.mp4``); then subtitle files under ``root`` are ignored.

    A subtitle ``<name>.srt|vtt`` belongs to the video ``<name>.<video ext>`` in the same folder, or,
    when ``<name>`` ends in a language tag (``ep1.en.srt``), to ``ep1.<ext>``; with ``language`` only
    ``<name>.<language>.srt|vtt`` files are read. Two subtitle files for one video, or a subtitle file
    without a video, are bad rows. Item: id ``<video path without extension>-<cue index>``, ``path`` the
    video, ``start``/``end`` the cue (seconds), ``text`` the cue text, ``speaker`` from a VTT voice tag.
    Empty cues make no item and are counted (``source["empty_cues"]``); cues shorter than
    ``min_duration`` or longer than ``max_duration`` seconds (EmotionCLIP keeps 2–10 s) are counted in
    ``source["cues_out_of_duration"]``. A malformed cue is a bad row at its time line. A file that is not
    UTF-8 is read as cp1252, else latin-1, and named with its encoding in ``source["subtitle_encodings"]``;
    one with NUL bytes (UTF-16) is a bad row. Videos without
    subtitles are counted and named in ``source``. Scheme ``subtitles``, fold ``all``: every item train.
    """
    root = dataset_root(root, "subtitles")
    sub_root = dataset_root(subs, "subtitles (subs)") if subs is not None else root
    videos: dict[str, Path] = {}
    sub_files: list[Path] = []
    problems: list[Problem] = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(is_hidden(part) for part in p.relative_to(root).parents if part.name) or is_hidden(p):
            continue
        if p.suffix.lower() in VIDEO_EXTENSIONS:
            stem = p.with_suffix("").relative_to(root).as_posix()
            if stem in videos:
                problems.append(Problem(relative_path(p, root), None, None, f"a second video for {stem} (first: "
                                         f"{relative_path(videos[stem], root)}); its subtitles would be ambiguous"))
                continue
            videos[stem] = p
        elif p.suffix.lower() in SUBTITLE_EXTENSIONS and sub_root == root:
            sub_files.append(p)
    if sub_root != root:
        sub_files = [p for p in sorted(sub_root.rglob("*")) if p.is_file() and p.suffix.lower() in SUBTITLE_EXTENSIONS
                     and not is_hidden(p)]
    if not videos:
        raise ManifestError(f"subtitles: no videos ({', '.join(VIDEO_EXTENSIONS)}) under {root}")
    paired: dict[str, Path] = {}
    for sub in sub_files:
        base = sub.with_suffix("").relative_to(sub_root).as_posix()
        shown = relative_path(sub, sub_root)
        if language is not None:
            if not base.endswith("." + language):
                continue
            key = base[: -len(language) - 1]
        else:
            key = base if base in videos else (base.rsplit(".", 1)[0] if "." in Path(base).name else base)
        if key not in videos:
            problems.append(Problem(shown, None, None, f"no video for this subtitle file (expected {key}.mp4 or "
                                     "another video extension beside it)"))
            continue
        if key in paired:
            problems.append(Problem(shown, None, None, f"second subtitle file for {relative_path(videos[key], root)} "
                                     f"(first: {relative_path(paired[key], root)}; language=... picks one)"))
            continue
        paired[key] = sub
    items, origins = [], []
    empty, out_of_range = 0, 0
    fallbacks: dict[str, str] = {}  # subtitle file -> the encoding it was read in when not UTF-8
    for key in sorted(paired):
        sub, video = paired[key], videos[key]
        shown = relative_path(sub, sub_root)
        text, encoding = decode_subtitles(sub.read_bytes())
        if text is None:
            problems.append(Problem(shown, 1, None, encoding))
            continue
        if encoding != "utf-8":
            fallbacks[shown] = encoding  # said in source: the file was not UTF-8
        cues, cue_problems = parse_subtitles(text)
        problems += [Problem(shown, line, None, reason) for line, reason in cue_problems]
        for cue in cues:
            if not cue.text:
                empty += 1
                continue
            duration = cue.end - cue.start
            if (min_duration is not None and duration < min_duration) or (
                    max_duration is not None and duration > max_duration):
                out_of_range += 1
                continue
            items.append(Item(id=f"{key}-{cue.index}", path=relative_path(video, root), start=cue.start, end=cue.end,
                              text=cue.text, speaker=cue.speaker, splits={"subtitles": {"all": "train"}}))
            origins.append((shown, cue.line))
    unpaired = sorted(relative_path(v, root) for k, v in videos.items() if k not in paired)
    manifest = Manifest(
        dataset=dataset or Path(out).resolve().name, classes=[], items=items, root=str(root),
        label_type="none", split_schemes={"subtitles": ["all"]},
        source={"adapter": "subtitles", "root": str(root), "subs": str(sub_root), "language": language,
                "min_duration": min_duration, "max_duration": max_duration,
                "subtitle_files": len(paired), "subtitle_encodings": fallbacks, "empty_cues": empty, "cues_out_of_duration": out_of_range,
                "videos_without_subtitles": len(unpaired), "videos_without_subtitles_first": unpaired[:20]},
    )
    return finish_manifest(manifest, origins, problems, out, skip_invalid)
