"""The manifest model: round trip, every validation rule naming its row and id, malformed files."""

from __future__ import annotations

import json

import pytest

from emo.cache.manifest import (
    Item,
    Manifest,
    ManifestError,
    parse_split,
    read_manifest,
    split_schemes_of,
    write_manifest,
)


def _manifest(root, items, classes=("anger", "joy"), label_type="single") -> Manifest:
    return Manifest(dataset="toy", classes=list(classes), items=items, root=str(root), label_type=label_type,
                    split_schemes=split_schemes_of(items), source={"adapter": "test"})


def _items(root, n=4, label="joy") -> list[Item]:
    items = []
    for i in range(n):
        (root / f"v{i}.mp4").write_bytes(b"x")
        items.append(Item(id=f"v{i}", path=f"v{i}.mp4", label=label, splits={"s": {"0": "train"}}))
    return items


def test_round_trip_keeps_every_field_and_the_class_order(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "frames").mkdir()
    items = [
        Item(id="a", path="a.mp4", label="joy", start=1.5, end=3.0, text="Ça va — très bien", speaker="Monica",
             subject_boxes=[[0.1, 0.2, 0.5, 0.9]], splits={"s": {"0": "train", "1": "test"}}),
        Item(id="b", path="frames", label="anger", text=["one caption", "another"],
             splits={"s": {"0": "test", "1": "val"}, "t": {"x": "train"}}),
    ]
    m = _manifest(tmp_path, items, classes=("joy", "anger"))  # not sorted: the order is kept
    m.validate()
    path = write_manifest(m, tmp_path / "cache" / "manifest.jsonl")
    assert not path.with_name("manifest.jsonl.tmp").exists()
    back = read_manifest(tmp_path / "cache")  # a directory means its manifest.jsonl
    assert back == m
    assert back.classes == ["joy", "anger"]
    assert back.split_schemes == {"s": ["0", "1"], "t": ["x"]}
    assert back.folds("s") == ["0", "1"]
    assert back.resolve(back.items[0]) == tmp_path / "a.mp4"
    back.validate()


@pytest.mark.parametrize(
    "row, change, label_type, expected",
    [
        (2, {"path": "gone.mp4"}, "single", "file not found"),
        (3, {"id": "v0"}, "single", "duplicate id"),
        (2, {"label": "jyo"}, "single", "unknown class 'jyo'"),
        (4, {"label": ["joy", "angr"]}, "multi", "unknown class(es) ['angr']"),
        (3, {"splits": {"s": {"0": "trian"}}}, "single", "split s:0 is 'trian'"),
        (2, {"start": 4.0, "end": 4.0}, "single", "end (4.0) is not after start (4.0)"),
        (2, {"start": 5.0, "end": 1.0}, "single", "is not after start"),
        (3, {"start": -1.0}, "single", "start must be a non-negative number"),
        (2, {"label": [0.5]}, "continuous", "label has 1 values, expected 2"),
        (2, {"label": [0.5, float("nan")]}, "continuous", "finite numbers"),
        (3, {"label": "joy"}, "multi", "label must be a list of class names"),
        (2, {"splits": {"s": "train"}}, "single", "must map fold"),
    ],
)
def test_each_rule_raises_naming_row_and_id(tmp_path, row, change, label_type, expected):
    label = {"single": "joy", "multi": ["joy"], "continuous": [0.1, 0.2]}[label_type]
    items = _items(tmp_path, label=label)
    for key, value in change.items():
        setattr(items[row - 1], key, value)
    m = _manifest(tmp_path, items, label_type=label_type)
    with pytest.raises(ManifestError) as e:
        m.validate()
    msg = str(e.value)
    assert f"manifest row {row} (id {items[row - 1].id!r})" in msg
    assert expected in msg


def test_missing_files_pass_when_not_checked(tmp_path):
    items = _items(tmp_path)
    items[1].path = "gone.mp4"
    m = _manifest(tmp_path, items)
    assert m.validate(check_files=False) == []
    assert len(m.items) == 4


def test_skip_invalid_drops_and_returns_bad_rows(tmp_path):
    items = _items(tmp_path, n=5)
    items[1].path = "gone.mp4"
    items[3].id = "v0"
    items[4].label = "fear"
    m = _manifest(tmp_path, items)
    skipped = m.validate(skip_invalid=True)
    assert [(r, i) for r, i, _ in skipped] == [(2, "v1"), (4, "v0"), (5, "v4")]
    assert "file not found" in skipped[0][2] and skipped[1][2] == "duplicate id" and "fear" in skipped[2][2]
    assert [it.id for it in m.items] == ["v0", "v2"]


