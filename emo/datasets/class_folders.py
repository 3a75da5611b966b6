"""VideoEmotion-8, Ekman-6 and MusicVideo-6: class folders plus optional split lists."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from emo.cache.manifest import Item, Manifest, ManifestError

from .common import (
    EK6_CLASSES,
    MV6_CLASSES,
    VE8_CLASSES,
    Problem,
    dataset_root,
    finish_manifest,
    option_path,
    read_text_lines,
    relative_path,
    sha256_file,
)
from .folder import (
    VIDEO_EXTENSIONS,
    class_folders,
    ignored_files,
    stratified_split,
    videos_in,
)

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

    Confirmed: the 8 Plutchik classes (PE-CLIP paper; Jiang et al. AAAI 2014). Release layout (unconfirmed,
    docs/datasets.md): one folder per class; public loaders (github.com/maysonma/VAANet ``tools/ve8_json.py``,
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

    Confirmed: the 6 classes (PE-CLIP paper; Xu et al. TAC 2016). Release layout (unconfirmed): class folders
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
    """MusicVideo-6: ``root/<Class>/<clip>``, or the authors' ``root/<Part>/<Class>/video/<clip>`` -> scheme ``mv6``.

    Confirmed (PE-CLIP paper): classes exciting, fear, neutral, relaxation, sad, tension; 3 random 2:1
    splits. Two layouts. Class folders of ~30 s clips, matched case-insensitively. Or the tree of the
    authors' repository (confirmed from its sample): ``Train/``, ``Validation/``, ``test/``, each with
    class folders (``Excited`` for exciting) holding ``video/*.mp4``; then ids are
    ``<Part>/<ClassFolder>/<stem>``, the parts are pooled for ``mv6``, and the release partition is kept
    as scheme ``mv6_release`` (fold ``release``: train, val, test). Splits as for ``prepare_ve8``: list
    pairs from ``splits`` when given (or ``root/splits`` exists), else ``folds`` seeded stratified splits
    ``"0".."folds-1"`` with ``test_ratio``.
    """
    parts = _mv6_release_parts(dataset_root(root, "mv6"))
    if parts is not None:
        return _prepare_mv6_release(root, parts, out, dataset=dataset, splits=splits, folds=folds,
                                    test_ratio=test_ratio, seed=seed, extensions=extensions, skip_invalid=skip_invalid)
    return _prepare_class_folders(
        "mv6", MV6_CLASSES, root, out, dataset=dataset, splits=splits, folds=folds, test_ratio=test_ratio,
        seed=seed, extensions=extensions, skip_invalid=skip_invalid, lists_required=False,
    )


_MV6_PARTS = {"train": "train", "validation": "val", "test": "test"}  # release folder (casefolded) -> part
_MV6_ALIASES = {"excited": "exciting"}  # the release's folder for the papers' class


def _mv6_release_parts(root: Path) -> dict[str, Path] | None:
    """``{part: folder}`` when ``root`` holds the authors' ``Train/``, ``Validation/``, ``test/`` tree (at
    least Train and test), else None (class folders at the top)."""
    if not root.is_dir():
        return None
    folders = {p.name.casefold(): p for p in root.iterdir() if p.is_dir()}
    found = {part: folders[name] for name, part in _MV6_PARTS.items() if name in folders}
    return found if {"train", "test"} <= set(found) else None


def _prepare_mv6_release(
    root: str | Path, parts: dict[str, Path], out: str | Path, *, dataset: str | None, splits: str | Path | None,
    folds: int, test_ratio: float, seed: int, extensions: Iterable[str], skip_invalid: bool,
) -> tuple[Manifest, list[tuple[int, str | None, str]]]:
    """The authors' tree ``<Part>/<Class>/video/<clip>``: ids ``<Part>/<ClassFolder>/<stem>`` (stems repeat
    across classes and parts), the three parts pooled for scheme ``mv6`` (seeded stratified splits, or
    lists naming those ids), and the release partition kept as scheme ``mv6_release``, fold ``release``."""
    root = dataset_root(root, "mv6")
    exts = tuple(sorted({(e if e.startswith(".") else "." + e).lower() for e in extensions}))
    items, origins, ignored, class_folders_of = [], [], [], {}
    for part, part_dir in parts.items():
        folder_class = _match_class_folders("mv6", part_dir, MV6_CLASSES, exts, aliases=_MV6_ALIASES)
        class_folders_of[part_dir.name] = folder_class
        for cls in MV6_CLASSES:
            class_dir = part_dir / folder_class[cls]
            video_dir = class_dir / "video" if (class_dir / "video").is_dir() else class_dir
            videos, skipped_files = videos_in(video_dir, exts)
            ignored += skipped_files
            if not videos:
                raise ManifestError(f"mv6: {video_dir} holds no videos ({', '.join(exts)})")
            for entry in videos:
                stem = entry.name if entry.is_dir() else entry.stem
                path = relative_path(entry, root)
                items.append(Item(id=f"{part_dir.name}/{folder_class[cls]}/{stem}", path=path, label=cls,
                                  splits={"mv6_release": {"release": part}}))
                origins.append((path, None))
    source = {"adapter": "mv6", "layout": "release (Train/Validation/test)", "root": str(root),
              "parts": {part: d.name for part, d in parts.items()}, "class_folders": class_folders_of,
              "extensions": list(exts), **ignored_files(ignored, root)}
    problems: list[Problem] = []
    split_dir = option_path(splits, root / "splits")
    fold_names = _assign_folds("mv6", items, root, split_dir, splits is not None, folds, test_ratio, seed, False,
                               problems, source)
    manifest = Manifest(
        dataset=dataset or Path(out).resolve().name, classes=list(MV6_CLASSES), items=items, root=str(root),
        label_type="single", split_schemes={"mv6": fold_names, "mv6_release": ["release"]}, source=source,
    )
    return finish_manifest(manifest, origins, problems, out, skip_invalid)


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
    root = dataset_root(root, key)
    exts = tuple(sorted({(e if e.startswith(".") else "." + e).lower() for e in extensions}))
    split_dir = option_path(splits, root / "splits")
    folder_class = _match_class_folders(key, root, classes, exts, skip=split_dir)
    items, origins, ignored = [], [], []
    for cls in classes:
        folder = folder_class[cls]
        videos, skipped_files = videos_in(root / folder, exts)
        ignored += skipped_files
        if not videos:
            raise ManifestError(f"{key}: class folder {root / folder} holds no videos ({', '.join(exts)}) "
                                "and no frame folders")
        for entry in videos:
            stem = entry.name if entry.is_dir() else entry.stem
            items.append(Item(id=f"{folder}/{stem}", path=f"{folder}/{entry.name}", label=cls))
            origins.append((f"{folder}/{entry.name}", None))

    source = {"adapter": key, "root": str(root), "class_folders": {c: folder_class[c] for c in classes},
              "extensions": list(exts), **ignored_files(ignored, root)}
    problems: list[Problem] = []
    fold_names = _assign_folds(key, items, root, split_dir, splits is not None, folds, test_ratio, seed,
                               lists_required, problems, source)
    manifest = Manifest(
        dataset=dataset or Path(out).resolve().name, classes=list(classes), items=items, root=str(root),
        label_type="single", split_schemes={key: fold_names}, source=source,
    )
    return finish_manifest(manifest, origins, problems, out, skip_invalid)


def _assign_folds(
    key: str, items: list[Item], root: Path, split_dir: Path, lists_given: bool, folds: int, test_ratio: float,
    seed: int, lists_required: bool, problems: list[Problem], source: dict,
) -> list[str]:
    """Scheme ``key``'s folds of ``items``: from the list pairs in ``split_dir`` when given or present, else
    ``folds`` seeded stratified splits (unless lists are required); returns the fold names."""
    if lists_given or split_dir.is_dir():
        fold_names = _apply_split_lists(key, split_dir, root, items, problems, source,
                                        single="official" if lists_required else None)
    elif lists_required:
        raise ManifestError(
            f"{key}: the official train/test list is required (the paper's protocol; docs/datasets.md: not "
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
    return fold_names


def _match_class_folders(
    key: str, root: Path, classes: list[str], exts: tuple[str, ...], skip: Path | None = None,
    aliases: dict[str, str] | None = None,
) -> dict[str, str]:
    """class -> folder name, matching folder names to the classes case-insensitively (``aliases``: other
    folder names, casefolded, of a class); ``skip`` (the split list folder when it lies in ``root``) is not
    a class folder."""
    try:
        folders = {n: p for n, p in class_folders(root, exts).items() if p.resolve() != skip}
        if not folders:
            raise ManifestError(f"dataset root {root} has no class folders")
    except ManifestError as e:
        raise ManifestError(f"{key}: {e} (one folder per class: {', '.join(classes)})") from None
    by_fold = {c.casefold(): c for c in classes} | dict(aliases or {})
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
    for n, line in enumerate(read_text_lines(file), start=1):
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
    problems: list[Problem],
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
            shown = relative_path(file, root)
            for n, line in enumerate(read_text_lines(file), start=1):
                if not line.strip():
                    continue
                m = _LIST_LINE.match(line.strip())
                entry = m.group("entry").strip().replace("\\", "/")
                item = by_id.get(entry) or by_fold_id.get(entry.casefold()) or by_name.get(entry.casefold())
                if item is None:
                    problems.append(Problem(shown, n, entry, f"no video {entry!r} under {root} "
                                             "(expected <ClassFolder>/<video stem>)"))
                    continue
                if class_index is not None and m.group("label") is not None:
                    named = class_index.get(int(m.group("label")))
                    if named != item.label:
                        problems.append(Problem(shown, n, item.id, f"class number {m.group('label')} is "
                                                 f"{named!r} in classInd.txt but the video is in class {item.label!r}"))
                        continue
                if item.id in seen:
                    prev_part, prev_where = seen[item.id]
                    what = "listed twice" if prev_part == part else f"in both train and test of fold {fold}"
                    problems.append(Problem(shown, n, item.id, f"{what} (first at {prev_where})"))
                    continue
                seen[item.id] = (part, f"{shown} line {n}")
                item.splits.setdefault(key, {})[fold] = part
        unlisted[fold] = len(items) - len(seen)
    source |= {
        "folds_from": "split lists", "split_dir": str(split_dir),
        "split_files": {f: [p.name for p in files] for f, files in pairs.items()},
        "split_sha256": {p.name: sha256_file(p) for files in pairs.values() for p in files},
        "class_index": "checked against classInd.txt" if class_index else "absent (numbers not checked)",
        "unlisted_items": unlisted,  # items in no list of that fold: kept in the manifest, not in the fold
    }
    return list(pairs)
