"""py-feat, the action-unit detector run inside emo (``emo extract au --backend py-feat``): the only file
that imports py-feat (``feat``), lazily, with an install hint. The feature set it fills is
``emo.extract.modalities.au_pyfeat``.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = [
    "PYFEAT_AUS",
    "PYFEAT_DETECTOR_DEFAULTS",
    "DEFAULT_FACE_THRESHOLD",
    "PYFEAT_TOOL",
    "import_feat",
    "detector_class",
    "pyfeat_aus",
    "fex_columns",
    "fex_column",
    "detect_au",
    "detect_video",
]

# Written against py-feat 2.1.5 (PyPI wheel py_feat-2.1.5). What this code relies on, and nothing else:
#
# * ``feat.__version__`` (feat/__init__.py:54, feat/version.py:1) -> the config's ``version``.
# * The detector class: ``feat.Detector`` where a release has it (py-feat <= 0.6), else ``feat.Detectorv1``
#   (2.1.5 exports only ``Detectorv1``/``Detectorv2``, feat/__init__.py:50-51; ``Detectorv1.__init__``
#   keyword defaults face_model="retinaface", landmark_model="mobilefacenet", au_model="xgb",
#   emotion_model="resmasknet", identity_model="arcface", gaze_model="l2cs", device="cpu",
#   feat/detector.py:124-133).
# * ``Detectorv1.detect(inputs, data_type="video", batch_size=1, face_detection_threshold=0.5,
#   skip_frames=None, progress_bar=True, ...)`` (feat/detector.py:906-919) returns a ``Fex`` (a pandas
#   DataFrame subclass, feat/data.py:385) with one row per detected face and frame; a frame without a
#   face still gets one row, with FaceScore 0 / NaN and NaN AUs (feat/detector.py:564-568, 882-886).
# * Its ``frame`` column is the 0-based index of the frame in the whole video file (VideoDataset decodes
#   ``np.arange(0, num_frames, skip_frames or 1)`` and reports that index, feat/data.py:2993-2995, 3079;
#   detect() copies it into ``frame``, feat/detector.py:1003-1011). Rows are matched to our sampled frames
#   by that index (``clip/frame_index``, also counted in the whole file), never by ``approx_time``.
# * ``FaceScore`` (feat/utils/__init__.py:27-33) is the face detector's score per row.
# * The AU columns are ``AU_LANDMARK_MAP["Feat"]`` (feat/pretrained.py:88-109, 20 AUs, presence
#   probabilities 0..1, not OpenFace intensities), the ``au_columns`` of the Fex (feat/detector.py:1046).
#
# The table is read only through ``fex_columns`` / ``fex_column`` (``.columns`` and
# ``table[name].to_numpy()``), so a DataFrame, a Fex or a stand-in object all work.
PYFEAT_AUS = (  # AU_LANDMARK_MAP["Feat"] of py-feat 2.1.5; used when the installed feat does not expose it
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU11", "AU12",
    "AU14", "AU15", "AU17", "AU20", "AU23", "AU24", "AU25", "AU26", "AU28", "AU43",
)  # fmt: skip
PYFEAT_DETECTOR_DEFAULTS = {  # Detectorv1.__init__ defaults in py-feat 2.1.5 (device left out: not keyed)
    "face_model": "retinaface",
    "landmark_model": "mobilefacenet",
    "au_model": "xgb",
    "emotion_model": "resmasknet",
    "identity_model": "arcface",
    "gaze_model": "l2cs",
}
DEFAULT_FACE_THRESHOLD = 0.5  # py-feat's own face_detection_threshold default
PYFEAT_TOOL = "py-feat"
_PYFEAT_HINT = "py-feat is not installed: pip install py-feat (and its model weights)"


def import_feat():
    try:
        import feat  # optional: only this file touches the AU tool library
    except ImportError as e:
        raise ImportError(_PYFEAT_HINT) from e
    return feat


def detector_class(feat):
    cls = getattr(feat, "Detector", None) or getattr(feat, "Detectorv1", None)
    if cls is None:
        raise ImportError(f"feat {getattr(feat, '__version__', '?')} has neither Detector nor Detectorv1 (written for py-feat 2.1.5)")
    return cls


def pyfeat_aus(feat) -> tuple[str, ...]:
    """The AU columns py-feat reports, in its order: ``feat.pretrained.AU_LANDMARK_MAP["Feat"]`` if present."""
    names = getattr(getattr(feat, "pretrained", None), "AU_LANDMARK_MAP", {}).get("Feat")
    return tuple(str(n) for n in names) if names else PYFEAT_AUS


def fex_columns(table) -> list[str]:
    """Column names of a py-feat result (uses only ``.columns``)."""
    return [str(c) for c in table.columns]


def fex_column(table, name: str) -> np.ndarray:
    """One column as float64 numpy (uses only ``table[name].to_numpy()``); non-numbers become NaN."""
    values = np.asarray(table[name].to_numpy())
    try:
        return values.astype(np.float64)
    except (TypeError, ValueError):
        return np.array([_to_float(v) for v in values.reshape(-1)], dtype=np.float64)


def _to_float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def detect_au(video: str | os.PathLike, **detector_kwargs):
    """Run py-feat's detector on a video and return its ``Fex`` table (one row per frame and face).

    A convenience for looking at py-feat's raw output; ``emo.extract.modalities.au_pyfeat.import_pyfeat``
    is the feature-set import.
    Raises ``ImportError`` saying what to install when py-feat is absent.
    """
    feat = import_feat()
    detector = detector_class(feat)(**detector_kwargs)
    return detector.detect(str(video), data_type="video", progress_bar=False)




def detect_video(detector, path: str | os.PathLike, skip_frames: int | None, face_threshold: float):
    """``detector.detect`` on one video file: its ``Fex`` table of frames ``0, s, 2s, ...`` (``s = skip_frames``)."""
    return detector.detect(
        str(path), data_type="video", skip_frames=skip_frames, face_detection_threshold=face_threshold, progress_bar=False
    )
