"""VGG-11/13/16/19 (Simonyan and Zisserman, 2015): configurations A, B, D and E."""
from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdl.nn.conv import Conv2D
from jaxdl.nn.dense import Dense
from jaxdl.nn.pool import max_pool

_STAGE_CHANNELS = (64, 128, 256, 512, 512)


class VGG(nn.Module):
    """VGG: five stages of 3×3 convolutions (pad 1), each closed by 2×2/2 max pooling,
    then fc6 → fc7 → fc8 with dropout 0.5 after fc6 and fc7. (B, 224, 224, 3) → (B, K).

    `stage_sizes` counts the convolutions per stage (channels 64, 128, 256, 512, 512);
    VGG-16 at 224×224 with K=1000 has 138,357,544 parameters. The flatten size follows
    the input (7×7×512 at 224); inputs smaller than 32×32 raise ValueError.
    `batch_norm=True` puts BatchNorm between each convolution (then without bias) and
    its ReLU. `small_input=True` is for 32×32 images: the convolutions are unchanged,
    the classifier sees the flattened 1×1×512 map and, by default, fc6/fc7 are 512
    wide instead of 4096 (`hidden` sets it). `width` scales convolutions and `hidden`.

    Features: `conv{s}_{i}` (stage s, convolution i, after ReLU: `conv4_3`, `conv5_3`
    for VGG-16), `pool1`…`pool5`, `fc6`, `fc7` (B, hidden).
    """

    stage_sizes: Sequence[int]
    num_classes: int = 1000
    width: float = 1.0
    small_input: bool = False
    batch_norm: bool = False
    hidden: int | None = None
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, return_features: bool = False):
        h, w = x.shape[1:3]
        least = 2 ** len(self.stage_sizes)
        if min(h, w) < least:
            raise ValueError(f"VGG needs inputs of at least {least}×{least} pixels, got {h}×{w}.")
        hidden = self.hidden or (512 if self.small_input else 4096)
        hidden = max(1, round(hidden * self.width))
        feats = {}
        x = jnp.asarray(x, self.dtype)
        for s, (n_convs, c) in enumerate(zip(self.stage_sizes, _STAGE_CHANNELS), start=1):
            for i in range(1, n_convs + 1):
                name = f"conv{s}_{i}"
                x = Conv2D(max(1, round(c * self.width)), 3, padding=1,
                           use_bias=not self.batch_norm, dtype=self.dtype, name=name)(x)
                if self.batch_norm:
                    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                     dtype=self.dtype, name=f"bn{s}_{i}")(x)
                x = feats[name] = nn.relu(x)
            x = feats[f"pool{s}"] = max_pool(x, 2)
        x = x.reshape((x.shape[0], -1))
        for name in ("fc6", "fc7"):
            x = feats[name] = nn.relu(Dense(hidden, dtype=self.dtype, name=name)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = Dense(self.num_classes, dtype=self.dtype, name="fc8")(x)
        logits = logits.astype(jnp.float32)
        return (logits, feats) if return_features else logits


VGG11 = partial(VGG, stage_sizes=(1, 1, 2, 2, 2))   # configuration A
VGG13 = partial(VGG, stage_sizes=(2, 2, 2, 2, 2))   # B
VGG16 = partial(VGG, stage_sizes=(2, 2, 3, 3, 3))   # D
VGG19 = partial(VGG, stage_sizes=(2, 2, 4, 4, 4))   # E

# For tests: one convolution per stage, a few channels, batch norm exercised.
_VGGTiny = partial(VGG, stage_sizes=(1, 1, 1, 1, 1), width=0.0625, small_input=True,
                   batch_norm=True)
