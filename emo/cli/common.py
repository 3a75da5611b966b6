"""What every command group shares: the Typer apps, the error policy, small output helpers."""

from __future__ import annotations

import functools
import os
import re

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="emo: a shared feature cache of frozen encoders, and the heads trained from it.")
datasets_app = typer.Typer(no_args_is_help=True, help="Turn a dataset's release layout into a manifest.")
prepare_app = typer.Typer(no_args_is_help=True, help="Write <out>/manifest.jsonl from a dataset's files.")
extract_app = typer.Typer(no_args_is_help=True, help="Stage 1: run frozen encoders into the feature cache.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect and check feature caches.")
heads_app = typer.Typer(no_args_is_help=True, help="Stage 2: train and evaluate heads from a cache.")
app.add_typer(datasets_app, name="datasets")
datasets_app.add_typer(prepare_app, name="prepare")
app.add_typer(extract_app, name="extract")
app.add_typer(cache_app, name="cache")
app.add_typer(heads_app, name="heads")


def _print_version(value: bool) -> None:
    if value:
        from emo import __version__

        typer.echo(f"emo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print emo's version and exit.")) -> None:
    """emo: a shared feature cache of frozen encoders, and the heads trained from it."""

EXIT_USAGE = 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from emo.cache.featureset import FeatureSetError
    from emo.cache.manifest import ManifestError

    errors: list[type[BaseException]] = [ManifestError, FeatureSetError, ValueError, OSError, ImportError,
                                         FloatingPointError]
    try:
        from emo.encoders.clip import WeightsError
        from emo.extract.cluster import ClusterError

        errors += [WeightsError, ClusterError]
    except ImportError:  # pragma: no cover - clip adapter always present in a full install
        pass
    return tuple(errors)


def friendly(fn):
    """Turn the errors a user can fix into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _user_errors() as e:
            if os.environ.get("EMO_DEBUG"):
                raise
            typer.echo(f"error: {describe_error(e)}", err=True)
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper


_FILENAME = re.compile(r"name = '([^']+)'|filename = '([^']+)'")


def describe_error(e: BaseException) -> str:
    """One line for the user. A system error (disk full, a file-size limit, permissions: an ``OSError``
    with an errno, also as h5py raises it with its long HDF5 detail) says what and which file; whatever
    it was writing was a temporary file, removed, so nothing finished is lost."""
    if isinstance(e, OSError) and e.errno and not isinstance(e, FileNotFoundError):
        found = _FILENAME.search(str(e))
        name = e.filename or (next(g for g in found.groups() if g) if found else None)
        where = f" ({name})" if name else ""
        return f"{os.strerror(e.errno)}{where}; what was being written was not kept: fix it and run the command again"
    return str(e)


def csv_list(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def report_skipped(skipped) -> None:
    for row, item_id, reason in skipped:
        typer.echo(f"skipped manifest row {row} (id {item_id!r}): {reason}", err=True)


