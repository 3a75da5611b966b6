"""The ``folder`` adapter: any ``root/<class>/<video>`` tree -> manifest, with seeded stratified splits.

A video is a file with one of ``extensions`` or a frame folder (a sub-directory of images). Ids are
``<class>/<file stem>``. Scheme ``folder`` holds ``folds`` seeded stratified random splits
(``stratified_split``; fold ``k`` uses seed ``seed + k``). ``dataset`` defaults to the name of the
``out`` folder.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from emo.cache.manifest import Item, Manifest, ManifestError
from emo.decode.video import IMAGE_SUFFIXES

from .common import is_hidden, relative_path, write_to

__all__ = [
    "VIDEO_EXTENSIONS",
    "FOLDER_SCHEME",
    "prepare_folder",
    "stratified_split",
    "class_folders",
    "videos_in",
    "ignored_files",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts",
                    ".3gp")
FOLDER_SCHEME = "folder"


# --- splits -------------------------------------------------------------------------------------


def stratified_split(labels: Sequence[str], test_ratio: float, val_ratio: float = 0.0, seed: int = 0) -> list[str]:
    """``train | val | test`` for each label: per class, a seeded shuffle cut by the ratios.

    A class of ``n`` items puts ``round(n * test_ratio)`` in test, at least 1 and at most ``n - 1`` when
    ``n >= 2`` (a class of one item stays in train); then ``round(n_train * val_ratio)`` of the rest in
    val, with the same bounds when ``val_ratio > 0``. Each class is shuffled by its own generator seeded
    with ``(seed, crc32(class name))``, so a class's split depends only on its own items (in the given
    order) and the seed — adding a class leaves the others' splits as they were.
    """
    _check_ratios(test_ratio, val_ratio)
    out = ["train"] * len(labels)
    members: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        members.setdefault(label, []).append(i)
    for label, idx in members.items():
        n = len(idx)
        rng = np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])
        order = rng.permutation(n)  # [n] positions into idx
        n_test = _cut(n, test_ratio)
        n_val = _cut(n - n_test, val_ratio)
        for rank, pos in enumerate(order.tolist()):
            if rank < n_test:
                out[idx[pos]] = "test"
            elif rank < n_test + n_val:
                out[idx[pos]] = "val"
    return out


def _cut(n: int, ratio: float) -> int:
    """``round(n * ratio)`` (halves up), kept in ``[1, n - 1]`` when ``n >= 2`` and ``ratio > 0``."""
    if ratio <= 0 or n < 2:
        return 0
    return min(max(int(n * ratio + 0.5), 1), n - 1)


def _check_ratios(test_ratio: float, val_ratio: float) -> None:
    if not 0.0 < test_ratio < 1.0:
        raise ManifestError(f"test_ratio must be in (0, 1), got {test_ratio}")
    if not 0.0 <= val_ratio < 1.0:
        raise ManifestError(f"val_ratio must be in [0, 1), got {val_ratio}")


# --- folder -------------------------------------------------------------------------------------


def prepare_folder(
    root: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    test_ratio: float = 0.33,
    val_ratio: float = 0.0,
    folds: int = 1,
    seed: int = 0,
    classes: list[str] | None = None,
    extensions: Iterable[str] = VIDEO_EXTENSIONS,
    skip_invalid: bool = False,
) -> tuple[Manifest, list[tuple[int, str, str]]]:
    """A ``root/<class>/<video>`` tree -> manifest with scheme ``folder``, folds ``"0".."folds-1"``.

    ``classes`` fixes the class order (every class folder must be listed and every listed class must
    have a folder); without it the class order is the sorted folder names. In a class folder, files
    with one of ``extensions`` (case-insensitive) are videos, sub-directories holding images are frame
    folders; hidden entries are skipped, other files are ignored, counted and named (the first 20) in
    ``source``, and a sub-directory without images is an error. Fold ``k`` is ``stratified_split`` with seed ``seed + k``.
    """
    root = Path(root).resolve()
    _check_ratios(test_ratio, val_ratio)
    if folds < 1:
        raise ManifestError(f"folds must be >= 1, got {folds}")
    exts = tuple(sorted({(e if e.startswith(".") else "." + e).lower() for e in extensions}))
    folders = class_folders(root, exts)
    order = _class_order(folders, classes, root)

    items, ignored = [], []
    for name in order:
        videos, skipped_files = videos_in(folders[name], exts)
        ignored += skipped_files
        if not videos:
            raise ManifestError(f"class folder {folders[name]} holds no videos ({', '.join(exts)}) "
                                "and no frame folders")
        for entry in videos:
            stem = entry.name if entry.is_dir() else entry.stem
            items.append(Item(id=f"{name}/{stem}", path=f"{name}/{entry.name}", label=name))

    labels = [it.label for it in items]
    fold_names = [str(k) for k in range(folds)]
    for k, fold in enumerate(fold_names):
        for item, part in zip(items, stratified_split(labels, test_ratio, val_ratio, seed + k), strict=True):
            item.splits.setdefault(FOLDER_SCHEME, {})[fold] = part

    manifest = Manifest(
        dataset=dataset or Path(out).resolve().name,
        classes=list(order),
        items=items,
        root=str(root),
        label_type="single",
        split_schemes={FOLDER_SCHEME: fold_names},
        source={
            "adapter": "folder", "root": str(root), "test_ratio": test_ratio, "val_ratio": val_ratio,
            "seed": seed, "folds": folds, "fold_seeds": [seed + k for k in range(folds)],
            "classes_from": "argument" if classes else "sorted folder names", "extensions": list(exts),
            **ignored_files(ignored, root),
        },
    )
    skipped = manifest.validate(check_files=True, skip_invalid=skip_invalid)
    write_to(manifest, out)
    return manifest, skipped


def class_folders(root: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    if not root.is_dir():
        raise ManifestError(f"dataset root {root} is not a directory")
    folders = {p.name: p for p in root.iterdir() if p.is_dir() and not is_hidden(p)}
    if not folders:
        loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in exts]
        hint = f" ({len(loose)} videos lie directly in it: move them into class folders)" if loose else ""
        raise ManifestError(f"dataset root {root} has no class folders{hint}; expected root/<class>/<video>")
    return folders


def _class_order(folders: dict[str, Path], classes: list[str] | None, root: Path) -> list[str]:
    if not classes:
        return sorted(folders)
    unlisted = sorted(set(folders) - set(classes))
    if unlisted:
        raise ManifestError(f"class folder(s) {unlisted} under {root} are not in the classes given "
                            f"({', '.join(classes)})")
    missing = [c for c in classes if c not in folders]
    if missing:
        raise ManifestError(f"class(es) {missing} have no folder under {root}")
    return list(classes)


def videos_in(folder: Path, exts: tuple[str, ...]) -> tuple[list[Path], list[Path]]:
    """Videos and frame folders of a class folder in name order, and its other files (not hidden)."""
    videos, ignored = [], []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if is_hidden(entry):
            continue
        if entry.is_dir():
            if not any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in entry.iterdir()):
                raise ManifestError(f"{entry} is a folder without images ({', '.join(IMAGE_SUFFIXES)}): "
                                    "expected videos or frame folders in a class folder")
            videos.append(entry)
        elif entry.suffix.lower() in exts:
            videos.append(entry)
        else:
            ignored.append(entry)
    return videos, ignored


def ignored_files(files: list[Path], root: Path, shown: int = 20) -> dict:
    """``source`` fields for the files a scan passed over: their count and the first ``shown`` of them, so
    a video in an unexpected format is seen, not silently dropped."""
    return {"ignored_files": len(files),
            "ignored_files_first": [relative_path(f, root) for f in sorted(files)[:shown]]}


