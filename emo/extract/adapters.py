"""Adapters for the papers' datasets and for video + subtitle folders (SPEC §3.1, DATASETS.md).

Every adapter is ``prepare_<key>(root, out, *, dataset=None, ..., skip_invalid=False)`` like
``prepare_folder``: it reads the release under ``root``, writes ``<out>/manifest.jsonl`` and returns
``(manifest, skipped)``, ``skipped`` being ``(row, id, reason)`` for the rows dropped by ``skip_invalid``.
``row`` is the data row of a CSV (counted from 1 after its header), the line of a text or subtitle
file, the item's position for items found by scanning folders, or 0 for a problem with a whole file
(a subtitle file without a video); ``reason`` starts with the file (and its row).
Without ``skip_invalid`` the first bad row raises a ``ManifestError`` naming file, row and id, and
nothing is written. With it, every item named by a bad row is dropped (a clip whose label or fold
membership cannot be read is not kept half-assigned) and listed. Classes are in the papers' order.

Path options (``splits``, ``videos``, ``split_file``, ``captions``) are used as given (relative =
to the working directory); their defaults live under ``root``. What each release looks like, what of
it is confirmed and by which source, and what an adapter does when a file differs, is in each
adapter's docstring. Where DATASETS.md marks a detail unconfirmed, the adapter checks for it and
fails with a message naming what it expected, never guessing silently.

Split schemes (``scheme: folds``; values ``train|val|test``):

- ``ve8``: ``0..9`` (seeded stratified 2:1) or the list files' numbers; ``mv6``: ``0..2`` likewise.
- ``ek6``: ``official`` (from the authors' list; required).
- ``meld``: ``official`` (train / dev -> val / test).
- ``dfew``: ``1..5`` (the release's ``set_1..set_5``).
- ``ferv39k``: ``official``.
- ``mafw``: ``1..5`` (single-label, ``no_caption`` lists); ``mafw_caption``: ``1..5`` (``with_caption``
  lists; fold ``1`` is ECPA's 6,423 / 1,611).
- ``emvidcap``: ``ecpa`` (the 362 / 164 list the user supplies).
- ``subtitles``: ``all`` (every cue ``train``; a pre-training corpus).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from emo.cache.manifest import Item, Manifest, ManifestError
from emo.extract.datasets import (
    VIDEO_EXTENSIONS,
    _class_folders,
    _hidden,
    _sha256,
    _videos_in,
    _write,
    stratified_split,
)

__all__ = [
    "VE8_CLASSES",
    "EK6_CLASSES",
    "MV6_CLASSES",
    "MELD_CLASSES",
    "DFEW_CLASSES",
    "FERV39K_CLASSES",
    "MAFW_CLASSES",
    "DFEW_MEDIA",
    "DATASET_ADAPTERS",
    "Cue",
    "parse_subtitles",
    "read_subtitles",
    "fix_mojibake",
    "prepare_ve8",
    "prepare_ek6",
    "prepare_mv6",
    "prepare_meld",
    "prepare_dfew",
    "prepare_ferv39k",
    "prepare_mafw",
    "prepare_emvidcap",
    "prepare_subtitles",
]

# The papers' class orders (DATASETS.md). PE-CLIP loses 0.5 points when the order is reversed.
VE8_CLASSES = ["anger", "anticipation", "disgust", "fear", "joy", "sadness", "surprise", "trust"]
EK6_CLASSES = ["anger", "disgust", "fear", "joy", "sadness", "surprise"]
MV6_CLASSES = ["exciting", "fear", "neutral", "relaxation", "sad", "tension"]
MELD_CLASSES = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
DFEW_CLASSES = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]  # labels 1..7
FERV39K_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
MAFW_CLASSES = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise", "contempt",
                "anxiety", "helplessness", "disappointment"]

SUBTITLE_EXTENSIONS = (".srt", ".vtt")


from .subtitles import Cue, parse_subtitles, read_subtitles  # noqa: E402  (re-exported)

# --- shared: problems, finishing ---------------------------------------------------------------


@dataclass
class _Problem:
    file: str  # a display name: the file (relative to root where possible)
    row: int | None  # data row / line; None for items found by scanning folders and whole-file problems
    item_id: str | None
    reason: str
    position: int | None = None  # the item's position (from 1) when there is no row


def _fail(problems: list[_Problem]) -> NoReturn:
    p = problems[0]
    where = f"{p.file} row {p.row}" if p.row is not None else p.file
    more = f" (+{len(problems) - 1} more invalid rows)" if len(problems) > 1 else ""
    raise ManifestError(f"{where} (id {p.item_id!r}): {p.reason}{more}")


def _finish(
    manifest: Manifest,
    origins: list[tuple[str, int | None]],
    problems: list[_Problem],
    out: str | Path,
    skip_invalid: bool,
) -> tuple[Manifest, list[tuple[int, str | None, str]]]:
    """Drop items named by ``problems``, validate (files exist, ids unique, labels known), then raise the
    first problem or (``skip_invalid``) drop and list them; write the manifest.

    ``origins[i]`` is ``(file, row)`` of ``manifest.items[i]``, for naming validation problems.
    """
    bad = {p.item_id for p in problems if p.item_id is not None}
    kept = [(it, o) for it, o in zip(manifest.items, origins, strict=True) if it.id not in bad]
    manifest.items = [it for it, _ in kept]
    origins = [o for _, o in kept]
    for pos, item_id, reason in manifest.validate(check_files=True, skip_invalid=True):
        file, row = origins[pos - 1]  # pos counts the validated items from 1
        problems.append(_Problem(file, row, item_id, reason, position=pos))
    if problems and not skip_invalid:
        _fail(problems)
    if not manifest.items:
        raise ManifestError(f"{manifest.dataset}: no valid items under {manifest.root} ({len(problems)} skipped)")
    manifest.source["skipped_rows"] = len(problems)
    _write(manifest, out)
    skipped = []
    for p in problems:
        where = f"{p.file} row {p.row}" if p.row is not None else p.file
        row = p.row if p.row is not None else p.position or 0
        skipped.append((row, p.item_id, f"{where}: {p.reason}"))
    return manifest, skipped


def _root_dir(root: str | Path, key: str) -> Path:
    root = Path(root).resolve()
    if not root.is_dir():
        raise ManifestError(f"{key}: dataset root {root} is not a directory")
    return root


def _option_path(value: str | Path | None, default: Path) -> Path:
    return Path(value).expanduser().resolve() if value is not None else default


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it (manifests stay movable with their root; messages stay
    short), else absolute."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _text_lines(file: Path) -> list[str]:
    """Lines of a UTF-8 text file (BOM and CRLF tolerated)."""
    try:
        return file.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise ManifestError(f"{file}: not UTF-8 text ({e})") from None


def _csv_rows(file: Path, required: Sequence[str], delimiter: str = ",") -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and ``(row, {column: value})`` of a CSV; a missing column is an error naming the file."""
    with open(file, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise ManifestError(f"{file}: missing column(s) {missing}; expected {list(required)}, found {header}")
        rows = []
        for n, cells in enumerate(reader, start=1):
            if not any(c.strip() for c in cells):
                continue  # a blank line keeps its number
            rows.append((n, dict(zip(header, cells, strict=False))))
    return header, rows


# --- class folders: ve8, ek6, mv6 ----------------------------------------------------------------


_LIST_NAME = re.compile(r"^(train|test)(?:list)?[_-]?(\d*)\.txt$", re.IGNORECASE)
_LIST_LINE = re.compile(r"^(?P<entry>.*?)(?:\s+(?P<label>\d+))?\s*$")


def prepare_ve8(
    root: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    splits: str | Path | None = None,
    folds: int = 10,
    test_ratio: float = 1 / 3,
    seed: int = 0,
    extensions: Iterable[str] = VIDEO_EXTENSIONS,
    skip_invalid: bool = False,
) -> tuple[Manifest, list[tuple[int, str | None, str]]]:
    """VideoEmotion-8: ``root/<Class>/<video>`` -> scheme ``ve8``.

    Confirmed: the 8 Plutchik classes (seed 000; Jiang et al. AAAI 2014). Release layout (unconfirmed,
    DATASETS.md): one folder per class; public loaders (github.com/maysonma/VAANet ``tools/ve8_json.py``,
    NK-JittorCV/nk-affectivecomputing ``docs/en/dataset.md``) use ``Anger/ ... Trust/`` folders of videos
    or frame folders, so class folders are matched to the classes case-insensitively, and any other
    folder is an error naming the expected ones. Ids are ``<ClassFolder>/<file stem>``.

    Splits: the 10 train/test splits of prior work are not shipped with the videos. With split lists
    (``splits``, default ``root/splits`` when it exists) — UCF101-style ``trainlistNN.txt`` +
    ``testlistNN.txt`` as VAANet publishes for split 01, lines ``<ClassFolder>/<stem> [class number]``,
    ``classInd.txt`` (``1 Anger``) optional and then checked — fold ``NN`` (as an integer, "1".."10")
    comes from each pair. Without lists, ``folds`` seeded stratified splits with ``test_ratio`` (2:1 ->
    1/3), fold ``k`` = ``"k"`` drawn with seed ``seed + k`` (seeds recorded in ``source``).
    """
    return _prepare_class_folders(
        "ve8", VE8_CLASSES, root, out, dataset=dataset, splits=splits, folds=folds, test_ratio=test_ratio,
        seed=seed, extensions=extensions, skip_invalid=skip_invalid, lists_required=False,
    )


def prepare_ek6(
    root: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    splits: str | Path | None = None,
    extensions: Iterable[str] = VIDEO_EXTENSIONS,
    skip_invalid: bool = False,
) -> tuple[Manifest, list[tuple[int, str | None, str]]]:
    """Ekman-6: ``root/<Class>/<video>`` + the authors' train/test list -> scheme ``ek6``, fold ``official``.

    Confirmed: the 6 classes (seed 000; Xu et al. TAC 2016). Release layout (unconfirmed): class folders
    (``Anger/ ... Surprise/`` in NK-JittorCV's loader), matched case-insensitively. The paper's protocol
    is the official 1:1 split, whose file is not known: ``splits`` (default ``root/splits``) must be a
    folder with exactly one list pair — ``train.txt`` + ``test.txt`` or ``trainlistNN.txt`` +
    ``testlistNN.txt``, lines ``<ClassFolder>/<stem> [class number]``. Without it the adapter stops and
    says so; it never draws a random split in its place.
    """
    return _prepare_class_folders(
        "ek6", EK6_CLASSES, root, out, dataset=dataset, splits=splits, folds=0, test_ratio=0.5, seed=0,
        extensions=extensions, skip_invalid=skip_invalid, lists_required=True,
    )


def prepare_mv6(
    root: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    splits: str | Path | None = None,
    folds: int = 3,
    test_ratio: float = 1 / 3,
    seed: int = 0,
    extensions: Iterable[str] = VIDEO_EXTENSIONS,
    skip_invalid: bool = False,
) -> tuple[Manifest, list[tuple[int, str | None, str]]]:
    """MusicVideo-6: ``root/<Class>/<clip>`` -> scheme ``mv6``.

    Confirmed (seed 000): classes exciting, fear, neutral, relaxation, sad, tension; 3 random 2:1
    splits. Release layout (unconfirmed): class folders of ~30 s clips, matched case-insensitively.
    Splits as for ``prepare_ve8``: list pairs from ``splits`` when given (or ``root/splits`` exists),
    else ``folds`` seeded stratified splits ``"0".."folds-1"`` with ``test_ratio``.
    """
    return _prepare_class_folders(
        "mv6", MV6_CLASSES, root, out, dataset=dataset, splits=splits, folds=folds, test_ratio=test_ratio,
        seed=seed, extensions=extensions, skip_invalid=skip_invalid, lists_required=False,
    )


def _prepare_class_folders(
    key: str,
    classes: list[str],
    root: str | Path,
    out: str | Path,
    *,
    dataset: str | None,
    splits: str | Path | None,
    folds: int,
    test_ratio: float,
    seed: int,
    extensions: Iterable[str],
    skip_invalid: bool,
    lists_required: bool,
) -> tuple[Manifest, list[tuple[int, str | None, str]]]:
    root = _root_dir(root, key)
    exts = tuple(sorted({(e if e.startswith(".") else "." + e).lower() for e in extensions}))
    split_dir = _option_path(splits, root / "splits")
    folder_class = _match_class_folders(key, root, classes, exts, skip=split_dir)
    items, origins, ignored = [], [], 0
    for cls in classes:
        folder = folder_class[cls]
        videos, n_ignored = _videos_in(root / folder, exts)
        ignored += n_ignored
        if not videos:
            raise ManifestError(f"{key}: class folder {root / folder} holds no videos ({', '.join(exts)}) "
                                "and no frame folders")
        for entry in videos:
            stem = entry.name if entry.is_dir() else entry.stem
            items.append(Item(id=f"{folder}/{stem}", path=f"{folder}/{entry.name}", label=cls))
            origins.append((f"{folder}/{entry.name}", None))

    source = {"adapter": key, "root": str(root), "class_folders": {c: folder_class[c] for c in classes},
              "extensions": list(exts), "ignored_files": ignored}
    problems: list[_Problem] = []
    if splits is not None or split_dir.is_dir():
        fold_names = _apply_split_lists(key, split_dir, root, items, problems, source,
                                        single="official" if lists_required else None)
    elif lists_required:
        raise ManifestError(
            f"{key}: the official train/test list is required (the paper's protocol; DATASETS.md: not "
            f"shipped in a known file) and none was given: expected a folder {split_dir} (or splits=FOLDER) "
            "holding train.txt + test.txt (or trainlist01.txt + testlist01.txt), one "
            "'<ClassFolder>/<video stem>' per line"
        )
    else:
        if folds < 1:
            raise ManifestError(f"{key}: folds must be >= 1, got {folds}")
        labels = [it.label for it in items]
        fold_names = [str(k) for k in range(folds)]
        for k, fold in enumerate(fold_names):
            for item, part in zip(items, stratified_split(labels, test_ratio, 0.0, seed + k), strict=True):
                item.splits.setdefault(key, {})[fold] = part
        source |= {"folds_from": "seeded stratified split", "test_ratio": test_ratio, "seed": seed,
                   "fold_seeds": [seed + k for k in range(folds)]}
    manifest = Manifest(
        dataset=dataset or Path(out).resolve().name, classes=list(classes), items=items, root=str(root),
        label_type="single", split_schemes={key: fold_names}, source=source,
    )
    return _finish(manifest, origins, problems, out, skip_invalid)


def _match_class_folders(
    key: str, root: Path, classes: list[str], exts: tuple[str, ...], skip: Path
) -> dict[str, str]:
    """class -> folder name, matching folder names to the classes case-insensitively; ``skip`` (the split
    list folder when it lies in ``root``) is not a class folder."""
    try:
        folders = {n: p for n, p in _class_folders(root, exts).items() if p.resolve() != skip}
        if not folders:
            raise ManifestError(f"dataset root {root} has no class folders")
    except ManifestError as e:
        raise ManifestError(f"{key}: {e} (one folder per class: {', '.join(classes)})") from None
    by_fold = {c.casefold(): c for c in classes}
    out: dict[str, str] = {}
    for name in sorted(folders):
        cls = by_fold.get(name.casefold())
        if cls is None:
            raise ManifestError(f"{key}: folder {name!r} under {root} is not a class; expected one folder per "
                                f"class ({', '.join(classes)}; case-insensitive)")
        if cls in out:
            raise ManifestError(f"{key}: folders {out[cls]!r} and {name!r} under {root} are both class {cls!r}")
        out[cls] = name
    missing = [c for c in classes if c not in out]
    if missing:
        raise ManifestError(f"{key}: no folder for class(es) {missing} under {root}; expected one folder per "
                            f"class ({', '.join(classes)}; case-insensitive), found {sorted(folders)}")
    return out


def _list_pairs(key: str, split_dir: Path) -> dict[str, tuple[Path, Path]]:
    """fold -> (train list, test list): ``trainlistNN.txt`` + ``testlistNN.txt`` (fold ``str(int(NN))``) or
    ``train.txt`` + ``test.txt`` (fold ``official``)."""
    if not split_dir.is_dir():
        raise ManifestError(f"{key}: split list folder {split_dir} not found")
    found: dict[str, dict[str, Path]] = {}
    for p in sorted(split_dir.iterdir()):
        m = _LIST_NAME.match(p.name)
        if m and p.is_file():
            fold = str(int(m.group(2))) if m.group(2) else "official"
            if m.group(1).lower() in found.setdefault(fold, {}):
                raise ManifestError(f"{key}: two {m.group(1).lower()} lists for fold {fold} in {split_dir}")
            found[fold][m.group(1).lower()] = p
    if not found:
        raise ManifestError(f"{key}: no split lists in {split_dir}: expected trainlistNN.txt + testlistNN.txt "
                            "pairs (UCF101 / VAANet style) or train.txt + test.txt")
    pairs = {}
    for fold, parts in found.items():
        for part in ("train", "test"):
            if part not in parts:
                other = next(iter(parts.values())).name
                expected = re.sub(r"^(train|test)", part, other, flags=re.IGNORECASE)
                raise ManifestError(f"{key}: {split_dir / other} has no {part} partner: expected {split_dir / expected}")
        pairs[fold] = (parts["train"], parts["test"])
    return dict(sorted(pairs.items(), key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0)))


