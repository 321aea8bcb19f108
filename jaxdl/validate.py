"""Checks of a config and a workdir that need no data, no compilation and no writes.

`check_config` walks every field: types and ranges by the field's own name (an `lr`
must be a finite number > 0 wherever it sits, a `batch_size` an integer >= 1), then
the names a config refers to (task, optimiser, schedule, model, dataset), suggesting
the nearest valid names, and whether the model and dataset belong to the config's
task. What needs the data (a batch larger than the dataset, an input size a model
cannot take) is checked by the tasks right after reading it, before compiling.
`check_workdir` answers whether a workdir can be created or written, creating nothing.
"""
from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterator
from typing import Any

import ml_collections

from jaxdl.errors import UserError, unknown_name

# Field rules by the field's last name. Counts of things: integers >= 1.
_COUNTS = {"batch_size", "num_seeds", "num_steps", "num_epochs", "log_every", "eval_every",
           "checkpoint_every", "keep_checkpoints", "steps_per_call", "eval_batch_size", "image_size",
           "epochs", "steps", "max_boxes", "num_classes", "fc_channels", "max_detections", "pre_nms_top_k"}
_NON_NEGATIVE_INTS = {"warmup_steps", "num_pictures", "augment.crop_padding", "augment.padding",
                      "augment.mask_fill"}
_BOOLS = {"unroll", "download", "flip", "nesterov", "small_input", "batch_norm", "l2norm_first"}
# Unset (None) means "not used" for these; every other rule field must be set.
_OPTIONAL = {"num_epochs", "image_size", "max_boxes", "num_steps"}
# Layer widths: one integer >= 1 or a sequence of them.
_WIDTHS = {"features", "hidden", "extra_channels"}


def _rule_name(path: str) -> str:
    """The name a field's rule is found by: its last name, or its last two for the ambiguous ones."""
    last_two = ".".join(path.split(".")[-2:])
    return last_two if last_two in _NON_NEGATIVE_INTS else path.rpartition(".")[2]


# Which tasks train on the offline datasets; catalogue datasets are not checked here.
_OFFLINE_TASKS = {"digits": ("classification", "dmlp", "generations"),
                  "mnist1d": ("classification", "dmlp", "generations"),
                  "digit_scenes": ("detection", "segmentation")}
_DATA_TASKS = {t for ts in _OFFLINE_TASKS.values() for t in ts}
_EXAMPLE_CONFIG = {"classification": "experiments/mnist1d.py or experiments/zoo_digits.py",
                   "detection": "experiments/detect_digit_scenes.py",
                   "segmentation": "experiments/segment_digit_scenes.py"}


def _leaves(d: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _field_error(path: str, value: Any) -> str | None:
    """What is wrong with one field's value by the rules of its name, or None."""
    name = _rule_name(path)
    if value is None:
        return None if name in _OPTIONAL or name not in (_COUNTS | _NON_NEGATIVE_INTS | _BOOLS | {"lr"}) \
            else f"{path} must be set"
    if name in _COUNTS and not (_is_int(value) and value >= 1):
        return f"{path} must be an integer >= 1" + (", or unset" if name in _OPTIONAL else "")
    if name in _NON_NEGATIVE_INTS and not (_is_int(value) and value >= 0):
        return f"{path} must be an integer >= 0"
    if name in _BOOLS and not isinstance(value, bool):
        return f"{path} must be True or False"
    if name == "lr" and not (_is_number(value) and math.isfinite(value) and value > 0):
        return f"{path} must be a finite number > 0"
    if name == "seed" and not _is_int(value):
        return f"{path} must be an integer"
    if name == "momentum" and not (_is_number(value) and 0 <= value < 1):
        return f"{path} must be in [0, 1)"
    if name == "weight_decay" and not (_is_number(value) and math.isfinite(value) and value >= 0):
        return f"{path} must be a finite number >= 0"
    if name in ("width", "step_factor") and not (_is_number(value) and math.isfinite(value) and value > 0):
        return f"{path} must be a finite number > 0"
    if name == "step_boundaries" and not (isinstance(value, (tuple, list)) and all(
            _is_number(f) and 0 < f < 1 for f in value)):
        return f"{path} must be fractions of the run, each in (0, 1)"
    if name == "std" and not all(_is_number(s) and s > 0 for s in (value if isinstance(value, (tuple, list))
                                                                   else (value,))):
        return f"{path} must be > 0"
    if name in _WIDTHS:
        widths = value if isinstance(value, (tuple, list)) else (value,)
        if not all(_is_int(w) and w >= 1 for w in widths):
            return f"{path} must be layer widths, integers >= 1"
    return None


def check_fields(config: ml_collections.ConfigDict) -> None:
    """Raises UserError for the first field whose type or range cannot work."""
    values = config.to_dict()
    for path, value in _leaves(values):
        error = _field_error(path, value)
        if error is not None:
            raise UserError(f"{error}, got {value!r} (--config.{path}=...)")
    if values.get("num_steps", 1) is None and values.get("num_epochs") is None:
        raise UserError("set num_steps or num_epochs (--config.num_steps=...)")


def _check_dataset(name: str, task: str, directory: str | None) -> None:
    from jaxdl.data import builders, pipeline

    base, _, variant = name.partition("/")
    if base in builders.OFFLINE_BUILDERS:
        configs = [c.name for c in builders.OFFLINE_BUILDERS[base].BUILDER_CONFIGS or []]
        if variant and variant not in configs:
            raise unknown_name("dataset", name, pipeline.offline_names(), "dataset.name")
        allowed = _OFFLINE_TASKS.get(base, ())
        if task in _DATA_TASKS and task not in allowed:
            fits = [n for n in pipeline.offline_names() if task in _OFFLINE_TASKS.get(n.partition("/")[0], ())]
            raise UserError(f"dataset {name!r} is for {' and '.join(allowed)}, not {task}; "
                            f"offline datasets for {task}: {', '.join(fits)} (--config.dataset.name=...)")
        return
    import tensorflow_datasets as tfds

    catalogue = tfds.list_builders(with_community_datasets=False)
    base = base.partition(":")[0]
    # A dataset prepared in the data dir needs no code in the catalogue to be read.
    if base not in catalogue and not os.path.isdir(os.path.join(pipeline.data_dir(directory), base)):
        near = difflib.get_close_matches(name, pipeline.offline_names() + list(catalogue), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(n) for n in near)}? " if near else ""
        raise UserError(f"unknown dataset {name!r} (dataset.name); {hint}offline datasets: "
                        f"{', '.join(pipeline.offline_names())}; or a TFDS catalogue name, or one "
                        f"prepared in {pipeline.data_dir(directory)}")


