"""DFEW, FERV39k and MAFW: the dynamic facial-expression datasets and their fold files."""

from __future__ import annotations

import re
from pathlib import Path

from emo.cache.manifest import Item, Manifest, ManifestError

from .common import (
    DFEW_CLASSES,
    FERV39K_CLASSES,
    MAFW_CLASSES,
    Problem,
    dataset_root,
    finish_manifest,
    is_hidden,
    option_path,
    read_csv_rows,
    read_text_lines,
    relative_path,
    sha256_file,
)
from .folder import (
    VIDEO_EXTENSIONS,
)

# --- dfew ----------------------------------------------------------------------------------------


DFEW_MEDIA = {  # media -> (folder under root, file or folder name of clip n)
    "clip_224x224": ("Clip/clip_224x224", "{n:05d}"),  # face frames, no temporal interpolation
    "clip_224x224_16f": ("Clip/clip_224x224_16f", "{n:05d}"),  # 16 temporally interpolated face frames
    "clip_224x224_avi": ("Clip/clip_224x224_avi", "{n:05d}.avi"),
    "original": ("Clip/original", "{n:05d}.mp4"),  # the release README's five-digit names
}
_DFEW_ALSO = {"original": "{n}.mp4"}  # media -> another name of clip n (unpadded copies), used when present
_DFEW_SPLITS = "EmoLabel_DataSplit"


def prepare_dfew(
    root: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    media: str = "clip_224x224",
    videos: str | Path | None = None,
    splits: str | Path | None = None,
    skip_invalid: bool = False,
) -> tuple[Manifest, list[tuple[int, str | None, str]]]:
    """DFEW -> the 11,697 single-labelled clips, scheme ``dfew`` folds ``1..5``.

    Release (docs/datasets.md, medium; confirmed against public loaders, e.g. MAE-DFER ``preprocess/dfew.py``,
    DFER-CLIP ``main.py``): ``EmoLabel_DataSplit/train(single-labeled)/set_{1..5}.csv`` and
    ``test(single-labeled)/set_{1..5}.csv`` (or ``(single_labeled)`` as the release README spells
    it, or plain ``train``/``test``) with columns ``video_name,label``, labels 1..7 = happy, sad,
    neutral, angry, surprise, disgust, fear (0 = no single label: an error in these files). All ten files
    must exist (a missing one is named). Clips: ``media`` picks one of ``DFEW_MEDIA`` — the face frames
    ``Clip/clip_224x224/00001/`` (default, what CLIP-based DFER work samples), ``clip_224x224_16f``,
    ``Clip/clip_224x224_avi/00001.avi`` or ``Clip/original/00001.mp4`` (the README's five-digit names; an
    unpadded ``1.mp4`` is taken when only it exists; a missing file is reported with the padded path); ``videos`` replaces the media folder.
    ``splits`` replaces ``root/EmoLabel_DataSplit``. Ids are the 5-digit clip numbers.
    A clip's label must agree across files; a clip in train and test of one fold is an error.
    """
    root = dataset_root(root, "dfew")
    if media not in DFEW_MEDIA:
        raise ManifestError(f"dfew: media {media!r} is not one of {sorted(DFEW_MEDIA)}")
    folder, pattern = DFEW_MEDIA[media]
    media_dir = option_path(videos, root / folder)
    if not media_dir.is_dir():
        raise ManifestError(f"dfew: clip folder {media_dir} not found (media={media!r} expects "
                            f"root/{folder}; choose media= from {sorted(DFEW_MEDIA)} or pass videos=FOLDER)")
    split_dir = option_path(splits, root / _DFEW_SPLITS)
    part_dirs = {part: _dfew_part_dir(split_dir, part) for part in ("train", "test")}
    files = {}
    for k in range(1, 6):
        for part in ("train", "test"):
            f = part_dirs[part] / f"set_{k}.csv"
            if not f.is_file():
                raise ManifestError(f"dfew: split file {f} not found (expected {part_dirs[part].name}/set_1.csv "
                                    f"... set_5.csv under {split_dir}; splits=FOLDER replaces it)")
            files[(str(k), part)] = f
    labels: dict[int, tuple[str, str]] = {}  # clip -> (class, where first seen)
    parts: dict[int, dict[str, str]] = {}
    origin: dict[int, tuple[str, int]] = {}
    problems: list[Problem] = []
    for (fold, part), file in files.items():
        shown = relative_path(file, split_dir)
        _, rows = read_csv_rows(file, ("video_name", "label"))
        for n, row in rows:
            name, raw = (row.get("video_name") or "").strip(), (row.get("label") or "").strip()
            try:
                clip = int(name)
            except ValueError:
                problems.append(Problem(shown, n, name or None, f"video_name must be a clip number, got {name!r}"))
                continue
            item_id = f"{clip:05d}"
            if raw not in {str(i) for i in range(1, 8)}:
                why = "0 = no single label" if raw == "0" else "expected 1..7"
                problems.append(Problem(shown, n, item_id, f"label {raw!r} ({why}; 1..7 = {', '.join(DFEW_CLASSES)})"))
                continue
            cls = DFEW_CLASSES[int(raw) - 1]
            where = f"{shown} row {n}"
            if clip in labels and labels[clip][0] != cls:
                problems.append(Problem(shown, n, item_id, f"label {cls!r} disagrees with {labels[clip][0]!r} "
                                         f"at {labels[clip][1]}"))
                continue
            if fold in parts.get(clip, {}):
                what = "listed twice" if parts[clip][fold] == part else f"in both train and test of set_{fold}"
                problems.append(Problem(shown, n, item_id, what))
                continue
            labels.setdefault(clip, (cls, where))
            origin.setdefault(clip, (shown, n))
            parts.setdefault(clip, {})[fold] = part
    items, origins = [], []
    also = _DFEW_ALSO.get(media)
    for clip in sorted(labels):
        path = media_dir / pattern.format(n=clip)
        if also is not None and not path.exists() and (media_dir / also.format(n=clip)).exists():
            path = media_dir / also.format(n=clip)
        items.append(Item(id=f"{clip:05d}", path=relative_path(path, root),
                          label=labels[clip][0], splits={"dfew": dict(sorted(parts[clip].items()))}))
        origins.append(origin[clip])
    manifest = Manifest(
        dataset=dataset or Path(out).resolve().name, classes=list(DFEW_CLASSES), items=items, root=str(root),
        label_type="single", split_schemes={"dfew": ["1", "2", "3", "4", "5"]},
        source={"adapter": "dfew", "root": str(root), "media": media, "media_dir": str(media_dir),
                "split_dir": str(split_dir),
                "split_sha256": {relative_path(f, split_dir): sha256_file(f) for f in files.values()}},
    )
    return finish_manifest(manifest, origins, problems, out, skip_invalid)


