"""Per-pixel softmax cross-entropy with an ignore label and optional class weights."""
from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_LABEL = 255


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_label: int = IGNORE_LABEL,
                        class_weights: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross-entropy over the pixels whose label is not `ignore_label`.

    Args:
      logits: (B, H, W, K).
      labels: (B, H, W) integers in 0…K-1, or `ignore_label`; any other value is also
        ignored.
      ignore_label: the label of pixels that count for nothing (VOC's 255 borders).
      class_weights: (K,) or None. With weights w the loss is Σ w_y·CE / Σ w_y over the
        counted pixels (PyTorch's weighted mean), so uniform weights change nothing.

    Returns:
      A scalar; 0 when no pixel counts.
    """
    k = logits.shape[-1]
    valid = (labels != ignore_label) & (labels >= 0) & (labels < k)
    safe = jnp.where(valid, labels, 0)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ce = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    w = valid.astype(jnp.float32)
    if class_weights is not None:
        w = w * jnp.asarray(class_weights, jnp.float32)[safe]
    return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1e-12)
