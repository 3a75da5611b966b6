"""Stage 2: heads trained from the feature cache (registry, metrics, run directories, the heads).

Never imports ``emo.extract`` or ``emo.cli`` (data flows extract -> cache <- heads); heads that rebuild
the frozen CLIP text tower named by a feature set's provenance (PE-CLIP) use ``emo.encoders.clip``.
"""

from .metrics import classification_metrics, mean_std, plot_confusion
from .registry import (
    Head,
    HeadSpec,
    config_from_dict,
    get_head,
    list_heads,
    load_checkpoint,
    register_head,
    save_checkpoint,
)
from .runs import RunResult, format_results_table, report_runs, train_from_cache, train_head

__all__ = [
    "Head",
    "HeadSpec",
    "RunResult",
    "classification_metrics",
    "config_from_dict",
    "format_results_table",
    "get_head",
    "list_heads",
    "load_checkpoint",
    "mean_std",
    "plot_confusion",
    "register_head",
    "report_runs",
    "save_checkpoint",
    "train_from_cache",
    "train_head",
]
