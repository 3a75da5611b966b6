"""Dataset adapters: the folder tree with seeded stratified splits, and CSV / JSONL item lists.

Videos are placeholder files: adapters only check that they exist.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from emo.cache.manifest import ManifestError, read_manifest
from emo.datasets import ADAPTERS, prepare_csv, prepare_folder, stratified_split


def _tree(root, counts: dict[str, int], ext=".mp4"):
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / cls / f"{cls[:2]}{i:02d}{ext}").write_bytes(b"not a video")
    return root


def _parts(manifest, fold="0", scheme="folder") -> dict[str, str]:
    return {it.id: it.splits[scheme][fold] for it in manifest.items if fold in it.splits.get(scheme, {})}


# --- folder ---------------------------------------------------------------------------------------


def test_folder_adapter_writes_a_valid_stratified_manifest(tmp_path):
    root = _tree(tmp_path / "data", {"sad": 9, "joy": 12, "fear": 2, "calm": 1})
    (root / "joy" / "README.txt").write_text("not a video")
    (root / "joy" / ".hidden.mp4").write_bytes(b"x")
    m, skipped = prepare_folder(root, tmp_path / "cache" / "toy", test_ratio=0.33)
    assert skipped == []
    assert m.dataset == "toy" and m.classes == ["calm", "fear", "joy", "sad"]
    assert m.items[0].id == "calm/ca00" and m.items[0].path == "calm/ca00.mp4" and m.items[0].label == "calm"
    assert m.split_schemes == {"folder": ["0"]}
    assert m.source["adapter"] == "folder" and m.source["seed"] == 0 and m.source["ignored_files"] == 1
    assert read_manifest(tmp_path / "cache" / "toy") == m

    parts = _parts(m)
    test = Counter(i.split("/")[0] for i, p in parts.items() if p == "test")
    # round(n * 0.33): 9 -> 3, 12 -> 4; a class of 2 still gets 1 test item; a class of 1 none
    assert test == {"sad": 3, "joy": 4, "fear": 1}
    assert set(parts.values()) == {"train", "test"}


def test_folder_splits_are_reproducible_and_folds_differ(tmp_path):
    root = _tree(tmp_path / "data", {"a": 10, "b": 10, "c": 7})
    m1, _ = prepare_folder(root, tmp_path / "c1", folds=3, seed=5)
    m2, _ = prepare_folder(root, tmp_path / "c2", folds=3, seed=5)
    assert m1.items == m2.items
    assert m1.split_schemes == {"folder": ["0", "1", "2"]} and m1.source["fold_seeds"] == [5, 6, 7]
    assert _parts(m1, "0") != _parts(m1, "1") != _parts(m1, "2")
    # fold k uses seed + k
    m3, _ = prepare_folder(root, tmp_path / "c3", folds=1, seed=6)
    assert _parts(m3, "0") == _parts(m1, "1")
    # every fold keeps the per-class test counts
    for fold in ("0", "1", "2"):
        assert Counter(i[0] for i, p in _parts(m1, fold).items() if p == "test") == {"a": 3, "b": 3, "c": 2}


def test_stratified_split_of_a_class_ignores_the_other_classes():
    labels = ["x"] * 8 + ["y"] * 6
    with_z = labels + ["z"] * 5
    assert stratified_split(labels, 0.5, seed=3) == stratified_split(with_z, 0.5, seed=3)[: len(labels)]
    with pytest.raises(ManifestError, match="test_ratio"):
        stratified_split(labels, 1.0)
    with pytest.raises(ManifestError, match="val_ratio"):
        stratified_split(labels, 0.5, val_ratio=-0.1)


def test_folder_val_ratio_takes_val_from_the_train_part(tmp_path):
    root = _tree(tmp_path / "data", {"a": 20, "b": 10})
    m, _ = prepare_folder(root, tmp_path / "cache", test_ratio=0.5, val_ratio=0.2)
    counts = Counter((i[0], p) for i, p in _parts(m).items())
    assert counts == {("a", "test"): 10, ("a", "val"): 2, ("a", "train"): 8,
                      ("b", "test"): 5, ("b", "val"): 1, ("b", "train"): 4}
    assert m.source["val_ratio"] == 0.2
    # the test part is the one drawn without val
    m0, _ = prepare_folder(root, tmp_path / "cache0", test_ratio=0.5)
    assert {i for i, p in _parts(m).items() if p == "test"} == {i for i, p in _parts(m0).items() if p == "test"}


def test_folder_classes_argument_fixes_the_order_and_must_match_the_folders(tmp_path):
    root = _tree(tmp_path / "data", {"joy": 3, "anger": 3, "fear": 3})
    m, _ = prepare_folder(root, tmp_path / "cache", classes=["joy", "fear", "anger"])
    assert m.classes == ["joy", "fear", "anger"] and m.source["classes_from"] == "argument"
    assert [it.label for it in m.items][:3] == ["joy"] * 3
    with pytest.raises(ManifestError, match=r"class folder\(s\) \['fear'\].*not in the classes given"):
        prepare_folder(root, tmp_path / "cache", classes=["joy", "anger"])
    with pytest.raises(ManifestError, match=r"class\(es\) \['sadness'\] have no folder"):
        prepare_folder(root, tmp_path / "cache", classes=["joy", "anger", "fear", "sadness"])


def test_folder_frame_folders_and_extensions(tmp_path):
    root = _tree(tmp_path / "data", {"joy": 2, "sad": 2}, ext=".AVI")
    clip = root / "joy" / "clip.07"
    clip.mkdir()
    for k in range(3):
        (clip / f"{k:04d}.png").write_bytes(b"png")
    m, _ = prepare_folder(root, tmp_path / "cache")
    ids = [it.id for it in m.items]
    assert ids == ["joy/clip.07", "joy/jo00", "joy/jo01", "sad/sa00", "sad/sa01"]
    assert m.items[0].path == "joy/clip.07" and m.resolve(m.items[0]).is_dir()
    _tree(root, {"sad": 1}, ext=".webm")
    m, _ = prepare_folder(root, tmp_path / "cache", extensions=["webm"])  # the .AVI files are not videos now
    assert [it.id for it in m.items] == ["joy/clip.07", "sad/sa00"] and m.source["ignored_files"] == 4
    with pytest.raises(ManifestError, match="sad holds no videos"):
        prepare_folder(root, tmp_path / "cache", extensions=[".mp4"])
    (root / "sad" / "empty_dir").mkdir()
    with pytest.raises(ManifestError, match="empty_dir is a folder without images"):
        prepare_folder(root, tmp_path / "cache")


def test_folder_errors_on_bad_roots_and_duplicate_stems(tmp_path):
    with pytest.raises(ManifestError, match="is not a directory"):
        prepare_folder(tmp_path / "nothing", tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no class folders"):
        prepare_folder(tmp_path / "empty", tmp_path / "cache")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.mp4").write_bytes(b"x")
    with pytest.raises(ManifestError, match="1 videos lie directly in it"):
        prepare_folder(tmp_path / "flat", tmp_path / "cache")
    root = _tree(tmp_path / "data", {"joy": 3})
    with pytest.raises(ManifestError, match="folds must be"):
        prepare_folder(root, tmp_path / "cache", folds=0)
    (root / "joy" / "jo00.mkv").write_bytes(b"x")  # same stem as jo00.mp4: same id
    with pytest.raises(ManifestError, match=r"manifest row 2 \(id 'joy/jo00'\): duplicate id"):
        prepare_folder(root, tmp_path / "cache")
    m, skipped = prepare_folder(root, tmp_path / "cache", skip_invalid=True)
    assert skipped == [(2, "joy/jo00", "duplicate id")] and len(m.items) == 3
    assert len(read_manifest(tmp_path / "cache").items) == 3


def test_adapters_registry():
    assert ADAPTERS["folder"] is prepare_folder and ADAPTERS["csv"] is prepare_csv


# --- csv / jsonl ----------------------------------------------------------------------------------


def _videos(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"x")


def _csv(path, text):
    path.write_text(text.lstrip())
    return path


def test_csv_with_every_column(tmp_path):
    _videos(tmp_path / "clips", ["a.mp4", "b.mp4", "c.mp4"])
    f = _csv(tmp_path / "items.csv", """
