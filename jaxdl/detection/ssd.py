"""SSD (Liu et al., 2016): class and box heads on several feature maps of a zoo backbone.

The backbone is any zoo model called as `apply(v, x, train=..., return_features=True)`;
SSD reads the named feature maps in `sources` (finest first), optionally adds the
paper's converted fc6/fc7 (`fc_from`) and extra stride-2 layers, and puts a 3×3
convolution per map predicting, at each cell, K + 1 class scores (0 = background) and
4 box offsets for each of its anchors (`jaxdl.detection.boxes.make_anchors`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.detection import boxes as boxes_lib
from jaxdl.detection import nms as nms_lib


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (init 20), as SSD's conv4_3."""

    scale_init: float = 20.0

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        scale = self.param("scale", nn.initializers.constant(self.scale_init), (x.shape[-1],))
        norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-10)
        return x / norm * scale.reshape((1,) * (x.ndim - 1) + (-1,))


class SSD(nn.Module):
    """Single-shot detector: (B, H, W, C) images → class logits (B, A, K+1) and box deltas (B, A, 4).

    Attributes:
      backbone: a zoo model (its classifier output is unused; build it with K=1).
      num_classes: K object classes; the heads predict K + 1 with 0 = background.
      sources: backbone feature names whose maps get heads, finest first.
      anchors_per_cell: A_k per map, for the source maps, then fc7, then the extras.
      fc_from: if set, the backbone feature (VGG: `conv5_3`) that SSD's converted fc6
        (3×3/1 max pooling, 3×3 convolution dilated 6) and fc7 (1×1) read; fc7 is a map.
      fc_channels: width of fc6 and fc7 (1024 in the paper).
      extra_channels: one stride-2 block per entry (1×1 to c/2, then 3×3/2 to c), each a map.
      l2norm_first: L2-normalise the first source map (SSD's conv4_3, whose activations
        are much larger than the later maps').
    """

    backbone: nn.Module
    num_classes: int
    sources: Sequence[str]
    anchors_per_cell: Sequence[int]
    fc_from: str | None = None
    fc_channels: int = 1024
    extra_channels: Sequence[int] = ()
    l2norm_first: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, return_maps: bool = False):
        _, feats = self.backbone(x, train=train, return_features=True)
        missing = [s for s in (*self.sources, self.fc_from) if s is not None and s not in feats]
        if missing:
            raise ValueError(f"the backbone has no feature {missing[0]!r}; it has {', '.join(feats)}")
        maps = [feats[s] for s in self.sources]
        if self.l2norm_first:
            maps[0] = L2Norm(name="l2norm")(maps[0])
        conv = lambda c, k, name, **kw: nn.Conv(c, k, dtype=self.dtype, name=name, **kw)  # noqa: E731
        y = maps[-1]
        if self.fc_from is not None:
            y = nn.max_pool(feats[self.fc_from], (3, 3), (1, 1), padding="SAME")
            y = nn.relu(conv(self.fc_channels, (3, 3), "fc6", padding=6, kernel_dilation=6)(y))
            y = nn.relu(conv(self.fc_channels, (1, 1), "fc7")(y))
            maps.append(y)
        for i, c in enumerate(self.extra_channels):
            y = nn.relu(conv(max(1, c // 2), (1, 1), f"extra{i + 1}_1")(y))
            y = nn.relu(conv(c, (3, 3), f"extra{i + 1}_2", strides=2, padding=1)(y))
            maps.append(y)
        if len(maps) != len(self.anchors_per_cell):
            raise ValueError(f"SSD has {len(maps)} feature maps but anchors_per_cell has "
                             f"{len(self.anchors_per_cell)} entries")
        logits, deltas = [], []
        for k, (m, a) in enumerate(zip(maps, self.anchors_per_cell)):
            b = m.shape[0]
            logits.append(conv(a * (self.num_classes + 1), (3, 3), f"cls{k}", padding=1)(m)
                          .reshape(b, -1, self.num_classes + 1))
            deltas.append(conv(a * 4, (3, 3), f"box{k}", padding=1)(m).reshape(b, -1, 4))
        out = {"logits": jnp.concatenate(logits, 1).astype(jnp.float32),
               "deltas": jnp.concatenate(deltas, 1).astype(jnp.float32)}
        if return_maps:
            out["maps"] = maps
        return out


def grid_sizes(model: SSD, input_shape: Sequence[int]) -> list[tuple[int, int]]:
    """(H_k, W_k) of each map the heads see, for (H, W, C) inputs (traced, not computed)."""
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}
    out, _ = jax.eval_shape(lambda x: model.init_with_output(rngs, x, return_maps=True), x)
    return [tuple(m.shape[1:3]) for m in out["maps"]]


def detect(logits: jnp.ndarray, deltas: jnp.ndarray, anchors: jnp.ndarray, *,
           variances: Sequence[float] = boxes_lib.VARIANCES, score_threshold: float = 0.01,
           iou_threshold: float = 0.45, max_detections: int = 100,
           pre_nms_top_k: int = 400) -> dict[str, jnp.ndarray]:
    """One image's detections: softmax, decode, per-class NMS (`jaxdl.detection.nms.multiclass_nms`).

    Args:
      logits: (A, K+1) class logits, 0 = background.
      deltas: (A, 4) box offsets.
      anchors: (A, 4).

    Returns:
      {boxes (D, 4) clipped to the image, scores (D,), labels (D,) in 0…K-1, valid (D,)},
      D = `max_detections`, best first; rows past the last valid one are padding.
    """
    probs = jax.nn.softmax(logits, axis=-1)[:, 1:]
    boxes = jnp.clip(boxes_lib.decode(deltas, anchors, variances), 0.0, 1.0)
    return nms_lib.multiclass_nms(boxes, probs, iou_threshold=iou_threshold,
                                  score_threshold=score_threshold, max_outputs=max_detections,
                                  pre_nms_top_k=pre_nms_top_k)
