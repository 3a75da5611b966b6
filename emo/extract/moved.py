"""Old import paths of the modules that left ``emo.extract`` after 0.1.0, kept working for one release.

Stage 1 was one room in 0.1.0; it is now four: ``emo.datasets`` (release -> manifest), ``emo.decode``
(decoded frames and audio), ``emo.encoders`` (frozen third-party models) and ``emo.extract`` (the engine,
with one module per feature set in ``emo.extract.modalities``). ``import emo.extract.video`` and the like
still work: a finder on ``sys.meta_path`` answers exactly the names in ``MOVED`` with the module that
now holds the code (the same module object, so attributes, monkeypatching and ``isinstance`` behave as
with the new path) and warns ``DeprecationWarning`` naming the new path. It answers no other name, and
is installed once, when ``emo.extract`` is first imported. Remove it in the release after next.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__all__ = ["MOVED", "install"]

MOVED = {
    "emo.extract.datasets": "emo.datasets",
    "emo.extract.adapters": "emo.datasets",
    "emo.extract.adapters.common": "emo.datasets.common",
    "emo.extract.adapters.class_folders": "emo.datasets.class_folders",
    "emo.extract.adapters.dfer": "emo.datasets.dfer",
    "emo.extract.adapters.emvidcap": "emo.datasets.emvidcap",
    "emo.extract.adapters.meld": "emo.datasets.meld",
    "emo.extract.adapters.video_subtitles": "emo.datasets.video_subtitles",
    "emo.extract.subtitles": "emo.datasets.subtitles",
    "emo.extract.synthetic": "emo.datasets.synthetic",
    "emo.extract.detect": "emo.datasets.subjects",
    "emo.extract.video": "emo.decode.video",
    "emo.extract.sampling": "emo.decode.sampling",
    "emo.extract.workers": "emo.decode.workers",
    "emo.extract.hf": "emo.encoders.hf",
    "emo.extract.segue": "emo.encoders.segue",
    "emo.extract.clip": "emo.encoders.clip",
    "emo.extract.pipeline": "emo.extract.modalities.clip",
    "emo.extract.audio": "emo.extract.modalities.audio",
    "emo.extract.text": "emo.extract.modalities.text",
    "emo.extract.au": "emo.extract.modalities.au",
    "emo.extract.pyfeat": "emo.extract.modalities.au_pyfeat",
    "emo.extract.boxes": "emo.extract.modalities.boxes",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; the old path goes away in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(new)
        self.spec = module.__spec__  # the import machinery sets __spec__ on the module it gets; restored below
        return module

    def exec_module(self, module):
        module.__spec__ = self.spec  # the module keeps its own identity; only sys.modules holds the old name


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once per process)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
