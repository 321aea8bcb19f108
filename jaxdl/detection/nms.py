"""Greedy non-maximum suppression with fixed-size outputs, so it runs inside `jax.jit`."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdl.detection.boxes import iou


def nms(boxes: jnp.ndarray, scores: jnp.ndarray, *, iou_threshold: float, max_outputs: int,
        score_threshold: float = -jnp.inf) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Greedy NMS: repeatedly keep the best remaining box and drop those overlapping it.

    A box is dropped when its IoU with a kept, higher-scoring box exceeds
    `iou_threshold`; boxes scoring at most `score_threshold` are never kept. Cost is
    O(N²) memory and N sequential steps, so callers cap N (see `multiclass_nms`).

    Args:
      boxes: (N, 4) corners.
      scores: (N,).
      iou_threshold: overlap above which the lower-scoring box goes.
      max_outputs: D, the fixed output length.
      score_threshold: boxes must score above this.

    Returns:
      indices (D,) into `boxes` of the kept boxes, best first, and valid (D,): true for
      the kept ones (fewer than D are padded with index 0 and valid false).
    """
    n = scores.shape[0]
    order = jnp.argsort(-scores)
    sorted_boxes = boxes[order]
    candidate = scores[order] > score_threshold
    overlaps = iou(sorted_boxes, sorted_boxes) > iou_threshold

    def body(i, state):
        keep, suppressed = state
        keep_i = candidate[i] & ~suppressed[i]
        # Marks on boxes before i change nothing: they are already decided.
        return keep.at[i].set(keep_i), suppressed | (keep_i & overlaps[i])

    keep, _ = jax.lax.fori_loop(0, n, body, (jnp.zeros(n, bool), jnp.zeros(n, bool)))
    # The kept boxes, in score order, into the first slots of a fixed-size output.
    slot = jnp.where(keep, jnp.cumsum(keep) - 1, max_outputs)
    indices = jnp.zeros(max_outputs, jnp.int32).at[slot].set(order.astype(jnp.int32), mode="drop")
    valid = jnp.arange(max_outputs) < jnp.sum(keep)
    return indices, valid


def multiclass_nms(boxes: jnp.ndarray, scores: jnp.ndarray, *, iou_threshold: float,
                   max_outputs: int, score_threshold: float = 0.01,
                   pre_nms_top_k: int = 400) -> dict[str, jnp.ndarray]:
    """NMS within each class, over one image's boxes shared by all classes.

    The `pre_nms_top_k` best (box, class) pairs above `score_threshold` are the
    candidates. Boxes of class c are shifted by 2c along both axes before one NMS pass,
    so boxes in [0, 1] of different classes never overlap: the same result as one NMS
    per class, in one O(top_k²) pass.

    Args:
      boxes: (A, 4) corners in [0, 1].
      scores: (A, K) per-class scores (background excluded).

    Returns:
      {boxes (D, 4), scores (D,), labels (D,) int32, valid (D,) bool}, best first.
    """
    num_classes = scores.shape[1]
    flat = scores.reshape(-1)
    k = min(pre_nms_top_k, flat.shape[0])
    top_scores, top = jax.lax.top_k(flat, k)
    box_idx, labels = jnp.divmod(top, num_classes)
    cand = boxes[box_idx]
    shifted = cand + 2.0 * labels.astype(cand.dtype)[:, None]
    idx, valid = nms(shifted, top_scores, iou_threshold=iou_threshold, max_outputs=max_outputs,
                     score_threshold=score_threshold)
    return {"boxes": jnp.where(valid[:, None], cand[idx], 0.0),
            "scores": jnp.where(valid, top_scores[idx], 0.0),
            "labels": jnp.where(valid, labels[idx], 0).astype(jnp.int32),
            "valid": valid}