def _dfew_part_dir(split_dir: Path, part: str) -> Path:
    """The folder of ``part``'s set files: the release README spells it ``train(single_labeled)``, public
    loaders ``train(single-labeled)``, some copies plain ``train``. Exactly one must exist."""
    spellings = [f"{part}(single-labeled)", f"{part}(single_labeled)", part]
    found = [split_dir / name for name in spellings if (split_dir / name).is_dir()]
    if len(found) > 1:
        raise ManifestError(f"dfew: both {found[0].name} and {found[1].name} are under {split_dir}; keep one "
                            "(or pass splits=FOLDER)")
    if not found:
        raise ManifestError(f"dfew: no {part} split folder under {split_dir} (expected one of "
                            f"{', '.join(spellings)}; splits=FOLDER replaces {split_dir.name})")
    return found[0]


# --- ferv39k -------------------------------------------------------------------------------------


def prepare_ferv39k(
    root: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    videos: str | Path | None = None,
    splits: str | Path | None = None,
    skip_invalid: bool = False,
) -> tuple[Manifest, list[tuple[int, str | None, str]]]:
    """FERV39k -> scheme ``ferv39k`` fold ``official`` (train / test).

    Release (docs/datasets.md: unconfirmed; layout from public loaders, e.g. DFER-CLIP ``main.py`` and its
    ``FERV39KDataset``): lists ``4_setups/All_scenes/train_All.csv`` and ``test_All.csv`` (``splits``
    replaces the folder), one ``<Scene>/<Emotion>/<clip> <Emotion>`` per line, and face-frame folders
    ``2_ClipsforFaceCrop/<Scene>/<Emotion>/<clip>/`` (``videos`` replaces the folder). ``2_ClipsforFaceCrop``
    and ``4_setups`` are also found one level deeper (an unzip gave ``2_ClipsforFaceCrop-002/2_ClipsforFaceCrop/``).
    A first line that is not a valid entry is a header (whether the lists have one is not known): it is
    skipped and recorded in ``source["header_lines"]`` — unless it ends in a class name, which makes it a
    bad entry. A missing list or folder is an error naming it; a line
    whose label is not one of the 7 classes (angry, disgust, fear, happy, neutral, sad, surprise;
    case-insensitive), whose path is not ``<Scene>/<Emotion>/<clip>`` or whose emotion folder disagrees
    with the label is a bad row. Ids are the whole listed paths (clip numbers repeat across scenes).
    """
    root = dataset_root(root, "ferv39k")
    split_dir = option_path(splits, _one_level_deeper(root, "4_setups") / "All_scenes")
    frames = option_path(videos, _one_level_deeper(root, "2_ClipsforFaceCrop"))
    lists = {"train": split_dir / "train_All.csv", "test": split_dir / "test_All.csv"}
    for f in lists.values():
        if not f.is_file():
            raise ManifestError(f"ferv39k: split list {f} not found (expected 4_setups/All_scenes/train_All.csv "
                                f"and test_All.csv under {root}, or one level deeper; splits=FOLDER replaces the folder)")
    if not frames.is_dir():
        raise ManifestError(f"ferv39k: frame folder {frames} not found (expected 2_ClipsforFaceCrop/<Scene>/"
                            "<Emotion>/<clip>/ under root, or one level deeper; videos=FOLDER replaces it)")
    items, origins, problems = [], [], []
    headers: dict[str, str] = {}  # list file -> its first line, read as a header because it is no entry
    for part, file in lists.items():
        shown = relative_path(file, root)
        first = True
        for n, line in enumerate(read_text_lines(file), start=1):
            if not line.strip():
                continue
            entry = _ferv39k_entry(line)
            if first and isinstance(entry, str) and not _names_a_class(line):
                headers[shown] = line.strip()  # a header line: said so in source["header_lines"]
                first = False
                continue
            first = False
            if isinstance(entry, str):
                problems.append(Problem(shown, n, _list_fields(line)[0], entry))
                continue
            path, cls = entry
            items.append(Item(id=path, path=relative_path(frames / path, root), label=cls,
                              splits={"ferv39k": {"official": part}}))
            origins.append((shown, n))
    manifest = Manifest(
        dataset=dataset or Path(out).resolve().name, classes=list(FERV39K_CLASSES), items=items, root=str(root),
        label_type="single", split_schemes={"ferv39k": ["official"]},
        source={"adapter": "ferv39k", "root": str(root), "frames": str(frames), "split_dir": str(split_dir),
                "split_sha256": {f.name: sha256_file(f) for f in lists.values()}, "header_lines": headers},
    )
    return finish_manifest(manifest, origins, problems, out, skip_invalid)


