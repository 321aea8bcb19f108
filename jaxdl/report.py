"""A run's report: `W/report.md` and `W/report.html` from what the workdir holds.

`python launch.py --workdir=W --mode=report` (or `write_report(config, W)`) draws the
run's pictures again from its latest checkpoint (`make_pictures`), then writes one page
with the final metrics (`results.json`, `eval.json`, `results.md`), the pictures, the
model summary (`--mode=summary`'s table) and the config. Both files link the pictures
by relative paths (`pictures/*.png`), so the workdir can be copied or opened offline
as it is.

Without `--config`, the launcher reads the run's own config from `W/config.json`
(`workdir_config`): a report describes the run that was trained, not the default
experiment.
"""
from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from jaxdl import pictures as pictures_lib
from jaxdl import tasks
from jaxdl.errors import UserError

CAPTIONS = {
    "learning_curves.png": "Learning curves: every number of `metrics.jsonl` against the step "
                           "(shaded: ±1 std over seeds).",
    "confusion_matrix.png": "Confusion matrix on the test split (replica 0).",
    "filters.png": "The first layer's kernels (or a dense first layer's weights in the input's shape).",
    "feature_maps.png": "One layer's output for one test input (`pictures.layer`, `pictures.example`).",
    "edges.png": "Convolution on a photograph: hand-set edge kernels and, below them when the model's first "
                 "layer is a convolution, its learnt kernels.",
    "padding.png": "Zero against replicate padding: a 15×15 mean filter at the image border.",
    "pooling.png": "Max, average and weighted-average pooling of the same feature map.",
}


def has_run(workdir: str) -> bool:
    """Whether `workdir` holds anything a run writes."""
    return any(os.path.exists(os.path.join(workdir, f)) for f in ("config.json", "results.json", "metrics.jsonl"))


def workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in `workdir` was trained with (`W/config.json`).

    Raises:
      UserError: `workdir` holds no run.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        if not os.path.isdir(workdir):
            raise UserError(f"workdir {workdir} does not exist; train first, or pass the run's --workdir")
        if has_run(workdir):  # tasks outside the training loop write results but no config.json
            raise UserError(f"workdir {workdir} has no config.json; pass the run's --config as well")
        raise UserError(f"workdir {workdir} holds no run; train first, or pass the run's --workdir")
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from e


def _read_json(path: str) -> Any:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def make_pictures(config: ml_collections.ConfigDict, workdir: str,
                  print_fn: Callable[[str], None] = print, strict: bool = True) -> list[str]:
    """Draws every picture the run's task can make into `W/pictures/`; returns their paths.

    Learning curves come from `metrics.jsonl`; the task's own pictures (confusion
    matrix, filters, feature maps, detections, segmentations) from the latest checkpoint;
    the lecture's photograph pictures from nothing but the model's first layer, and
    without a model from the hand-set kernels alone.

    Args:
      strict: raise when the task's own pictures cannot be drawn (no checkpoint yet);
        otherwise say why and draw the rest.

    Raises:
      UserError: `workdir` holds no run, or (strict) the task's pictures need a checkpoint it lacks.
    """
    workdir = os.path.abspath(workdir)
    if not has_run(workdir):
        raise UserError(f"workdir {workdir} holds no run; train first, or pass the run's --workdir")
    directory = os.path.join(workdir, "pictures")
    task = tasks.get(config.get("task", "classification"))
    paths = []
    records = _metrics(workdir)
    curves = pictures_lib.learning_curves(records, os.path.join(directory, "learning_curves.png"))
    if curves:
        paths.append(curves)
    drawn = False
    if hasattr(task, "pictures"):
        try:
            paths += task.pictures(config, workdir, print_fn=print_fn)
            drawn = True
        except UserError as e:
            if strict:
                raise
            print_fn(f"no pictures of the model: {e}")
    if not drawn:
        paths += pictures_lib.lecture_pictures(directory)
    print_fn(f"{len(paths)} pictures in {directory}")
    return paths


def _metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------------
# A page as blocks, rendered to Markdown and to HTML.

def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    if value is None:
        return "–"
    return str(value)


def _metric_rows(results: dict) -> list[tuple[str, str]]:
    rows = []
    for k, v in results.items():
        if isinstance(v, dict):
            rows += [(f"{k}.{name}", _fmt(x)) for name, x in v.items()]
        else:
            rows.append((k, _fmt(v)))
    return rows


