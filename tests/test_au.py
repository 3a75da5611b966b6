"""OpenFace CSV import into an ``au`` feature set: parsing both header styles, several faces, bad rows,
alignment to a real clip feature set's sampled frames, validity mask, CSV matching, resume, claims,
the key following the CSVs, and the loader joining clip + au on id."""

from __future__ import annotations

import shutil
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from emo.cache.featureset import FeatureSet, FeatureSetError, list_feature_sets, open_feature_set
from emo.cache.loader import load_features
from emo.cache.manifest import Item, Manifest, write_manifest
from emo.cache.shard import read_shard
from emo.cache.verify import verify_feature_set
from emo.decode.sampling import SamplingConfig
from emo.encoders.clip import ClipSpec
from emo.encoders.openface import AU_INTENSITY, AU_PRESENCE, OpenFaceFormatError, read_openface_csv
from emo.encoders.pyfeat import detect_au
from emo.extract.modalities.au import align_au, import_openface
from emo.extract.modalities.clip import ExtractOptions, extract_clip
from tests import videos

FPS = 25
M, N = 4, 2
EXTRA = ("gaze_angle_x", "pose_Rx", "x_0", "y_0")  # a few of OpenFace's other columns


def r_of(frame: int) -> list[float]:
    """Intensities written for decoded frame ``frame`` (OpenFace frame ``frame + 1``): frame/10 + k/100."""
    return [round(frame / 10 + k / 100, 2) for k in range(len(AU_INTENSITY))]


def c_of(frame: int) -> list[int]:
    return [(frame + k) % 2 for k in range(len(AU_PRESENCE))]


def write_openface(path: Path, faces: dict[int, list[dict]], style: str = "new", garbage=(), omit=()) -> Path:
    """An OpenFace-like CSV. ``faces[frame]`` = rows of that decoded frame (keys face, conf, success, r, c).

    ``style="old"``: OpenFace 2.0 (``", "`` separators, no face_id); ``"new"``: plain commas, face_id.
    ``garbage``: ``(after_frame, raw line)`` inserted after that frame's rows. ``omit``: columns left out.
    """
    base = ["frame", "timestamp", "confidence", "success"] if style == "old" else ["frame", "face_id", "timestamp", "confidence", "success"]
    header = [h for h in [*base, *EXTRA, *AU_INTENSITY, *AU_PRESENCE] if h not in omit]
    sep = ", " if style == "old" else ","
    lines = [sep.join(header)]
    for f in sorted(faces):
        for row in faces[f]:
            v = {"frame": f + 1, "face_id": row.get("face", 0), "timestamp": f"{f / FPS:.3f}"}
            v |= {"confidence": f"{row['conf']:.2f}", "success": row["success"], "gaze_angle_x": "0.012"}
            v |= {"pose_Rx": "-0.1", "x_0": "301.5", "y_0": "200.2"}
            v |= {a: f"{x:.2f}" for a, x in zip(AU_INTENSITY, row["r"], strict=True)}
            v |= {a: f"{x:.1f}" for a, x in zip(AU_PRESENCE, row["c"], strict=True)}
            lines.append(sep.join(str(v[h]) for h in header))
        lines += [g for after, g in garbage if after == f]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def one_face(frames: int, conf: float = 0.98, **special) -> dict[int, list[dict]]:
    """Face 0 on every frame; ``special`` maps a kind to frames: success0, lowconf, drop."""
    out = {}
    for f in range(frames):
        if f in special.get("drop", ()):
            continue
        row = {"face": 0, "conf": conf, "success": 1, "r": r_of(f), "c": c_of(f)}
        if f in special.get("success0", ()):
            row |= {"success": 0, "r": [0.0] * 17, "c": [0] * 18}
        if f in special.get("lowconf", ()):
            row["conf"] = 0.5
        if f in special.get("atthreshold", ()):
            row["conf"] = 0.7
        out[f] = [row]
    return out


def expected(faces: dict[int, list[dict]], frame: int, threshold: float = 0.7):
    """Re-derivation of the rule for one sampled frame: (valid, r, c, timestamp, confidence)."""
    rows = faces.get(frame)
    if not rows:
        return False, [0.0] * 17, [0] * 18, -1.0, 0.0
    best = sorted(rows, key=lambda r: (-r["success"], -round(r["conf"], 2), r["face"]))[0]
    ok = best["success"] == 1 and round(best["conf"], 2) >= threshold
    return ok, best["r"] if ok else [0.0] * 17, best["c"] if ok else [0] * 18, round(frame / FPS, 3), round(best["conf"], 2)


