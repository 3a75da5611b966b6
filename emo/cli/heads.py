"""``emo heads ...`` and ``emo report``: stage 2, train, evaluate and compare heads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from typer.core import TyperCommand

from .common import app, friendly, heads_app


@heads_app.command("list")
def heads_list() -> None:
    """The registered heads."""
    from emo.heads.registry import list_heads

    for spec in list_heads():
        typer.echo(f"{spec.name:<17} {spec.task:<15} {spec.description}")


@heads_app.command("config")
@friendly
def heads_config(
    name: str = typer.Argument(..., help="Head name (see `emo heads list`)."),
    preset: str = typer.Option(None, help="Start from this preset (emo/configs/heads/NAME/PRESET.json)."),
) -> None:
    """Head NAME's config as JSON on stdout (every field with its default; save it, edit it, give it back
    with `emo heads train NAME --config FILE`); its presets on stderr."""
    from emo.heads.registry import HEAD_PRESET_DIR, config_to_dict, get_head

    spec = get_head(name)
    typer.echo(json.dumps(config_to_dict(spec.config(_preset_overrides(name, preset))), indent=2))
    presets = sorted(p.stem for p in (HEAD_PRESET_DIR / name).glob("*.json"))
    if presets:
        typer.echo(f"presets (--preset): {', '.join(presets)}", err=True)


class HeadCommand(TyperCommand):
    """A command whose first argument is a head: ``--help`` also lists that head's config fields (each
    an option) with type, default, choices and meaning, read from the config's source."""

    def parse_args(self, ctx, args):
        ctx.meta["emo_head_args"] = list(args)  # the head name is known before --help prints
        return super().parse_args(ctx, args)

    def format_help(self, ctx, formatter):
        super().format_help(ctx, formatter)
        name = next((a for a in ctx.meta.get("emo_head_args", []) if not a.startswith("-")), None)
        if name is None:
            typer.echo("\nGive a head (emo heads train NAME --help) to list its options.")
            return
        from emo.heads.config import format_field_help
        from emo.heads.registry import get_head

        try:
            spec = get_head(name)
        except ValueError as e:
            typer.echo(f"\n{e}")
            return
        typer.echo(f"\nOptions of head {spec.name} (each also as --set FIELD=VALUE, or in --config FILE):\n"
                   + format_field_help(spec.config_cls))


