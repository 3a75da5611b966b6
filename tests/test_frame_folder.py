"""Frame folders are read in the order of their frame numbers, never by plain name, and each image is
turned upright by its EXIF orientation (``emo.decode.frame_folder``); a clip set of frame folders says so
in its key."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageOps

from emo.decode.frame_folder import EXIF_ORIENTATION, frame_files
from emo.decode.sampling import SamplingConfig
from emo.decode.strided import strided_frames
from emo.decode.video import DecodeError, decode_item
from tests import videos

CFG = SamplingConfig(segments=12, image_size=16)


def _folder(root, names):
    root.mkdir()
    for k, name in enumerate(names):  # image k is coloured with frame number k
        Image.new("RGB", (32, 24), videos.colour_of(k)).save(root / name)
    return root


def _colours(item) -> list[int]:
    return [videos.decode_colour(p[2:-2, 2:-2]) for p in item.pixels[:, 0, 0]]


def test_unpadded_frame_numbers_are_read_in_frame_order_not_name_order(tmp_path):
    folder = _folder(tmp_path / "f", [f"{k + 1}.png" for k in range(12)])  # 1.png .. 12.png
    assert sorted(p.name for p in folder.iterdir())[:3] == ["1.png", "10.png", "11.png"]  # what name order gives
    item = decode_item(folder, CFG, "item")
    assert item.frame_index[:, 0].tolist() == list(range(12)) and _colours(item) == list(range(12))


def test_the_trailing_number_orders_the_authors_clip_frame_names(tmp_path):
    names = [f"00007_{k + 1}.jpg" if k < 9 else f"00007_{k + 1:05d}.jpg" for k in range(12)]  # mixed padding
    folder = _folder(tmp_path / "f", names)
    assert [p.name for p in frame_files(folder)] == names
    item = decode_item(folder, CFG, "item")
    assert _colours(item) == list(range(12))


def test_two_frames_with_one_number_are_refused_naming_both(tmp_path):
    folder = _folder(tmp_path / "f", ["a_3.png", "b_3.png", "c_4.png"])
    with pytest.raises(DecodeError, match=r"a_3\.png and b_3\.png both carry frame number 3"):
        decode_item(folder, SamplingConfig(segments=2), "item")


def test_names_without_a_final_number_are_read_in_natural_order(tmp_path):
    folder = _folder(tmp_path / "f", ["frame2a.png", "frame10a.png", "frame1b.png"])
    assert [p.name for p in frame_files(folder)] == ["frame1b.png", "frame2a.png", "frame10a.png"]


def _marked() -> np.ndarray:
    """A 24 x 32 image, black with a red block in its top-left corner and a green one top-right."""
    img = np.zeros((24, 32, 3), np.uint8)
    img[:6, :6] = (255, 0, 0)
    img[:6, -6:] = (0, 255, 0)
    return img


@pytest.mark.parametrize("tag", range(1, 9))
def test_exif_orientation_is_applied_and_recorded_as_the_turn_it_is(tmp_path, tag):
    stored = _marked()
    folder = tmp_path / "f"
    folder.mkdir()
    for k in range(3):
        image = Image.fromarray(stored)
        exif = image.getexif()
        exif[0x0112] = tag
        image.save(folder / f"{k}.png", exif=exif)
    item = decode_item(folder, SamplingConfig(segments=1, image_size=8), "item")
    rotation, mirrored = EXIF_ORIENTATION[tag]
    assert (item.rotation, item.mirrored) == (rotation, mirrored)
    # the recorded turn, done by numpy, is what image viewers (PIL's exif_transpose) show
    turned = np.rot90(stored, k=rotation // 90)
    turned = turned[:, ::-1] if mirrored else turned
    with Image.open(folder / "0.png") as image:
        np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(image).convert("RGB")), turned)
    assert (item.width, item.height) == (turned.shape[1], turned.shape[0])


def test_detectors_see_the_same_frames_in_the_same_order(tmp_path):
    folder = _folder(tmp_path / "f", [f"{k + 1}.png" for k in range(12)])
    seen = {}

    def detect(batch):
        seen.update({k: videos.decode_colour(frame[2:-2, 2:-2]) for k, frame in batch.items()})
        return dict.fromkeys(batch)

    strided_frames(folder, None, None, 3, detect)
    assert seen == {k: k for k in (0, 3, 6, 9)}


def test_a_clip_set_of_frame_folders_is_keyed_as_such(tmp_path):
    from emo.cache.manifest import Item, Manifest, write_manifest
    from emo.extract.modalities.clip import read_clip_inputs

    _folder(tmp_path / "f", [f"{k}.png" for k in range(4)])
    videos.make_video(tmp_path / "v.mp4", 10)
    for name, paths in {"mixed": ["f", "v.mp4"], "videos": ["v.mp4"]}.items():
        (tmp_path / name).mkdir()
        items = [Item(id=f"i{k}", path=str(tmp_path / p), label="x") for k, p in enumerate(paths)]
        write_manifest(Manifest(dataset="t", classes=["x"], items=items, root=str(tmp_path)),
                       tmp_path / name / "manifest.jsonl")
    from emo.decode.frame_folder import FRAME_FOLDER_VERSION
    from emo.extract.modalities.clip import decoder_key

    mixed, plain = (read_clip_inputs(tmp_path / n, None)[2] for n in ("mixed", "videos"))
    mixed, plain = (dataclasses.replace(o, decode_device="cpu") for o in (mixed, plain))
    assert decoder_key(mixed)["frame_folders"] == FRAME_FOLDER_VERSION
    assert "frame_folders" not in decoder_key(plain)  # sets of video files keep the keys they had
