"""EmVidCap: videos and caption CSVs, with the ECPA split list the user supplies."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from emo.cache.manifest import Item, Manifest, ManifestError

from .common import (
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
    """EmVidCap -> the clear-faced videos of the ECPA paper with all their captions, scheme ``emvidcap``
    fold ``ecpa``; no classes (``label_type="none"``).

    Release (docs/datasets.md: unconfirmed; from the dataset's loaders, github.com/Tongji-MIC-Lab/EmVidCap
    and songpipi/EPAN ``loader``): caption tables ``EmVideo_trainval_captions.csv`` and
    ``EmVideo_test_captions.csv`` with columns ``VideoID`` and ``EmCaptions`` (tab- or comma-separated;
    several rows per video), looked for in ``root`` (``captions`` names the files instead). The 526
    clear-faced videos and their 362 / 164 split are not published with the ECPA paper, so ``split_file``
    (default ``root/ecpa_split.txt``) is required: one ``<VideoID> train|test`` per line (whitespace or
    comma; a first line ``id,split`` / ``VideoID split`` is a header). Without it the adapter stops and says so. Videos are
    ``<VideoID>.<video extension>`` in ``videos`` (default ``root/videos`` when it exists, else ``root``).
    ``text`` is the list of all the video's captions; a listed video without a caption or file is a bad
    row. Counts other than 362 / 164 are allowed and recorded.
    """
    root = dataset_root(root, "emvidcap")
    split_path = option_path(split_file, root / "ecpa_split.txt")
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
    video_dir = option_path(videos, root / "videos" if (root / "videos").is_dir() else root)
    if not video_dir.is_dir():
        raise ManifestError(f"emvidcap: video folder {video_dir} not found")
    refs: dict[str, list[str]] = {}
    for f in caption_files:
        delimiter = "\t" if "\t" in (read_text_lines(f) or [""])[0] else ","
        _, rows = read_csv_rows(f, ("VideoID", "EmCaptions"), delimiter=delimiter)
        for _, row in rows:
            vid, cap = (row.get("VideoID") or "").strip(), (row.get("EmCaptions") or "").strip()
            if vid and cap and cap not in refs.setdefault(vid, []):
                refs[vid].append(cap)
    files_by_stem: dict[str, str] = {}
    for p in sorted(video_dir.iterdir()):
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not is_hidden(p):
            files_by_stem.setdefault(p.stem, p.name)
    items, origins, problems = [], [], []
    shown = relative_path(split_path, root)
    for n, line in enumerate(read_text_lines(split_path), start=1):
        tokens = [t for t in re.split(r"[,\s]+", line.strip()) if t]
        if not tokens:
            continue
        if len(tokens) != 2 or tokens[1].lower() not in ("train", "test"):
            if n == 1 and len(tokens) == 2 and tokens[0].lower() in ("id", "videoid", "video_id", "video"):
                continue  # a header line
            problems.append(Problem(shown, n, tokens[0], f"expected '<VideoID> train|test', got {line!r}"))
            continue
        vid, part = tokens[0], tokens[1].lower()
        if not refs.get(vid):
            problems.append(Problem(shown, n, vid, f"no caption for {vid!r} in {', '.join(f.name for f in caption_files)}"))
            continue
        name = files_by_stem.get(vid)
        if name is None:
            problems.append(Problem(shown, n, vid, f"no video file {vid}.* ({', '.join(VIDEO_EXTENSIONS[:3])}, ...) "
                                     f"in {video_dir}"))
            continue
        items.append(Item(id=vid, path=relative_path(video_dir / name, root), text=list(refs[vid]),
                          splits={"emvidcap": {"ecpa": part}}))
        origins.append((shown, n))
    counts = {p: sum(it.splits["emvidcap"]["ecpa"] == p for it in items) for p in ("train", "test")}
    manifest = Manifest(
        dataset=dataset or Path(out).resolve().name, classes=[], items=items, root=str(root),
        label_type="none", split_schemes={"emvidcap": ["ecpa"]},
        source={"adapter": "emvidcap", "root": str(root), "videos": str(video_dir),
                "split_file": str(split_path), "split_sha256": sha256_file(split_path),
                "caption_files": {str(f): sha256_file(f) for f in caption_files},
                "counts": counts, "paper_counts": {"train": 362, "test": 164}},
    )
    return finish_manifest(manifest, origins, problems, out, skip_invalid)
