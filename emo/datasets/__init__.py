"""Dataset preparation: a dataset's release -> ``<out>/manifest.jsonl`` (docs/cache-format.md (manifest.jsonl), docs/datasets.md).

To add a dataset, write ``prepare_<key>`` in a module here (one per dataset family) and add it to
``ADAPTERS`` below. Also here: the SRT/WebVTT parser (``subtitles``), emo's synthetic demo videos
(``synthetic``) and the person detector run that fills a manifest's ``subject_boxes`` (``subjects``).

Every adapter is ``prepare_<key>(root, out, *, dataset=None, ..., skip_invalid=False)``: it reads the release under ``root``, writes ``<out>/manifest.jsonl`` and returns
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
adapter's docstring. Where docs/datasets.md marks a detail unconfirmed, the adapter checks for it and
fails with a message naming what it expected, never guessing silently.

Split schemes (``scheme: folds``; values ``train|val|test``):

- ``folder``: ``0..folds-1`` (seeded stratified, ``folder.py``); ``csv``: as the list gives (``item_list.py``).
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

from collections.abc import Callable

from emo.cache.manifest import Manifest

from .class_folders import prepare_ek6, prepare_mv6, prepare_ve8
from .common import (
    DFEW_CLASSES,
    EK6_CLASSES,
    FERV39K_CLASSES,
    MAFW_CLASSES,
    MELD_CLASSES,
    MV6_CLASSES,
    VE8_CLASSES,
)
from .dfer import DFEW_MEDIA, prepare_dfew, prepare_ferv39k, prepare_mafw
from .emvidcap import prepare_emvidcap
from .folder import FOLDER_SCHEME, VIDEO_EXTENSIONS, prepare_folder, stratified_split
from .item_list import CSV_COLUMNS, CSV_SCHEME, prepare_csv
from .meld import fix_mojibake, prepare_meld
from .subtitles import Cue, parse_subtitles, read_subtitles
from .video_subtitles import prepare_subtitles

__all__ = [
    "ADAPTERS",
    "VIDEO_EXTENSIONS",
    "CSV_COLUMNS",
    "CSV_SCHEME",
    "FOLDER_SCHEME",
    "prepare_folder",
    "prepare_csv",
    "stratified_split",
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

# --- registry ------------------------------------------------------------------------------------

# The papers' datasets and video + subtitle folders, by the key ``emo datasets prepare KEY`` takes.
DATASET_ADAPTERS: dict[str, Callable[..., tuple[Manifest, list]]] = {
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

# Every adapter: the generic ones and the papers' datasets.
ADAPTERS: dict[str, Callable[..., tuple[Manifest, list]]] = {
    "folder": prepare_folder,
    "csv": prepare_csv,
    **DATASET_ADAPTERS,
}