def _config_overrides(name: str, path: Path | None) -> dict:
    """The fields of a config file (`emo heads config NAME` output, edited), checked against the head."""
    if path is None:
        return {}
    from emo.heads.registry import get_head, read_json

    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a head config is a JSON object of fields (emo heads config {name} writes one)")
    try:
        get_head(name).config(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return data


def _parse_overrides(args: list[str], sets: list[str]) -> dict[str, str]:
    """``--field value`` / ``--flag`` extra options and ``--set field=value`` -> {field: value}."""
    out: dict[str, str] = {}
    for s in sets:
        k, eq, v = s.partition("=")
        if not eq:
            raise ValueError(f"--set expects FIELD=VALUE, got {s!r}")
        out[k.replace("-", "_")] = v
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise ValueError(f"unexpected argument {a!r}")
        k, eq, v = a[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                v, i = args[i + 1], i + 1
            else:
                v = "true"
        out[k.replace("-", "_")] = v
        i += 1
    return out


def _preset_overrides(name: str, preset: str | None) -> dict:
    from emo.heads.registry import head_preset

    return {k: v for k, v in head_preset(name, preset).items()} if preset else {}


# options several commands share (typer reads these defaults, never changes them)
_ALLOW_PARTIAL = typer.Option(False, help="Train on the items that have features when a feature set is unfinished "
                              "or split items failed (recorded in the run).")
_PRESET = typer.Option(None, help="emo/configs/heads/NAME/PRESET.json (e.g. table5) or a .json path.")
_CONFIG = typer.Option(None, help="A config file (emo heads config NAME > FILE, edited); options win.")
_LOCAL_CLUSTER = typer.Option(0, help="Run every (cell, seed, fold) on a local dask cluster of N worker processes "
                              "(on a GPU box at most GPUs × --per-gpu).")
_SCHEDULER = typer.Option(None, help="Run them on the dask cluster at this scheduler address.")
_PER_GPU = typer.Option(1, help="Heads that may share one GPU on a cluster (only when asked).")


@heads_app.command("train", cls=HeadCommand,
                   context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def heads_train(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Head name (see `emo heads list`)."),
    cache: Path = typer.Argument(..., help="Dataset cache directory."),
    split: str = typer.Option(..., help="SCHEME:FOLD, or SCHEME:all for every fold (mean ± std)."),
    out: Path = typer.Option(..., help="Run directory to write."),
    features: list[str] = typer.Option(None, help="Feature set name(s) to use (default: the only one)."),
    val_fraction: float = typer.Option(0.0, help="Stratified part of train held out for tuning."),
    seed: int = typer.Option(0),
    seeds: str = typer.Option(None, help="Several seeds, e.g. 0,1,2: a run per seed (OUT/seed<k>/) and the "
                              "mean ± std over seeds and folds."),
    allow_partial: bool = _ALLOW_PARTIAL,
    set_: list[str] = typer.Option(None, "--set", help="Config override FIELD=VALUE (repeatable)."),
    preset: str = _PRESET,
    config: Path = _CONFIG,
    local_cluster: int = _LOCAL_CLUSTER,
    scheduler: str = _SCHEDULER,
    per_gpu: int = _PER_GPU,
) -> None:
    """Train head NAME on a cache; any config field is an option (`--C 0.5` or `--set C=0.5`)."""
    from emo.heads.runs import parse_seeds, train_from_cache

    overrides = (_preset_overrides(name, preset) | _config_overrides(name, config)
                 | _parse_overrides(list(ctx.args), set_ or []))
    common = {"split": split, "out": out, "feature_sets": features or None, "overrides": overrides,
              "val_fraction": val_fraction, "command": sys.argv, "allow_partial": allow_partial,
              "seeds": parse_seeds(seeds, seed)}
    if local_cluster or scheduler:
        from emo.heads.distributed import cluster_client, train_on_cluster

        with cluster_client(scheduler, local_cluster, per_gpu) as client:
            result = train_on_cluster(client, name, cache, per_gpu=per_gpu, **common)
    else:
        result = train_from_cache(name, cache, seed=seed, **common)
    typer.echo(result.table())
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)


@heads_app.command("sweep", cls=HeadCommand,
                   context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def heads_sweep(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Head name (see `emo heads list`)."),
    cache: Path = typer.Argument(..., help="Dataset cache directory."),
    split: str = typer.Option(..., help="SCHEME:FOLD, or SCHEME:all for every fold."),
    grid: list[str] = typer.Option(..., help="FIELD=V1,V2,... (repeatable; every combination is run)."),
    out: Path = typer.Option(..., help="Sweep directory: one run directory per grid cell."),
    features: list[str] = typer.Option(None, help="Feature set name(s) to use (default: the only one)."),
    val_fraction: float = typer.Option(0.0, help="Stratified part of train held out for tuning."),
    seed: int = typer.Option(0),
    seeds: str = typer.Option(None, help="Several seeds, e.g. 0,1,2: every cell is run per seed (CELL/seed<k>/), "
                              "mean ± std over seeds and folds."),
    allow_partial: bool = _ALLOW_PARTIAL,
    set_: list[str] = typer.Option(None, "--set", help="Fixed config override FIELD=VALUE for every cell."),
    preset: str = _PRESET,
    config: Path = _CONFIG,
    local_cluster: int = _LOCAL_CLUSTER,
    scheduler: str = _SCHEDULER,
    per_gpu: int = _PER_GPU,
) -> None:
    """Train NAME for every cell of the grid × every fold; finished cells are kept (resumable)."""
    from emo.heads.report import format_results_table
    from emo.heads.runs import parse_seeds
    from emo.heads.sweep import sweep_from_cache

    overrides = (_preset_overrides(name, preset) | _config_overrides(name, config)
                 | _parse_overrides(list(ctx.args), set_ or []))
    common = {"split": split, "grid": grid, "out": out, "feature_sets": features or None, "overrides": overrides,
              "val_fraction": val_fraction, "seed": seed, "command": sys.argv, "echo": typer.echo,
              "allow_partial": allow_partial, "seeds": parse_seeds(seeds, seed)}
    if local_cluster or scheduler:
        from emo.heads.distributed import cluster_client

        with cluster_client(scheduler, local_cluster, per_gpu) as client:
            results = sweep_from_cache(name, cache, client=client, per_gpu=per_gpu, **common)
    else:
        results = sweep_from_cache(name, cache, **common)
    typer.echo(format_results_table([r.row() for r in results]))


def _stacked_run(name: str, cache: Path, runs: dict[str, Path | None], split: str | None, out: Path | None,
                 suffix: str, overrides: dict, features: list[str] | None, val_fraction: float, seed: int,
                 allow_partial: bool = False) -> None:
    """Train a head that reads the features of other runs (probe, cache classifier): the split and the
    output directory default to the first run's."""
    from emo.heads.from_run import run_split
    from emo.heads.runs import train_from_cache

    given = {k: v for k, v in runs.items() if v is not None}
    if not given:
        raise ValueError(f"{name} needs " + " or ".join(f"--{k}" for k in runs) + " (a trained run directory)")
    first = next(iter(given.values()))
    if not features:  # the feature sets the runs were trained on, when this cache has them (found by key)
        from emo.heads.from_run import run_summary
        from emo.heads.runs import recorded_feature_sets

        keys = {n: k for r in given.values() for n, k in (run_summary(r).get("cache_keys") or {}).items()}
        features = recorded_feature_sets(cache, keys)
    split = split or run_split(first)
    out = out or first.with_name(first.name + suffix)
    result = train_from_cache(
        name, cache, split=split, out=out, feature_sets=features or None,
        overrides={**overrides, **{k: str(v) for k, v in given.items()}},
        val_fraction=val_fraction, seed=seed, command=sys.argv, allow_partial=allow_partial,
    )
    typer.echo(result.table())
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"run: {out}")


@heads_app.command("cache-classifier", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def heads_cache_classifier(
    ctx: typer.Context,
    cache: Path = typer.Argument(..., help="Dataset cache directory."),
    video: Path = typer.Option(None, help="Run directory of a VFM (video features)."),
    audio: Path = typer.Option(None, help="Run directory of an auditory adapter (audio features)."),
    split: str = typer.Option(None, help="SCHEME:FOLD (default: the split of the runs)."),
    out: Path = typer.Option(None, help="Run directory to write (default: beside the first run, NAME-cache)."),
    features: list[str] = typer.Option(None, help="Feature set names (default: the runs' modalities)."),
    val_fraction: float = typer.Option(0.0, help="Stratified part of train for the α/β search when there is no val split."),
    seed: int = typer.Option(0),
    allow_partial: bool = _ALLOW_PARTIAL,
    set_: list[str] = typer.Option(None, "--set", help="Config override FIELD=VALUE (repeatable)."),
    preset: str = typer.Option(None, help="emo/configs/heads/cache-classifier/PRESET.json (e.g. release) or a .json path."),
) -> None:
    """EmoAsst's zero-shot + K-shot cache classifier over VFM / adapter runs (--shots K, --search val|none,
    --finetune-keys for Tip-F; every config field is an option, see `emo heads config cache-classifier`)."""
    overrides = _preset_overrides("cache-classifier", preset) | _parse_overrides(list(ctx.args), set_ or [])
    suffix = "-tipf" if str(overrides.get("finetune_keys", "false")).lower() in ("true", "1", "yes", "on") else "-cache"
    _stacked_run("cache-classifier", cache, {"video": video, "audio": audio}, split, out, suffix, overrides,
                 features, val_fraction, seed, allow_partial)


@heads_app.command("probe", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def heads_probe(
    ctx: typer.Context,
    cache: Path = typer.Argument(..., help="Dataset cache directory."),
    run: Path = typer.Option(None, "--run", help="Run directory whose head makes the features (e.g. runs/vfm)."),
    features: list[str] = typer.Option(None, help="Feature set name(s) of CACHE (default: those the run was trained "
                                       "on, found by key; on another dataset, one per modality)."),
    split: str = typer.Option(None, help="SCHEME:FOLD (default: the run's split)."),
    out: Path = typer.Option(None, help="Run directory to write (default: beside the run, NAME-probe)."),
    val_fraction: float = typer.Option(0.0, help="Stratified part of train for choosing C when there is no val split."),
    seed: int = typer.Option(0),
    allow_partial: bool = _ALLOW_PARTIAL,
    set_: list[str] = typer.Option(None, "--set", help="Config override FIELD=VALUE (C, c_grid, max_iter)."),
) -> None:
    """Linear probe (logistic regression) on the features of a trained run (EmoAsst Table 2)."""
    if run is None and features and len(features) == 1 and (Path(features[0]) / "summary.json").is_file():
        typer.echo("note: --features RUN is now --run RUN (--features names feature sets, as elsewhere)", err=True)
        run, features = Path(features[0]), None
    if run is None:
        raise ValueError("heads probe needs --run RUN (a trained run directory whose head makes the features)")
    _stacked_run("probe", cache, {"features": run}, split, out, "-probe",
                 _parse_overrides(list(ctx.args), set_ or []), features, val_fraction, seed, allow_partial)


@heads_app.command("adapt")
@friendly
def heads_adapt(
    run: Path = typer.Argument(..., help="A cache-classifier run directory (updated in place)."),
    add: Path = typer.Option(..., help="CSV with id,label columns: the new labelled clips."),
    cache: Path = typer.Option(None, help="Cache holding the new clips' features (default: the run's cache)."),
) -> None:
    """Add labelled clips from a new setting to a cache classifier, without training."""
    from emo.heads.cache_classifier import adapt_run

    counts = adapt_run(run, add, cache)
    typer.echo(f"{run}: added {counts['added']} item(s) to the cache of fold(s) {', '.join(counts['folds'])}")


@heads_app.command("eval")
@friendly
def heads_eval(
    run: Path = typer.Argument(..., help="A run directory (from `emo heads train`)."),
    split: str = typer.Option(None, help="SCHEME:FOLD or SCHEME:all (default: the run's own split)."),
    cache: Path = typer.Option(None, help="Dataset cache (default: the one the run was trained from)."),
    features: list[str] = typer.Option(None, help="Feature set name(s) (default: the only one)."),
    allow_partial: bool = typer.Option(False, help="Score the items that have features when some lack them."),
) -> None:
    """Reload a run's checkpoints and score the test items again (refuses other features)."""
    from emo.heads.runs import evaluate_run

    result = evaluate_run(run, split=split, cache=cache, feature_sets=features or None, allow_partial=allow_partial)
    typer.echo(result.table())


@app.command("report")
@friendly
def report(
    runs: Path = typer.Argument(..., help="A run directory or a folder of them (e.g. a sweep)."),
    csv: Path = typer.Option(None, "--csv", help="Also write the rows as CSV to this file."),
    tsne: bool = typer.Option(False, "--tsne", help="t-SNE plot per fold (tsne.png) and silhouette column."),
    curves: Path = typer.Option(None, "--curves", help="Also draw the runs' learning curves side by side in this PNG."),
) -> None:
    """A results table of every run under RUNS (RANDOM WEIGHTS banner when any used random features)."""
    from emo.heads.runs import report_runs

    typer.echo(report_runs(runs, csv_path=csv, tsne=tsne, curves=curves))
