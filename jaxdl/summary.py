"""Model summary: every layer's output shape, node count and parameter count, without training.

Shapes are traced with `jax.eval_shape`, so even VGG-16 at 224×224 costs no memory.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def count_params(variables_or_params: Any) -> int:
    """Number of trainable scalars in `variables` (its `params` collection) or in a params tree.

    Works on arrays and on the `jax.ShapeDtypeStruct`s of `jax.eval_shape(model.init, ...)`,
    so a model's size can be counted without allocating it. BatchNorm running statistics
    (`batch_stats`) are not parameters and are not counted.
    """
    tree = variables_or_params
    if hasattr(tree, "keys") and "params" in tree:
        tree = tree["params"]
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def layer_table(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict]:
    """One row per module call, in call order.

    Args:
      model: a Linen module taking `(x, train=False)`.
      input_shape: one example's shape (no batch dim), e.g. (32, 32, 3).

    Returns:
      Rows {"name", "type", "shape" (output, no batch dim), "nodes", "params"}; the
      parameters of a row are those the module owns itself, not its children's.
    """
    calls = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.path:
            calls.append((context.module.path, type(context.module).__name__, out))
        return out

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    with nn.intercept_methods(record):
        variables = jax.eval_shape(lambda v: model.init(jax.random.PRNGKey(0), v, train=False), x)
    params = variables.get("params", {})

    def own_params(path):
        node = params
        for p in path:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        return sum(math.prod(v.shape) for v in node.values() if hasattr(v, "shape"))

    rows, seen = [], set()
    for path, kind, out in calls:
        if path in seen:  # a module called twice (shared weights) is listed once
            continue
        seen.add(path)
        leaves = [o for o in jax.tree.leaves(out) if hasattr(o, "shape")]
        shape = tuple(leaves[0].shape[1:]) if leaves else ()
        rows.append({"name": "/".join(path), "type": kind, "shape": shape,
                     "nodes": math.prod(shape) if shape else 0, "params": own_params(path)})
    total = count_params(params)
    rows.append({"name": "total", "type": "", "shape": (), "nodes": 0, "params": total})
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as aligned text, ending with the total parameter count."""
    lines = [f"{'layer':<40} {'type':<18} {'output':<18} {'nodes':>12} {'params':>14}"]
    for r in rows[:-1]:
        lines.append(f"{r['name']:<40} {r['type']:<18} {str(r['shape']):<18} "
                     f"{r['nodes']:>12,} {r['params']:>14,}")
    lines.append(f"{'total parameters':<40} {'':<18} {'':<18} {'':>12} {rows[-1]['params']:>14,}")
    return "\n".join(lines)


def print_summary(model: nn.Module, input_shape: tuple[int, ...],
                  print_fn: Callable[[str], None] = print) -> list[dict]:
    rows = layer_table(model, input_shape)
    print_fn(format_table(rows))
    return rows
