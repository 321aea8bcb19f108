"""FCN-32s/16s/8s (Long et al., 2015) on a zoo VGG, and U-Net (Ronneberger et al., 2015).

Both map (B, H, W, C) images to per-pixel logits (B, H, W, K) and reach a zoo backbone
through its named features (`backbone(x, train=..., return_features=True)`). The
backbone is built by the caller with its classifier made negligible (`num_classes=1`,
and `hidden=1` for VGG), since only its feature maps are used.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.nn.conv import Conv2D
from jaxdl.nn.pool import max_pool

UPSAMPLING = ("bilinear", "learned")


def bilinear_kernel(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """Transposed-convolution kernel (k, k, C, C) that starts as bilinear interpolation."""
    del key
    k, _, cin, cout = shape
    factor = (k + 1) // 2
    centre = factor - 1 if k % 2 == 1 else factor - 0.5
    f = 1 - np.abs(np.arange(k) - centre) / factor
    kernel = np.zeros(shape, np.float32)
    for c in range(min(cin, cout)):
        kernel[:, :, c, c] = np.outer(f, f)
    return jnp.asarray(kernel, dtype)


class Upsample(nn.Module):
    """Resizes (B, h, w, C) to (B, H, W, C): bilinear, or a learned transposed convolution.

    The learned one has stride H/h (which must be an integer, the same along W) and a
    2·stride kernel initialised to bilinear interpolation, as in FCN.
    """

    mode: str = "bilinear"

    @nn.compact
    def __call__(self, x: jax.Array, size: tuple[int, int]) -> jax.Array:
        b, h, w, c = x.shape
        if (h, w) == tuple(size):
            return x
        if self.mode == "bilinear":
            return jax.image.resize(x, (b, *size, c), "bilinear")
        if self.mode != "learned":
            raise ValueError(f"upsampling must be one of {UPSAMPLING}, got {self.mode!r}")
        f = size[0] // h
        if f * h != size[0] or f * w != size[1]:
            raise ValueError(f"learned upsampling needs an integer factor, got {h}×{w} → {size[0]}×{size[1]}")
        return nn.ConvTranspose(c, (2 * f, 2 * f), (f, f), padding="SAME", use_bias=False,
                                kernel_init=bilinear_kernel, dtype=x.dtype)(x)


class FCN(nn.Module):
    """Fully convolutional network on a VGG's pool3, pool4 and pool5 features.

    The classifier becomes convolutions (fc6: `fc_kernel`² × `fc_channels`, fc7: 1×1,
    each ReLU + dropout) on pool5 (stride 32), then a 1×1 scoring layer to K classes.
    Each name in `skips` (pool4, then pool3) adds a zero-initialised 1×1 score of that
    feature map to the scores upsampled ×2; the result is upsampled to H×W.
    FCN-32s has no skips, FCN-16s pool4, FCN-8s pool4 and pool3.
    (B, H, W, C) → (B, H, W, K), H and W multiples of 32.
    """

    backbone: nn.Module
    num_classes: int
    skips: Sequence[str] = ()
    fc_channels: int = 4096
    fc_kernel: int = 7
    dropout_rate: float = 0.5
    upsample: str = "bilinear"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        size = x.shape[1:3]
        _, feats = self.backbone(x, train=train, return_features=True)
        y = feats["pool5"]
        for name, k in (("fc6", self.fc_kernel), ("fc7", 1)):
            y = nn.relu(nn.Conv(self.fc_channels, (k, k), padding="SAME", name=name)(y))
            y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = nn.Conv(self.num_classes, (1, 1), kernel_init=nn.initializers.zeros, name="score_fr")(y)
        for name in self.skips:
            skip = feats[name]
            y = Upsample(self.upsample, name=f"up_{name}")(y, skip.shape[1:3])
            y = y + nn.Conv(self.num_classes, (1, 1), kernel_init=nn.initializers.zeros,
                            name=f"score_{name}")(skip)
        y = Upsample(self.upsample, name="up_final")(y, size)
        return y.astype(jnp.float32)


FCN32s = partial(FCN, skips=())
FCN16s = partial(FCN, skips=("pool4",))
FCN8s = partial(FCN, skips=("pool4", "pool3"))


class _DoubleConv(nn.Module):
    """Two 3×3 convolutions, each with batch norm and ReLU: (B, H, W, C) → (B, H, W, F)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for _ in range(2):
            x = Conv2D(self.features, 3, padding=1, use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
            x = nn.relu(x)
        return x


class UNet(nn.Module):
    """U-Net: an encoder, then a decoder that upsamples ×2 and concatenates the encoder's
    map of the same size before two 3×3 convolutions, then 1×1 scores to K classes.

    Without `backbone` the encoder is U-Net's own: `features` (F_0 … F_L) gives the
    widths of L+1 levels of two 3×3 convolutions (batch norm, ReLU, 'same' padding, so
    the output keeps the input size), with 2×2 max pooling between them. With a zoo
    `backbone`, its named `backbone_features` (shallowest first, the last one the
    bottom, e.g. ResNet's stem, stage1…stage4) are the encoder; the decoder's width
    at each level is that of the skip it joins, and the scores are upsampled to H×W.
    `upsample`: `learned` (a 2×2/2 transposed convolution, as in the paper) or
    `bilinear`. (B, H, W, C) → (B, H, W, K); without a backbone H, W must be
    multiples of 2^L.
    """

    num_classes: int
    features: Sequence[int] = (64, 128, 256, 512, 1024)
    backbone: nn.Module | None = None
    backbone_features: Sequence[str] = ("stem", "stage1", "stage2", "stage3", "stage4")
    upsample: str = "learned"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        size = x.shape[1:3]
        if self.backbone is None:
            maps = []
            y = x
            for i, f in enumerate(self.features):
                if i:
                    y = max_pool(y, 2)
                y = _DoubleConv(f, name=f"down{i}")(y, train)
                maps.append(y)
        else:
            _, feats = self.backbone(x, train=train, return_features=True)
            maps = [feats[n] for n in self.backbone_features]
        y = maps[-1]
        for i in range(len(maps) - 2, -1, -1):
            skip = maps[i]
            f = skip.shape[-1]
            if self.upsample == "learned" and skip.shape[1] == 2 * y.shape[1] and skip.shape[2] == 2 * y.shape[2]:
                y = nn.ConvTranspose(f, (2, 2), (2, 2), name=f"upconv{i}")(y)
            else:
                if self.upsample not in UPSAMPLING:
                    raise ValueError(f"upsampling must be one of {UPSAMPLING}, got {self.upsample!r}")
                y = jax.image.resize(y, (y.shape[0], *skip.shape[1:3], y.shape[-1]), "bilinear")
            y = _DoubleConv(f, name=f"up{i}")(jnp.concatenate([skip, y.astype(skip.dtype)], -1), train)
        y = nn.Conv(self.num_classes, (1, 1), name="score")(y)
        y = Upsample("bilinear", name="up_final")(y, size)  # a backbone's stem may have stride > 1
        return y.astype(jnp.float32)


SEGMENTERS = {"FCN32s": FCN32s, "FCN16s": FCN16s, "FCN8s": FCN8s, "UNet": UNet}

# For tests: a few channels, two poolings.
_UNetTiny = partial(UNet, features=(4, 8, 16))
