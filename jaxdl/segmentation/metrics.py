"""Confusion matrix summed over a whole split, then pixel accuracy, per-class IoU and mIoU."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.segmentation.losses import IGNORE_LABEL


def confusion_matrix(labels: jax.Array, predictions: jax.Array, num_classes: int,
                     ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """Counts (K, K) int32 of pixels with true class i (row) predicted as j (column).

    Args:
      labels: (...) true classes; pixels labelled `ignore_label` (or outside 0…K-1) are
        not counted.
      predictions: (...) predicted classes 0…K-1, the shape of `labels`.
      num_classes: K.

    Sum the matrices of all batches (never average them): the metrics of the sum are
    those of the whole split, whatever the batch sizes.
    """
    k = num_classes
    valid = (labels != ignore_label) & (labels >= 0) & (labels < k)
    idx = jnp.where(valid, labels * k + predictions, 0).reshape(-1)
    counts = jnp.zeros((k * k,), jnp.int32).at[idx].add(valid.reshape(-1).astype(jnp.int32))
    return counts.reshape(k, k)


def segmentation_metrics(confusion: np.ndarray) -> dict:
    """Pixel accuracy, per-class IoU and mean IoU of a (K, K) confusion matrix.

    IoU_c = TP / (TP + FP + FN). A class absent from both the ground truth and the
    predictions has no IoU (NaN in `per_class_iou`) and is left out of `miou`, the
    mean over the other classes; a class present in either counts, 0 if never right.

    Returns:
      {pixel_accuracy: float, per_class_iou: (K,) float64 with NaN for absent classes,
      miou: float (NaN if no class is present), pixels: int}.
    """
    c = np.asarray(confusion, np.int64)
    tp = np.diag(c).astype(np.float64)
    union = c.sum(0) + c.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = c.sum()
    present = ~np.isnan(iou)
    return {"pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
            "per_class_iou": iou,
            "miou": float(iou[present].mean()) if present.any() else float("nan"),
            "pixels": int(total)}
