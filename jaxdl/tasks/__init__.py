"""Tasks: what `config.task` names. Each module has `train_and_evaluate(config, workdir)`."""
from __future__ import annotations

import importlib
from types import ModuleType

from jaxdl.errors import unknown_name

TASKS = {
    "classification": "jaxdl.train",
    "table": "jaxdl.tasks.table",
    "dmlp": "jaxdl.tasks.dmlp",
    "generations": "jaxdl.tasks.generations",
    "perceptron_logic": "jaxdl.tasks.perceptron_logic",
    "detection": "jaxdl.tasks.detection",
    "segmentation": "jaxdl.tasks.segmentation",
}


def get(name: str) -> ModuleType:
    """The module that runs task `name`."""
    if name not in TASKS:
        raise unknown_name("task", name, TASKS, "task")
    return importlib.import_module(TASKS[name])
