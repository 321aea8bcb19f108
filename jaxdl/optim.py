"""Optax optimisers and learning-rate schedules built from `config.optim`."""
from __future__ import annotations

import ml_collections
import optax

from jaxdl.errors import UserError, unknown_name

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")


def make_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """The learning rate as a function of the step.

    `constant`: `lr`. `cosine`: cosine decay from `lr` to 0 over the run. `step`: `lr`
    multiplied by `step_factor` (default 0.1) at each fraction of the run listed in
    `step_boundaries` (default (0.5, 0.75)). `warmup_steps` > 0 puts a linear warm-up
    from 0 in front of any of them.
    """
    lr = optim.lr
    name = optim.get("schedule", "constant")
    warmup = int(optim.get("warmup_steps", 0) or 0)
    rest = max(num_steps - warmup, 1)
    if name == "constant":
        schedule = optax.constant_schedule(lr)
    elif name == "cosine":
        schedule = optax.cosine_decay_schedule(lr, rest)
    elif name == "step":
        fractions = optim.get("step_boundaries", (0.5, 0.75))
        factor = optim.get("step_factor", 0.1)
        schedule = optax.piecewise_constant_schedule(
            lr, {int(f * rest): factor for f in fractions})
    else:
        raise unknown_name("schedule", name, SCHEDULES, "optim.schedule")
    if warmup:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])
    return schedule


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """SGD (momentum, Nesterov), Adam or AdamW with the configured schedule.

    For `sgd` and `adam`, `weight_decay` is the classic L2 term added to the gradient
    (what the AlexNet, VGG and ResNet papers call weight decay); `adamw` decouples it.
    """
    name = optim.get("name", "sgd")
    schedule = make_schedule(optim, num_steps)
    wd = optim.get("weight_decay", 0.0) or 0.0
    if name == "sgd":
        momentum = optim.get("momentum", 0.0) or None
        core = optax.sgd(schedule, momentum=momentum, nesterov=bool(optim.get("nesterov", False)))
    elif name == "adam":
        core = optax.adam(schedule)
    elif name == "adamw":
        return optax.adamw(schedule, weight_decay=wd)
    else:
        raise unknown_name("optimizer", name, OPTIMIZERS, "optim.name")
    if wd:
        return optax.chain(optax.add_decayed_weights(wd), core)
    return core


def check(optim: ml_collections.ConfigDict) -> None:
    """Raises UserError for an optimiser config that cannot work."""
    if optim.get("name", "sgd") not in OPTIMIZERS:
        raise unknown_name("optimizer", optim.name, OPTIMIZERS, "optim.name")
    if optim.get("schedule", "constant") not in SCHEDULES:
        raise unknown_name("schedule", optim.schedule, SCHEDULES, "optim.schedule")
    if not optim.lr > 0:
        raise UserError(f"optim.lr must be > 0, got {optim.lr}")
    if optim.get("momentum", 0.0) and not 0 <= optim.momentum < 1:
        raise UserError(f"optim.momentum must be in [0, 1), got {optim.momentum}")
    if (optim.get("weight_decay", 0.0) or 0.0) < 0:
        raise UserError(f"optim.weight_decay must be >= 0, got {optim.weight_decay}")