A_SPECIAL = dict(success0={5}, lowconf={10}, drop={15}, atthreshold={30})
A_GARBAGE = [  # rows of frames 20 and 25 are replaced by garbage: NaN in AU01_r, a truncated line
    (19, ", ".join(["21", "0.800", "0.98", "1", "0", "0", "0", "0", "nan", *["0.50"] * 16, *["1.0"] * 18])),
    (24, "26, 1.000, 0.98, 1, 0.1"),
]


def b_faces() -> dict[int, list[dict]]:
    """Two faces: face 1 more confident before frame 20; from 20 on its track fails (success 0, conf .99)."""
    out = {}
    for f in range(40):
        face0 = {"face": 0, "conf": 0.9, "success": 1, "r": r_of(f), "c": c_of(f)}
        face1 = {"face": 1, "conf": 0.95, "success": 1, "r": [4.5] * 17, "c": [1] * 18}
        if f >= 20:
            face1 |= {"conf": 0.99, "success": 0}
        out[f] = [face1, face0]  # the file order must not matter
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A dataset with a real (tiny, random-weights) clip feature set, and an OpenFace output folder."""
    root = tmp_path_factory.mktemp("au")
    data, of = root / "data", root / "openface"
    for name, n in [("a.mp4", 40), ("b.mp4", 40), ("c.mp4", 20), ("d.mp4", 20), ("x/v.mp4", 20), ("y/v.mp4", 20), ("z/w.mp4", 20)]:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        videos.make_video(data / name, n, fps=FPS)
    items = [Item(id=p, path=p, label="x") for p in ["a.mp4", "b.mp4", "c.mp4", "d.mp4", "x/v.mp4", "y/v.mp4", "z/w.mp4"]]
    items.append(Item(id="a-part", path="a.mp4", label="x", start=0.4, end=1.2))  # an utterance cut from a.mp4
    write_manifest(Manifest(dataset="au", classes=["x"], items=items, root=str(data)), data / "manifest.jsonl")
    clip = extract_clip(
        data,
        ClipSpec(model="emo-tiny-ViT", weights="random"),
        SamplingConfig(segments=M, frames_per_segment=N),
        ExtractOptions(workers=0, progress=False, shard_size=4),
        device="cpu",
    )
    assert clip.ok == len(items)
    faces = {"a": one_face(40, **A_SPECIAL), "b": b_faces(), "d": one_face(20), "v": one_face(20), "w": one_face(20)}
    for f in (20, 25):
        del faces["a"][f]  # their rows are garbage in the file
    write_openface(of / "a.csv", one_face(40, **A_SPECIAL) | {20: [], 25: []}, style="old", garbage=A_GARBAGE)
    write_openface(of / "b.csv", faces["b"], style="new")
    write_openface(of / "d.csv", faces["d"], omit=("AU28_c",))
    write_openface(of / "v.csv", faces["v"])  # x/v.mp4 and y/v.mp4 both have stem v: ambiguous
    write_openface(of / "z" / "w.csv", faces["w"])  # mirrored layout
    summary = import_openface(data, of, shard_size=3, progress=False)
    return {"data": data, "of": of, "clip": clip, "au": summary, "faces": faces}


def _arrays(fs: FeatureSet) -> dict[str, dict[str, np.ndarray]]:
    """id -> {name: array} over the finished shards of a feature set."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for k in fs.done_indices():
        ids, arrays = read_shard(fs.shard_path(k))
        for j, i in enumerate(ids):
            out[i] = {name: a[j] for name, a in arrays.items()}
    return out


