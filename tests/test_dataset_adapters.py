"""The papers' dataset adapters and the subtitle adapter, each on a small replica of its release layout.

Videos are placeholder files (adapters only check that they exist); frame folders hold one image.
"""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from emo.cache.manifest import ManifestError, read_manifest
from emo.datasets import (
    ADAPTERS,
    DATASET_ADAPTERS,
    DFEW_CLASSES,
    EK6_CLASSES,
    FERV39K_CLASSES,
    MAFW_CLASSES,
    MELD_CLASSES,
    MV6_CLASSES,
    VE8_CLASSES,
    Cue,
    fix_mojibake,
    parse_subtitles,
    prepare_dfew,
    prepare_ek6,
    prepare_emvidcap,
    prepare_ferv39k,
    prepare_mafw,
    prepare_meld,
    prepare_mv6,
    prepare_subtitles,
    prepare_ve8,
    read_subtitles,
    stratified_split,
)
from emo.extract.presets import PRESET_DIR, load_preset


def _touch(path: Path, data: bytes = b"not a video") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _frames(folder: Path) -> Path:
    return _touch(folder / "00001.jpg", b"jpg").parent


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def _fold(manifest, scheme: str, fold: str) -> dict[str, str]:
    return {it.id: it.splits[scheme][fold] for it in manifest.items if fold in it.splits.get(scheme, {})}


def test_registry_and_every_preset_loads():
    for key, fn in DATASET_ADAPTERS.items():
        assert ADAPTERS[key] is fn
    assert {"folder", "csv"} <= set(ADAPTERS)
    names = sorted(p.stem for p in PRESET_DIR.glob("*.json"))
    assert set(DATASET_ADAPTERS) <= set(names)
    for name in names:
        preset = load_preset(name)
        assert preset["_path"].endswith(f"{name}.json") and preset["adapter"] in ADAPTERS
        assert name not in DATASET_ADAPTERS or preset["description"]
        inspect.signature(ADAPTERS[preset["adapter"]]).bind("root", "out", dataset=name, **preset.get("prepare", {}))
    assert load_preset("dfew")["extract"][0]["model"] == "ViT-L-14"
    assert load_preset("ve8")["extract"][0]["segments"] == 64


