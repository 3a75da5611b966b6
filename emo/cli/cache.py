"""``emo cache ...``: inspect and check feature caches."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import cache_app, friendly


def _fmt_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@cache_app.command("ls")
@friendly
def cache_ls(cache: Path = typer.Argument(..., help="Dataset cache directory.")) -> None:
    """Feature sets of a dataset cache: name, key, items ok/failed, size, created."""
    from emo.cache.featureset import list_feature_sets

    unreadable: list = []
    sets = list_feature_sets(cache, unreadable)
    for path, error in unreadable:
        typer.echo(f"{path.name:<44} UNREADABLE: {error}")
    if not sets:
        if not unreadable:
            typer.echo(f"{cache}: no feature sets yet")
        return
    typer.echo(f"{'feature set':<44} {'key':<12} {'ok':>6} {'failed':>6} {'size':>9}  created")
    for fs in sets:
        status = fs.item_status()
        ok = sum(1 for s in status.values() if s == "ok")
        mark = "  [RANDOM WEIGHTS]" if fs.random_weights else ""
        if fs.config_problem():  # its config (weights included) cannot be believed
            mark += "  [CONFIG.JSON DOES NOT MATCH ITS KEY: run emo cache verify]"
        typer.echo(
            f"{fs.name:<44} {fs.key[:12]:<12} {ok:>6} {len(status) - ok:>6} {_fmt_size(fs.size_bytes()):>9}  "
            f"{fs.meta.get('created', '?')}{mark}"
        )


@cache_app.command("verify")
@friendly
def cache_verify(
    target: Path = typer.Argument(..., help="A dataset cache directory or one feature set."),
    deep: bool = typer.Option(
        False, "--deep", help="Also compare every shard's sha256 with its .done.json (reads every byte)."
    ),
) -> None:
    """Check config.json against its key and every shard against its .done.json (size, and with --deep
    its sha256); exit 1 on any fault."""
    from emo.cache.featureset import FeatureSet, RecordError, list_feature_sets
    from emo.cache.verify import verify_feature_set

    unreadable: list = []
    if (target / "config.json").exists():
        try:
            sets = [FeatureSet(target)]
        except RecordError as e:
            sets, unreadable = [], [(target, e)]
    else:
        sets = list_feature_sets(target, unreadable)
    faults = len(unreadable)
    for path, error in unreadable:
        typer.echo(f"FAULT {path.name}: {error}")
    for fs in sets:
        rep = verify_feature_set(fs, deep=deep)
        for fault in rep.faults:
            typer.echo(f"FAULT {fs.name}: {fault}")
        for note in rep.notes:
            typer.echo(f"note  {fs.name}: {note}")
        extra = f", {len(rep.unfinished)} unfinished shards" if rep.unfinished else ""
        extra += ", sha256 checked" if deep else ""
        typer.echo(f"{'ok   ' if rep.ok else 'BAD  '}{fs.name}: {rep.shards} shards, {rep.items_ok} ok, {rep.items_failed} failed{extra}")
        faults += len(rep.faults)
    if faults:
        raise typer.Exit(1)


@cache_app.command("info")
@friendly
def cache_info(feature_set: Path = typer.Argument(..., help="A feature-set directory.")) -> None:
    """Config, key, counts and failures of one feature set."""
    from emo.cache.featureset import FeatureSet

    fs = FeatureSet(feature_set)
    status = fs.item_status()
    ok = sum(1 for s in status.values() if s == "ok")
    problem = fs.config_problem()
    if problem:  # then the RANDOM WEIGHTS line below cannot be believed either way
        typer.echo(f"WARNING config.json does not match its key: {problem}; run `emo cache verify`")
    if fs.random_weights:
        typer.echo("RANDOM WEIGHTS — features from an untrained encoder (tests and demo only)")
    typer.echo(f"name:    {fs.name}\nkey:     {fs.key}\ncreated: {fs.meta.get('created')}")
    typer.echo(f"items:   {ok} ok, {len(status) - ok} failed, {len(fs.done_indices())} shards, {_fmt_size(fs.size_bytes())}")
    typer.echo("config:")
    typer.echo(json.dumps(fs.config, indent=2))
    failures = {}
    for k in fs.done_indices():  # the .done.json records are authoritative; failures.jsonl is their log
        for i, err in fs.done_record(k).get("errors", {}).items():
            if status.get(i) != "ok":
                failures[i] = err
    typer.echo(f"failures: {len(failures)}")
    for i, err in failures.items():
        typer.echo(f"  {i}: [{err['stage']}] {err['error']}")