def test_values_at_sampled_frames_and_validity(cache):
    au = open_feature_set(cache["au"].path)
    clip = _arrays(open_feature_set(cache["clip"].path))
    got = _arrays(au)
    assert clip["a.mp4"]["clip/frame_index"].tolist() == [[0, 5], [10, 15], [20, 25], [30, 35]]
    checked = 0
    for item, csv in [("a.mp4", "a"), ("a-part", "a"), ("b.mp4", "b"), ("z/w.mp4", "w")]:
        frames, times = clip[item]["clip/frame_index"], clip[item]["clip/frame_time"]
        np.testing.assert_allclose(times, frames / FPS)  # CFR: decoded time = OpenFace's frame / fps
        g = got[item]
        assert g["au/au_r"].shape == (M, N, 17) and g["au/au_r"].dtype == np.float16
        assert g["au/au_c"].shape == (M, N, 18) and g["au/au_c"].dtype == np.uint8
        assert g["au/valid"].shape == (M, N) and g["au/valid"].dtype == bool
        for m in range(M):
            for n in range(N):
                ok, r, c, ts, conf = expected(cache["faces"][csv], int(frames[m, n]))
                assert g["au/valid"][m, n] == ok, (item, m, n)
                np.testing.assert_array_equal(g["au/au_r"][m, n], np.array(r, dtype=np.float16))
                np.testing.assert_array_equal(g["au/au_c"][m, n], np.array(c, dtype=np.uint8))
                assert g["au/timestamp"][m, n] == pytest.approx(ts, abs=1e-9)
                assert g["au/confidence"][m, n] == pytest.approx(conf, abs=1e-6)
                checked += 1
    assert checked == 4 * M * N
    a = got["a.mp4"]
    # frames 0 5 | 10 15 | 20 25 | 30 35: ok, success 0 | low confidence, no row | garbage, garbage | at threshold, ok
    assert a["au/valid"].tolist() == [[True, False], [False, False], [False, False], [True, True]]
    assert (a["au/au_r"][~a["au/valid"]] == 0).all() and (a["au/au_c"][~a["au/valid"]] == 0).all()
    assert a["au/timestamp"][1, 1] == -1.0 and a["au/timestamp"][0, 1] == pytest.approx(0.2)  # row found, not valid
    b = got["b.mp4"]
    assert (b["au/au_r"][:2] == np.float16(4.5)).all()  # frames < 20: the more confident face 1
    np.testing.assert_array_equal(b["au/au_r"][2, 0], np.array(r_of(20), np.float16))  # face 1 failed: face 0


def test_bad_rows_recorded_in_done_record(cache):
    au = open_feature_set(cache["au"].path)
    reports = {i: r for k in au.done_indices() for i, r in au.done_record(k)["openface"].items()}
    assert reports["a.mp4"]["csv"] == "a.csv" and reports["a.mp4"]["bad_rows"] == 2
    assert reports["a.mp4"]["first_bad"].startswith("line 21:")  # header is line 1, frames 0..19 lines 2..20 (15 dropped)
    assert reports["a.mp4"]["valid"] == 3
    assert reports["b.mp4"]["faces"] == 2 and reports["b.mp4"]["bad_rows"] == 0
    assert reports["z/w.mp4"]["csv"] == "z/w.csv"


def test_failures_missing_ambiguous_and_missing_column(cache):
    au = open_feature_set(cache["au"].path)
    status = au.item_status()
    assert {i for i, s in status.items() if s == "ok"} == {"a.mp4", "a-part", "b.mp4", "z/w.mp4"}
    fails = {f["id"]: f for f in au.failures()}
    assert set(fails) == {"c.mp4", "d.mp4", "x/v.mp4", "y/v.mp4"}
    assert all(f["stage"] == "au" for f in fails.values())
    assert "no OpenFace CSV" in fails["c.mp4"]["error"] and "c.csv" in fails["c.mp4"]["error"]
    assert "ambiguous" in fails["x/v.mp4"]["error"] and str(Path("x") / "v.csv") in fails["x/v.mp4"]["error"]
    assert "missing column AU28_c" in fails["d.mp4"]["error"] and "d.csv" in fails["d.mp4"]["error"]
    s = cache["au"]
    assert (s.total, s.ok, s.failed, s.done_here, s.frames_here) == (8, 4, 4, 4, 4 * M * N)
    assert verify_feature_set(au).ok


def test_config_provenance(cache):
    au = open_feature_set(cache["au"].path)
    clip = open_feature_set(cache["clip"].path)
    cfg = au.config
    assert au.name.startswith("au-openface2x-")
    assert cfg["tool"] == "openface-2.x" and cfg["au_intensity"] == list(AU_INTENSITY) and len(AU_INTENSITY) == 17
    assert cfg["au_presence"] == list(AU_PRESENCE) and len(AU_PRESENCE) == 18 and "AU28_c" in AU_PRESENCE
    assert cfg["align_to"] == {"modality": "clip", "key": clip.key, "segments": M, "frames_per_segment": N}
    assert cfg["confidence_threshold"] == 0.7 and cfg["match"]["tolerance_s"] is None
    assert cfg["csv"]["files"] == 4  # a, b, d, z/w (v.csv matches no item unambiguously)
    assert au.meta["notes"]["openface_dir"] == str(cache["of"].resolve())


