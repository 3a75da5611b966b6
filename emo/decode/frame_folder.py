"""Frame folders: a directory of images that stands for a video (DFEW's, FERV39k's and MAFW's face-crop
releases), read in the order of the frame numbers in their names, each image turned upright.

**Order.** Where every name ends in a number (``00001_00012.jpg``, ``12.png``), the images are ordered
by that number, so unpadded names (``1.jpg``, ``2.jpg``, ``10.jpg``) are in frame order too, where plain
name order would put ``10`` before ``2``. Two images with the same number (``a_3.jpg``, ``b_3.jpg``)
leave the order unknown and the folder is refused. Folders whose names do not all end in a number
are read in natural order (runs of digits compared as numbers).

**Orientation.** A JPEG's EXIF orientation tag is applied (``PIL.ImageOps.exif_transpose``), as image
viewers do, and recorded like a video's display matrix: ``rotation`` degrees counter-clockwise, then a
left-right mirror.

The key of a clip set with frame folders says so (``FRAME_FOLDER_VERSION``): sets extracted before
this read unpadded folders out of order.
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image, ImageOps

from .probe import DecodeError, Orientation

__all__ = ["FRAME_FOLDER_VERSION", "IMAGE_SUFFIXES", "EXIF_ORIENTATION", "frame_files", "read_upright"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# What a clip set's frame folders are, for its key: 1 = ordered by frame number, EXIF orientation applied.
FRAME_FOLDER_VERSION = 1
# EXIF orientation tag -> (degrees counter-clockwise, mirrored) that turn the stored image upright
EXIF_ORIENTATION = {1: (0, False), 2: (0, True), 3: (180, False), 4: (180, True), 5: (270, True), 6: (270, False),
                    7: (90, True), 8: (90, False)}
_EXIF_ORIENTATION_TAG = 0x0112
_TRAILING_NUMBER = re.compile(r"(\d+)$")
_DIGITS = re.compile(r"(\d+)")


def frame_files(folder: Path) -> list[Path]:
    """The images of ``folder`` in frame order (see the module docstring); ``DecodeError`` when there
    are none or two share a frame number."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not files:
        raise DecodeError(f"frame folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    numbers = [_TRAILING_NUMBER.search(p.stem) for p in files]
    if not all(numbers):
        return sorted(files, key=_natural)
    ordered = sorted(zip((int(m.group(1)) for m in numbers), (p.name for p in files), files, strict=True))
    for (a, name_a, _), (b, name_b, _) in zip(ordered, ordered[1:], strict=False):
        if a == b:
            raise DecodeError(f"frames {name_a} and {name_b} both carry frame number {a}: their order is unknown")
    return [p for _, _, p in ordered]


def _natural(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(path.name)]


def read_upright(path: Path) -> tuple[Image.Image, Orientation]:
    """One frame as an upright RGB image, and the turn its EXIF orientation asked for."""
    try:
        with Image.open(path) as image:
            tag = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
            upright = ImageOps.exif_transpose(image).convert("RGB")
    except OSError as e:
        raise DecodeError(f"unreadable frame {path.name}: {e}") from None
    rotation, mirrored = EXIF_ORIENTATION.get(tag, (0, False))
    return upright, Orientation(rotation, mirrored)
