"""Detection mAP in NumPy: VOC-style mAP@0.5 (all-point) and COCO-style mAP@[.5:.95] (101-point).

Inputs are per image: detections {boxes (D, 4), scores (D,), labels (D,)} and ground
truth {boxes (M, 4), labels (M,)}, corners in any common unit. A class without any
ground-truth box has no AP and is left out of the mean (so is a class nobody
predicted and nobody labelled); a class with boxes but no detections has AP 0.

The two styles differ in more than the thresholds:
  VOC (devkit 2010+): a detection is a true positive when its highest IoU with any box
    of its class exceeds the threshold and that box is not yet taken; AP is the area
    under the precision envelope at every recall the detections reach ("all-point").
  COCO (pycocotools): a detection takes the unmatched box with the highest IoU of at
    least the threshold; each image keeps its `max_detections` best per class; AP is
    the envelope's mean at the 101 recalls 0, 0.01, …, 1.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
COCO_RECALLS = np.linspace(0.0, 1.0, 101)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of corner boxes a (N, 4) and b (M, 4): (N, M), in float64."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _by_class(items: Sequence[dict], cls: int, with_scores: bool):
    out = []
    for item in items:
        keep = np.asarray(item["labels"]).reshape(-1) == cls
        boxes = np.asarray(item["boxes"], np.float64).reshape(-1, 4)[keep]
        if with_scores:
            out.append((boxes, np.asarray(item["scores"], np.float64).reshape(-1)[keep]))
        else:
            out.append(boxes)
    return out


def _precision_recall(scores: np.ndarray, tp: np.ndarray, num_gt: int):
    order = np.argsort(-scores, kind="mergesort")
    tps = np.cumsum(tp[order])
    fps = np.cumsum(~tp[order])
    recall = tps / num_gt
    precision = tps / np.maximum(tps + fps, np.finfo(np.float64).eps)
    return precision, recall


def _envelope(precision: np.ndarray) -> np.ndarray:
    """Precision made non-increasing in recall: p(r) = max over r' ≥ r."""
    return np.maximum.accumulate(precision[::-1])[::-1]


def all_point_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the precision envelope (VOC devkit since 2010)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = _envelope(np.concatenate([[0.0], precision, [0.0]]))
    changed = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[changed + 1] - r[changed]) * p[changed + 1]))


def coco_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """Mean envelope precision at the recalls 0, 0.01, …, 1 (0 beyond the last recall reached)."""
    p = _envelope(precision)
    idx = np.searchsorted(recall, COCO_RECALLS, side="left")
    q = np.zeros(len(COCO_RECALLS))
    reached = idx < len(p)
    q[reached] = p[idx[reached]]
    return float(np.mean(q))


def _voc_matches(dets, gts, threshold: float):
    """Per detection of one class (all images): score and whether it is a true positive."""
    scores, tps = [], []
    for (d_boxes, d_scores), g_boxes in zip(dets, gts):
        order = np.argsort(-d_scores, kind="mergesort")
        taken = np.zeros(len(g_boxes), bool)
        overlaps = box_iou(d_boxes[order], g_boxes)
        tp = np.zeros(len(order), bool)
        for i in range(len(order)):
            if len(g_boxes):
                j = int(np.argmax(overlaps[i]))
                if overlaps[i, j] > threshold and not taken[j]:
                    tp[i], taken[j] = True, True
        scores.append(d_scores[order])
        tps.append(tp)
    return np.concatenate(scores), np.concatenate(tps)


def _coco_matches(dets, gts, thresholds: np.ndarray, max_detections: int):
    """Per detection of one class (each image's best `max_detections`): scores (D,), tp (T, D)."""
    scores, tps = [], []
    for (d_boxes, d_scores), g_boxes in zip(dets, gts):
        order = np.argsort(-d_scores, kind="mergesort")[:max_detections]
        overlaps = box_iou(d_boxes[order], g_boxes)
        tp = np.zeros((len(thresholds), len(order)), bool)
        for t, threshold in enumerate(thresholds):
            taken = np.zeros(len(g_boxes), bool)
            for i in range(len(order)):
                candidates = np.where(taken, -1.0, overlaps[i])
                if len(g_boxes) and candidates.max() >= min(threshold, 1 - 1e-10):
                    j = int(np.argmax(candidates))
                    tp[t, i], taken[j] = True, True
        scores.append(d_scores[order])
        tps.append(tp)
    return np.concatenate(scores), np.concatenate(tps, axis=1)


