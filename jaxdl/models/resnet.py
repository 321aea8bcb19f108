"""ResNet-18/34/50/101/152 (He et al., 2016) with torchvision's layer and stride layout."""
from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jaxdl.nn.conv import Conv2D
from jaxdl.nn.dense import Dense
from jaxdl.nn.pool import max_pool


def _norm(train: bool, dtype: Any, name: str | None = None) -> nn.BatchNorm:
    # PyTorch's defaults (momentum 0.1 there is 0.9 here), so ported weights behave the same.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        dtype=dtype, name=name)


def _shortcut(x: jnp.ndarray, out: int, strides: int, train: bool, dtype: Any) -> jnp.ndarray:
    """Identity, or a 1×1 convolution + BN where the shape changes (option B)."""
    if x.shape[-1] == out and strides == 1:
        return x
    x = Conv2D(out, 1, strides, use_bias=False, dtype=dtype, name="proj_conv")(x)
    return _norm(train, dtype, "proj_bn")(x)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions: (B, H, W, C) → (B, H/s, W/s, F)."""

    filters: int
    strides: int = 1
    dtype: Any = jnp.float32
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        conv = partial(Conv2D, kernel_size=3, padding=1, use_bias=False, dtype=self.dtype)
        y = conv(self.filters, strides=self.strides)(x)
        y = nn.relu(_norm(train, self.dtype)(y))
        y = conv(self.filters)(y)
        y = _norm(train, self.dtype)(y)
        return nn.relu(y + _shortcut(x, self.filters, self.strides, train, self.dtype))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carrying the stride, as torchvision's "v1.5"), 1×1 expand ×4:
    (B, H, W, C) → (B, H/s, W/s, 4F)."""

    filters: int
    strides: int = 1
    dtype: Any = jnp.float32
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        conv = partial(Conv2D, use_bias=False, dtype=self.dtype)
        out = self.filters * self.expansion
        y = nn.relu(_norm(train, self.dtype)(conv(self.filters, 1)(x)))
        y = conv(self.filters, 3, self.strides, padding=1)(y)
        y = nn.relu(_norm(train, self.dtype)(y))
        y = _norm(train, self.dtype)(conv(out, 1)(y))
        return nn.relu(y + _shortcut(x, out, self.strides, train, self.dtype))


class ResNet(nn.Module):
    """ResNet: stem, four stages of residual blocks, global average pooling, dense K.

    (B, H, W, 3) → (B, K) for any H, W ≥ 1. Stem: 7×7/2 convolution (64) + BN + ReLU +
    3×3/2 max pooling; stages have 64, 128, 256, 512 filters (×`block_cls.expansion`),
    the first block of stages 2–4 halves the map. Convolutions followed by BN have no
    bias. At K=1000: ResNet-18 11,689,512, ResNet-34 21,797,672, ResNet-50 25,557,032
    parameters. `small_input=True` (32×32 images) uses a 3×3/1 stem convolution and no
    max pooling, so stage 4 is 4×4 at 32×32. `width` scales every convolution.

    Features: `stem` (after the max pooling; stride 4), `stage1`…`stage4` (strides 4,
    8, 16, 32; stride 1, 2, 4, 8 with `small_input`), `pool` (B, C) before the dense layer.
    """

    stage_sizes: Sequence[int]
    block_cls: type[nn.Module]
    num_classes: int = 1000
    width: float = 1.0
    small_input: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, return_features: bool = False):
        def ch(c: int) -> int:
            return max(1, round(c * self.width))

        feats = {}
        x = jnp.asarray(x, self.dtype)
        if self.small_input:
            x = Conv2D(ch(64), 3, padding=1, use_bias=False, dtype=self.dtype, name="stem_conv")(x)
        else:
            x = Conv2D(ch(64), 7, 2, padding=3, use_bias=False, dtype=self.dtype, name="stem_conv")(x)
        x = nn.relu(_norm(train, self.dtype, "stem_bn")(x))
        if not self.small_input:
            # torchvision's padding of one on each side (not SAME's none before, one after).
            x = max_pool(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf), 3, 2)
        feats["stem"] = x
        for i, n_blocks in enumerate(self.stage_sizes):
            for j in range(n_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = self.block_cls(ch(64 * 2 ** i), strides, dtype=self.dtype,
                                   name=f"stage{i + 1}_block{j + 1}")(x, train)
            feats[f"stage{i + 1}"] = x
        x = feats["pool"] = jnp.mean(x, axis=(1, 2))
        logits = Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        logits = logits.astype(jnp.float32)
        return (logits, feats) if return_features else logits


ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
ResNet101 = partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck)
ResNet152 = partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=Bottleneck)

# For tests: one block per stage, a few channels, 32×32 inputs.
_ResNetTiny = partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock, width=0.125,
                      small_input=True)
