"""A results table: several experiments (rows) run one after another, summarised together.

`config.rows.<name>` holds `labels` (the row's columns, e.g. model and variant),
`config` (a full experiment config of any task) and `index` (the row's place). Each row trains in `W/<name>` (so an
interrupted table resumes row by row) and the table goes to `W/results.md` and
`W/results.json` = {"title", "rows": [{**labels, "seeds", "test_accuracy_mean",
"test_accuracy_std", "train_time_s"}]}.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import ml_collections

from jaxdl import tasks
from jaxdl.loop import write_atomic


def _row_result(labels: dict, config: ml_collections.ConfigDict, result: dict) -> dict:
    seeds = config.get("num_seeds", 1)
    values = result.get("test_accuracy_per_seed", [result["test_accuracy"]])
    return {**labels, "seeds": seeds, "test_accuracy_mean": result["test_accuracy"],
            "test_accuracy_std": result.get("test_accuracy_std", 0.0),
            "test_accuracy_per_seed": values, "train_time_s": result.get("train_time_s")}


def format_markdown(title: str, rows: list[dict]) -> str:
    """The rows as a Markdown table, accuracies in percent as mean ± std."""
    if not rows:
        return f"# {title}\n\n(no rows)\n"
    label_keys = [k for k in rows[0] if k not in
                  ("seeds", "test_accuracy_mean", "test_accuracy_std", "test_accuracy_per_seed",
                   "train_time_s")]
    head = [*label_keys, "seeds", "test accuracy (%)", "train time (s)"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        acc = f"{100 * r['test_accuracy_mean']:.1f} ± {100 * r['test_accuracy_std']:.1f}"
        cells = [str(r[k]) for k in label_keys] + [str(r["seeds"]), acc, str(r["train_time_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs every row's experiment, then writes and prints the table."""
    rows = sorted(config.rows.items(), key=lambda item: item[1].get("index", 0))
    for _, row in rows:  # every row is checked before any trains
        task = tasks.get(row.config.get("task", "classification"))
        if hasattr(task, "check_config"):
            task.check_config(row.config)
    results = []
    for name, row in rows:
        task = tasks.get(row.config.get("task", "classification"))
        print_fn(f"--- row {name}")
        result = task.train_and_evaluate(row.config, os.path.join(workdir, name), print_fn=print_fn)
        results.append(_row_result(row.labels.to_dict(), row.config, result))
    table = {"title": config.get("title", ""), "rows": results}
    write_atomic(os.path.join(workdir, "results.json"), json.dumps(table, indent=2))
    markdown = format_markdown(table["title"], results)
    write_atomic(os.path.join(workdir, "results.md"), markdown)
    print_fn(markdown)
    return table
