"""Results tables of run directories: Markdown (and CSV) with one row per run, t-SNE of final features.

Every table starts with :data:`RANDOM_BANNER` when any row was trained on random-weight features, and
:func:`report_runs` names, for heads that record the paper's encoders, the encoders each run's
features came from beside the paper's. Each kind of task (``emo.heads.tasks``) has its own columns:
a report of runs of several kinds is one table per kind, under the kind's name. Runs scored on their
validation part (pre-training without a test split) and runs built on another run (transfer) say so
under the tables.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from .curves import RANDOM_MARK, epoch_records, mark_random, plot_runs
from .registry import EMBEDDINGS_FILE, SUMMARY_FILE, read_json
from .tasks import TASKS, get_task

__all__ = ["RANDOM_BANNER", "format_results_table", "report_runs", "tsne_plot"]

RANDOM_BANNER = "RANDOM WEIGHTS — these numbers say nothing about the papers"
OPTIONAL_COLUMNS = (("silhouette", "silhouette"),)  # shown when any row has them


def format_results_table(rows: list[dict]) -> str:
    """Markdown: one table per task kind present (classification: head, split, top-1, macro-F1,
    weighted-F1, UAR in percent; retrieval: R@k in percent and median ranks), each under its kind's
    name when there are several kinds.

    Each row: ``name``, ``split``, ``random_weights``, ``task`` (default classification), optionally
    ``run`` (its directory: a last column) and per metric a float or ``{"mean", "std", "n"}``. The first line is :data:`RANDOM_BANNER` whenever any row was
    trained on random-weight features.
    """
    lines = []
    if any(r.get("random_weights") for r in rows):
        lines += [RANDOM_BANNER, ""]
    kinds = [k for k in TASKS if any(r.get("task", "classification") == k for r in rows)]
    for n, kind in enumerate(kinds):
        task = get_task(kind)
        mine = [r for r in rows if r.get("task", "classification") == kind]
        if len(kinds) > 1:
            lines += ([""] if n else []) + [f"**{kind}** ({task.description})", ""]
        columns = task.columns + tuple(c for c in OPTIONAL_COLUMNS if any(c[0] in r for r in mine))
        where = any("run" in r for r in mine)  # the run directory of each row, last
        lines.append("| head | split | " + " | ".join(title for _, title in columns) + " |" + (" run |" if where else ""))
        lines.append("|---|---|" + "---:|" * len(columns) + ("---|" if where else ""))
        for r in mine:
            cells = [_percent(r.get(m)) if m in task.percent else _plain(r.get(m), 1 if m != "silhouette" else 3)
                     for m, _ in columns]
            lines.append(f"| {r['name']} | {r['split']} | " + " | ".join(cells) + " |"
                         + (f" {r.get('run', '')} |" if where else ""))
    return "\n".join(lines)


def _plain(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    if not isinstance(v, dict):
        return f"{v:.{digits}f}"
    return f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}" if v.get("n", 1) > 1 else f"{v['mean']:.{digits}f}"


def _percent(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, dict):
        return f"{100 * v['mean']:.2f} ± {100 * v['std']:.2f}" if v.get("n", 1) > 1 else f"{100 * v['mean']:.2f}"
    return f"{100 * v:.2f}"


def report_runs(path: str | os.PathLike, csv_path: str | os.PathLike | None = None, tsne: bool = False,
                curves: str | os.PathLike | None = None) -> str:
    """The results table of every run (a directory with ``summary.json``) at or under ``path``.

    One row per run (a sweep cell is a run), mean ± std over its folds (and seeds: a multi-seed run is one
row; its ``seed<k>/`` runs are not rows of their own). ``csv_path`` also writes the
    rows as CSV (fractions, with ``_mean``/``_std`` columns). ``tsne`` adds, for runs whose head saved
    test embeddings, a ``tsne.png`` per fold and the silhouette score (cosine) of the embeddings by
    true class, mean over folds. ``curves`` writes the runs' learning curves side by side to that PNG
    (training loss and a shared validation metric per epoch, mean over each run's folds).
    """
    path = Path(path)
    found = sorted(path.rglob(SUMMARY_FILE))
    if not found:
        raise FileNotFoundError(f"no runs under {path} (a run directory holds {SUMMARY_FILE})")
    rows, notes, run_notes = [], [], []
    logs: dict[str, list[list[dict]]] = {}
    summaries = {p: read_json(p) for p in found}
    multi_seed = {p.parent for p, s in summaries.items() if len(s.get("seeds") or []) > 1}
    for p, s in summaries.items():
        if any(d in multi_seed for d in p.parents[1:]):
            continue  # one seed of a multi-seed run: the run's own row holds it (mean ± std over seeds)
        if s.get("paper_features"):  # name the run's own encoders beside the paper's
            own = "; ".join(s.get("encoders", {}).values()) or "unknown"
            notes.append(f"- {s.get('label', s['head'])} ({p.parent.name}): features from {own}. "
                         f"The paper's numbers used {s['paper_features']}.")
        task = get_task(s.get("task", "classification"))
        name = s.get("label", s["head"])
        on = [e for e in s.get("evaluated_on", ["test"]) if e != "test"]
        if on:
            run_notes.append(f"- {name} ({p.parent.name}): scored on its held-out {' / '.join(on)} part (no test split).")
        if s.get("source_run"):
            src = s["source_run"]
            run_notes.append(f"- {name} ({p.parent.name}): features of run {src.get('run')} (head {src.get('head')}, "
                         f"trained on {src.get('dataset')} {src.get('split')}), transferred.")
        run_notes += [f"- {name} ({p.parent.name}): warning: {w}" for w in s.get("warnings", [])]
        row = {"name": name, "split": s["split"], "random_weights": s["random_weights"], "task": task.name,
               **{m: s["summary"].get(m) for m in task.metrics}, "run": _relative(p.parent, path)}
        if curves is not None:
            logs[f"{name} ({_relative(p.parent, path)})"] = [epoch_records(p.parent / f / "log.jsonl") for f in s["folds"]]
        if tsne:
            sil = [tsne_plot(p.parent / fold, random_weights=s["random_weights"]) for fold in s["folds"]]
            sil = [v for v in sil if v is not None]
            row["silhouette"] = {"mean": float(np.mean(sil)), "std": float(np.std(sil, ddof=1)) if len(sil) > 1 else 0.0,
                                 "n": len(sil)} if sil else None
        rows.append(row)
    if csv_path is not None:
        _write_rows_csv(Path(csv_path), rows)
    if curves is not None and plot_runs(logs, curves, any(r["random_weights"] for r in rows)) is None:
        run_notes.append(f"- no run under {path} logged epochs: {curves} not written")
    return (format_results_table(rows) + ("\n\nFeatures:\n" + "\n".join(notes) if notes else "")
            + ("\n\nRuns:\n" + "\n".join(run_notes) if run_notes else ""))


def _write_rows_csv(path: Path, rows: list[dict]) -> None:
    every = dict.fromkeys(m for t in TASKS.values() for m in t.metrics)
    metrics = [m for m in (*every, "silhouette") if any(m in r for r in rows)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", "split", "random_weights", *(f"{m}_{k}" for m in metrics for k in ("mean", "std", "n")), "task",
                    "run"])
        for r in rows:
            cells = []
            for m in metrics:
                v = r.get(m)
                cells += [v["mean"], v["std"], v["n"]] if isinstance(v, dict) else ["", "", ""]
            w.writerow([r["name"], r["split"], r["random_weights"], *cells, r.get("task", "classification"),
                        r.get("run", "")])


def _relative(run: Path, root: Path) -> str:
    """A run directory as the user named it under ``root`` (its own name when it is ``root``)."""
    rel = run.relative_to(root).as_posix() if run != root else ""
    return rel or run.name


def tsne_plot(fold_dir: Path, seed: int = 0, random_weights: bool = False) -> float | None:
    """t-SNE of a fold's saved test embeddings coloured by true class -> ``tsne.png``; returns the
    silhouette score (cosine distance, true classes) of the embeddings, or None when the fold saved
    none or has fewer than two classes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE
    from sklearn.metrics import silhouette_score

    emb_path = fold_dir / EMBEDDINGS_FILE
    if not emb_path.exists() or not (fold_dir / "predictions.csv").exists():  # t-SNE colours by true class
        return None
    x = load_file(str(emb_path))["test"].double().numpy()  # [n, D]
    with open(fold_dir / "predictions.csv", encoding="utf-8") as f:
        true = [r["true"] for r in csv.DictReader(f)]
    classes = sorted(set(true))
    y = np.array([classes.index(t) for t in true])
    if len(classes) < 2 or len(y) < 4:
        return None
    score = float(silhouette_score(x, y, metric="cosine"))
    xy = TSNE(n_components=2, perplexity=min(30.0, (len(y) - 1) / 3), init="pca", random_state=seed).fit_transform(x)
    fig = Figure(figsize=(5.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for c, name in enumerate(classes):
        ax.scatter(xy[y == c, 0], xy[y == c, 1], s=12, label=name)
    ax.legend(fontsize=7, markerscale=1.5)
    title = f"{fold_dir.parent.name}/{fold_dir.name} · silhouette {score:.3f}" + (f" · {RANDOM_MARK}" if random_weights
                                                                                 else "")
    ax.set_title(title, fontsize=9)
    mark_random(fig, title)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout(rect=(0, 0, 1, 0.96 if random_weights else 1))
    fig.savefig(fold_dir / "tsne.png", format="png", dpi=100, metadata={"Software": None})
    return score
