"""The open_clip adapter lives in :mod:`emo.encoders.clip` (stage 2 rebuilds CLIP text towers too, and
data flows extract -> cache <- heads); this name is kept for scripts that import it from here."""

from emo.encoders.clip import *  # noqa: F403
from emo.encoders.clip import __all__  # noqa: F401
