"""SSD's loss: anchor matching by IoU, softmax cross-entropy with hard-negative mining, smooth L1."""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from jaxdl.detection import boxes as boxes_lib


def match(gt_boxes: jnp.ndarray, gt_labels: jnp.ndarray, gt_mask: jnp.ndarray, anchors: jnp.ndarray,
          iou_threshold: float = 0.5) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Assigns ground-truth boxes to one image's anchors (SSD's matching strategy).

    An anchor is positive when its best IoU with a real box is at least `iou_threshold`,
    and the best anchor of every real box is positive whatever its IoU, so each box is
    learned from at least one anchor.

    Args:
      gt_boxes: (M, 4) corners; gt_labels: (M,) classes 0…K-1; gt_mask: (M,) real rows.
      anchors: (A, 4).

    Returns:
      matched (A,) index of each anchor's box, classes (A,) targets in 0…K (0 =
      background, c + 1 for class c), positive (A,) bool.
    """
    overlaps = jnp.where(gt_mask[:, None], boxes_lib.iou(gt_boxes, anchors), -1.0)  # (M, A)
    matched = jnp.argmax(overlaps, axis=0)
    best = jnp.max(overlaps, axis=0)
    # Force each real box onto its best anchor; padding rows scatter out of range and drop.
    m = gt_boxes.shape[0]
    best_anchor = jnp.where(gt_mask, jnp.argmax(overlaps, axis=1), anchors.shape[0])
    matched = matched.at[best_anchor].set(jnp.arange(m), mode="drop")
    best = best.at[best_anchor].set(2.0, mode="drop")
    positive = best >= iou_threshold
    classes = jnp.where(positive, gt_labels[matched] + 1, 0)
    return matched, classes, positive


def ssd_loss(logits: jnp.ndarray, deltas: jnp.ndarray, gt_boxes: jnp.ndarray, gt_labels: jnp.ndarray,
             gt_mask: jnp.ndarray, anchors: jnp.ndarray, *, iou_threshold: float = 0.5,
             neg_pos_ratio: float = 3.0, box_weight: float = 1.0,
             variances: Sequence[float] = boxes_lib.VARIANCES) -> tuple[jnp.ndarray, dict]:
    """SSD's multibox loss of a batch, (L_conf + α L_loc) / N with N matched anchors.

    L_conf is the softmax cross-entropy over the positive anchors and the hardest
    negatives (highest background loss), at most `neg_pos_ratio` negatives per positive
    in each image; L_loc is the smooth L1 (Huber, δ = 1) loss between the predicted and
    encoded offsets of the positive anchors. N counts positives over the whole batch.

    Args:
      logits: (B, A, K+1); deltas: (B, A, 4).
      gt_boxes: (B, M, 4); gt_labels: (B, M); gt_mask: (B, M) padded ground truth.
      anchors: (A, 4).

    Returns:
      The scalar loss and {conf, loc, positives, accuracy} (accuracy: of the class
      prediction on positive anchors).
    """
    matched, classes, positive = jax.vmap(match, in_axes=(0, 0, 0, None, None))(
        gt_boxes, gt_labels, gt_mask, anchors, iou_threshold)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, classes)  # (B, A)

    # Hard-negative mining: rank each image's negatives by their loss, keep the top r·n_pos.
    num_pos = jnp.sum(positive, axis=1)
    num_neg = jnp.minimum(jnp.round(neg_pos_ratio * num_pos), positive.shape[1] - num_pos)
    # One sort gives each image's k-th largest negative loss; the negatives at or above it
    # are the hardest k (ties at the threshold may add a few, as in most implementations).
    neg_loss = jnp.where(positive, -jnp.inf, jax.lax.stop_gradient(ce))
    descending = -jnp.sort(-neg_loss, axis=1)
    k = num_neg.astype(jnp.int32)
    threshold = jnp.take_along_axis(descending, jnp.maximum(k - 1, 0)[:, None], axis=1)
    selected = positive | ((neg_loss >= threshold) & (k > 0)[:, None])

    matched_boxes = jnp.take_along_axis(gt_boxes, matched[..., None], axis=1)  # (B, A, 4)
    targets = boxes_lib.encode(matched_boxes, jnp.broadcast_to(anchors, matched_boxes.shape), variances)
    loc = jnp.sum(optax.huber_loss(deltas, targets, delta=1.0), axis=-1)
    n = jnp.maximum(jnp.sum(num_pos), 1).astype(jnp.float32)
    conf_loss = jnp.sum(jnp.where(selected, ce, 0.0)) / n
    loc_loss = jnp.sum(jnp.where(positive, loc, 0.0)) / n
    correct = jnp.sum(positive & (jnp.argmax(logits, -1) == classes))
    aux = {"conf": conf_loss, "loc": loc_loss, "positives": jnp.sum(num_pos) / positive.shape[0],
           "accuracy": correct / n}
    return conf_loss + box_weight * loc_loss, aux