def test_resume_writes_nothing(cache):
    au = open_feature_set(cache["au"].path)
    before = {p.name: p.stat().st_mtime_ns for p in (au.path / "shards").iterdir() if not p.name.endswith(".claim")}
    n_fail = len(au.failures())
    again = import_openface(cache["data"], cache["of"], shard_size=3, progress=False)
    assert again.feature_set == au.name and again.done_here == 0 and (again.ok, again.failed) == (4, 4)
    after = {p.name: p.stat().st_mtime_ns for p in (au.path / "shards").iterdir() if not p.name.endswith(".claim")}
    assert after == before and len(au.failures()) == n_fail


def test_key_follows_csv_contents_not_their_folder(cache, tmp_path):
    same = tmp_path / "same"
    shutil.copytree(cache["of"], same)
    moved = import_openface(cache["data"], same, shard_size=3, progress=False)
    assert moved.feature_set == cache["au"].feature_set and moved.done_here == 0  # the folder is a note
    lines = (same / "a.csv").read_text().splitlines(keepends=True)
    assert ", 0.00, 0.01," in lines[1]  # frame 0: AU01_r, AU02_r
    lines[1] = lines[1].replace(", 0.00, 0.01,", ", 0.05, 0.01,")
    (same / "a.csv").write_text("".join(lines))
    changed = import_openface(cache["data"], same, shard_size=3, progress=False)
    assert changed.feature_set != cache["au"].feature_set and changed.done_here == 4
    a = _arrays(open_feature_set(changed.path))["a.mp4"]["au/au_r"]
    assert a[0, 0, 0] == np.float16(0.05)  # frame 0, AU01 edited
    other = import_openface(cache["data"], cache["of"], confidence=0.5, progress=False)
    assert other.feature_set not in (cache["au"].feature_set, changed.feature_set)


def test_loader_joins_clip_and_au_on_id(cache):
    fd = load_features(cache["data"], [cache["clip"].feature_set, cache["au"].feature_set])
    assert set(fd.ids) == {"a.mp4", "a-part", "b.mp4", "z/w.mp4"}
    assert fd.arrays["clip/cls"].shape[:3] == (4, M, N)
    assert tuple(fd.arrays["au/au_r"].shape) == (4, M, N, 17) and tuple(fd.arrays["au/valid"].shape) == (4, M, N)
    got = _arrays(open_feature_set(cache["au"].path))
    for row, i in enumerate(fd.ids):
        np.testing.assert_array_equal(fd.arrays["au/au_r"][row].numpy(), got[i]["au/au_r"])


