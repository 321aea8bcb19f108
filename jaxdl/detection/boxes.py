"""Boxes: IoU, SSD box coding (with variances), and SSD anchors over several feature maps.

Boxes are corners (ymin, xmin, ymax, xmax), normalised to [0, 1] by the image size,
like TFDS's `BBoxFeature`. Glossary: A anchors, M ground-truth boxes, N boxes.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

# SSD's variances: the box regression targets are divided by these (Liu et al., 2016).
VARIANCES = (0.1, 0.2)


def area(boxes: jnp.ndarray) -> jnp.ndarray:
    """(..., 4) → (...); degenerate boxes (max < min) have area 0."""
    return (jnp.maximum(boxes[..., 2] - boxes[..., 0], 0)
            * jnp.maximum(boxes[..., 3] - boxes[..., 1], 0))


def iou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Pairwise intersection over union: a (..., N, 4), b (..., M, 4) → (..., N, M).

    Two empty boxes have IoU 0, not NaN.
    """
    lo = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
    hi = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = jnp.prod(jnp.maximum(hi - lo, 0), axis=-1)
    union = area(a)[..., :, None] + area(b)[..., None, :] - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0)


def to_centre(boxes: jnp.ndarray) -> jnp.ndarray:
    """Corners (..., 4) → (cy, cx, h, w) (..., 4)."""
    size = boxes[..., 2:] - boxes[..., :2]
    return jnp.concatenate([boxes[..., :2] + size / 2, size], axis=-1)


def to_corners(centre: jnp.ndarray) -> jnp.ndarray:
    """(cy, cx, h, w) (..., 4) → corners (..., 4)."""
    half = centre[..., 2:] / 2
    return jnp.concatenate([centre[..., :2] - half, centre[..., :2] + half], axis=-1)


def encode(boxes: jnp.ndarray, anchors: jnp.ndarray,
           variances: Sequence[float] = VARIANCES) -> jnp.ndarray:
    """SSD regression targets of `boxes` relative to `anchors`, both corners (..., A, 4) of one shape.

    t = ((cy - cy_a) / (h_a v0), (cx - cx_a) / (w_a v0), log(h / h_a) / v1, log(w / w_a) / v1).
    Sizes are floored at 1e-6 so a padding box gives finite (if meaningless) targets.
    """
    b, a = to_centre(boxes), to_centre(anchors)
    b_size = jnp.maximum(b[..., 2:], 1e-6)
    a_size = jnp.maximum(a[..., 2:], 1e-6)
    offset = (b[..., :2] - a[..., :2]) / (a_size * variances[0])
    scale = jnp.log(b_size / a_size) / variances[1]
    return jnp.concatenate([offset, scale], axis=-1)


def decode(deltas: jnp.ndarray, anchors: jnp.ndarray,
           variances: Sequence[float] = VARIANCES) -> jnp.ndarray:
    """The inverse of `encode`: deltas and anchors (..., A, 4) of one shape → corners (..., A, 4)."""
    a = to_centre(anchors)
    centre = a[..., :2] + deltas[..., :2] * variances[0] * a[..., 2:]
    # Clipped before exp: an untrained head must not overflow to inf boxes.
    size = a[..., 2:] * jnp.exp(jnp.minimum(deltas[..., 2:] * variances[1], math.log(1000.0)))
    return to_corners(jnp.concatenate([centre, size], axis=-1))


def anchors_per_cell(aspect_ratios: Sequence[float]) -> int:
    """Anchors at each location of a map with these ratios: 2 squares + 2 per ratio (r and 1/r)."""
    return 2 + 2 * len(aspect_ratios)


def make_anchors(grid_sizes: Sequence[tuple[int, int]], scales: Sequence[float],
                 aspect_ratios: Sequence[Sequence[float]], clip: bool = True) -> np.ndarray:
    """SSD's default boxes for feature maps of the given sizes, finest first.

    Map k (an H_k × W_k grid) has at each cell centre ((i + ½)/H_k, (j + ½)/W_k): a square
    of side s_k, a square of side √(s_k s_{k+1}), and for each ratio r of map k boxes of
    width s_k √r and height s_k / √r and their transposes (ratios r and 1/r). The order is
    map, row i, column j, then that list: the order in which the SSD heads' outputs are
    flattened.

    Args:
      grid_sizes: (H_k, W_k) per map.
      scales: s_1 … s_{m+1}: one per map and one more for the last map's second square.
      aspect_ratios: per map, the ratios r > 1 (e.g. (2,) or (2, 3)).
      clip: clip the anchors to the image.

    Returns:
      (A, 4) float32 corners, A = Σ_k H_k W_k (2 + 2 len(ratios_k)).
    """
    if len(scales) != len(grid_sizes) + 1 or len(aspect_ratios) != len(grid_sizes):
        raise ValueError(f"{len(grid_sizes)} feature maps need {len(grid_sizes) + 1} scales and "
                         f"{len(grid_sizes)} aspect-ratio lists; got {len(scales)} and {len(aspect_ratios)}")
    out = []
    for k, ((h, w), ratios) in enumerate(zip(grid_sizes, aspect_ratios)):
        s, s_next = scales[k], scales[k + 1]
        shapes = [(s, s), (math.sqrt(s * s_next),) * 2]
        for r in ratios:
            shapes += [(s / math.sqrt(r), s * math.sqrt(r)), (s * math.sqrt(r), s / math.sqrt(r))]
        for i, j in itertools.product(range(h), range(w)):
            cy, cx = (i + 0.5) / h, (j + 0.5) / w
            out += [(cy - bh / 2, cx - bw / 2, cy + bh / 2, cx + bw / 2) for bh, bw in shapes]
    anchors = np.asarray(out, np.float32)
    return np.clip(anchors, 0, 1) if clip else anchors