def average_precisions(detections: Sequence[dict], ground_truth: Sequence[dict], num_classes: int,
                       *, style: str = "voc", iou_thresholds: Sequence[float] = (0.5,),
                       max_detections: int = 100) -> np.ndarray:
    """AP per (IoU threshold, class): (T, K), NaN for classes without ground truth.

    Args:
      detections: per image {boxes (D, 4), scores (D,), labels (D,)}.
      ground_truth: per image {boxes (M, 4), labels (M,)}, same length and order.
      num_classes: K; labels are 0…K-1.
      style: `voc` (VOC matching, all-point AP) or `coco` (COCO matching, 101-point AP).
      iou_thresholds: T thresholds.
      max_detections: per image and class, for `coco` only.
    """
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} images of detections but {len(ground_truth)} of ground truth")
    if style not in ("voc", "coco"):
        raise ValueError(f"style must be 'voc' or 'coco', got {style!r}")
    thresholds = np.asarray(iou_thresholds, np.float64)
    ap = np.full((len(thresholds), num_classes), np.nan)
    for c in range(num_classes):
        gts = _by_class(ground_truth, c, with_scores=False)
        num_gt = sum(len(g) for g in gts)
        if num_gt == 0:
            continue
        dets = _by_class(detections, c, with_scores=True)
        if style == "coco":
            scores, tp = _coco_matches(dets, gts, thresholds, max_detections)
        for t, threshold in enumerate(thresholds):
            if style == "voc":
                scores, tp_t = _voc_matches(dets, gts, threshold)
                precision, recall = _precision_recall(scores, tp_t, num_gt)
                ap[t, c] = all_point_ap(precision, recall)
            else:
                precision, recall = _precision_recall(scores, tp[t], num_gt)
                ap[t, c] = coco_ap(precision, recall)
    return ap


def mean_ap(detections: Sequence[dict], ground_truth: Sequence[dict], num_classes: int,
            **kwargs) -> float:
    """Mean of `average_precisions` over thresholds and the classes that have ground truth."""
    ap = average_precisions(detections, ground_truth, num_classes, **kwargs)
    return float(np.nanmean(ap)) if np.any(~np.isnan(ap)) else 0.0


def detection_metrics(detections: Sequence[dict], ground_truth: Sequence[dict],
                      num_classes: int) -> dict:
    """`map50` (VOC style), `map50_95` (COCO style), `map50_coco` and the per-class VOC APs."""
    voc = average_precisions(detections, ground_truth, num_classes, style="voc")[0]
    coco = average_precisions(detections, ground_truth, num_classes, style="coco",
                              iou_thresholds=COCO_IOU_THRESHOLDS)
    has_gt = ~np.isnan(voc)
    return {"map50": float(np.mean(voc[has_gt])) if has_gt.any() else 0.0,
            "map50_95": float(np.mean(coco[:, has_gt])) if has_gt.any() else 0.0,
            "map50_coco": float(np.mean(coco[0, has_gt])) if has_gt.any() else 0.0,
            "ap50_per_class": [None if np.isnan(v) else float(v) for v in voc]}


def from_padded(boxes: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                scores: np.ndarray | None = None) -> list[dict]:
    """Per-image dicts from padded arrays: boxes (N, M, 4), labels (N, M), mask (N, M)[, scores]."""
    out = []
    for i in range(len(boxes)):
        keep = np.asarray(mask[i], bool)
        item = {"boxes": boxes[i][keep], "labels": labels[i][keep]}
        if scores is not None:
            item["scores"] = scores[i][keep]
        out.append(item)
    return out