def test_align_to_several_clip_sets(cache, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(cache["data"], data)
    other = FeatureSet.create(data, {"modality": "clip", "model": "other", "sampling": {"segments": 2, "frames_per_segment": 1, "views": 1}})
    with pytest.raises(FeatureSetError, match="2 clip feature sets") as err:
        import_openface(data, cache["of"], progress=False)
    assert other.name in str(err.value) and cache["clip"].feature_set in str(err.value)
    s = import_openface(data, cache["of"], align_to=cache["clip"].feature_set, progress=False)
    assert s.ok == 4 and s.feature_set == cache["au"].feature_set
    with pytest.raises(FeatureSetError, match="not clip"):
        import_openface(data, cache["of"], align_to=s.feature_set, progress=False)
    empty = import_openface(data, cache["of"], align_to=other.name, progress=False)  # nothing extracted there
    assert empty.ok == 0 and len(empty.skipped_rows) == 8 and "not ok (yet)" in empty.skipped_rows[0][2]


def test_a_claimed_shard_is_left_to_its_holder(cache, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(cache["data"], data)
    first = import_openface(data, cache["of"], confidence=0.9, shard_size=2, progress=False)  # creates the set
    fs = open_feature_set(first.path)
    for p in (fs.path / "shards").glob("shard-00000.*"):  # pretend shard 0 is unfinished, held by another writer
        if not p.name.endswith(".claim"):
            p.unlink()
    claim = fs.try_claim(0)
    assert claim is not None
    result = {}
    worker = threading.Thread(target=lambda: result.update(s=import_openface(data, cache["of"], confidence=0.9, shard_size=2, progress=False)))
    worker.start()
    time.sleep(0.5)
    assert not fs.is_done(0) and worker.is_alive()  # waits, never writes a shard another process holds
    claim.release()
    worker.join(timeout=10)
    assert not worker.is_alive() and fs.is_done(0) and result["s"].done_here == 2


def test_parse_both_styles_the_same(tmp_path):
    faces = one_face(6)
    old = read_openface_csv(write_openface(tmp_path / "old.csv", faces, style="old"))
    new = read_openface_csv(write_openface(tmp_path / "new.csv", faces, style="new"))
    for name in ("time", "success", "confidence", "intensity", "presence"):
        np.testing.assert_array_equal(getattr(old, name), getattr(new, name))
    np.testing.assert_allclose(new.time, np.arange(6) / FPS)
    np.testing.assert_array_equal(new.intensity, np.array([r_of(f) for f in range(6)], np.float32))


def test_missing_columns_are_named(tmp_path):
    with pytest.raises(OpenFaceFormatError, match=r"missing column AU28_c"):
        read_openface_csv(write_openface(tmp_path / "a.csv", one_face(3), omit=("AU28_c",)))
    with pytest.raises(OpenFaceFormatError, match=r"missing columns confidence, AU45_r"):
        read_openface_csv(write_openface(tmp_path / "b.csv", one_face(3), omit=("confidence", "AU45_r")))
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(OpenFaceFormatError, match="empty file"):
        read_openface_csv(tmp_path / "e.csv")


def test_garbage_rows_counted_not_fatal(tmp_path):
    path = write_openface(tmp_path / "g.csv", one_face(4))
    lines = path.read_text().splitlines()
    good = lines[1].split(",")
    bad = [",".join(good[:5]), ",".join([*good[:2], "abc", *good[3:]]), ",".join([*good[:4], "2", *good[5:]])]
    bad.append(",".join([*good[:9], "7.5", *good[10:]]))  # intensity above 5
    path.write_text("\n".join([*lines, *bad, ""]))
    t = read_openface_csv(path)
    assert (t.rows, t.bad_rows, len(t.time)) == (8, 4, 4) and t.first_bad.startswith("line 6: 5 fields")
    path.write_text("\n".join([lines[0], *bad]))
    with pytest.raises(OpenFaceFormatError, match="no usable row"):
        read_openface_csv(path)


def test_image_sequence_output_is_refused(tmp_path):
    path = write_openface(tmp_path / "seq.csv", one_face(3))
    text = path.read_text().replace("0.040", "0.000").replace("0.080", "0.000")
    path.write_text(text)
    with pytest.raises(OpenFaceFormatError, match="image sequence"):
        read_openface_csv(path)


def test_nearest_row_tolerance_and_ties(tmp_path):
    faces = one_face(6, drop={3})  # rows at 0, .04, .08, .16, .20 s
    t = read_openface_csv(write_openface(tmp_path / "t.csv", faces))
    q = np.array([[0.12, 0.059], [0.061, 0.1]])  # no row within half a frame; nearer .04; nearer .08; nearer .08
    out = align_au(t, q)
    assert out["valid"].tolist() == [[False, True], [True, True]]
    assert out["timestamp"].tolist() == [[-1.0, 0.04], [0.08, 0.08]]
    wide = align_au(t, q, tolerance=0.05)  # 0.12 is 0.04 from both neighbours: the earlier wins
    assert wide["valid"][0, 0] and wide["timestamp"][0, 0] == 0.08
    assert align_au(t, q, confidence=0.99)["valid"].sum() == 0
    assert (align_au(t, q, confidence=0.99)["au_r"] == 0).all()


def test_py_feat_missing_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "feat", None)  # as if py-feat were not installed
    with pytest.raises(ImportError, match=r"py-feat is not installed: pip install py-feat"):
        detect_au("video.mp4")


def test_cli_extract_au_reports_and_exits_non_zero_on_failures(cache):
    from typer.testing import CliRunner

    from emo.cli import app

    res = CliRunner().invoke(app, ["extract", "au", str(cache["data"]), "--openface-dir", str(cache["of"]),
                                   "--shard-size", "3", "--no-progress"])
    assert res.exit_code == 1 and "4 ok, 4 failed of 8 items" in res.output and "4 item(s) failed" in res.output
    bad = CliRunner().invoke(app, ["extract", "au", str(cache["data"]), "--openface-dir", str(cache["of"]),
                                   "--confidence", "2"])
    assert bad.exit_code == 2 and "--confidence" in bad.output


# -- py-feat backend (a fake ``feat`` module stands in: py-feat's weights cannot be fetched here) ----
FAKE_AUS = ["AU01", "AU12", "AU43"]  # what the fake feat.pretrained reports, in its order


class _FakeColumn:
    def __init__(self, values):
        self.values = values

    def to_numpy(self):
        return np.asarray(self.values)


class _FakeFex:
    """Only what ``import_pyfeat`` may use: ``.columns`` and ``fex[name].to_numpy()``."""

    def __init__(self, data: dict[str, list]):
        self.data = data
        self.columns = list(data)

    def __getitem__(self, name):
        return _FakeColumn(self.data[name])


def fake_rows(frame: int) -> list[tuple[float, list[float]]]:
    """(FaceScore, AUs) of the faces the fake reports at ``frame``.

    Face A: score 0.9, AU_k = frame/100 + k/1000. Frames ≡ 5 (mod 10): a second face B first in the
    table, score 0.95 on frames < 20 (B kept), 0.6 from 20 on (A kept). Frame 10: only a weak face (0.3).
    Frame 30: py-feat's no-face row (score NaN, AUs NaN).
    """
    a = (0.9, [frame / 100 + k / 1000 for k in range(len(FAKE_AUS))])
    if frame == 10:
        return [(0.3, a[1])]
    if frame == 30:
        return [(float("nan"), [float("nan")] * len(FAKE_AUS))]
    if frame % 10 == 5:
        return [(0.95 if frame < 20 else 0.6, [0.5] * len(FAKE_AUS)), a]
    return [a]


def expected_pyfeat(frame: int, threshold: float = 0.5):
    """(valid, AUs, face_score) of the kept face at ``frame``."""
    rows = [r for r in fake_rows(frame) if not np.isnan(r[0])]
    if not rows:
        return False, [0.0] * len(FAKE_AUS), 0.0
    score, aus = max(rows, key=lambda r: r[0])
    ok = score >= threshold
    return ok, aus if ok else [0.0] * len(FAKE_AUS), score


def make_fake_feat(calls: dict, fail: str = "c.mp4", detector_attr: str = "Detector"):
    fake = types.ModuleType("feat")
    fake.__version__ = "2.1.5-fake"
    fake.pretrained = types.SimpleNamespace(AU_LANDMARK_MAP={"Feat": list(FAKE_AUS)})

    class FakeDetector:
        def __init__(self, **kw):
            calls.setdefault("init", []).append(kw)

        def detect(self, inputs, data_type="image", skip_frames=None, face_detection_threshold=0.5, progress_bar=True, **kw):
            assert data_type == "video" and isinstance(inputs, str)
            calls.setdefault("detect", []).append((Path(inputs).name, skip_frames, face_detection_threshold))
            if Path(inputs).name == fail:
                raise RuntimeError("cannot decode")
            data: dict[str, list] = {"frame": [], "FaceRectX": [], "FaceScore": []}
            data |= {a: [] for a in reversed(FAKE_AUS)}  # table column order differs from AU_LANDMARK_MAP
            for f in range(0, 40, skip_frames or 1):
                for score, aus in fake_rows(f):
                    data["frame"].append(f)
                    data["FaceRectX"].append(1.0)
                    data["FaceScore"].append(score)
                    for a, v in zip(FAKE_AUS, aus, strict=True):
                        data[a].append(v)
            return _FakeFex(data)

    setattr(fake, detector_attr, FakeDetector)
    return fake


@pytest.fixture(scope="module")
def pyfeat_run(cache, tmp_path_factory):
    from emo.extract.modalities.au_pyfeat import import_pyfeat

    data = tmp_path_factory.mktemp("pyfeat") / "data"
    shutil.copytree(cache["data"], data)
    calls: dict = {}
    mp = pytest.MonkeyPatch()
    mp.setitem(sys.modules, "feat", make_fake_feat(calls))
    try:
        summary = import_pyfeat(data, detector_kwargs={"au_model": "svm", "device": "cpu"}, shard_size=3, progress=False)
    finally:
        mp.undo()
    return {"data": data, "summary": summary, "calls": calls}


def test_pyfeat_values_validity_and_face_choice(cache, pyfeat_run):
    got = _arrays(open_feature_set(pyfeat_run["summary"].path))
    clip = _arrays(open_feature_set(cache["clip"].path))
    assert set(got) == {"a.mp4", "a-part", "b.mp4", "d.mp4", "x/v.mp4", "y/v.mp4", "z/w.mp4"}
    for i, g in got.items():
        assert g["pyfeat/aus"].shape == (M, N, len(FAKE_AUS)) and g["pyfeat/aus"].dtype == np.float16
        assert g["pyfeat/valid"].shape == (M, N) and g["pyfeat/valid"].dtype == bool
        assert g["pyfeat/face_score"].dtype == np.float32
        frames = clip[i]["clip/frame_index"]
        for m in range(M):
            for n in range(N):
                ok, aus, score = expected_pyfeat(int(frames[m, n]))
                assert g["pyfeat/valid"][m, n] == ok, (i, m, n)
                np.testing.assert_array_equal(g["pyfeat/aus"][m, n], np.array(aus, dtype=np.float16))
                assert g["pyfeat/face_score"][m, n] == np.float32(score)
    a = got["a.mp4"]  # frames 0 5 | 10 15 | 20 25 | 30 35
    assert a["pyfeat/valid"].tolist() == [[True, True], [False, True], [True, True], [False, True]]
    assert (a["pyfeat/aus"][0, 1] == np.float16(0.5)).all() and a["pyfeat/face_score"][0, 1] == np.float32(0.95)  # B
    np.testing.assert_array_equal(a["pyfeat/aus"][2, 1], np.array([0.25, 0.251, 0.252], np.float16))  # A beats B
    assert a["pyfeat/face_score"][1, 0] == np.float32(0.3) and (a["pyfeat/aus"][1, 0] == 0).all()  # weak face
    assert a["pyfeat/face_score"][3, 0] == 0 and (a["pyfeat/aus"][3, 0] == 0).all()  # no face at all


def test_pyfeat_failure_detector_once_and_skip(pyfeat_run):
    s, calls = pyfeat_run["summary"], pyfeat_run["calls"]
    fs = open_feature_set(s.path)
    fails = {f["id"]: f for f in fs.failures()}
    assert set(fails) == {"c.mp4"} and fails["c.mp4"]["stage"] == "au"
    assert "py-feat failed on c.mp4" in fails["c.mp4"]["error"] and "cannot decode" in fails["c.mp4"]["error"]
    assert (s.total, s.ok, s.failed, s.done_here) == (8, 7, 1, 7)
    assert calls["init"] == [{"au_model": "svm", "device": "cpu"}]  # one detector for all shards
    # 40 frames: sampled indices 0, 5, ..., 35 -> only every 5th frame decoded (a-part may need others)
    assert ("a.mp4", 5, 0.5) in calls["detect"] and ("b.mp4", 5, 0.5) in calls["detect"]
    assert all(thr == 0.5 for *_, thr in calls["detect"]) and len(calls["detect"]) <= 8
    assert verify_feature_set(fs).ok


def test_pyfeat_config_is_its_own_set(cache, pyfeat_run):
    fs = open_feature_set(pyfeat_run["summary"].path)
    clip = open_feature_set(cache["clip"].path)
    cfg = fs.config
    assert fs.name.startswith("pyfeat-") and fs.name != cache["au"].feature_set
    assert cfg["tool"] == "py-feat" and cfg["version"] == "2.1.5-fake" and cfg["au_names"] == FAKE_AUS
    assert cfg["detector"]["au_model"] == "svm" and cfg["detector"]["face_model"] == "retinaface"
    assert "device" not in cfg["detector"] and cfg["detector_class"] == "FakeDetector"
    assert cfg["face_threshold"] == 0.5 and cfg["align_to"]["key"] == clip.key


def test_pyfeat_resume_writes_nothing(pyfeat_run, monkeypatch):
    from emo.extract.modalities.au_pyfeat import import_pyfeat

    fs = open_feature_set(pyfeat_run["summary"].path)
    before = {p.name: p.stat().st_mtime_ns for p in (fs.path / "shards").iterdir() if not p.name.endswith(".claim")}
    calls: dict = {}
    monkeypatch.setitem(sys.modules, "feat", make_fake_feat(calls))
    again = import_pyfeat(pyfeat_run["data"], detector_kwargs={"au_model": "svm", "device": "cuda"}, shard_size=3, progress=False)
    assert again.feature_set == fs.name and again.done_here == 0 and (again.ok, again.failed) == (7, 1)
    assert calls == {}  # nothing to do: no detector built (device is not part of the key)
    after = {p.name: p.stat().st_mtime_ns for p in (fs.path / "shards").iterdir() if not p.name.endswith(".claim")}
    assert after == before and len(fs.failures()) == 1


def test_pyfeat_missing_creates_nothing(pyfeat_run, monkeypatch):
    from emo.cache.featureset import list_feature_sets
    from emo.extract.modalities.au_pyfeat import import_pyfeat

    before = sorted(fs.name for fs in list_feature_sets(pyfeat_run["data"]))
    monkeypatch.setitem(sys.modules, "feat", None)
    with pytest.raises(ImportError, match=r"py-feat is not installed: pip install py-feat"):
        import_pyfeat(pyfeat_run["data"], face_threshold=0.9, progress=False)  # a new key, had it got that far
    assert sorted(fs.name for fs in list_feature_sets(pyfeat_run["data"])) == before


def test_pyfeat_detectorv1_and_missing_columns(tmp_path):
    from emo.encoders.pyfeat import detect_au
    from emo.extract.modalities.au_pyfeat import align_pyfeat

    calls: dict = {}
    fake = make_fake_feat(calls, detector_attr="Detectorv1")  # py-feat 2.1.5 exports Detectorv1, no Detector
    sys.modules["feat"], saved = fake, sys.modules.get("feat")
    try:
        fex = detect_au(tmp_path / "v.mp4", face_model="img2pose")
    finally:
        if saved is None:
            del sys.modules["feat"]
        else:
            sys.modules["feat"] = saved
    assert calls["init"] == [{"face_model": "img2pose"}] and calls["detect"][0][0] == "v.mp4"
    out = align_pyfeat(fex, np.array([[0, 5], [10, 39]]), tuple(FAKE_AUS))
    assert out["valid"].tolist() == [[True, True], [False, True]]
    with pytest.raises(OpenFaceFormatError, match="lacks columns FaceScore, AU99"):
        align_pyfeat(_FakeFex({"frame": [0], "AU01": [0.1]}), np.zeros((1, 1), int), ("AU01", "AU99"))


def test_cli_au_backends_and_their_required_options(cache, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from emo.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["extract", "au", str(cache["data"])])
    assert res.exit_code == 2 and "--openface-dir" in res.output
    res = runner.invoke(app, ["extract", "au", str(cache["data"]), "--backend", "dlib"])
    assert res.exit_code == 2 and "openface or py-feat" in res.output
    monkeypatch.setitem(sys.modules, "feat", None)  # py-feat absent: says what to install, writes nothing
    res = runner.invoke(app, ["extract", "au", str(cache["data"]), "--backend", "py-feat"])
    assert res.exit_code == 2 and "pip install py-feat" in res.output


def test_a_damaged_clip_shard_stops_the_au_import_naming_it(cache, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(cache["data"], data)
    (clip,) = [fs for fs in list_feature_sets(data) if fs.meta.get("modality") == "clip"]
    shard = clip.shard_path(clip.done_indices()[0])
    shard.write_bytes(shard.read_bytes()[:-100])  # its frame times can no longer be trusted
    with pytest.raises(FeatureSetError, match=rf"{shard.name}: .*re-run `emo extract clip`"):
        import_openface(data, cache["of"], align_to=clip.name, progress=False)


def test_pyfeat_is_not_run_on_a_video_its_display_matrix_turns(tmp_path, monkeypatch):
    """emo's clip frames are upright; py-feat decodes with its own reader, which may not turn them: such an
    item fails with the reason, and py-feat never sees it; an upright video beside it is imported."""
    from emo.extract.modalities.au_pyfeat import import_pyfeat

    data = tmp_path / "data"
    data.mkdir()
    videos.make_video(data / "up.mp4", 40, fps=FPS)
    videos.make_video(data / "phone.mp4", 40, fps=FPS, rotation=90)
    items = [Item(id=p, path=p, label="x") for p in ("up.mp4", "phone.mp4")]
    write_manifest(Manifest(dataset="au", classes=["x"], items=items, root=str(data)), data / "manifest.jsonl")
    extract_clip(data, ClipSpec(model="emo-tiny-ViT", weights="random"), SamplingConfig(segments=M, frames_per_segment=N),
                 ExtractOptions(workers=0, progress=False), device="cpu")
    calls: dict = {}
    monkeypatch.setitem(sys.modules, "feat", make_fake_feat(calls))
    summary = import_pyfeat(data, progress=False)
    assert (summary.ok, summary.failed) == (1, 1)
    assert [name for name, *_ in calls["detect"]] == ["up.mp4"]
    (fail,) = open_feature_set(summary.path).failures()
    assert fail["id"] == "phone.mp4" and "display matrix turns its frames (90°)" in fail["error"]
