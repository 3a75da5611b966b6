"""The ``emo`` command line: parse options, build config objects, call one library function.

One module per command group (``datasets``, ``extract``, ``cache``, ``heads``); ``common`` holds the
apps and the error policy. Library modules are imported inside each command so that ``emo --help``
stays fast. Errors the user can fix (a malformed manifest, a bad option, weights that failed to load)
print one line naming the problem and exit with status 2; set ``EMO_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

from . import cache, datasets, extract, heads  # noqa: F401  (importing them registers their commands)
from .common import app

__all__ = ["app", "main"]


def main() -> None:
    app()