_FERV39K_BY_NAME = {c.casefold(): c for c in FERV39K_CLASSES}


def _list_fields(line: str) -> list[str]:
    return [t for t in re.split(r"[,\s]+", line.strip()) if t]


def _names_a_class(line: str) -> bool:
    """Whether a line that is not a valid entry still ends in a class name: a bad entry, not a header."""
    fields = _list_fields(line)
    return len(fields) == 2 and fields[1].casefold() in _FERV39K_BY_NAME


def _ferv39k_entry(line: str) -> tuple[str, str] | str:
    """``(path, class)`` of a list line ``<Scene>/<Emotion>/<clip> <Emotion>``, or why it is not one."""
    tokens = _list_fields(line)
    if len(tokens) != 2:
        return f"expected '<Scene>/<Emotion>/<clip> <Emotion>', got {line!r}"
    path, raw = tokens[0].replace("\\", "/").strip("/"), tokens[1]
    cls = _FERV39K_BY_NAME.get(raw.casefold())
    if cls is None:
        return f"unknown class {raw!r} (classes: {', '.join(FERV39K_CLASSES)})"
    folders = path.split("/")
    if len(folders) < 3:
        return f"expected '<Scene>/<Emotion>/<clip> <Emotion>', got {line!r} (the clip number alone repeats across scenes)"
    if folders[-2].casefold() != cls:
        return f"path's emotion folder {folders[-2]!r} disagrees with its label {raw!r}"
    return path, cls