def _class_index(split_dir: Path) -> dict[int, str] | None:
    """``classInd.txt`` (``1 Anger`` per line) -> {1: "anger"}; None when absent."""
    file = split_dir / "classInd.txt"
    if not file.is_file():
        return None
    out = {}
    for n, line in enumerate(_text_lines(file), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ManifestError(f"{file} line {n}: expected '<number> <class>', got {line!r}")
        out[int(parts[0])] = parts[1].casefold()
    return out


def _apply_split_lists(
    key: str,
    split_dir: Path,
    root: Path,
    items: list[Item],
    problems: list[_Problem],
    source: dict,
    single: str | None,
) -> list[str]:
    """Assign each listed item to train/test per fold; returns the fold names."""
    pairs = _list_pairs(key, split_dir)
    if single is not None:
        if len(pairs) != 1:
            raise ManifestError(f"{key}: expected one train/test list pair in {split_dir} (the official split), "
                                f"found {len(pairs)}: {[p[0].name for p in pairs.values()]}")
        pairs = {single: next(iter(pairs.values()))}
    class_index = _class_index(split_dir)
    by_id = {it.id: it for it in items}
    by_fold_id = {it.id.casefold(): it for it in items}
    by_name = {it.path.casefold(): it for it in items}
    unlisted = {}
    for fold, files in pairs.items():
        seen: dict[str, tuple[str, str]] = {}
        for part, file in zip(("train", "test"), files, strict=True):
            shown = _rel(file, root)
            for n, line in enumerate(_text_lines(file), start=1):
                if not line.strip():
                    continue
                m = _LIST_LINE.match(line.strip())
                entry = m.group("entry").strip().replace("\\", "/")
                item = by_id.get(entry) or by_fold_id.get(entry.casefold()) or by_name.get(entry.casefold())
                if item is None:
                    problems.append(_Problem(shown, n, entry, f"no video {entry!r} under {root} "
                                             "(expected <ClassFolder>/<video stem>)"))
                    continue
                if class_index is not None and m.group("label") is not None:
                    named = class_index.get(int(m.group("label")))
                    if named != item.label:
                        problems.append(_Problem(shown, n, item.id, f"class number {m.group('label')} is "
                                                 f"{named!r} in classInd.txt but the video is in class {item.label!r}"))
                        continue
                if item.id in seen:
                    prev_part, prev_where = seen[item.id]
                    what = "listed twice" if prev_part == part else f"in both train and test of fold {fold}"
                    problems.append(_Problem(shown, n, item.id, f"{what} (first at {prev_where})"))
                    continue
                seen[item.id] = (part, f"{shown} line {n}")
                item.splits.setdefault(key, {})[fold] = part
        unlisted[fold] = len(items) - len(seen)
    source |= {
        "folds_from": "split lists", "split_dir": str(split_dir),
        "split_files": {f: [p.name for p in files] for f, files in pairs.items()},
        "split_sha256": {p.name: _sha256(p) for files in pairs.values() for p in files},
        "class_index": "checked against classInd.txt" if class_index else "absent (numbers not checked)",
        "unlisted_items": unlisted,  # items in no list of that fold: kept in the manifest, not in the fold
    }
    return list(pairs)


# --- meld ----------------------------------------------------------------------------------------


_MELD_PARTS = (  # (release name, label file, video folder, split value)
    ("train", "train_sent_emo.csv", "train_splits", "train"),
    ("dev", "dev_sent_emo.csv", "dev_splits_complete", "val"),
    ("test", "test_sent_emo.csv", "output_repeated_splits_test", "test"),
)
_MELD_COLUMNS = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")


def prepare_meld(
    root: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    fix_text: bool = True,
    skip_invalid: bool = False,
) -> tuple[Manifest, list[tuple[int, str | None, str]]]:
    """MELD (``MELD.Raw``) -> one item per utterance clip, scheme ``meld`` fold ``official``.

    Release (DATASETS.md, medium; the MELD.Raw.tar.gz of github.com/declare-lab/MELD, whose README gives
    9,989 / 1,109 / 2,610 utterances; folder names as public loaders read them): ``root`` (or ``root/MELD.Raw``)
    holds ``train_sent_emo.csv``, ``dev_sent_emo.csv``, ``test_sent_emo.csv`` (columns ``Sr No.,
    Utterance, Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID, Season, Episode, StartTime,
    EndTime``) and the clips ``dia{Dialogue_ID}_utt{Utterance_ID}.mp4`` under ``train_splits/``,
    ``dev_splits_complete/``, ``output_repeated_splits_test/``. A missing CSV, folder or column is an
    error naming it. Ids are ``train|dev|test/dia{D}_utt{U}`` (dialogue ids repeat across parts); dev is
    ``val``. ``text`` is the utterance, ``speaker`` the speaker. The mp4 is already the utterance clip,
    so ``start``/``end`` stay empty (``StartTime``/``EndTime`` are times in the episode, not in the clip).

    With ``fix_text`` the cp1252-read-as-UTF-8 mojibake of the release (``â€™`` for ``’``) is repaired
    (``fix_mojibake``); the count is recorded in ``source["texts_fixed"]``. A row whose clip is missing
    (a few in the release) is a "file not found" row: an error, or listed with ``skip_invalid``.
    """
    root = _root_dir(root, "meld")
    base = root
    if not (root / _MELD_PARTS[0][1]).is_file() and (root / "MELD.Raw" / _MELD_PARTS[0][1]).is_file():
        base = root / "MELD.Raw"
    for _, label_file, video_dir, _ in _MELD_PARTS:
        if not (base / label_file).is_file():
            raise ManifestError(f"meld: no {label_file} in {base} (expected the MELD.Raw release: "
                                f"{', '.join(p[1] for p in _MELD_PARTS)} and the clip folders "
                                f"{', '.join(p[2] for p in _MELD_PARTS)})")
        if not (base / video_dir).is_dir():
            raise ManifestError(f"meld: no clip folder {video_dir}/ in {base} (extract the release's "
                                f"{_part_archive(video_dir)} there)")
    items, origins, problems, fixed = [], [], [], 0
    for part, label_file, video_dir, split in _MELD_PARTS:
        file = base / label_file
        _, rows = _csv_rows(file, _MELD_COLUMNS)
        for n, row in rows:
            try:
                dia, utt = int(row["Dialogue_ID"].strip()), int(row["Utterance_ID"].strip())
            except (ValueError, AttributeError, KeyError):
                problems.append(_Problem(label_file, n, None, f"Dialogue_ID / Utterance_ID must be integers, got "
                                         f"{row.get('Dialogue_ID')!r} / {row.get('Utterance_ID')!r}"))
                continue
            text = row.get("Utterance") or ""
            if fix_text:
                text, changed = fix_mojibake(text)
                fixed += changed
            items.append(Item(
                id=f"{part}/dia{dia}_utt{utt}", path=f"{video_dir}/dia{dia}_utt{utt}.mp4",
                label=(row.get("Emotion") or "").strip().lower(), text=text.strip() or None,
                speaker=(row.get("Speaker") or "").strip() or None, splits={"meld": {"official": split}},
            ))
            origins.append((label_file, n))
    manifest = Manifest(
        dataset=dataset or Path(out).resolve().name, classes=list(MELD_CLASSES), items=items, root=str(base),
        label_type="single", split_schemes={"meld": ["official"]},
        source={"adapter": "meld", "root": str(base), "fix_text": fix_text, "texts_fixed": fixed,
                "label_files": {p[1]: _sha256(base / p[1]) for p in _MELD_PARTS},
                "parts": {p[0]: p[3] for p in _MELD_PARTS}},
    )
    return _finish(manifest, origins, problems, out, skip_invalid)


def _part_archive(video_dir: str) -> str:
    return {"train_splits": "train.tar.gz", "dev_splits_complete": "dev.tar.gz",
            "output_repeated_splits_test": "test.tar.gz"}.get(video_dir, video_dir)


def fix_mojibake(text: str) -> tuple[str, bool]:
    """Undo UTF-8 text that was decoded as cp1252 (``â€™`` -> ``’``); ``(text, changed)``.

    Each character is mapped back to its cp1252 byte (C1 controls U+0080..U+009F, which cp1252 leaves
    undefined, to the same byte) and the bytes are decoded as UTF-8; text that does not round-trip (real
    non-ASCII text) is left as it is. Lone C1 controls left after that are cp1252 punctuation read as
    Latin-1 (``\\x92`` -> ``’``) and are mapped through cp1252.
    """
    if text.isascii():
        return text, False
    fixed = text
    try:
        raw = bytes(_cp1252_byte(ch) for ch in text)
        fixed = raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        fixed = text
    if any("\x80" <= ch <= "\x9f" for ch in fixed):
        fixed = "".join(_c1_to_cp1252(ch) for ch in fixed)
    return fixed, fixed != text


def _cp1252_byte(ch: str) -> int:
    if ord(ch) < 0x80 or 0x80 <= ord(ch) <= 0x9f:
        return ord(ch)
    b = ch.encode("cp1252")  # UnicodeEncodeError (a ValueError) when ch has no cp1252 byte
    return b[0]


def _c1_to_cp1252(ch: str) -> str:
    if "\x80" <= ch <= "\x9f":
        try:
            return bytes([ord(ch)]).decode("cp1252")
        except UnicodeDecodeError:
            return ch
    return ch


# --- dfew ----------------------------------------------------------------------------------------


DFEW_MEDIA = {  # media -> (folder under root, file or folder name of clip n)
    "clip_224x224": ("Clip/clip_224x224", "{n:05d}"),  # face frames, no temporal interpolation
    "clip_224x224_16f": ("Clip/clip_224x224_16f", "{n:05d}"),  # 16 temporally interpolated face frames
    "clip_224x224_avi": ("Clip/clip_224x224_avi", "{n:05d}.avi"),
    "original": ("Clip/original", "{n}.mp4"),
}
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

    Release (DATASETS.md, medium; confirmed against public loaders, e.g. MAE-DFER ``preprocess/dfew.py``,
    DFER-CLIP ``main.py``): ``EmoLabel_DataSplit/train(single-labeled)/set_{1..5}.csv`` and
    ``test(single-labeled)/set_{1..5}.csv`` with columns ``video_name,label``, labels 1..7 = happy, sad,
    neutral, angry, surprise, disgust, fear (0 = no single label: an error in these files). All ten files
    must exist (a missing one is named). Clips: ``media`` picks one of ``DFEW_MEDIA`` — the face frames
    ``Clip/clip_224x224/00001/`` (default, what CLIP-based DFER work samples), ``clip_224x224_16f``,
    ``Clip/clip_224x224_avi/00001.avi`` or ``Clip/original/1.mp4`` (naming from public loaders,
    unconfirmed: a missing file is reported with its path); ``videos`` replaces the media folder.
    ``splits`` replaces ``root/EmoLabel_DataSplit``. Ids are the 5-digit clip numbers.
    A clip's label must agree across files; a clip in train and test of one fold is an error.
    """
    root = _root_dir(root, "dfew")
    if media not in DFEW_MEDIA:
        raise ManifestError(f"dfew: media {media!r} is not one of {sorted(DFEW_MEDIA)}")
    folder, pattern = DFEW_MEDIA[media]
    media_dir = _option_path(videos, root / folder)
    if not media_dir.is_dir():
        raise ManifestError(f"dfew: clip folder {media_dir} not found (media={media!r} expects "
                            f"root/{folder}; choose media= from {sorted(DFEW_MEDIA)} or pass videos=FOLDER)")
    split_dir = _option_path(splits, root / _DFEW_SPLITS)
    files = {}
    for k in range(1, 6):
        for part in ("train", "test"):
            f = split_dir / f"{part}(single-labeled)" / f"set_{k}.csv"
            if not f.is_file():
                raise ManifestError(f"dfew: split file {f} not found (expected {part}(single-labeled)/set_1.csv "
                                    f"... set_5.csv under {split_dir}; splits=FOLDER replaces it)")
            files[(str(k), part)] = f
    labels: dict[int, tuple[str, str]] = {}  # clip -> (class, where first seen)
    parts: dict[int, dict[str, str]] = {}
    origin: dict[int, tuple[str, int]] = {}
    problems: list[_Problem] = []
    for (fold, part), file in files.items():
        shown = _rel(file, split_dir)
        _, rows = _csv_rows(file, ("video_name", "label"))
        for n, row in rows:
            name, raw = (row.get("video_name") or "").strip(), (row.get("label") or "").strip()
            try:
                clip = int(name)
            except ValueError:
                problems.append(_Problem(shown, n, name or None, f"video_name must be a clip number, got {name!r}"))
                continue
            item_id = f"{clip:05d}"
            if raw not in {str(i) for i in range(1, 8)}:
                why = "0 = no single label" if raw == "0" else "expected 1..7"
                problems.append(_Problem(shown, n, item_id, f"label {raw!r} ({why}; 1..7 = {', '.join(DFEW_CLASSES)})"))
                continue
            cls = DFEW_CLASSES[int(raw) - 1]
            where = f"{shown} row {n}"
            if clip in labels and labels[clip][0] != cls:
                problems.append(_Problem(shown, n, item_id, f"label {cls!r} disagrees with {labels[clip][0]!r} "
                                         f"at {labels[clip][1]}"))
                continue
            if fold in parts.get(clip, {}):
                what = "listed twice" if parts[clip][fold] == part else f"in both train and test of set_{fold}"
                problems.append(_Problem(shown, n, item_id, what))
                continue
            labels.setdefault(clip, (cls, where))
            origin.setdefault(clip, (shown, n))
            parts.setdefault(clip, {})[fold] = part
    items, origins = [], []
    for clip in sorted(labels):
        items.append(Item(id=f"{clip:05d}", path=_rel(media_dir / pattern.format(n=clip), root),
                          label=labels[clip][0], splits={"dfew": dict(sorted(parts[clip].items()))}))
        origins.append(origin[clip])
    manifest = Manifest(
        dataset=dataset or Path(out).resolve().name, classes=list(DFEW_CLASSES), items=items, root=str(root),
        label_type="single", split_schemes={"dfew": ["1", "2", "3", "4", "5"]},
        source={"adapter": "dfew", "root": str(root), "media": media, "media_dir": str(media_dir),
                "split_dir": str(split_dir),
                "split_sha256": {_rel(f, split_dir): _sha256(f) for f in files.values()}},
    )
    return _finish(manifest, origins, problems, out, skip_invalid)


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

    Release (DATASETS.md: unconfirmed; layout from public loaders, e.g. DFER-CLIP ``main.py`` and its
    ``FERV39KDataset``): lists ``4_setups/All_scenes/train_All.csv`` and ``test_All.csv`` (``splits``
    replaces the folder), one ``<Scene>/<Emotion>/<clip> <Emotion>`` per line (an optional header line
    is skipped), and face-frame folders ``2_ClipsforFaceCrop/<Scene>/<Emotion>/<clip>/`` (``videos``
    replaces the folder). A missing list or folder is an error naming it; a line whose label is not one
    of the 7 classes (angry, disgust, fear, happy, neutral, sad, surprise; case-insensitive) or whose
    path's emotion folder disagrees with it is a bad row. Ids are the listed paths.
    """
    root = _root_dir(root, "ferv39k")
    split_dir = _option_path(splits, root / "4_setups" / "All_scenes")
    frames = _option_path(videos, root / "2_ClipsforFaceCrop")
    lists = {"train": split_dir / "train_All.csv", "test": split_dir / "test_All.csv"}
    for f in lists.values():
        if not f.is_file():
            raise ManifestError(f"ferv39k: split list {f} not found (expected 4_setups/All_scenes/train_All.csv "
                                f"and test_All.csv under {root}; splits=FOLDER replaces the folder)")
    if not frames.is_dir():
        raise ManifestError(f"ferv39k: frame folder {frames} not found (expected 2_ClipsforFaceCrop/<Scene>/"
                            "<Emotion>/<clip>/ under root; videos=FOLDER replaces it)")
    by_name = {c.casefold(): c for c in FERV39K_CLASSES}
    items, origins, problems = [], [], []
    for part, file in lists.items():
        shown = _rel(file, root)
        for n, line in enumerate(_text_lines(file), start=1):
            tokens = [t for t in re.split(r"[,\s]+", line.strip()) if t]
            if not tokens:
                continue
            if n == 1 and "/" not in tokens[0]:
                continue  # a header line
            if len(tokens) != 2:
                problems.append(_Problem(shown, n, tokens[0], f"expected '<Scene>/<Emotion>/<clip> <Emotion>', got {line!r}"))
                continue
            path, raw = tokens[0].strip("/"), tokens[1]
            cls = by_name.get(raw.casefold())
            if cls is None:
                problems.append(_Problem(shown, n, path, f"unknown class {raw!r} (classes: {', '.join(FERV39K_CLASSES)})"))
                continue
            folders = path.split("/")
            if len(folders) >= 2 and folders[-2].casefold() != cls:
                problems.append(_Problem(shown, n, path, f"path's emotion folder {folders[-2]!r} disagrees with "
                                         f"its label {raw!r}"))
                continue
            items.append(Item(id=path, path=_rel(frames / path, root), label=cls,
                              splits={"ferv39k": {"official": part}}))
            origins.append((shown, n))
    manifest = Manifest(
        dataset=dataset or Path(out).resolve().name, classes=list(FERV39K_CLASSES), items=items, root=str(root),
        label_type="single", split_schemes={"ferv39k": ["official"]},
        source={"adapter": "ferv39k", "root": str(root), "frames": str(frames), "split_dir": str(split_dir),
                "split_sha256": {f.name: _sha256(f) for f in lists.values()}},
    )
    return _finish(manifest, origins, problems, out, skip_invalid)


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

    Release (DATASETS.md: unconfirmed; layout from public loaders, e.g. MAE-DFER ``preprocess/mafw.py``,
    and a file-by-file inventory of the release): clips ``data/clips/00025.mp4`` (``videos`` replaces the
    folder) and ``Train & Test Set/`` (``splits`` replaces it) with
    ``single/no_caption/set_{1..5}/{train,test}.txt`` — lines ``00025.mp4 anger`` — and
    ``single/with_caption/set_{1..5}/{train,test}.txt`` — tab-separated ``clip, label, Chinese caption,
    English caption``, not UTF-8 throughout (each field is decoded as UTF-8, else GB18030). The
    ``with_caption`` set_1 lists hold 6,423 / 1,611 clips: ECPA's "6,423 training / 1,611 validation
    videos" (seed 002), i.e. fold ``1`` of ``mafw_caption``. The paper reports on those 1,611, so they
    are ``test`` here; ``caption_eval_as="val"`` names them ``val`` instead (SPEC §4.5 calls them val).
    Neutral clips have no caption and are in no ``mafw_caption`` fold.

    ``text`` is the list of the clip's captions in ``caption_language`` (``en`` or ``zh``; all distinct
    references across the fold files). ``captions=False`` reads no caption files. Every list file must
    exist (a missing one is named); a label outside the 11 classes, a caption file's label disagreeing
    with the classification lists, or a clip in train and test of one fold is a bad row. The 43
    compound classes (``compound/``) are not read.
    """
    root = _root_dir(root, "mafw")
    if caption_language not in ("en", "zh"):
        raise ManifestError(f"mafw: caption_language must be 'en' or 'zh', got {caption_language!r}")
    if caption_eval_as not in ("test", "val"):
        raise ManifestError(f"mafw: caption_eval_as must be 'test' or 'val', got {caption_eval_as!r}")
    clips = _option_path(videos, root / "data" / "clips")
    split_dir = _option_path(splits, root / _MAFW_SPLITS)
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
    problems: list[_Problem] = []
    encodings: set[str] = set()
    for (view, fold, part), file in files.items():
        shown = _rel(file, split_dir)
        scheme = "mafw" if view == "no_caption" else "mafw_caption"
        value = part if scheme == "mafw" or part == "train" else caption_eval_as
        for n, fields in _mafw_lines(file, caption=view == "with_caption", encodings=encodings):
            if isinstance(fields, str):
                problems.append(_Problem(shown, n, None, fields))
                continue
            name, raw = fields[0], fields[1]
            item_id = name.rsplit(".", 1)[0] if name.lower().endswith(VIDEO_EXTENSIONS) else name
            cls = by_name.get(raw.casefold())
            if cls is None:
                problems.append(_Problem(shown, n, item_id, f"unknown class {raw!r} (classes: {', '.join(MAFW_CLASSES)})"))
                continue
            if item_id in labels and labels[item_id][0] != cls:
                problems.append(_Problem(shown, n, item_id, f"label {cls!r} disagrees with {labels[item_id][0]!r} "
                                         f"at {labels[item_id][1]}"))
                continue
            assigned = parts.setdefault(item_id, {}).setdefault(scheme, {})
            if fold in assigned:
                what = "listed twice" if assigned[fold] == value else f"in both train and test of set_{fold}"
                problems.append(_Problem(shown, n, item_id, f"{what} ({view})"))
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
        items.append(Item(id=item_id, path=_rel(clips / names[item_id], root), label=labels[item_id][0],
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
                "split_sha256": {_rel(f, split_dir): _sha256(f) for f in files.values()}},
    )
    return _finish(manifest, origins, problems, out, skip_invalid)


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


# --- emvidcap ------------------------------------------------------------------------------------


_EMVIDCAP_CAPTION_FILES = ("EmVideo_trainval_captions.csv", "EmVideo_test_captions.csv")


def prepare_emvidcap(
    root: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    split_file: str | Path | None = None,
    captions: Sequence[str | Path] | str | Path | None = None,
    videos: str | Path | None = None,
    skip_invalid: bool = False,
) -> tuple[Manifest, list[tuple[int, str | None, str]]]:
    """EmVidCap -> the clear-faced videos of ECPA (seed 002) with all their captions, scheme ``emvidcap``
    fold ``ecpa``; no classes (``label_type="none"``).

    Release (DATASETS.md: unconfirmed; from the dataset's loaders, github.com/Tongji-MIC-Lab/EmVidCap
    and songpipi/EPAN ``loader``): caption tables ``EmVideo_trainval_captions.csv`` and
    ``EmVideo_test_captions.csv`` with columns ``VideoID`` and ``EmCaptions`` (tab- or comma-separated;
    several rows per video), looked for in ``root`` (``captions`` names the files instead). The 526
    clear-faced videos and their 362 / 164 split are not published with seed 002, so ``split_file``
    (default ``root/ecpa_split.txt``) is required: one ``<VideoID> train|test`` per line (whitespace or
    comma; a first line ``id,split`` / ``VideoID split`` is a header). Without it the adapter stops and says so. Videos are
    ``<VideoID>.<video extension>`` in ``videos`` (default ``root/videos`` when it exists, else ``root``).
    ``text`` is the list of all the video's captions; a listed video without a caption or file is a bad
    row. Counts other than 362 / 164 are allowed and recorded.
    """
    root = _root_dir(root, "emvidcap")
    split_path = _option_path(split_file, root / "ecpa_split.txt")
    if not split_path.is_file():
        raise ManifestError(
            f"emvidcap: the list of ECPA's 526 clear-faced videos and their 362 / 164 train/test split is "
            f"required and is not published: expected {split_path} (or split_file=PATH), one "
            "'<VideoID> train|test' per line"
        )
    if captions is None:
        caption_files = [root / name for name in _EMVIDCAP_CAPTION_FILES]
    else:
        caption_files = [Path(c).expanduser().resolve() for c in ([captions] if isinstance(captions, (str, Path))
                                                                  else captions)]
    for f in caption_files:
        if not f.is_file():
            raise ManifestError(f"emvidcap: caption file {f} not found (expected {' and '.join(_EMVIDCAP_CAPTION_FILES)} "
                                "with columns VideoID, EmCaptions in root; captions=FILES names them)")
    video_dir = _option_path(videos, root / "videos" if (root / "videos").is_dir() else root)
    if not video_dir.is_dir():
        raise ManifestError(f"emvidcap: video folder {video_dir} not found")
    refs: dict[str, list[str]] = {}
    for f in caption_files:
        delimiter = "\t" if "\t" in f.read_text(encoding="utf-8-sig").split("\n", 1)[0] else ","
        _, rows = _csv_rows(f, ("VideoID", "EmCaptions"), delimiter=delimiter)
        for _, row in rows:
            vid, cap = (row.get("VideoID") or "").strip(), (row.get("EmCaptions") or "").strip()
            if vid and cap and cap not in refs.setdefault(vid, []):
                refs[vid].append(cap)
    files_by_stem: dict[str, str] = {}
    for p in sorted(video_dir.iterdir()):
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not _hidden(p):
            files_by_stem.setdefault(p.stem, p.name)
    items, origins, problems = [], [], []
    shown = _rel(split_path, root)
    for n, line in enumerate(_text_lines(split_path), start=1):
        tokens = [t for t in re.split(r"[,\s]+", line.strip()) if t]
        if not tokens:
            continue
        if len(tokens) != 2 or tokens[1].lower() not in ("train", "test"):
            if n == 1 and len(tokens) == 2 and tokens[0].lower() in ("id", "videoid", "video_id", "video"):
                continue  # a header line
            problems.append(_Problem(shown, n, tokens[0], f"expected '<VideoID> train|test', got {line!r}"))
            continue
        vid, part = tokens[0], tokens[1].lower()
        if not refs.get(vid):
            problems.append(_Problem(shown, n, vid, f"no caption for {vid!r} in {', '.join(f.name for f in caption_files)}"))
            continue
        name = files_by_stem.get(vid)
        if name is None:
            problems.append(_Problem(shown, n, vid, f"no video file {vid}.* ({', '.join(VIDEO_EXTENSIONS[:3])}, ...) "
                                     f"in {video_dir}"))
            continue
        items.append(Item(id=vid, path=_rel(video_dir / name, root), text=list(refs[vid]),
                          splits={"emvidcap": {"ecpa": part}}))
        origins.append((shown, n))
    counts = {p: sum(it.splits["emvidcap"]["ecpa"] == p for it in items) for p in ("train", "test")}
    manifest = Manifest(
        dataset=dataset or Path(out).resolve().name, classes=[], items=items, root=str(root),
        label_type="none", split_schemes={"emvidcap": ["ecpa"]},
        source={"adapter": "emvidcap", "root": str(root), "videos": str(video_dir),
                "split_file": str(split_path), "split_sha256": _sha256(split_path),
                "caption_files": {str(f): _sha256(f) for f in caption_files},
                "counts": counts, "paper_counts": {"train": 362, "test": 164}},
    )
    return _finish(manifest, origins, problems, out, skip_invalid)


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
    ``source["cues_out_of_duration"]``. A malformed cue is a bad row at its time line. Videos without
    subtitles are counted and named in ``source``. Scheme ``subtitles``, fold ``all``: every item train.
    """
    root = _root_dir(root, "subtitles")
    sub_root = _root_dir(subs, "subtitles (subs)") if subs is not None else root
    videos: dict[str, Path] = {}
    sub_files: list[Path] = []
    problems: list[_Problem] = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(_hidden(part) for part in p.relative_to(root).parents if part.name) or _hidden(p):
            continue
        if p.suffix.lower() in VIDEO_EXTENSIONS:
            stem = p.with_suffix("").relative_to(root).as_posix()
            if stem in videos:
                problems.append(_Problem(_rel(p, root), None, None, f"a second video for {stem} (first: "
                                         f"{_rel(videos[stem], root)}); its subtitles would be ambiguous"))
                continue
            videos[stem] = p
        elif p.suffix.lower() in SUBTITLE_EXTENSIONS and sub_root == root:
            sub_files.append(p)
    if sub_root != root:
        sub_files = [p for p in sorted(sub_root.rglob("*")) if p.is_file() and p.suffix.lower() in SUBTITLE_EXTENSIONS
                     and not _hidden(p)]
    if not videos:
        raise ManifestError(f"subtitles: no videos ({', '.join(VIDEO_EXTENSIONS)}) under {root}")
    paired: dict[str, Path] = {}
    for sub in sub_files:
        base = sub.with_suffix("").relative_to(sub_root).as_posix()
        shown = _rel(sub, sub_root)
        if language is not None:
            if not base.endswith("." + language):
                continue
            key = base[: -len(language) - 1]
        else:
            key = base if base in videos else (base.rsplit(".", 1)[0] if "." in Path(base).name else base)
        if key not in videos:
            problems.append(_Problem(shown, None, None, f"no video for this subtitle file (expected {key}.mp4 or "
                                     "another video extension beside it)"))
            continue
        if key in paired:
            problems.append(_Problem(shown, None, None, f"second subtitle file for {_rel(videos[key], root)} "
                                     f"(first: {_rel(paired[key], root)}; language=... picks one)"))
            continue
        paired[key] = sub
    items, origins = [], []
    empty, out_of_range = 0, 0
    for key in sorted(paired):
        sub, video = paired[key], videos[key]
        shown = _rel(sub, sub_root)
        cues, cue_problems = read_subtitles(sub)
        problems += [_Problem(shown, line, None, reason) for line, reason in cue_problems]
        for cue in cues:
            if not cue.text:
                empty += 1
                continue
            duration = cue.end - cue.start
            if (min_duration is not None and duration < min_duration) or (
                    max_duration is not None and duration > max_duration):
                out_of_range += 1
                continue
            items.append(Item(id=f"{key}-{cue.index}", path=_rel(video, root), start=cue.start, end=cue.end,
                              text=cue.text, speaker=cue.speaker, splits={"subtitles": {"all": "train"}}))
            origins.append((shown, cue.line))
    unpaired = sorted(_rel(v, root) for k, v in videos.items() if k not in paired)
    manifest = Manifest(
        dataset=dataset or Path(out).resolve().name, classes=[], items=items, root=str(root),
        label_type="none", split_schemes={"subtitles": ["all"]},
        source={"adapter": "subtitles", "root": str(root), "subs": str(sub_root), "language": language,
                "min_duration": min_duration, "max_duration": max_duration,
                "subtitle_files": len(paired), "empty_cues": empty, "cues_out_of_duration": out_of_range,
                "videos_without_subtitles": len(unpaired), "videos_without_subtitles_first": unpaired[:20]},
    )
    return _finish(manifest, origins, problems, out, skip_invalid)


# --- registry ------------------------------------------------------------------------------------

DATASET_ADAPTERS = {
    "ve8": prepare_ve8,
    "ek6": prepare_ek6,
    "mv6": prepare_mv6,
    "meld": prepare_meld,
    "dfew": prepare_dfew,
    "ferv39k": prepare_ferv39k,
    "mafw": prepare_mafw,
    "emvidcap": prepare_emvidcap,
    "subtitles": prepare_subtitles,
}


def _register() -> None:
    """Add these adapters to ``datasets.ADAPTERS``. Runs when this module finishes loading, whichever of the
    two modules is imported first (``datasets`` imports this one at its end)."""
    from emo.extract import datasets

    datasets.ADAPTERS.update(DATASET_ADAPTERS)


_register()