def test_manifest_level_problems(tmp_path):
    with pytest.raises(ManifestError, match="label_type"):
        _manifest(tmp_path, _items(tmp_path), label_type="ordinal").validate()
    with pytest.raises(ManifestError, match="repeats"):
        _manifest(tmp_path, _items(tmp_path), classes=("joy", "joy")).validate()
    with pytest.raises(ManifestError, match="scheme 'nope'"):
        _manifest(tmp_path, _items(tmp_path)).folds("nope")


def _write_lines(path, lines):
    path.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")
    return path


HEADER = {"emo_manifest": 1, "dataset": "toy", "classes": ["joy"], "label_type": "single", "root": ""}


def test_malformed_json_line_names_its_row(tmp_path):
    p = _write_lines(tmp_path / "m.jsonl", [HEADER, {"id": "a", "path": "a.mp4", "label": "joy"}, '{"id": "b", '])
    with pytest.raises(ManifestError, match="row 2: not valid JSON"):
        read_manifest(p)
    p = _write_lines(tmp_path / "m.jsonl", [HEADER, "[1, 2]"])
    with pytest.raises(ManifestError, match="row 1: expected a JSON object"):
        read_manifest(p)


def test_unknown_field_and_missing_keys_are_errors(tmp_path):
    p = _write_lines(tmp_path / "m.jsonl", [HEADER, {"id": "a", "path": "a.mp4", "lable": "joy"}])
    with pytest.raises(ManifestError, match=r"row 1 \(id 'a'\): unknown field\(s\) \['lable'\]"):
        read_manifest(p)
    p = _write_lines(tmp_path / "m.jsonl", [HEADER, {"id": "a", "label": "joy"}])
    with pytest.raises(ManifestError, match="row 1: every item needs 'id' and 'path'"):
        read_manifest(p)


def test_bad_headers_and_files(tmp_path):
    with pytest.raises(ManifestError, match="no manifest"):
        read_manifest(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ManifestError, match="is empty"):
        read_manifest(tmp_path / "empty.jsonl")
    p = _write_lines(tmp_path / "m.jsonl", [{"id": "a", "path": "a.mp4"}])
    with pytest.raises(ManifestError, match="not an emo manifest header"):
        read_manifest(p)
    p = _write_lines(tmp_path / "m.jsonl", [{"emo_manifest": 1, "classes": []}])
    with pytest.raises(ManifestError, match="no 'dataset'"):
        read_manifest(p)


def test_parse_split_and_split_schemes_of():
    assert parse_split("folder:0") == ("folder", "0")
    assert parse_split("ve8:all") == ("ve8", "all")
    for bad in ("folder", "folder:", ":0"):
        with pytest.raises(ManifestError, match="SCHEME:FOLD"):
            parse_split(bad)
    items = [Item(id="a", path="a", splits={"x": {"1": "train"}}),
             Item(id="b", path="b", splits={"x": {"0": "test", "1": "test"}, "y": {"a": "val"}})]
    assert split_schemes_of(items) == {"x": ["1", "0"], "y": ["a"]}


def test_ids_with_control_characters_and_oversized_fields_are_refused_naming_the_row(tmp_path):
    from emo.cache.manifest import MAX_TEXT_CHARS, Item, Manifest, ManifestError

    (tmp_path / "a.mp4").write_bytes(b"x")
    ok = Item(id="fine", path="a.mp4", label="c")
    cases = {
        "holds a control character": Item(id="bad\x00id", path="a.mp4", label="c"),
        r"xxx…'\): the id is 5,000 characters long \(at most 1,024\)": Item(id="x" * 5000, path="a.mp4", label="c"),
        "its text is": Item(id="big", path="a.mp4", label="c", text="w " * (MAX_TEXT_CHARS // 2 + 10)),
    }
    for reason, item in cases.items():
        m = Manifest(dataset="d", classes=["c"], items=[ok, item], root=str(tmp_path))
        with pytest.raises(ManifestError, match=rf"manifest row 2 .*{reason}"):
            m.validate()
        m = Manifest(dataset="d", classes=["c"], items=[ok, item], root=str(tmp_path))
        assert [r for r, _, _ in m.validate(skip_invalid=True)] == [2] and [i.id for i in m.items] == ["fine"]