def _model_task(model: dict) -> str | None:
    """The task a model config belongs to: a detector has anchors, a segmenter's name is one."""
    from jaxdl import models
    from jaxdl.segmentation import models as seg_models

    if "anchors" in model:
        return "detection"
    if model.get("name") in seg_models.SEGMENTERS:
        return "segmentation"
    if model.get("name") in models.__all__:
        return "classification"
    return None


def _check_model(model: dict, task: str) -> None:
    from jaxdl import models
    from jaxdl.segmentation import models as seg_models

    found = _model_task(model)
    if found is not None and found != task:
        what = f"model {model['name']!r}" if "name" in model else "this config's model (model.anchors)"
        raise UserError(f"{what} is a {found} model, but the config's task is {task!r}; use a {task} config "
                        f"such as {_EXAMPLE_CONFIG[task]}, or set --config.task={found}")
    if task == "classification" and found is None:
        raise unknown_name("model", str(model.get("name")), models.__all__, "model.name")
    if task == "segmentation" and found is None:
        raise unknown_name("segmenter", str(model.get("name")), seg_models.SEGMENTERS, "model.name")
    if task == "detection" and found is None:
        raise UserError(f"a detection config needs model.backbone and model.anchors; start from "
                        f"{_EXAMPLE_CONFIG[task]}")
    backbone = model.get("backbone")
    if task in ("detection", "segmentation") and isinstance(backbone, dict):
        if backbone.get("name") not in models.__all__:
            raise unknown_name("backbone", str(backbone.get("name")), models.__all__, "model.backbone.name")


def check_names(config: ml_collections.ConfigDict) -> None:
    """Raises UserError for a name the config uses that does not exist or belongs to another task."""
    from jaxdl import optim, tasks

    values = config.to_dict()
    task = values.get("task", "classification")
    if task not in tasks.TASKS:
        raise unknown_name("task", str(task), tasks.TASKS, "task")
    if task in _EXAMPLE_CONFIG:  # the tasks built on jaxdl.optim and jaxdl.models
        opt = values.get("optim") or {}
        if opt.get("name", "sgd") not in optim.OPTIMIZERS:
            raise unknown_name("optimizer", str(opt.get("name")), optim.OPTIMIZERS, "optim.name")
        if opt.get("schedule", "constant") not in optim.SCHEDULES:
            raise unknown_name("schedule", str(opt.get("schedule")), optim.SCHEDULES, "optim.schedule")
        if not isinstance(values.get("model"), dict):
            raise UserError(f"the {task} task needs a model section; start from {_EXAMPLE_CONFIG[task]}")
        _check_model(values["model"], task)
    dataset = values.get("dataset")
    if isinstance(dataset, dict) and isinstance(dataset.get("name"), str):
        _check_dataset(dataset["name"], task, dataset.get("data_dir"))


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises UserError for any config value that cannot work; reads no data and writes nothing."""
    from jaxdl import parallel

    check_fields(config)
    check_names(config)
    parallel.check_config(config)


def check_workdir(workdir: str) -> None:
    """Raises UserError if `workdir` cannot be created or written; creates nothing."""
    path = os.path.abspath(workdir)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise UserError(f"workdir {path} is a file, not a folder; pass another --workdir")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"workdir {path} is not writable; pass another --workdir")
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"cannot create workdir {path}: {parent} is a file; pass another --workdir")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot create workdir {path}: {parent} is not writable; pass another --workdir")