id,path,label,start,end,text,speaker,subject_boxes,split
u1,clips/a.mp4,joy,1.5,3,"Hello, there",Ross,"[[0, 0, 10, 10]]",train
u2,clips/b.mp4,anger,,,,,,test
u3,clips/c.mp4,joy,0,2.25,Bye,,,val
""")
    m, skipped = prepare_csv(f, tmp_path / "cache" / "friends")
    assert skipped == [] and m.dataset == "friends"
    assert m.classes == ["anger", "joy"] and m.source["classes_from"].startswith("inferred")
    a, b, c = m.items
    assert (a.id, a.path, a.label, a.start, a.end, a.text, a.speaker) == (
        "u1", "clips/a.mp4", "joy", 1.5, 3.0, "Hello, there", "Ross")
    assert a.subject_boxes == [[0, 0, 10, 10]]
    assert (b.start, b.end, b.text, b.speaker, b.subject_boxes) == (None, None, None, None, None)
    assert [it.splits for it in m.items] == [{"csv": {"0": p}} for p in ("train", "test", "val")]
    assert m.split_schemes == {"csv": ["0"]}
    assert m.root == str(tmp_path) and m.source["format"] == "csv" and len(m.source["sha256"]) == 64
    assert read_manifest(tmp_path / "cache" / "friends") == m


def test_csv_split_columns_and_classes_argument(tmp_path):
    _videos(tmp_path, ["a.mp4", "b.mp4", "c.mp4"])
    f = _csv(tmp_path / "items.csv", """
