"""Costs: the lecture's squared error, cross-entropy and log-likelihood, numerically stable.

Glossary: B batch (or any leading dims), c outputs, K classes. Per-example
costs return one value per example, (B,); `mean_squared_error` returns the
batch mean. Cross-entropies take logits, never probabilities, so that the
log-sum-exp can be shifted by the maximum and logits of any size stay finite.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdl.errors import UserError

Array = jax.Array


def mse_lecture(o: Array, y: Array) -> Array:
    """The lecture's cost for one sample, J = ½‖y − o‖², the one whose gradient gives δ^L.

    Args:
      o: (B, c) network outputs.
      y: (B, c) targets.

    Returns:
      (B,): J per sample; sum or average over the batch yourself. Note the ½
      and the sum (not mean) over the c outputs, unlike `mean_squared_error`.
    """
    o, y = jnp.asarray(o), jnp.asarray(y)
    return 0.5 * jnp.sum(jnp.square(y - o), axis=-1)


def mean_squared_error(o: Array, y: Array, mask: Array | None = None) -> Array:
    """Mean of (o − y)² over every element of the batch: the usual "MSE" reduction.

    Equals (2 / c) · mean over samples of `mse_lecture`: no ½, and averaged (not
    summed) over the c outputs as well as over the batch.

    Args:
      o: (B, c) (or any shape whose first dims are the batch) outputs.
      y: targets, same shape.
      mask: optional 0/1 (or bool) example mask of shape o.shape[:mask.ndim],
        e.g. (B,); masked-out examples do not count. All masked gives 0.

    Returns:
      Scalar.
    """
    o, y = jnp.asarray(o), jnp.asarray(y)
    if o.shape != y.shape:
        raise UserError(f"o has shape {o.shape} but y has {y.shape}; they must match")
    err = jnp.square(o - y)
    if mask is None:
        return jnp.mean(err)
    mask = jnp.asarray(mask)
    if mask.shape != o.shape[:mask.ndim]:
        raise UserError(f"mask has shape {mask.shape}; it must be the leading dims of o's "
                        f"shape {o.shape}, e.g. ({o.shape[0]},)")
    per_example = jnp.mean(err, axis=tuple(range(mask.ndim, err.ndim)))
    mask = mask.astype(per_example.dtype)
    count = jnp.sum(mask)
    total = jnp.sum(per_example * mask)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), 0)


def _as_distribution(labels: Array, num_classes: int, dtype, name: str, ref_shape) -> Array:
    """Integer labels (…) → one-hot (…, K); probability rows (…, K) pass through."""
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if labels.shape != tuple(ref_shape[:-1]):
            raise UserError(f"integer labels have shape {labels.shape}; expected "
                            f"{tuple(ref_shape[:-1])}, one class index per example of {name}")
        # Out-of-range labels (e.g. −1 for padding) give an all-zero row.
        return jax.nn.one_hot(labels, num_classes, dtype=dtype)
    if labels.shape != tuple(ref_shape):
        raise UserError(f"labels have shape {labels.shape}; expected integer labels "
                        f"{tuple(ref_shape[:-1])} or one-hot/soft labels {tuple(ref_shape)}")
    return labels.astype(dtype)


def softmax_cross_entropy(logits: Array, labels: Array, label_smoothing: float = 0.0,
                          num_classes: int | None = None, where: Array | None = None) -> Array:
    """Cross-entropy −Σ_k y_k log softmax(s)_k from logits s, per example.

    Its gradient with respect to the logits is softmax(s) − y: the modern form of
    the lecture's output delta δ^L = y − o.

    Args:
      logits: (B, K) unnormalised scores (any leading dims).
      labels: integer class indices (B,), or one-hot / soft labels (B, K). An
        integer label outside [0, K) gives an all-zero label row.
      label_smoothing: α in [0, 1): labels become (1 − α)·y + α/K (α over the
        unmasked classes when `where` is given).
      num_classes: K, checked against logits.shape[-1] when given.
      where: optional bool class mask broadcastable to (B, K); masked classes are
        left out of the softmax (as if their logit were −∞) and of the sum.

    Returns:
      (B,) loss per example.
    """
    logits = jnp.asarray(logits)
    dtype = jnp.result_type(logits, float)
    logits = logits.astype(dtype)
    k = logits.shape[-1]
    if num_classes is not None and num_classes != k:
        raise UserError(f"num_classes={num_classes} but logits have {k} classes "
                        f"(shape {logits.shape}); pass num_classes={k} or fix the logits")
    if not 0.0 <= label_smoothing < 1.0:
        raise UserError(f"label_smoothing={label_smoothing}; it must lie in [0, 1)")
    labels = _as_distribution(labels, k, dtype, "logits", logits.shape)
    if where is not None:
        where = jnp.broadcast_to(jnp.asarray(where, bool), logits.shape)
    if label_smoothing:
        if where is None:
            uniform = jnp.full_like(labels, 1.0 / k)
        else:
            valid = where.astype(dtype)
            uniform = valid / jnp.sum(valid, axis=-1, keepdims=True)
        labels = (1 - label_smoothing) * labels + label_smoothing * uniform
    log_probs = jax.nn.log_softmax(logits, where=where)
    if where is not None:
        # Zero the masked log-probabilities before multiplying, so that neither
        # the value nor any gradient meets 0·(−∞).
        log_probs = jnp.where(where, log_probs, 0)
    return -jnp.sum(labels * log_probs, axis=-1)


def negative_log_likelihood(log_probs: Array, labels: Array) -> Array:
    """−log p(y) from log-probabilities (e.g. the output of a log-softmax), per example.

    Args:
      log_probs: (B, K) log-probabilities; −∞ entries are allowed where the
        label has no mass.
      labels: integer class indices (B,) or one-hot / soft labels (B, K).

    Returns:
      (B,) loss per example.
    """
    log_probs = jnp.asarray(log_probs)
    dtype = jnp.result_type(log_probs, float)
    log_probs = log_probs.astype(dtype)
    labels = _as_distribution(labels, log_probs.shape[-1], dtype, "log_probs", log_probs.shape)
    # Classes without label mass are dropped, not multiplied, so −∞ there is harmless.
    log_probs = jnp.where(labels != 0, log_probs, 0)
    return -jnp.sum(labels * log_probs, axis=-1)


def binary_cross_entropy_with_logits(logits: Array, targets: Array) -> Array:
    """−[t log σ(s) + (1 − t) log(1 − σ(s))], elementwise, from logits s.

    Written as max(s, 0) − s·t + log(1 + e^{−|s|}), which never overflows.

    Args:
      logits: any shape.
      targets: same shape, in [0, 1].

    Returns:
      The loss per element, same shape as logits.
    """
    logits = jnp.asarray(logits)
    logits = logits.astype(jnp.result_type(logits, float))
    targets = jnp.asarray(targets, logits.dtype)
    if targets.shape != logits.shape:
        raise UserError(f"targets have shape {targets.shape} but logits {logits.shape}; "
                        "they must match")
    return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