def _one_level_deeper(root: Path, name: str) -> Path:
    """``root/name``, or the one ``root/*/name`` when an unzip wrapped it in a folder of its own
    (``2_ClipsforFaceCrop-002/2_ClipsforFaceCrop/``); ``root/name`` when neither exists (named by the caller's
    error). Two wrapped copies are an error."""
    if (root / name).is_dir():
        return root / name
    found = sorted(d / name for d in root.iterdir() if d.is_dir() and not is_hidden(d) and (d / name).is_dir())
    if len(found) > 1:
        raise ManifestError(f"{name}/ is in two folders under {root}: {relative_path(found[0], root)} and "
                            f"{relative_path(found[1], root)}; keep one")
    return found[0] if found else root / name


# --- mafw ----------------------------------------------------------------------------------------


_MAFW_SPLITS = "Train & Test Set"


def prepare_mafw(
    root: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    videos: str | Path | None = None,
    splits: str | Path | None = None,
    captions: bool = True,
    caption_language: str = "en",
    caption_eval_as: str = "test",
    skip_invalid: bool = False,
) -> tuple[Manifest, list[tuple[int, str | None, str]]]:
    """MAFW -> the 9,172 single-label clips (11 classes), schemes ``mafw`` and ``mafw_caption``, folds ``1..5``.

    Release (docs/datasets.md: unconfirmed; layout from public loaders, e.g. MAE-DFER ``preprocess/mafw.py``,
    and a file-by-file inventory of the release): clips ``data/clips/00025.mp4`` (``videos`` replaces the
    folder) and ``Train & Test Set/`` (``splits`` replaces it) with
    ``single/no_caption/set_{1..5}/{train,test}.txt`` — lines ``00025.mp4 anger`` — and
    ``single/with_caption/set_{1..5}/{train,test}.txt`` — tab-separated ``clip, label, Chinese caption,
    English caption``, not UTF-8 throughout (each field is decoded as UTF-8, else GB18030). The
    ``with_caption`` set_1 lists hold 6,423 / 1,611 clips: ECPA's "6,423 training / 1,611 validation
    videos" (ECPA paper), i.e. fold ``1`` of ``mafw_caption``. The paper reports on those 1,611, so they
    are ``test`` here; ``caption_eval_as="val"`` names them ``val`` instead (the ECPA paper calls them validation videos).
    Neutral clips have no caption and are in no ``mafw_caption`` fold.

    ``text`` is the list of the clip's captions in ``caption_language`` (``en`` or ``zh``; all distinct
    references across the fold files). ``captions=False`` reads no caption files. Every list file must
    exist (a missing one is named); a label outside the 11 classes, a caption file's label disagreeing
    with the classification lists, or a clip in train and test of one fold is a bad row. The 43
    compound classes (``compound/``) are not read.
    """
    root = dataset_root(root, "mafw")
    if caption_language not in ("en", "zh"):
        raise ManifestError(f"mafw: caption_language must be 'en' or 'zh', got {caption_language!r}")
    if caption_eval_as not in ("test", "val"):
        raise ManifestError(f"mafw: caption_eval_as must be 'test' or 'val', got {caption_eval_as!r}")
    clips = option_path(videos, root / "data" / "clips")
    split_dir = option_path(splits, root / _MAFW_SPLITS)
    if not clips.is_dir():
        raise ManifestError(f"mafw: clip folder {clips} not found (expected data/clips/ under root; "
                            "videos=FOLDER replaces it)")
    views = ["no_caption"] + (["with_caption"] if captions else [])
    files = {}
    for view in views:
        for k in range(1, 6):
            for part in ("train", "test"):
                f = split_dir / "single" / view / f"set_{k}" / f"{part}.txt"
                if not f.is_file():
                    hint = "; captions=False skips the caption lists" if view == "with_caption" else ""
                    raise ManifestError(f"mafw: split list {f} not found (expected single/{view}/set_1..set_5/"
                                        f"train.txt and test.txt under {split_dir}{hint})")
                files[(view, str(k), part)] = f
    by_name = {c.casefold(): c for c in MAFW_CLASSES}
    labels: dict[str, tuple[str, str]] = {}
    parts: dict[str, dict[str, dict[str, str]]] = {}
    texts: dict[str, list[str]] = {}
    origin: dict[str, tuple[str, int]] = {}
    names: dict[str, str] = {}  # clip id -> file name as listed
    problems: list[Problem] = []
    encodings: set[str] = set()
    for (view, fold, part), file in files.items():
        shown = relative_path(file, split_dir)
        scheme = "mafw" if view == "no_caption" else "mafw_caption"
        value = part if scheme == "mafw" or part == "train" else caption_eval_as
        for n, fields in _mafw_lines(file, caption=view == "with_caption", encodings=encodings):
            if isinstance(fields, str):
                problems.append(Problem(shown, n, None, fields))
                continue
            name, raw = fields[0], fields[1]
            item_id = name.rsplit(".", 1)[0] if name.lower().endswith(VIDEO_EXTENSIONS) else name
            cls = by_name.get(raw.casefold())
            if cls is None:
                problems.append(Problem(shown, n, item_id, f"unknown class {raw!r} (classes: {', '.join(MAFW_CLASSES)})"))
                continue
            if item_id in labels and labels[item_id][0] != cls:
                problems.append(Problem(shown, n, item_id, f"label {cls!r} disagrees with {labels[item_id][0]!r} "
                                         f"at {labels[item_id][1]}"))
                continue
            assigned = parts.setdefault(item_id, {}).setdefault(scheme, {})
            if fold in assigned:
                what = "listed twice" if assigned[fold] == value else f"in both train and test of set_{fold}"
                problems.append(Problem(shown, n, item_id, f"{what} ({view})"))
                continue
            assigned[fold] = value
            labels.setdefault(item_id, (cls, f"{shown} line {n}"))
            origin.setdefault(item_id, (shown, n))
            names.setdefault(item_id, name if name != item_id else name + ".mp4")
            if scheme == "mafw_caption":
                text = fields[3] if caption_language == "en" else fields[2]
                refs = texts.setdefault(item_id, [])
                if text and text not in refs:
                    refs.append(text)
    items, origins = [], []
    for item_id in sorted(labels):
        splits_of = {s: dict(sorted(f.items())) for s, f in sorted(parts[item_id].items())}
        items.append(Item(id=item_id, path=relative_path(clips / names[item_id], root), label=labels[item_id][0],
                          text=texts.get(item_id) or None, splits=splits_of))
        origins.append(origin[item_id])
    schemes = {"mafw": ["1", "2", "3", "4", "5"]} | ({"mafw_caption": ["1", "2", "3", "4", "5"]} if captions else {})
    manifest = Manifest(
        dataset=dataset or Path(out).resolve().name, classes=list(MAFW_CLASSES), items=items, root=str(root),
        label_type="single", split_schemes=schemes,
        source={"adapter": "mafw", "root": str(root), "clips": str(clips), "split_dir": str(split_dir),
                "captions": captions, "caption_language": caption_language if captions else None,
                "caption_eval_as": caption_eval_as if captions else None,
                "caption_encodings": sorted(encodings),
                "ecpa_caption_fold": "1" if captions else None,
                "split_sha256": {relative_path(f, split_dir): sha256_file(f) for f in files.values()}},
    )
    return finish_manifest(manifest, origins, problems, out, skip_invalid)


def _mafw_lines(file: Path, caption: bool, encodings: set[str]):
    """``(line, fields)`` per non-blank line; fields ``[clip, label]`` or ``[clip, label, zh, en]``, or a
    string saying why the line cannot be read."""
    raw = file.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for n, line in enumerate(raw.split(b"\n"), start=1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        if not caption:
            try:
                parts = line.decode("utf-8").split()
            except UnicodeDecodeError as e:
                yield n, f"not UTF-8 ({e})"
                continue
            yield n, (parts if len(parts) == 2 else f"expected '<clip>.mp4 <label>', got {line.decode('utf-8')!r}")
            continue
        cells = line.split(b"\t")
        if len(cells) < 4:
            yield n, f"expected 4 tab-separated fields (clip, label, Chinese caption, English caption), got {len(cells)}"
            continue
        decoded = []
        for cell in cells[:4]:
            for enc in ("utf-8", "gb18030"):
                try:
                    decoded.append(cell.decode(enc).strip())
                    encodings.add(enc)
                    break
                except UnicodeDecodeError:
                    continue
            else:
                decoded.append(None)
        if None in decoded:
            yield n, "a field is neither UTF-8 nor GB18030"
            continue
        yield n, decoded