id,path,label,split:dfew:1,split:dfew:2,split:official:all
a,a.mp4,sad,train,,train
b,b.mp4,happy,test,train,
c,c.mp4,sad,train,test,test
""")
    m, _ = prepare_csv(f, tmp_path / "cache", classes=["sad", "happy", "neutral"])
    assert m.classes == ["sad", "happy", "neutral"] and m.source["classes_from"] == "argument"
    assert m.split_schemes == {"dfew": ["1", "2"], "official": ["all"]}
    assert m.items[0].splits == {"dfew": {"1": "train"}, "official": {"all": "train"}}  # empty cells: not in fold
    assert m.items[1].splits == {"dfew": {"1": "test", "2": "train"}}


def test_csv_multi_and_continuous_labels(tmp_path):
    _videos(tmp_path, ["a.mp4", "b.mp4"])
    f = _csv(tmp_path / "multi.csv", "id,path,label\na,a.mp4,joy; surprise\nb,b.mp4,anger\n")
    m, _ = prepare_csv(f, tmp_path / "cache", label_type="multi")
    assert m.label_type == "multi" and m.classes == ["anger", "joy", "surprise"]
    assert [it.label for it in m.items] == [["joy", "surprise"], ["anger"]]

    f = _csv(tmp_path / "va.csv", "id,path,label\na,a.mp4,0.5;-0.25\nb,b.mp4,1;0\n")
    m, _ = prepare_csv(f, tmp_path / "cache", label_type="continuous", classes=["valence", "arousal"])
    assert [it.label for it in m.items] == [[0.5, -0.25], [1.0, 0.0]]
    with pytest.raises(ManifestError, match="continuous labels need classes"):
        prepare_csv(f, tmp_path / "cache", label_type="continuous")
    f = _csv(tmp_path / "va.csv", "id,path,label\na,a.mp4,0.5;high\n")
    with pytest.raises(ManifestError, match=r"row 1 \(id 'a'\): continuous label must be ';'-separated numbers"):
        prepare_csv(f, tmp_path / "cache", label_type="continuous", classes=["valence", "arousal"])
    f = _csv(tmp_path / "va.csv", "id,path,label\na,a.mp4,0.5\n")
    with pytest.raises(ManifestError, match=r"row 1 \(id 'a'\): label has 1 values, expected 2"):
        prepare_csv(f, tmp_path / "cache", label_type="continuous", classes=["valence", "arousal"])

    f = _csv(tmp_path / "none.csv", "id,path\na,a.mp4\n")
    m, _ = prepare_csv(f, tmp_path / "cache", label_type="none")
    assert m.items[0].label is None and m.classes == []


def test_csv_relative_paths_resolve_against_root(tmp_path):
    _videos(tmp_path / "videos", ["a.mp4"])
    _videos(tmp_path / "elsewhere", ["b.mp4"])
    lists = tmp_path / "lists"
    lists.mkdir()
    f = _csv(lists / "items.csv", f"id,path,label\na,a.mp4,joy\nb,{tmp_path / 'elsewhere' / 'b.mp4'},joy\n")
    with pytest.raises(ManifestError, match=r"row 1 \(id 'a'\): file not found: .*lists/a.mp4"):
        prepare_csv(f, tmp_path / "cache")  # default root: the CSV's folder
    m, _ = prepare_csv(f, tmp_path / "cache", root=str(tmp_path / "videos"))
    assert m.root == str(tmp_path / "videos")
    assert [m.resolve(it) for it in m.items] == [tmp_path / "videos" / "a.mp4", tmp_path / "elsewhere" / "b.mp4"]


def test_jsonl_with_splits_object_and_caption_lists(tmp_path):
    _videos(tmp_path, ["a.mp4", "b.mp4"])
    rows = [
        {"id": "a", "path": "a.mp4", "label": "joy", "text": ["a smiling man", "he laughs"],
         "splits": {"mafw": {"1": "train", "2": "test"}}, "start": 0, "end": "2.5"},
        {"id": 7, "path": "b.mp4", "label": "sad", "split": "test", "speaker": "Ann",
         "subject_boxes": [[1, 2, 3, 4]]},
        "",
    ]
    f = tmp_path / "items.jsonl"
    f.write_text("\n".join(json.dumps(r) if r else "" for r in rows) + "\n")
    m, _ = prepare_csv(f, tmp_path / "cache")
    a, b = m.items
    assert a.text == ["a smiling man", "he laughs"] and (a.start, a.end) == (0.0, 2.5)
    assert a.splits == {"mafw": {"1": "train", "2": "test"}}
    assert b.id == "7" and b.splits == {"csv": {"0": "test"}} and b.subject_boxes == [[1, 2, 3, 4]]
    assert m.split_schemes == {"mafw": ["1", "2"], "csv": ["0"]} and m.source["format"] == "jsonl"


CSV_ERRORS = [
    ("a,a.mp4,joy,,\nb,gone.mp4,joy,,\n", r"row 2 \(id 'b'\): file not found"),
    ("a,a.mp4,joy,,\nb,b.mp4,joy,,\na,b.mp4,joy,,\n", r"row 3 \(id 'a'\): duplicate id \(first at row 1\)"),
    ("a,a.mp4,joy,,\nb,b.mp4,jyo,,\n", r"row 2 \(id 'b'\): unknown class 'jyo'"),
    ("a,a.mp4,joy,,trian\n", r"row 1 \(id 'a'\): split csv:0 is 'trian', expected one of train, val, test"),
    ("a,a.mp4,joy,,\nb,b.mp4,joy,1.2s,\n", r"row 2 \(id 'b'\): start must be a number of seconds, got '1.2s'"),
    ("a,a.mp4,joy,3,\nb,b.mp4,joy,,,extra\n", r"row 2 \(id 'b'\): has 6 cells, the header has 5"),
]


@pytest.mark.parametrize("body, message", CSV_ERRORS)
def test_csv_errors_name_row_and_id(tmp_path, body, message):
    _videos(tmp_path, ["a.mp4", "b.mp4"])
    f = _csv(tmp_path / "items.csv", "id,path,label,start,split\n" + body)
    with pytest.raises(ManifestError, match=r"items.csv " + message):
        prepare_csv(f, tmp_path / "cache", classes=["joy", "sad"])
    assert not (tmp_path / "cache" / "manifest.jsonl").exists()


def test_csv_end_before_start_and_blank_lines_keep_row_numbers(tmp_path):
    _videos(tmp_path, ["a.mp4"])
    f = _csv(tmp_path / "items.csv", "id,path,label,start,end\na,a.mp4,joy,1,2\n\nb,a.mp4,joy,3,2\n")
    with pytest.raises(ManifestError, match=r"row 3 \(id 'b'\): end \(2.0\) is not after start \(3.0\)"):
        prepare_csv(f, tmp_path / "cache")


def test_csv_unknown_or_missing_column_is_an_error(tmp_path):
    f = _csv(tmp_path / "items.csv", "id,path,label,lable\na,a.mp4,joy,joy\n")
    with pytest.raises(ManifestError, match="unknown column 'lable'"):
        prepare_csv(f, tmp_path / "cache", skip_invalid=True)
    f = _csv(tmp_path / "items.csv", "id,path,label,split:x\na,a.mp4,joy,train\n")
    with pytest.raises(ManifestError, match="unknown column 'split:x'"):
        prepare_csv(f, tmp_path / "cache")
    f = _csv(tmp_path / "items.csv", "id,label\na,joy\n")
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['path'\]"):
        prepare_csv(f, tmp_path / "cache")
    f = _csv(tmp_path / "items.csv", "id,path,label\n")
    with pytest.raises(ManifestError, match="no data rows"):
        prepare_csv(f, tmp_path / "cache")
    with pytest.raises(ManifestError, match="expected a .csv or .jsonl"):
        prepare_csv(_csv(tmp_path / "items.tsv", "id\tpath\n"), tmp_path / "cache")


def test_jsonl_errors(tmp_path):
    _videos(tmp_path, ["a.mp4"])
    f = tmp_path / "items.jsonl"
    f.write_text('{"id": "a", "path": "a.mp4", "label": "joy"}\n{"id": "b", "path": \n')
    with pytest.raises(ManifestError, match=r"items.jsonl row 2 \(id None\): not valid JSON"):
        prepare_csv(f, tmp_path / "cache")
    f.write_text('{"id": "a", "path": "a.mp4", "label": "joy"}\n{"id": "b", "path": "a.mp4", "labels": "joy"}\n')
    with pytest.raises(ManifestError, match=r"row 2 \(id 'b'\): unknown field 'labels'"):
        prepare_csv(f, tmp_path / "cache", skip_invalid=True)
    f.write_text('{"id": "a", "path": "a.mp4"}\n')
    with pytest.raises(ManifestError, match=r"row 1 \(id 'a'\): missing field\(s\) \['label'\]"):
        prepare_csv(f, tmp_path / "cache")
    f.write_text('{"id": "a", "path": "a.mp4", "label": "joy", "splits": {"x": {"0": "dev"}}}\n')
    with pytest.raises(ManifestError, match=r"row 1 \(id 'a'\): split x:0 is 'dev'"):
        prepare_csv(f, tmp_path / "cache")


@pytest.mark.parametrize("name, data, message", [
    ("items.csv", "id,path,label\na,a.mp4,caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
    ("items.jsonl", '{"id": "a", "path": "a.mp4", "label": "caf\xe9"}\n'.encode("latin-1"), "not UTF-8 text"),
    ("items.csv", b"id,path,label\na,a.mp4,\"" + b"x" * 200_000 + b"\"\n", "not a readable CSV"),
])
def test_csv_unreadable_file_is_a_manifest_error_naming_it(tmp_path, name, data, message):
    _videos(tmp_path, ["a.mp4"])
    f = tmp_path / name
    f.write_bytes(data)
    with pytest.raises(ManifestError, match=rf"{name}: {message}"):
        prepare_csv(f, tmp_path / "cache", skip_invalid=True)


def test_csv_skip_invalid_drops_and_lists_bad_rows(tmp_path):
    _videos(tmp_path, ["a.mp4", "b.mp4", "c.mp4"])
    f = _csv(tmp_path / "items.csv", """
id,path,label,start,split
a,a.mp4,joy,,train
b,gone.mp4,joy,,test
c,c.mp4,joy,x,test
d,b.mp4,sad,,test
a,c.mp4,sad,,test
e,c.mp4,joy,,tset
""")
    m, skipped = prepare_csv(f, tmp_path / "cache", skip_invalid=True)
    assert [(row, item_id) for row, item_id, _ in skipped] == [(2, "b"), (3, "c"), (5, "a"), (6, "e")]
    assert "file not found" in skipped[0][2] and "start" in skipped[1][2]
    assert "duplicate id" in skipped[2][2] and "'tset'" in skipped[3][2]
    assert [it.id for it in m.items] == ["a", "d"]
    assert [it.id for it in read_manifest(tmp_path / "cache").items] == ["a", "d"]
    assert m.source["skipped_rows"] == 4 and m.source["rows"] == 6
    with pytest.raises(ManifestError, match=r"row 2 \(id 'b'\): file not found.*\(\+3 more invalid rows\)"):
        prepare_csv(f, tmp_path / "cache")
