"""Sweeps: one run directory per cell of a grid of config values, every fold of a split each, resumable.

``emo heads sweep pe-clip cache/ve8 --split ve8:all --grid d=6,8,10 --grid bidirectional=on,off --out runs/s``
trains ``out/<cell>/`` for every combination (``cell_name``: ``d=6,bidirectional=on``) with
:func:`emo.heads.runs.train_head`; a cell whose ``summary.json`` exists is kept, so running the same
command again resumes. ``emo report`` reads the cells as rows.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from .registry import SUMMARY_FILE, get_head
from .runs import RunResult, cache_folds, needed_large_arrays, needed_modalities, read_run_result, train_seeds

__all__ = ["parse_grid", "grid_cells", "cell_name", "sweep_from_cache"]


def parse_grid(grids: list[str]) -> list[tuple[str, list[str]]]:
    """``["d=6,8,10", "bidirectional=on,off"]`` -> ``[("d", ["6", "8", "10"]), ("bidirectional", ["on", "off"])]``.

    Values holding commas or spaces are separated by ``|`` instead, and then kept verbatim:
    ``"prompt_separator=; |, "`` -> ``("prompt_separator", ["; ", ", "])``.
    """
    out: list[tuple[str, list[str]]] = []
    for g in grids:
        key, eq, values = g.partition("=")
        key = key.strip().replace("-", "_")
        if "|" in values:
            vals = [v for v in values.split("|") if v]
        else:
            vals = [v.strip() for v in values.split(",") if v.strip()]
        if not eq or not key or not vals:
            raise ValueError(f"--grid expects FIELD=V1,V2,..., got {g!r}")
        if key in {k for k, _ in out}:
            raise ValueError(f"--grid {key} given twice")
        out.append((key, vals))
    return out


def grid_cells(grid: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """Every combination of the grid's values, first field slowest."""
    cells: list[dict[str, str]] = [{}]
    for key, values in grid:
        cells = [{**c, key: v} for c in cells for v in values]
    return cells


def cell_name(cell: dict[str, str]) -> str:
    """Directory name of a sweep cell: ``d=6,bidirectional=on`` (``default`` for an empty grid). Values are
    percent-encoded where a character is unsafe in a file name (``with/without`` -> ``with%2Fwithout``,
    ``"; "`` -> ``%3B%20``), so distinct cells never share a directory."""
    return ",".join(f"{k}={quote(v, safe='+')}" for k, v in cell.items()) or "default"


def sweep_from_cache(
    name: str,
    cache: str | os.PathLike,
    *,
    split: str,
    grid: list[str],
    out: str | os.PathLike,
    feature_sets: list[str] | None = None,
    overrides: dict[str, str] | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    command: list[str] | None = None,
    echo: Callable[[str], None] = lambda line: None,
    allow_partial: bool = False,
    seeds: list[int] | None = None,
    client=None,
    per_gpu: int = 1,
) -> list[RunResult]:
    """One run directory ``out/<cell>/`` per grid cell × every fold of ``split`` × ``seeds`` (default
    ``[seed]``; several: ``out/<cell>/seed<k>/``, see :func:`emo.heads.runs.train_seeds`); the cache is read once.

    Every cell's config is checked before anything is trained. A cell whose run is already complete
    (its ``summary.json`` exists) is kept and skipped, so an interrupted sweep resumes. With a dask
    ``client``, every (cell, seed, fold) is one task on its workers (:mod:`emo.heads.distributed`).
    """
    spec = get_head(name)
    cells = grid_cells(parse_grid(grid))
    if client is not None:
        from .distributed import Cell, run_cells

        out = Path(out)
        jobs = [Cell({**(overrides or {}), **cell}, out / cell_name(cell), _label(name, cell)) for cell in cells]
        return run_cells(client, name, cache, jobs, split=split, seeds=seeds or [seed], feature_sets=feature_sets,
                         val_fraction=val_fraction, command=command, allow_partial=allow_partial, per_gpu=per_gpu,
                         echo=echo)
    configs = [spec.config({**(overrides or {}), **cell}) for cell in cells]
    needs = tuple(dict.fromkeys(m for c in configs for m in needed_modalities(c)))
    large = tuple(dict.fromkeys(a for c in configs for a in needed_large_arrays(c)))
    folds, load, _ = cache_folds(cache, split, feature_sets, needs, large, allow_partial)
    out = Path(out)
    results = []
    for k, cell in enumerate(cells, 1):
        where = out / cell_name(cell)
        label = _label(name, cell)
        if (where / SUMMARY_FILE).exists():
            echo(f"[{k}/{len(cells)}] {label}: done earlier, kept")
            results.append(read_run_result(where))
            continue
        if where.exists():  # a cell interrupted mid-run: its folds are redone from scratch
            shutil.rmtree(where)
        echo(f"[{k}/{len(cells)}] {label}")
        results.append(train_seeds(name, load, seeds=seeds or [seed], folds=folds, out=where,
                                   overrides={**(overrides or {}), **cell}, val_fraction=val_fraction,
                                   command=command, label=label, cache=cache))
    return results


def _label(name: str, cell: dict[str, str]) -> str:
    """A cell's row name: ``pe-clip d=6,bidirectional=on`` (the head's name for an empty grid)."""
    return f"{name} " + ",".join(f"{k}={_shown(v)}" for k, v in cell.items()) if cell else name


def _shown(value: str) -> str:
    """A grid value as a report shows it: quoted when it holds spaces, commas, ``;`` or ``|``."""
    return json.dumps(value) if any(c in value for c in " ,;|") else value