def _blocks(config: ml_collections.ConfigDict, workdir: str, summary: str | None,
            summary_note: str) -> list[tuple]:
    name = os.path.basename(workdir.rstrip(os.sep))
    task = config.get("task", "classification")
    model = (config.get("model") or {}).get("name") or "–"
    dataset = (config.get("dataset") or {}).get("name") or "–"
    blocks: list[tuple] = [("h1", f"jaxdl run {name}"),
                           ("p", f"Task `{task}`, model `{model}`, dataset `{dataset}`; workdir `{workdir}`.")]
    results = _read_json(os.path.join(workdir, "results.json"))
    blocks.append(("h2", "Final metrics"))
    if results is None:
        blocks.append(("p", "No `results.json`: the run has not finished."))
    elif isinstance(results, dict) and "rows" not in results:
        blocks.append(("table", ("metric", "value"), _metric_rows(results)))
    evaluated = _read_json(os.path.join(workdir, "eval.json"))
    if evaluated:
        blocks += [("h3", "Evaluation (`--mode=eval`)"), ("table", ("metric", "value"), _metric_rows(evaluated))]
    table_md = os.path.join(workdir, "results.md")
    if os.path.exists(table_md):
        with open(table_md) as f:
            blocks.append(("markdown", f.read()))
    records = _metrics(workdir)
    if records:
        blocks.append(("p", f"`metrics.jsonl`: {len(records)} records, steps {records[0]['step']} to "
                            f"{records[-1]['step']}. TensorBoard: `tensorboard --logdir {workdir}`."))
    directory = os.path.join(workdir, "pictures")
    files = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    known = [f for f in pictures_lib.FILES if f in files]
    others = [f for f in files if f.endswith(".png") and f not in known]
    if known or others:
        blocks.append(("h2", "Pictures"))
        for f in known:
            blocks.append(("img", f"pictures/{f}", CAPTIONS[f]))
        if others:
            blocks.append(("h3", "Test images"))
            blocks += [("img", f"pictures/{f}", f) for f in others]
    blocks.append(("h2", "Model"))
    blocks.append(("pre", summary) if summary else ("p", summary_note))
    blocks += [("h2", "Config"), ("pre", config.to_json(indent=2))]
    return blocks


def to_markdown(blocks: Sequence[tuple]) -> str:
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + rest[0])
        elif kind in ("p", "markdown"):
            out.append(rest[0].strip())
        elif kind == "pre":
            out.append("```\n" + rest[0] + "\n```")
        elif kind == "table":
            head, rows = rest
            out.append("\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                                 + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]))
        elif kind == "img":
            path, caption = rest
            stem = os.path.splitext(os.path.basename(path))[0].replace("_", " ")
            out.append(f"![{stem}]({path})\n\n{caption}")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Markdown's `code` spans as <code>; everything else escaped."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _markdown_table_html(text: str) -> str:
    """A results.md (a heading and one pipe table) as HTML."""
    out, rows = [], []
    for line in text.splitlines():
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("|") and not set(line) <= set("|-: "):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if rows:
        out.append(_table_html(rows[0], rows[1:]))
    return "\n".join(out)


def _table_html(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{_inline(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}code{background:#f0f0f0;padding:0 .2em}
figure{margin:1.5em 0}img{max-width:100%;border:1px solid #ddd}figcaption{color:#555;font-size:14px}"""


def to_html(blocks: Sequence[tuple]) -> str:
    title = next((rest[0] for kind, *rest in blocks if kind == "h1"), "jaxdl run")
    body = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{_inline(rest[0])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(rest[0])}</p>")
        elif kind == "markdown":
            body.append(_markdown_table_html(rest[0]))
        elif kind == "pre":
            body.append(f"<pre>{html.escape(rest[0])}</pre>")
        elif kind == "table":
            body.append(_table_html(*rest))
        elif kind == "img":
            path, caption = rest
            body.append(f'<figure><img src="{html.escape(path)}" alt="{html.escape(caption)}">'
                        f"<figcaption>{_inline(caption)}</figcaption></figure>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def model_summary(config: ml_collections.ConfigDict, workdir: str) -> tuple[str | None, str]:
    """(`--mode=summary`'s table as text, or None; a note saying why there is none)."""
    task = tasks.get(config.get("task", "classification"))
    if not hasattr(task, "summary"):
        return None, f"The {config.get('task')} task has no model summary (`--mode=summary`)."
    lines: list[str] = []
    try:
        task.summary(config, workdir, print_fn=lines.append)
    except UserError as e:
        return None, f"No model summary: {e}"
    return "\n".join(lines), ""


def write_report(config: ml_collections.ConfigDict, workdir: str, print_fn: Callable[[str], None] = print,
                 pictures: bool = True) -> tuple[str, str]:
    """Writes `W/report.md` and `W/report.html`, drawing the pictures first when `pictures` is true.

    Returns:
      The paths of the two files.

    Raises:
      UserError: `workdir` holds no run.
    """
    workdir = os.path.abspath(workdir)
    if not has_run(workdir):
        raise UserError(f"workdir {workdir} holds no run; train first, or pass the run's --workdir")
    if pictures:
        make_pictures(config, workdir, print_fn, strict=False)
    summary, note = model_summary(config, workdir)
    blocks = _blocks(config, workdir, summary, note)
    md, page = os.path.join(workdir, "report.md"), os.path.join(workdir, "report.html")
    with open(md, "w") as f:
        f.write(to_markdown(blocks))
    with open(page, "w") as f:
        f.write(to_html(blocks))
    print_fn(f"report in {md} and {page}")
    return md, page