@pytest.mark.parametrize("first", ["emo.datasets", "emo.datasets"])
def test_either_module_may_be_imported_first(first):
    code = (f"import {first}; from emo.datasets import ADAPTERS; "
            "from emo.datasets import DATASET_ADAPTERS as D; "
            "assert all(ADAPTERS[k] is f for k, f in D.items()), sorted(ADAPTERS)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- ve8 / ek6 / mv6 -------------------------------------------------------------------------------


def _class_tree(root: Path, counts: dict[str, int], ext=".mp4") -> Path:
    for folder, n in counts.items():
        for i in range(n):
            _touch(root / folder / f"{folder[:2].lower()}{i:02d}{ext}")
    return root


VE8_FOLDERS = {c.capitalize(): 6 for c in VE8_CLASSES}


def test_ve8_draws_ten_seeded_stratified_2_to_1_splits(tmp_path):
    root = _class_tree(tmp_path / "ve8", VE8_FOLDERS)
    m, skipped = prepare_ve8(root, tmp_path / "cache" / "ve8")
    assert skipped == [] and m.dataset == "ve8"
    assert m.classes == VE8_CLASSES  # the paper's order, not the folders' spelling
    assert m.items[0].id == "Anger/an00" and m.items[0].path == "Anger/an00.mp4" and m.items[0].label == "anger"
    assert [it.label for it in m.items[::6]] == VE8_CLASSES
    assert m.split_schemes == {"ve8": [str(k) for k in range(10)]}
    assert m.source["fold_seeds"] == list(range(10)) and m.source["folds_from"] == "seeded stratified split"
    assert m.source["ignored_files"] == 0 and m.source["ignored_files_first"] == []
    labels = [it.label for it in m.items]
    for k in range(10):
        fold = _fold(m, "ve8", str(k))
        assert list(fold.values()) == stratified_split(labels, 1 / 3, seed=k)
        assert Counter(i.split("/")[0] for i, p in fold.items() if p == "test") == {f: 2 for f in VE8_FOLDERS}
    assert _fold(m, "ve8", "0") != _fold(m, "ve8", "1")
    assert read_manifest(tmp_path / "cache" / "ve8") == m


def test_ve8_lists_every_file_and_names_the_ones_that_are_not_videos(tmp_path):
    root = _class_tree(tmp_path / "ve8", VE8_FOLDERS)
    _touch(root / "Fear" / "3527012618_7ceb8fb27b_700.avi")  # not .mp4: still a video
    _touch(root / "Joy" / "clip.MP4")
    _touch(root / "Joy" / "clip.mp4.part")  # '.mp4' in the name but no video: VAANet would take it
    _touch(root / "Anger" / "notes.txt")
    _touch(root / "Anger" / ".DS_Store")  # hidden: neither a video nor counted
    m, _ = prepare_ve8(root, tmp_path / "cache")
    assert {"Fear/3527012618_7ceb8fb27b_700", "Joy/clip"} <= set(m.by_id()) and len(m.items) == 6 * 8 + 2
    assert m.source["ignored_files"] == 2
    assert m.source["ignored_files_first"] == ["Anger/notes.txt", "Joy/clip.mp4.part"]


def test_ve8_reads_vaanet_style_split_lists(tmp_path):
    root = _class_tree(tmp_path / "ve8", VE8_FOLDERS)
    _touch(root / "Joy" / "Serenity.mp4.mp4")  # a listed name that itself ends in .mp4
    splits = root / "splits"
    _write(splits / "classInd.txt", "".join(f"{i} {c.capitalize()}\n" for i, c in enumerate(VE8_CLASSES, 1)))
    _write(splits / "trainlist01.txt", "Anger/an00 1\r\nJoy/jo00 5\r\nJoy/Serenity.mp4 5\r\n\r\n")
    _write(splits / "testlist01.txt", "Anger/an01\nTrust/tr05\n")
    _write(splits / "trainlist02.txt", "Fear/fe00 4\n")
    _write(splits / "testlist02.txt", "fear/fe01\n")  # folder case differs
    m, _ = prepare_ve8(root, tmp_path / "cache")
    assert m.split_schemes == {"ve8": ["1", "2"]} and m.source["folds_from"] == "split lists"
    assert _fold(m, "ve8", "1") == {"Anger/an00": "train", "Anger/an01": "test", "Joy/jo00": "train",
                                    "Joy/Serenity.mp4": "train", "Trust/tr05": "test"}
    assert _fold(m, "ve8", "2") == {"Fear/fe00": "train", "Fear/fe01": "test"}
    assert m.source["unlisted_items"] == {"1": len(m.items) - 5, "2": len(m.items) - 2}
    assert m.source["class_index"].startswith("checked") and set(m.source["split_sha256"]) == {
        "trainlist01.txt", "testlist01.txt", "trainlist02.txt", "testlist02.txt"}


@pytest.mark.parametrize("train, test, message", [
    ("Anger/an00 2\n", "Anger/an01\n", r"trainlist01.txt row 1 \(id 'Anger/an00'\): class number 2 is 'anticipation'"),
    ("Anger/an00\nAnger/nothere\n", "Anger/an01\n", r"trainlist01.txt row 2 \(id 'Anger/nothere'\): no video"),
    ("Anger/an00\n", "Anger/an01\nAnger/an00\n", r"testlist01.txt row 2 \(id 'Anger/an00'\): in both train and test"),
    ("Anger/an00\nAnger/an00\n", "Anger/an01\n", r"row 2 \(id 'Anger/an00'\): listed twice"),
])
def test_ve8_bad_split_list_lines_name_file_and_line(tmp_path, train, test, message):
    root = _class_tree(tmp_path / "ve8", VE8_FOLDERS)
    _write(root / "splits" / "classInd.txt", "".join(f"{i} {c}\n" for i, c in enumerate(VE8_CLASSES, 1)))
    _write(root / "splits" / "trainlist01.txt", train)
    _write(root / "splits" / "testlist01.txt", test)
    with pytest.raises(ManifestError, match=message):
        prepare_ve8(root, tmp_path / "cache")
    assert not (tmp_path / "cache" / "manifest.jsonl").exists()


def test_ve8_skip_invalid_drops_the_named_items_and_lists_them(tmp_path):
    root = _class_tree(tmp_path / "ve8", VE8_FOLDERS)
    _write(root / "splits" / "trainlist01.txt", "Anger/an00\nAnger/ghost\n")
    _write(root / "splits" / "testlist01.txt", "Anger/an01\nAnger/an00\n")
    m, skipped = prepare_ve8(root, tmp_path / "cache", skip_invalid=True)
    assert [(row, item_id) for row, item_id, _ in skipped] == [(2, "Anger/ghost"), (2, "Anger/an00")]
    assert skipped[0][2].startswith("splits/trainlist01.txt row 2: no video")
    assert "Anger/an00" not in m.by_id() and len(m.items) == 6 * 8 - 1
    assert m.source["skipped_rows"] == 2


def test_class_folder_errors_name_what_was_expected(tmp_path):
    root = _class_tree(tmp_path / "ve8", {**VE8_FOLDERS, "Calm": 2})
    with pytest.raises(ManifestError, match=r"ve8: folder 'Calm' .* is not a class; expected one folder per class "
                                            r"\(anger, anticipation"):
        prepare_ve8(root, tmp_path / "cache")
    root = _class_tree(tmp_path / "ek6", {c.capitalize(): 2 for c in EK6_CLASSES[:-1]})
    with pytest.raises(ManifestError, match=r"ek6: no folder for class\(es\) \['surprise'\]"):
        prepare_ek6(root, tmp_path / "cache")
    root = _class_tree(tmp_path / "dup", {**{c: 2 for c in MV6_CLASSES}, "FEAR": 1})
    with pytest.raises(ManifestError, match=r"folders 'FEAR' and 'fear' .* are both class 'fear'"):
        prepare_mv6(root, tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match=r"ve8: .*no class folders.*one folder per class: anger"):
        prepare_ve8(tmp_path / "empty", tmp_path / "cache")
    root = _class_tree(tmp_path / "ve8b", VE8_FOLDERS)
    _write(root / "splits" / "trainlist01.txt", "Anger/an00\n")
    with pytest.raises(ManifestError, match=r"trainlist01.txt has no test partner: expected .*testlist01.txt"):
        prepare_ve8(root, tmp_path / "cache")


def test_ek6_needs_the_official_list_and_reads_it(tmp_path):
    root = _class_tree(tmp_path / "ek6", {c.capitalize(): 4 for c in EK6_CLASSES})
    with pytest.raises(ManifestError, match=r"ek6: the official train/test list is required .* expected a folder "
                                            r".*ek6/splits .* train.txt \+ test.txt"):
        prepare_ek6(root, tmp_path / "cache")
    lists = tmp_path / "lists"
    _write(lists / "train.txt", "".join(f"{c.capitalize()}/{c[:2]}00\n{c.capitalize()}/{c[:2]}01\n" for c in EK6_CLASSES))
    _write(lists / "test.txt", "".join(f"{c.capitalize()}/{c[:2]}02\n{c.capitalize()}/{c[:2]}03\n" for c in EK6_CLASSES))
    m, _ = prepare_ek6(root, tmp_path / "cache", splits=lists)
    assert m.classes == EK6_CLASSES and m.split_schemes == {"ek6": ["official"]}
    assert Counter(_fold(m, "ek6", "official").values()) == {"train": 12, "test": 12}
    assert m.source["unlisted_items"] == {"official": 0}
    _write(lists / "trainlist02.txt", "Anger/an00\n")
    _write(lists / "testlist02.txt", "Anger/an01\n")
    with pytest.raises(ManifestError, match=r"expected one train/test list pair .* found 2"):
        prepare_ek6(root, tmp_path / "cache", splits=lists)


def test_mv6_three_splits_and_case_insensitive_folders(tmp_path):
    root = _class_tree(tmp_path / "mv6", {"EXCITING": 3, "Fear": 3, "neutral": 3, "Relaxation": 3, "Sad": 3,
                                          "Tension": 3})
    m, _ = prepare_mv6(root, tmp_path / "cache", seed=7)
    assert m.classes == MV6_CLASSES and m.split_schemes == {"mv6": ["0", "1", "2"]}
    assert m.source["fold_seeds"] == [7, 8, 9] and m.source["class_folders"]["exciting"] == "EXCITING"
    assert {it.label for it in m.items if it.id.startswith("EXCITING/")} == {"exciting"}
    for fold in ("0", "1", "2"):
        assert Counter(_fold(m, "mv6", fold).values()) == {"train": 12, "test": 6}


def _mv6_release(root: Path, per_class: dict[str, int]) -> Path:
    """The authors' tree: Train/, Validation/, test/ with class folders holding video/, audio/ and hdf5/;
    the same stems in every class and part, with spaces and parentheses."""
    for part, n in per_class.items():
        for cls in ("Excited", "Fear", "Neutral", "Relaxation", "Sad", "Tension"):
            for k in range(n):
                stem = f"DEAP_DB_HR({k})" if k % 2 else f"{k} clip"
                _touch(root / part / cls / "video" / f"{stem}.mp4")
                _touch(root / part / cls / "audio" / f"{stem}.wav", b"wav")
            _touch(root / part / cls / "hdf5" / "features.h5", b"h5")
    return root


def test_mv6_release_tree_pools_the_parts_and_keeps_the_release_partition(tmp_path):
    root = _mv6_release(tmp_path / "mv6", {"Train": 4, "Validation": 1, "test": 2})
    m, skipped = prepare_mv6(root, tmp_path / "cache", seed=3)
    assert skipped == [] and len(m.items) == 6 * 7 and len({it.id for it in m.items}) == 6 * 7
    assert m.split_schemes == {"mv6": ["0", "1", "2"], "mv6_release": ["release"]}
    item = m.by_id()["Train/Excited/DEAP_DB_HR(1)"]
    assert item.label == "exciting" and item.path == "Train/Excited/video/DEAP_DB_HR(1).mp4"
    assert Counter(_fold(m, "mv6_release", "release").values()) == {"train": 24, "val": 6, "test": 12}
    assert _fold(m, "mv6_release", "release")["test/Sad/0 clip"] == "test"
    for fold in ("0", "1", "2"):  # the three parts pooled, 2:1 per class
        assert Counter(_fold(m, "mv6", fold).values()) == {"train": 30, "test": 12}
    assert m.source["fold_seeds"] == [3, 4, 5] and m.source["parts"] == {"train": "Train", "val": "Validation",
                                                                          "test": "test"}


def test_mv6_release_tree_takes_lists_of_its_ids_and_names_a_missing_class(tmp_path):
    root = _mv6_release(tmp_path / "mv6", {"Train": 2, "test": 1})
    ids = sorted(it.id for it in prepare_mv6(root, tmp_path / "c0")[0].items)
    _write(root / "splits" / "trainlist01.txt", "".join(f"{i}\n" for i in ids if i.startswith("Train/")))
    _write(root / "splits" / "testlist01.txt", "".join(f"{i}\n" for i in ids if i.startswith("test/")))
    m, _ = prepare_mv6(root, tmp_path / "c1")
    assert m.split_schemes["mv6"] == ["1"]
    assert Counter(_fold(m, "mv6", "1").values()) == {"train": 12, "test": 6}
    shutil.rmtree(root / "test" / "Tension")
    with pytest.raises(ManifestError, match=r"mv6: no folder for class\(es\) \['tension'\] under .*test"):
        prepare_mv6(root, tmp_path / "c2")


# --- meld ----------------------------------------------------------------------------------------


MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"


def _meld(root: Path, rows: dict[str, list[tuple]], missing: tuple[str, ...] = (), nested: bool = False) -> Path:
    folders = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
    if nested:  # each part's archive unpacked into a folder of its own: train/train_splits/...
        folders = {part: f"{part}/{folder}" for part, folder in folders.items()}
    for part, folder in folders.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        lines = [MELD_HEADER]
        for k, (text, speaker, emotion, dia, utt, *span) in enumerate(rows.get(part, []), start=1):
            start, end = span or ("00:00:01,000", "00:00:02,500")
            lines.append(f'{k},"{text}",{speaker},{emotion},neutral,{dia},{utt},1,1,"{start}","{end}"\n')
            if f"{part}/dia{dia}_utt{utt}" not in missing:
                _touch(root / folder / f"dia{dia}_utt{utt}.mp4")
        _write(root / f"{part}_sent_emo.csv", "".join(lines))
    return root


def test_meld_official_parts_text_speaker_and_mojibake(tmp_path):
    root = _meld(tmp_path / "MELD.Raw", {
        "train": [("also I was the point person on my companyâ€™s transition", "Chandler", "neutral", 0, 0),
                  ("You mustâ€™ve had your hands full.", "The Interviewer", "Joy", 0, 1)],
        "dev": [("Oh, what?", "Rachel", "surprise", 0, 0)],
        "test": [("Why do all you’re coffee mugs have numbers on them?", "Mark", "sadness", 0, 0)],
    })
    m, skipped = prepare_meld(tmp_path, tmp_path / "cache" / "meld")  # finds MELD.Raw/ below root
    assert skipped == [] and m.root == str(root) and m.classes == MELD_CLASSES
    a, b, c, d = m.items
    assert (a.id, a.path, a.label, a.speaker) == ("train/dia0_utt0", "train_splits/dia0_utt0.mp4", "neutral", "Chandler")
    assert a.text == "also I was the point person on my company’s transition"
    assert b.text == "You must’ve had your hands full." and b.label == "joy"
    assert (c.id, c.path) == ("dev/dia0_utt0", "dev_splits_complete/dia0_utt0.mp4")
    assert d.text == "Why do all you’re coffee mugs have numbers on them?"  # real UTF-8 is left alone
    assert [it.splits for it in m.items] == [{"meld": {"official": p}} for p in ("train", "train", "val", "test")]
    assert (a.start, a.end) == (None, None)  # the mp4 is already the utterance
    assert m.split_schemes == {"meld": ["official"]} and m.source["texts_fixed"] == 2
    old_copy = _meld(tmp_path / "old", {  # a copy from before the release's fix: C1 characters, no-break spaces
        "train": [("Wait\x85 I\x92m \x93fine\x94 \x91ok\x92 \x96 no\x97yes\xa0now", "Ross", "joy", 0, 0)]})
    m_old, _ = prepare_meld(old_copy, tmp_path / "cache_old")
    assert m_old.items[0].text == "Wait… I’m “fine” ‘ok’ – no—yes now" and m_old.source["texts_fixed"] == 1
    m2, _ = prepare_meld(root, tmp_path / "cache2", fix_text=False)
    assert m2.items[0].text.endswith("companyâ€™s transition") and m2.source["texts_fixed"] == 0


def test_meld_finds_clip_folders_unpacked_one_level_deeper_and_ignores_unlisted_clips(tmp_path):
    rows = {"train": [("Hi", "Ross", "joy", 0, 0)], "dev": [("Hey", "Joey", "anger", 49, 3)],
            "test": [("Yo", "Monica", "fear", 101, 1)]}
    root = _meld(tmp_path / "MELD.Raw", rows, nested=True)
    _touch(root / "dev" / "dev_splits_complete" / "dia49_utt4.mp4")  # a clip without a CSV row
    _touch(root / "test" / "output_repeated_splits_test" / "final_videos_testdia101_utt0.mp4")
    m, skipped = prepare_meld(root, tmp_path / "cache")
    assert skipped == [] and [it.id for it in m.items] == ["train/dia0_utt0", "dev/dia49_utt3", "test/dia101_utt1"]
    assert [it.path for it in m.items] == ["train/train_splits/dia0_utt0.mp4", "dev/dev_splits_complete/dia49_utt3.mp4",
                                           "test/output_repeated_splits_test/dia101_utt1.mp4"]
    assert m.source["clip_folders"]["dev_splits_complete"] == "dev/dev_splits_complete"
    (root / "dev_splits_complete").mkdir()
    with pytest.raises(ManifestError, match=r"meld: two clip folders dev_splits_complete/ under .*: "
                                            r"dev_splits_complete and dev/dev_splits_complete"):
        prepare_meld(root, tmp_path / "cache")
    (root / "dev_splits_complete").rmdir()
    shutil.rmtree(root / "test")
    with pytest.raises(ManifestError, match=r"no clip folder output_repeated_splits_test/ in .* up to 2 levels below"):
        prepare_meld(root, tmp_path / "cache")


def test_meld_flags_mis_cut_and_empty_spans_and_stops_on_a_bad_time(tmp_path):
    rows = {"train": [("Hi", "Ross", "joy", 309, 0, "0:13:01,100", "0:13:42,100"),  # 41 s, one-digit hour
                      ("Ok", "Ross", "joy", 309, 1, "00:13:42,477", "00:13:44,000")],
            "dev": [("Hey", "Joey", "anger", 0, 0, "0:01:00,000", "0:01:29,999")],  # under 30 s
            "test": [("Yo", "Monica", "fear", 38, 4, "1:00:00,000", "1:05:04,900"),
                     ("So", "Monica", "fear", 155, 3, "0:20:00,500", "0:20:00,500")]}  # StartTime = EndTime
    m, skipped = prepare_meld(_meld(tmp_path / "meld", rows), tmp_path / "cache")
    assert skipped == [] and len(m.items) == 5  # flagged, not dropped
    assert m.source["flagged_spans"] == {"threshold_s": 30.0, "longer": ["train/dia309_utt0", "test/dia38_utt4"],
                                         "empty": ["test/dia155_utt3"]}
    assert all(it.start is None and it.end is None for it in m.items)
    rows["dev"][0] = ("Hey", "Joey", "anger", 0, 0, "0:01:00", "0:01:29,999")
    with pytest.raises(ManifestError, match=r"dev_sent_emo.csv row 1 \(id 'dev/dia0_utt0'\): StartTime / EndTime "
                                            r"must be 'h:mm:ss,mmm', got '0:01:00'"):
        prepare_meld(_meld(tmp_path / "meld2", rows), tmp_path / "cache")


def test_meld_rows_without_clip_are_errors_or_listed(tmp_path):
    rows = {"train": [("Hi", "Ross", "joy", 0, 0)],
            "dev": [("Hey", "Joey", "anger", 110, 6), ("Ho", "Joey", "anger", 110, 7)],
            "test": [("Yo", "Monica", "fear", 1, 0)]}
    root = _meld(tmp_path / "meld", rows, missing=("dev/dia110_utt7",))
    with pytest.raises(ManifestError, match=r"dev_sent_emo.csv row 2 \(id 'dev/dia110_utt7'\): file not found"):
        prepare_meld(root, tmp_path / "cache")
    m, skipped = prepare_meld(root, tmp_path / "cache", skip_invalid=True)
    assert [(r, i) for r, i, _ in skipped] == [(2, "dev/dia110_utt7")]
    assert skipped[0][2].startswith("dev_sent_emo.csv row 2: file not found")
    assert len(m.items) == 3 and m.source["skipped_rows"] == 1


def test_meld_release_errors(tmp_path):
    root = _meld(tmp_path / "meld", {"train": [("Hi", "Ross", "happy", 0, 0)]})
    with pytest.raises(ManifestError, match=r"train_sent_emo.csv row 1 \(id 'train/dia0_utt0'\): unknown class 'happy'"):
        prepare_meld(root, tmp_path / "cache")
    _write(root / "test_sent_emo.csv", "Sr No.,Utterance,Speaker,Emotion\n")
    with pytest.raises(ManifestError, match=r"test_sent_emo.csv: missing column\(s\) \['Dialogue_ID', 'Utterance_ID'\]"):
        prepare_meld(root, tmp_path / "cache")
    (root / "dev_sent_emo.csv").unlink()
    with pytest.raises(ManifestError, match=r"meld: no dev_sent_emo.csv in .*expected the MELD.Raw release"):
        prepare_meld(root, tmp_path / "cache")
    root = _meld(tmp_path / "meld2", {})
    (root / "output_repeated_splits_test").rmdir()
    with pytest.raises(ManifestError, match=r"no clip folder output_repeated_splits_test/ .* test.tar.gz"):
        prepare_meld(root, tmp_path / "cache")


def test_release_csvs_that_are_not_utf8_stop_with_the_file_named(tmp_path):
    root = _meld(tmp_path / "meld", {"train": [("Hi", "Ross", "joy", 0, 0)]})
    _touch(root / "dev_sent_emo.csv", MELD_HEADER.encode() + b'1,"caf\xe9",Joey,joy,neutral,0,0,1,1,"0:0:1,0","0:0:2,0"\n')
    with pytest.raises(ManifestError, match=r"dev_sent_emo.csv: not UTF-8 text"):
        prepare_meld(root, tmp_path / "cache")
    root = _dfew(tmp_path / "DFEW", {c: 1 for c in range(1, 6)})
    _touch(root / "EmoLabel_DataSplit" / "test(single-labeled)" / "set_4.csv", b"video_name,label\n\xff\xfe4,1\n")
    with pytest.raises(ManifestError, match=r"set_4.csv: not UTF-8 text"):
        prepare_dfew(root, tmp_path / "cache")
    root = tmp_path / "EmVidCap"
    _touch(root / "EmVideo_trainval_captions.csv", b"VideoID\tEmCaptions\nvid1\ta caf\xe9 scene\n")
    _write(root / "EmVideo_test_captions.csv", "VideoID\tEmCaptions\n")
    _write(root / "ecpa_split.txt", "vid1 train\n")
    with pytest.raises(ManifestError, match=r"EmVideo_trainval_captions.csv: not UTF-8 text"):
        prepare_emvidcap(root, tmp_path / "cache")


def test_fix_mojibake():
    assert fix_mojibake("itâ€™s") == ("it’s", True)
    assert fix_mojibake("caf\u00c3\u00a9") == ("café", True)
    assert fix_mojibake("I\x92m") == ("I’m", True)  # cp1252 punctuation read as Latin-1
    assert fix_mojibake("plain") == ("plain", False)
    assert fix_mojibake("naïve – ok") == ("naïve – ok", False)  # real text does not round-trip: kept


# --- dfew ----------------------------------------------------------------------------------------


def _dfew(root: Path, labels: dict[int, int], media: str = "frames", spelling: str = "{}(single-labeled)") -> Path:
    split = root / "EmoLabel_DataSplit"
    clips = sorted(labels)
    for k in range(1, 6):
        test = [c for i, c in enumerate(clips) if i % 5 == k - 1]
        for part, members in (("train", [c for c in clips if c not in test]), ("test", test)):
            _write(split / spelling.format(part) / f"set_{k}.csv",
                   "video_name,label\n" + "".join(f"{c},{labels[c]}\n" for c in members))
    for c in clips:
        if media == "frames":
            _frames(root / "Clip" / "clip_224x224" / f"{c:05d}")
        else:  # the README's 5-digit names, or unpadded ones as some copies have
            _touch(root / "Clip" / "original" / (f"{c:05d}.mp4" if media == "original" else f"{c}.mp4"))
    return root


def test_dfew_five_official_folds(tmp_path):
    labels = {c: (c % 7) + 1 for c in range(1, 11)}
    root = _dfew(tmp_path / "DFEW", labels)
    m, skipped = prepare_dfew(root, tmp_path / "cache" / "dfew")
    assert skipped == [] and m.classes == DFEW_CLASSES == ["happy", "sad", "neutral", "angry", "surprise",
                                                          "disgust", "fear"]
    assert [it.id for it in m.items] == [f"{c:05d}" for c in range(1, 11)]
    assert m.items[0].path == "Clip/clip_224x224/00001" and m.items[0].label == "sad"  # label 2
    assert m.items[6].label == "happy"  # clip 7: label 1
    assert m.split_schemes == {"dfew": ["1", "2", "3", "4", "5"]}
    for k in range(1, 6):
        test = {i for i, p in _fold(m, "dfew", str(k)).items() if p == "test"}
        assert test == {f"{c:05d}" for i, c in enumerate(range(1, 11)) if i % 5 == k - 1}
    assert all(len(it.splits["dfew"]) == 5 for it in m.items)
    assert len(m.source["split_sha256"]) == 10


@pytest.mark.parametrize("spelling", ["{}(single_labeled)", "{}"])
def test_dfew_split_folders_as_the_readme_or_plainly_spelt(tmp_path, spelling):
    labels = {c: (c % 7) + 1 for c in range(1, 11)}
    root = _dfew(tmp_path / "DFEW", labels, spelling=spelling)
    m, _ = prepare_dfew(root, tmp_path / "cache")
    want, _ = prepare_dfew(_dfew(tmp_path / "DFEW2", labels), tmp_path / "cache2")
    assert [(it.id, it.label, it.splits) for it in m.items] == [(it.id, it.label, it.splits) for it in want.items]
    (root / "EmoLabel_DataSplit" / "train(single-labeled)").mkdir()
    with pytest.raises(ManifestError, match=r"dfew: both train\(single-labeled\) and .* are under"):
        prepare_dfew(root, tmp_path / "cache")


def test_dfew_media_and_errors(tmp_path):
    root = _dfew(tmp_path / "DFEW", {1: 1, 2: 2, 3: 3, 4: 4, 5: 5}, media="original")
    m, _ = prepare_dfew(root, tmp_path / "cache", media="original")
    assert m.items[0].path == "Clip/original/00001.mp4"
    unpadded = _dfew(tmp_path / "DFEW_unpadded", {1: 1, 2: 2}, media="original_unpadded")
    _touch(unpadded / "Clip" / "original" / "00002.mp4")  # both names: the README's wins
    m, _ = prepare_dfew(unpadded, tmp_path / "cache_u", media="original")
    assert [it.path for it in m.items] == ["Clip/original/1.mp4", "Clip/original/00002.mp4"]
    (unpadded / "Clip" / "original" / "1.mp4").unlink()
    with pytest.raises(ManifestError, match=r"row 1 \(id '00001'\): file not found.*Clip/original/00001.mp4"):
        prepare_dfew(unpadded, tmp_path / "cache_u", media="original")
    with pytest.raises(ManifestError, match=r"dfew: clip folder .*Clip/clip_224x224 not found \(media='clip_224x224'"):
        prepare_dfew(root, tmp_path / "cache")
    with pytest.raises(ManifestError, match=r"media 'faces' is not one of"):
        prepare_dfew(root, tmp_path / "cache", media="faces")
    split = root / "EmoLabel_DataSplit"
    _write(split / "test(single-labeled)" / "set_2.csv", "video_name,label\n2,0\n")
    with pytest.raises(ManifestError, match=r"test\(single-labeled\)/set_2.csv row 1 \(id '00002'\): label '0' "
                                            r"\(0 = no single label"):
        prepare_dfew(root, tmp_path / "cache", media="original")
    _write(split / "test(single-labeled)" / "set_2.csv", "video_name,label\n2,7\n")
    with pytest.raises(ManifestError, match=r"set_2.csv row 1 \(id '00002'\): label 'fear' disagrees with 'sad' at "
                                            r"train\(single-labeled\)/set_1.csv row 1"):
        prepare_dfew(root, tmp_path / "cache", media="original")
    m, skipped = prepare_dfew(root, tmp_path / "cache", media="original", skip_invalid=True)
    assert [i for _, i, _ in skipped] == ["00002"] and "00002" not in m.by_id() and len(m.items) == 4
    (split / "train(single-labeled)" / "set_3.csv").unlink()
    with pytest.raises(ManifestError, match=r"dfew: split file .*train\(single-labeled\)/set_3.csv not found"):
        prepare_dfew(root, tmp_path / "cache", media="original")


# --- ferv39k -------------------------------------------------------------------------------------


def test_ferv39k_official_lists_over_frame_folders(tmp_path):
    root = tmp_path / "FERV39k"
    entries = {"train": ["Action/Angry/0001", "Action/Happy/0002", "Crime/Sad/0003"],
               "test": ["Talkshow/Surprise/0004", "Crime/Neutral/0005"]}
    for part, paths in entries.items():
        _write(root / "4_setups" / "All_scenes" / f"{part}_All.csv",
               "path label\n" + "".join(f"{p} {p.split('/')[1]}\n" for p in paths))
        for p in paths:
            _frames(root / "2_ClipsforFaceCrop" / p)
    m, _ = prepare_ferv39k(root, tmp_path / "cache")
    assert m.classes == FERV39K_CLASSES and m.split_schemes == {"ferv39k": ["official"]}
    assert m.source["header_lines"] == {"4_setups/All_scenes/train_All.csv": "path label",
                                        "4_setups/All_scenes/test_All.csv": "path label"}
    assert [it.id for it in m.items] == entries["train"] + entries["test"]
    assert [it.label for it in m.items] == ["angry", "happy", "sad", "surprise", "neutral"]
    assert m.items[0].path == "2_ClipsforFaceCrop/Action/Angry/0001"
    assert _fold(m, "ferv39k", "official")["Talkshow/Surprise/0004"] == "test"
    _write(root / "4_setups" / "All_scenes" / "test_All.csv", "Talkshow/Surprise/0004 Happy\nCrime/Neutral/0005 Bored\n")
    with pytest.raises(ManifestError, match=r"test_All.csv row 1 \(id 'Talkshow/Surprise/0004'\): path's emotion "
                                            r"folder 'Surprise' disagrees with its label 'Happy' \(\+1 more"):
        prepare_ferv39k(root, tmp_path / "cache")
    (root / "4_setups" / "All_scenes" / "train_All.csv").unlink()
    with pytest.raises(ManifestError, match=r"ferv39k: split list .*train_All.csv not found"):
        prepare_ferv39k(root, tmp_path / "cache")


def test_ferv39k_frames_unzipped_one_level_deeper_and_ids_are_whole_paths(tmp_path):
    root = tmp_path / "FERV39k"
    train = ["Action/Happy/0267", "Crime/Happy/0267", "Speech/Fear/0001"]  # the clip number repeats
    _write(root / "4_setups" / "All_scenes" / "train_All.csv", "".join(f"{p} {p.split('/')[1]}\n" for p in train))
    _write(root / "4_setups" / "All_scenes" / "test_All.csv", "Talkshow/Sad/0002 Sad\n")
    for p in [*train, "Talkshow/Sad/0002"]:
        _frames(root / "2_ClipsforFaceCrop-002" / "2_ClipsforFaceCrop" / p)
    m, skipped = prepare_ferv39k(root, tmp_path / "cache")
    assert skipped == [] and [it.id for it in m.items] == [*train, "Talkshow/Sad/0002"]
    assert m.items[0].path == "2_ClipsforFaceCrop-002/2_ClipsforFaceCrop/Action/Happy/0267"
    assert m.source["header_lines"] == {}  # no header: the first lines are entries
    assert m.source["frames"].endswith("2_ClipsforFaceCrop-002/2_ClipsforFaceCrop")
    _frames(root / "copy" / "2_ClipsforFaceCrop" / "Action/Happy/0267")
    with pytest.raises(ManifestError, match=r"2_ClipsforFaceCrop/ is in two folders under .*: "
                                            r"2_ClipsforFaceCrop-002/2_ClipsforFaceCrop and copy/2_ClipsforFaceCrop"):
        prepare_ferv39k(root, tmp_path / "cache")
    shutil.rmtree(root / "copy")
    _write(root / "4_setups" / "All_scenes" / "test_All.csv", "Scene/Emotion/Clip Label\nTalkshow/Sad/0002 Sad\n")
    m, _ = prepare_ferv39k(root, tmp_path / "cache")
    assert m.source["header_lines"] == {"4_setups/All_scenes/test_All.csv": "Scene/Emotion/Clip Label"}
    assert len(m.items) == 4
    _write(root / "4_setups" / "All_scenes" / "test_All.csv", "0002 Sad\n")  # a clip number alone
    with pytest.raises(ManifestError, match=r"test_All.csv row 1 \(id '0002'\): expected '<Scene>/<Emotion>/<clip> "
                                            r"<Emotion>'.*repeats across scenes"):
        prepare_ferv39k(root, tmp_path / "cache")


# --- mafw ----------------------------------------------------------------------------------------


def _mafw(root: Path, labels: dict[str, str], captions: dict[str, tuple[str, str]]) -> Path:
    split = root / "Train & Test Set" / "single"
    clips = sorted(labels)
    for k in range(1, 6):
        test = [c for i, c in enumerate(clips) if i % 5 == k - 1]
        for part, members in (("train", [c for c in clips if c not in test]), ("test", test)):
            _write(split / "no_caption" / f"set_{k}" / f"{part}.txt", "".join(f"{c}.mp4 {labels[c]}\n" for c in members))
            body = b"".join(f"{c}.mp4\t{labels[c]}\t".encode() + captions[c][0].encode("gbk") + b"\t"
                            + captions[c][1].encode() + b"\r\n" for c in members if c in captions)
            _touch(split / "with_caption" / f"set_{k}" / f"{part}.txt", body)
    for c in clips:
        _touch(root / "data" / "clips" / f"{c}.mp4")
    return root


MAFW_LABELS = {"00001": "anger", "00002": "neutral", "00003": "helplessness", "00004": "happiness", "00005": "fear",
               "00006": "disappointment", "00007": "contempt", "00008": "sadness", "00009": "anxiety", "00010": "disgust"}
MAFW_CAPTIONS = {c: ("他皱着眉头", f"The man frowns in clip {c}.") for c in MAFW_LABELS if c != "00002"}


def test_mafw_folds_caption_folds_and_caption_lists(tmp_path):
    root = _mafw(tmp_path / "MAFW", MAFW_LABELS, MAFW_CAPTIONS)
    m, skipped = prepare_mafw(root, tmp_path / "cache" / "mafw")
    assert skipped == [] and m.classes == MAFW_CLASSES and len(MAFW_CLASSES) == 11
    assert m.split_schemes == {"mafw": ["1", "2", "3", "4", "5"], "mafw_caption": ["1", "2", "3", "4", "5"]}
    a = m.by_id()["00001"]
    assert a.path == "data/clips/00001.mp4" and a.label == "anger" and a.text == ["The man frowns in clip 00001."]
    neutral = m.by_id()["00002"]
    assert neutral.text is None and "mafw_caption" not in neutral.splits and len(neutral.splits["mafw"]) == 5
    assert _fold(m, "mafw", "1")["00001"] == "test" and _fold(m, "mafw_caption", "1")["00001"] == "test"
    assert _fold(m, "mafw", "2")["00001"] == "train"
    assert set(_fold(m, "mafw_caption", "1")) == set(MAFW_CAPTIONS)
    assert m.source["ecpa_caption_fold"] == "1" and m.source["caption_encodings"] == ["gb18030", "utf-8"]
    assert m.source["skipped_rows"] == 0 and len(m.items) == 10
    zh, _ = prepare_mafw(root, tmp_path / "cache", caption_language="zh", caption_eval_as="val")
    assert zh.by_id()["00003"].text == ["他皱着眉头"]
    assert set(_fold(zh, "mafw_caption", "1").values()) == {"train", "val"}
    assert set(_fold(zh, "mafw", "1").values()) == {"train", "test"}


def test_mafw_errors_and_captions_off(tmp_path):
    root = _mafw(tmp_path / "MAFW", MAFW_LABELS, MAFW_CAPTIONS)
    split = root / "Train & Test Set" / "single"
    _write(split / "with_caption" / "set_3" / "test.txt", "00003.mp4\tanger\tx\tA man.\n")
    with pytest.raises(ManifestError, match=r"with_caption/set_3/test.txt row 1 \(id '00003'\): label 'anger' "
                                            r"disagrees with 'helplessness'"):
        prepare_mafw(root, tmp_path / "cache")
    m, _ = prepare_mafw(root, tmp_path / "cache", captions=False)
    assert m.split_schemes == {"mafw": ["1", "2", "3", "4", "5"]} and all(it.text is None for it in m.items)
    _write(split / "no_caption" / "set_4" / "train.txt", "00001.mp4 angry\n")
    with pytest.raises(ManifestError, match=r"no_caption/set_4/train.txt row 1 \(id '00001'\): unknown class 'angry'"):
        prepare_mafw(root, tmp_path / "cache", captions=False)
    import shutil
    shutil.rmtree(split / "with_caption" / "set_5")
    with pytest.raises(ManifestError, match=r"split list .*with_caption/set_5/train.txt not found .* "
                                            r"captions=False skips the caption lists"):
        prepare_mafw(root, tmp_path / "cache")


# --- emvidcap ------------------------------------------------------------------------------------


def test_emvidcap_needs_the_ecpa_list_and_keeps_every_caption(tmp_path):
    root = tmp_path / "EmVidCap"
    _write(root / "EmVideo_trainval_captions.csv",
           "VideoID\tEmCaptions\nvid1\ta happy man laughs\nvid1\tthe man smiles joyfully\nvid2\ta sad woman cries\n"
           "vid9\tnot in the list\n")
    _write(root / "EmVideo_test_captions.csv", "VideoID\tEmCaptions\nvid3\tan angry boy shouts\n")
    for v in ("vid1", "vid2", "vid3"):
        _touch(root / "videos" / f"{v}.mp4")
    with pytest.raises(ManifestError, match=r"emvidcap: the list of ECPA's 526 clear-faced videos .* expected "
                                            r".*ecpa_split.txt \(or split_file=PATH\)"):
        prepare_emvidcap(root, tmp_path / "cache")
    _write(root / "ecpa_split.txt", "id,split\nvid1,train\nvid2,train\nvid3,test\n")
    m, skipped = prepare_emvidcap(root, tmp_path / "cache" / "emvidcap")
    assert skipped == [] and m.label_type == "none" and m.classes == []
    assert [it.id for it in m.items] == ["vid1", "vid2", "vid3"]
    assert m.items[0].text == ["a happy man laughs", "the man smiles joyfully"] and m.items[0].path == "videos/vid1.mp4"
    assert m.split_schemes == {"emvidcap": ["ecpa"]} and _fold(m, "emvidcap", "ecpa")["vid3"] == "test"
    assert m.source["counts"] == {"train": 2, "test": 1} and m.source["paper_counts"] == {"train": 362, "test": 164}
    _write(root / "ecpa_split.txt", "vid1 train\nvid4 test\nvid2 dev\n")  # no header: line 1 is data
    with pytest.raises(ManifestError, match=r"ecpa_split.txt row 2 \(id 'vid4'\): no caption for 'vid4'"):
        prepare_emvidcap(root, tmp_path / "cache")
    m, skipped = prepare_emvidcap(root, tmp_path / "cache", skip_invalid=True)
    assert [(r, i) for r, i, _ in skipped] == [(2, "vid4"), (3, "vid2")] and [it.id for it in m.items] == ["vid1"]
    _write(root / "ecpa_split.txt", "vid2 dev\nvid1 train\n")  # a bad first line is not taken for a header
    with pytest.raises(ManifestError, match=r"ecpa_split.txt row 1 \(id 'vid2'\): expected '<VideoID> train\|test'"):
        prepare_emvidcap(root, tmp_path / "cache")
    (root / "EmVideo_test_captions.csv").unlink()
    with pytest.raises(ManifestError, match=r"caption file .*EmVideo_test_captions.csv not found .*VideoID, EmCaptions"):
        prepare_emvidcap(root, tmp_path / "cache")


# --- subtitles -----------------------------------------------------------------------------------


SRT = (
    "\ufeff1\r\n00:00:01,000 --> 00:00:04,500\r\n<i>Hello there,</i>\r\n{\\an8}General <b>Kenobi</b>!\r\n\r\n"
    "2\r\n00:00:04,000 --> 00:00:06,250  X1:100 X2:200\r\n<font color=\"#ff0000\">Overlapping</font> line\r\n\r\n"
    "3\r\n00:00:07,000 --> 00:00:08,000\r\n<i></i>\r\n\r\n"
    "4\r\n01:02:03.004 --> 01:02:05,000\r\nlast &amp; least\r\n"
)

VTT = """WEBVTT - a title
Kind: captions

NOTE this is a comment
that spans two lines

STYLE
::cue { color: yellow }

intro
00:01.000 --> 00:03.500 align:start position:10%
<v.loud Mary Ann>I &amp; you</v>
<c.yellow>again</c> <00:02.000>now

00:00:04.000 --> 00:00:05.000
&lt;b&gt; stays text
"""


def test_parse_srt_multiline_tags_bom_crlf():
    cues, problems = parse_subtitles(SRT)
    assert problems == []
    assert [c.index for c in cues] == [1, 2, 3, 4]
    assert cues[0] == Cue(index=1, start=1.0, end=4.5, text="Hello there, General Kenobi!", speaker=None, line=2)
    assert (cues[1].start, cues[1].end, cues[1].text) == (4.0, 6.25, "Overlapping line")  # overlap kept
    assert cues[2].text == ""  # empty after markup removal
    assert (cues[3].start, cues[3].end, cues[3].text) == (3723.004, 3725.0, "last & least")  # entities in SRT too


def test_parse_vtt_header_notes_styles_voice_and_short_times():
    cues, problems = parse_subtitles(VTT)
    assert problems == []
    assert len(cues) == 2
    first, second = cues
    assert (first.start, first.end, first.speaker, first.line) == (1.0, 3.5, "Mary Ann", 11)
    assert first.text == "I & you again now"  # lines joined with a space
    assert (second.start, second.end, second.text, second.speaker) == (4.0, 5.0, "<b> stays text", None)


@pytest.mark.parametrize("text, line, message", [
    ("1\nhello\nthere\n", 1, "no time line ('START --> END') in the block starting '1'"),
    ("1\n00:00:01,000 -> 00:00:02,000\nhi\n", 2, "malformed time line '00:00:01,000 -> 00:00:02,000'"),
    ("1\n00:00:01,000 --> 00:00:02\nhi\n", 2, "malformed time line '00:00:01,000 --> 00:00:02'"),
    ("1\n00:61:01,000 --> 00:62:02,000\nhi\n", 2, "malformed time line"),
    ("1\n00:00:01,0 --> 00:00:02,000\nhi\n", 2, "malformed time line"),
    ("1\n00:00:05,000 --> 00:00:02,000\nhi\n", 2, "cue ends at 2.000 s, not after its start 5.000 s"),
    ("1\nx\ny\n00:00:01,000 --> 00:00:02,000\nhi\n", 4, "time line must be a cue's first line"),
])
def test_parse_subtitles_problems_name_the_line(text, line, message):
    cues, problems = parse_subtitles("0\n00:00:00,000 --> 00:00:00,500\nok\n\n" + text)
    assert [c.text for c in cues] == ["ok"]
    assert len(problems) == 1 and problems[0][0] == line + 4 and message in problems[0][1]


def test_read_subtitles_falls_back_to_cp1252_then_latin1_and_refuses_utf16(tmp_path):
    f = _touch(tmp_path / "a.srt", b"1\n00:00:01,000 --> 00:00:02,000\nhi\n\n2\n00:00:03,000 --> 00:00:04,000\n"
                                   b"caf\xe9 \x93ol\xe9\x94\n")
    cues, problems = read_subtitles(f)
    assert problems == [] and [c.text for c in cues] == ["hi", "café “olé”"]  # cp1252
    _touch(f, b"1\n00:00:01,000 --> 00:00:02,000\n\x81caf\xe9\n")  # 0x81 has no cp1252 character
    assert [c.text for c in read_subtitles(f)[0]] == ["\x81café"]
    _touch(f, "1\n00:00:01,000 --> 00:00:02,000\nhi\n".encode("utf-16"))
    cues, problems = read_subtitles(f)
    assert cues == [] and problems == [(1, "not a text file in UTF-8, cp1252 or latin-1 (it holds NUL bytes: UTF-16?)")]


def test_subtitles_adapter_one_item_per_cue(tmp_path):
    root = tmp_path / "show"
    _touch(root / "s01" / "e01.mp4")
    _write(root / "s01" / "e01.srt", SRT)
    _touch(root / "s01" / "e02.mkv")
    _write(root / "s01" / "e02.en.vtt", VTT)
    _touch(root / "s01" / "e03.mp4")  # no subtitles
    m, skipped = prepare_subtitles(root, tmp_path / "cache" / "tv")
    assert skipped == [] and m.label_type == "none" and m.classes == []
    assert [it.id for it in m.items] == ["s01/e01-1", "s01/e01-2", "s01/e01-4", "s01/e02-1", "s01/e02-2"]
    a = m.items[0]
    assert (a.path, a.start, a.end, a.text) == ("s01/e01.mp4", 1.0, 4.5, "Hello there, General Kenobi!")
    assert m.items[3].path == "s01/e02.mkv" and m.items[3].speaker == "Mary Ann"
    assert m.split_schemes == {"subtitles": ["all"]} and all(it.splits == {"subtitles": {"all": "train"}} for it in m.items)
    assert m.source["empty_cues"] == 1 and m.source["videos_without_subtitles"] == 1
    assert m.source["subtitle_encodings"] == {}  # every file UTF-8
    assert m.source["videos_without_subtitles_first"] == ["s01/e03.mp4"]
    m2, _ = prepare_subtitles(root, tmp_path / "cache2", min_duration=2.0, max_duration=3.0)
    assert [it.id for it in m2.items] == ["s01/e01-2", "s01/e02-1"] and m2.source["cues_out_of_duration"] == 3
    m3, _ = prepare_subtitles(root, tmp_path / "cache3", language="en")
    assert {it.path for it in m3.items} == {"s01/e02.mkv"}
    assert json.loads((tmp_path / "cache" / "tv" / "manifest.jsonl").read_text().splitlines()[1])["start"] == 1.0


def test_subtitles_adapter_errors(tmp_path):
    root = tmp_path / "show"
    _touch(root / "e01.mp4")
    _write(root / "e01.srt", "1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:0x,000 --> 00:00:03,000\nbad\n")
    with pytest.raises(ManifestError, match=r"e01.srt row 6 \(id None\): malformed time line"):
        prepare_subtitles(root, tmp_path / "cache")
    m, skipped = prepare_subtitles(root, tmp_path / "cache", skip_invalid=True)
    assert [it.id for it in m.items] == ["e01-1"] and skipped[0][0] == 6 and skipped[0][2].startswith("e01.srt row 6:")
    _write(root / "e01.vtt", "WEBVTT\n\n00:01.000 --> 00:02.000\nx\n")
    with pytest.raises(ManifestError, match=r"e01.vtt .*second subtitle file for e01.mp4"):
        prepare_subtitles(root, tmp_path / "cache", skip_invalid=False)
    (root / "e01.vtt").unlink()
    _write(root / "orphan.srt", "1\n00:00:01,000 --> 00:00:02,000\nok\n")
    with pytest.raises(ManifestError, match=r"orphan.srt \(id None\): no video for this subtitle file"):
        prepare_subtitles(root, tmp_path / "cache")
    (root / "orphan.srt").unlink()
    _touch(root / "e01.srt", b"1\n00:00:01,000 --> 00:00:02,000\nun caf\xe9\n")
    m, _ = prepare_subtitles(root, tmp_path / "cache")
    assert m.items[0].text == "un café" and m.source["subtitle_encodings"] == {"e01.srt": "cp1252"}
    _touch(root / "e01.srt", "1\n00:00:01,000 --> 00:00:02,000\nhi\n".encode("utf-16"))
    with pytest.raises(ManifestError, match=r"e01.srt row 1 \(id None\): not a text file .*UTF-16"):
        prepare_subtitles(root, tmp_path / "cache")
    _write(root / "e01.srt", "1\n00:00:01,000 --> 00:00:02,000\nok\n")
    _touch(root / "e01.mkv")
    m, skipped = prepare_subtitles(root, tmp_path / "cache", skip_invalid=True)
    assert [it.path for it in m.items] == ["e01.mkv"] and any("e01.mp4: a second video for e01 (first: e01.mkv)" in r for _, _, r in skipped)
    (tmp_path / "novideo").mkdir()
    with pytest.raises(ManifestError, match=r"subtitles: no videos"):
        prepare_subtitles(tmp_path / "novideo", tmp_path / "cache")


def test_cli_prepare_paper_dataset_with_adapter_options(tmp_path):
    from typer.testing import CliRunner

    from emo.cli import app

    root = _class_tree(tmp_path / "ve8", VE8_FOLDERS)
    runner = CliRunner()
    res = runner.invoke(app, ["datasets", "prepare", "ve8", "--root", str(root), "--out", str(tmp_path / "c"),
                              "--set", "folds=3", "--set", "seed=5"])
    assert res.exit_code == 0, res.output
    m = read_manifest(tmp_path / "c")
    assert m.split_schemes == {"ve8": ["0", "1", "2"]} and m.source["fold_seeds"] == [5, 6, 7]
    bad = runner.invoke(app, ["datasets", "prepare", "ve8", "--root", str(root), "--out", str(tmp_path / "d"),
                              "--set", "folds=many"])
    assert bad.exit_code == 2 and "folds expects an integer" in bad.output
    unknown = runner.invoke(app, ["datasets", "prepare", "ek6", "--root", str(root), "--out", str(tmp_path / "e"),
                                  "--set", "fold=3"])
    assert unknown.exit_code == 2 and "not an option of this adapter" in unknown.output


def test_subtitles_from_a_separate_mirrored_folder_via_the_cli(tmp_path):
    from typer.testing import CliRunner

    from emo.cli import app

    videos, subs = tmp_path / "series", tmp_path / "series_srt"
    _touch(videos / "s01" / "e01.mp4")
    _touch(videos / "s01" / "e02.mkv")
    _write(videos / "s01" / "e01.srt", "1\n00:00:00,000 --> 00:00:01,000\nignored: subs are elsewhere\n")
    _write(subs / "s01" / "e01.srt", SRT)
    _write(subs / "s01" / "e02.en.vtt", VTT)
    _write(subs / "s01" / "orphan.srt", SRT)
    res = CliRunner().invoke(app, ["datasets", "prepare", "subtitles", "--videos", str(videos), "--subs", str(subs),
                                   "--out", str(tmp_path / "tv"), "--skip-invalid"])
    assert res.exit_code == 0, res.output
    m = read_manifest(tmp_path / "tv")
    assert [it.id for it in m.items] == ["s01/e01-1", "s01/e01-2", "s01/e01-4", "s01/e02-1", "s01/e02-2"]
    assert m.items[0].text == "Hello there, General Kenobi!" and m.source["subs"] == str(subs.resolve())
    assert "orphan.srt" in res.output and "no video for this subtitle file" in res.output
