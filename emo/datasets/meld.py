"""MELD: the official train / dev / test CSVs and video folders, utterance text and speaker."""

from __future__ import annotations

import re
from pathlib import Path

from emo.cache.manifest import Item, Manifest, ManifestError

from .common import (
    MELD_CLASSES,
    Problem,
    dataset_root,
    finish_manifest,
    is_hidden,
    read_csv_rows,
    relative_path,
    sha256_file,
)

# --- meld ----------------------------------------------------------------------------------------


_MELD_PARTS = (  # (release name, label file, video folder, split value)
    ("train", "train_sent_emo.csv", "train_splits", "train"),
    ("dev", "dev_sent_emo.csv", "dev_splits_complete", "val"),
    ("test", "test_sent_emo.csv", "output_repeated_splits_test", "test"),
)
LONG_SPAN_S = 30.0  # MELD utterances last seconds; the release's mis-cut clips span minutes
_CLIP_FOLDERS = {p[2] for p in _MELD_PARTS}
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

    Release (docs/datasets.md, medium; the MELD.Raw.tar.gz of github.com/declare-lab/MELD, whose README gives
    9,989 / 1,109 / 2,610 utterances; folder names as public loaders read them): ``root`` (or ``root/MELD.Raw``)
    holds ``train_sent_emo.csv``, ``dev_sent_emo.csv``, ``test_sent_emo.csv`` (columns ``Sr No.,
    Utterance, Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID, Season, Episode, StartTime,
    EndTime``) and the clips ``dia{Dialogue_ID}_utt{Utterance_ID}.mp4`` under ``train_splits/``,
    ``dev_splits_complete/``, ``output_repeated_splits_test/``, each found in that folder or up to two
    levels below it (``train/train_splits/``: how deep depends on how the nested archives were unpacked;
    the places are recorded in ``source["clip_folders"]``). A missing CSV, folder or column, or a clip
    folder found twice, is an error naming it. Clips without a CSV row are ignored. Ids are
    ``train|dev|test/dia{D}_utt{U}`` (dialogue ids repeat across parts); dev is ``val``. ``text`` is the
    utterance, ``speaker`` the speaker. The mp4 is already the utterance clip, so ``start``/``end`` stay empty (``StartTime``/``EndTime`` are times in the episode, not in the clip).
    Those times (``h:mm:ss,mmm``; one that does not parse is a bad row) flag the utterances: the ids whose
    span exceeds ``LONG_SPAN_S`` (30 s; the release's mis-cut clips span minutes) and those whose end is not
    after their start are listed in ``source["flagged_spans"]``; they stay in the manifest.

    With ``fix_text`` the texts are repaired as the release's own fix (declare-lab/MELD PR #28) did: the cp1252
    punctuation that copies before it hold as C1 control characters (U+0085, U+0091..U+0094, U+0096,
    U+0097) becomes ``…‘’“”–—`` and U+00A0 a plain space; cp1252-read-as-UTF-8 mojibake (``â€™`` for
    ``’``) is undone too (``fix_mojibake``). Whichever copy is read, the count of changed texts is recorded
    in ``source["texts_fixed"]``. A row whose clip is missing
    (a few in the release) is a "file not found" row: an error, or listed with ``skip_invalid``.
    """
    root = dataset_root(root, "meld")
    base = root
    if not (root / _MELD_PARTS[0][1]).is_file() and (root / "MELD.Raw" / _MELD_PARTS[0][1]).is_file():
        base = root / "MELD.Raw"
    for _, label_file, _, _ in _MELD_PARTS:
        if not (base / label_file).is_file():
            raise ManifestError(f"meld: no {label_file} in {base} (expected the MELD.Raw release: "
                                f"{', '.join(p[1] for p in _MELD_PARTS)} and the clip folders "
                                f"{', '.join(p[2] for p in _MELD_PARTS)})")
    clip_dirs = {video_dir: _find_clip_folder(base, video_dir) for _, _, video_dir, _ in _MELD_PARTS}
    items, origins, problems, fixed = [], [], [], 0
    long_spans: list[str] = []  # utterances whose StartTime..EndTime exceeds LONG_SPAN_S: likely mis-cut clips
    empty_spans: list[str] = []  # EndTime not after StartTime
    for part, label_file, video_dir, split in _MELD_PARTS:
        clip_dir = relative_path(clip_dirs[video_dir], base)
        file = base / label_file
        _, rows = read_csv_rows(file, _MELD_COLUMNS)
        for n, row in rows:
            try:
                dia, utt = int(row["Dialogue_ID"].strip()), int(row["Utterance_ID"].strip())
            except (ValueError, AttributeError, KeyError):
                problems.append(Problem(label_file, n, None, f"Dialogue_ID / Utterance_ID must be integers, got "
                                         f"{row.get('Dialogue_ID')!r} / {row.get('Utterance_ID')!r}"))
                continue
            item_id = f"{part}/dia{dia}_utt{utt}"
            if "StartTime" in row and "EndTime" in row:
                try:
                    span = _episode_time(row["EndTime"]) - _episode_time(row["StartTime"])
                except ValueError as e:
                    problems.append(Problem(label_file, n, item_id, str(e)))
                    continue
                if span > LONG_SPAN_S:
                    long_spans.append(item_id)
                elif span <= 0:
                    empty_spans.append(item_id)
            text = row.get("Utterance") or ""
            if fix_text:
                text, changed = fix_mojibake(text)
                if "\xa0" in text:  # the release's own fix made its no-break spaces plain spaces
                    text, changed = text.replace("\xa0", " "), True
                fixed += changed
            items.append(Item(
                id=item_id, path=f"{clip_dir}/dia{dia}_utt{utt}.mp4",
                label=(row.get("Emotion") or "").strip().lower(), text=text.strip() or None,
                speaker=(row.get("Speaker") or "").strip() or None, splits={"meld": {"official": split}},
            ))
            origins.append((label_file, n))
    manifest = Manifest(
        dataset=dataset or Path(out).resolve().name, classes=list(MELD_CLASSES), items=items, root=str(base),
        label_type="single", split_schemes={"meld": ["official"]},
        source={"adapter": "meld", "root": str(base), "fix_text": fix_text, "texts_fixed": fixed,
                "label_files": {p[1]: sha256_file(base / p[1]) for p in _MELD_PARTS},
                "parts": {p[0]: p[3] for p in _MELD_PARTS},
                "clip_folders": {name: relative_path(d, base) for name, d in clip_dirs.items()},
                "flagged_spans": {"threshold_s": LONG_SPAN_S, "longer": long_spans, "empty": empty_spans}},
    )
    return finish_manifest(manifest, origins, problems, out, skip_invalid)


def _find_clip_folder(base: Path, name: str, depth: int = 2) -> Path:
    """The one folder called ``name`` in ``base`` or up to ``depth`` levels below it: how deep the clip folders
    sit depends on how the nested archives were unpacked (``train/train_splits/`` or ``train_splits/``)."""
    found, level = [], [base]
    for _ in range(depth + 1):
        found += [d / name for d in level if (d / name).is_dir()]
        level = [c for d in level for c in sorted(d.iterdir()) if c.is_dir() and not is_hidden(c)
                 and c.name not in _CLIP_FOLDERS]  # never into a clip folder: thousands of files
    if not found:
        raise ManifestError(f"meld: no clip folder {name}/ in {base} or up to {depth} levels below it (extract "
                            f"the release's {_part_archive(name)} there)")
    if len(found) > 1:
        raise ManifestError(f"meld: two clip folders {name}/ under {base}: {relative_path(found[0], base)} and "
                            f"{relative_path(found[1], base)}; keep one")
    return found[0]


_EPISODE_TIME = re.compile(r"^\s*(\d{1,2}):([0-5]\d):([0-5]\d)[,.](\d{1,3})\s*$")


def _episode_time(value: str | None) -> float:
    """``StartTime``/``EndTime`` (``hh:mm:ss,mmm``, often with a one-digit hour) -> seconds."""
    m = _EPISODE_TIME.match(value or "")
    if m is None:
        raise ValueError(f"StartTime / EndTime must be 'h:mm:ss,mmm', got {value!r}")
    h, mnt, sec, ms = m.groups()
    return int(h) * 3600 + int(mnt) * 60 + int(sec) + int(ms.ljust(3, "0")) / 1000


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
