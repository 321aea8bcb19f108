"""GoogLeNet / Inception-v1 (Szegedy et al., 2015) with the paper's auxiliary classifiers."""
from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdl.nn.conv import Conv2D
from jaxdl.nn.dense import Dense
from jaxdl.nn.norm import LocalResponseNorm
from jaxdl.nn.pool import avg_pool, max_pool

# The paper's Table 1: name, #1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj.
INCEPTION_V1 = (
    ("3a", 64, 96, 128, 16, 32, 32),
    ("3b", 128, 128, 192, 32, 96, 64),
    ("4a", 192, 96, 208, 16, 48, 64),
    ("4b", 160, 112, 224, 24, 64, 64),
    ("4c", 128, 128, 256, 24, 64, 64),
    ("4d", 112, 144, 288, 32, 64, 64),
    ("4e", 256, 160, 320, 32, 128, 128),
    ("5a", 256, 160, 320, 32, 128, 128),
    ("5b", 384, 192, 384, 48, 128, 128),
)

# Weights of the main loss and of the two auxiliary losses during training (paper, §5).
googlenet_loss_weights = (1.0, 0.3, 0.3)


def aux_weighted_loss(main_loss: jnp.ndarray, aux_losses: Sequence[jnp.ndarray],
                      weight: float = 0.3) -> jnp.ndarray:
    """The training loss of GoogLeNet: main_loss + weight · Σ aux_losses."""
    return main_loss + weight * sum(aux_losses)


def _conv(features: int, kernel: int, dtype: Any, name: str | None = None, strides: int = 1):
    """A convolution + ReLU (the paper's every convolution is followed by a ReLU)."""
    conv = Conv2D(features, kernel, strides, padding=kernel // 2, dtype=dtype, name=name)
    return lambda x: nn.relu(conv(x))


class Inception(nn.Module):
    """Four parallel branches concatenated on channels: (B, H, W, C) → (B, H, W, c1+c3+c5+cp).

    1×1; 1×1 → 3×3; 1×1 → 5×5; 3×3/1 max pooling → 1×1 projection.
    """

    c1: int
    c3r: int
    c3: int
    c5r: int
    c5: int
    cp: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        d = self.dtype
        b1 = _conv(self.c1, 1, d)(x)
        b3 = _conv(self.c3, 3, d)(_conv(self.c3r, 1, d)(x))
        b5 = _conv(self.c5, 5, d)(_conv(self.c5r, 1, d)(x))
        bp = _conv(self.cp, 1, d)(max_pool(x, 3, 1, "same"))
        return jnp.concatenate([b1, b3, b5, bp], axis=-1)


class AuxClassifier(nn.Module):
    """5×5/3 average pooling → 1×1 conv 128 → dense 1024 → dropout 0.7 → dense K.

    (B, 14, 14, C) → (B, K); the map must be at least 5×5.
    """

    num_classes: int
    width: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = avg_pool(x, 5, 3)
        x = _conv(max(1, round(128 * self.width)), 1, self.dtype)(x)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(Dense(max(1, round(1024 * self.width)), dtype=self.dtype)(x))
        x = nn.Dropout(0.7, deterministic=not train)(x)
        return Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class GoogLeNet(nn.Module):
    """GoogLeNet (Inception-v1): (B, 224, 224, 3) → (B, K) for any H, W ≥ 1.

    Stem: 7×7/2 conv 64 → 3×3/2 max pool → LRN → 1×1 conv 64 → 3×3 conv 192 → LRN →
    3×3/2 max pool (28×28 at 224); modules 3a, 3b, pool, 4a…4e, pool, 5a, 5b (the
    paper's `inception` table: 256, 480, 512, 512, 512, 528, 832, 832, 1024 channels);
    global average pooling, dropout 0.4, dense K. Poolings round up (SAME), as the
    paper's 112 → 56 → 28 → 14 → 7. The paper gives no LRN constants; these are the
    reference Caffe model's (size 5, alpha 1e-4 / 5, beta 0.75, k 1).
    `small_input=True` (32×32 images) replaces the stem by one 3×3/1 conv 192.
    `inception_cfg` is the module table (rows as `INCEPTION_V1`); a 3×3/2 max pooling
    precedes the first module of each new stage (the digit of its name).
    `width` scales every convolution and the auxiliary dense layers.

    `aux_logits=True` adds the two auxiliary classifiers on 4a and 4d (`AuxClassifier`);
    they need a 4a map of at least 5×5 (inputs ≥ 65×65, or ≥ 9×9 with `small_input`).
    Return convention, the same whether or not aux classifiers exist:
      - `return_features=False`: the logits (B, K); with `aux_logits` and `train=True`,
        the pair `(logits, (aux1, aux2))`, each (B, K). Combine the three
        cross-entropies with `aux_weighted_loss` (or `googlenet_loss_weights`).
      - `return_features=True`: always `(logits, features)`; the aux logits, when
        computed, are `features["aux1"]` and `features["aux2"]`.
    At evaluation (`train=False`) the aux classifiers are not run.

    Features: `stem` (B, H/8, W/8, 192; H×W with `small_input`), `inception3a`…
    `inception5b`, `pool` (B, 1024).
    """

    num_classes: int = 1000
    width: float = 1.0
    small_input: bool = False
    aux_logits: bool = False
    dropout_rate: float = 0.4
    inception_cfg: Sequence[tuple] = INCEPTION_V1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, return_features: bool = False):
        h, w = x.shape[1:3]
        # 4a sees the input downsampled by 16 (by 2 with `small_input`), rounded up.
        stride_4a = 2 if self.small_input else 16
        least = 4 * stride_4a + 1
        if self.aux_logits and min(h, w) < least:
            raise ValueError(f"GoogLeNet(aux_logits=True, small_input={self.small_input}) needs "
                             f"inputs of at least {least}×{least} pixels, got {h}×{w}.")

        def ch(c: int) -> int:
            return max(1, round(c * self.width))

        def pool(y):
            return max_pool(y, 3, 2, "same")

        d = self.dtype
        lrn = LocalResponseNorm(k=1.0, n=5, alpha=1e-4 / 5, beta=0.75)
        # Aux parameters are created at init even for train=False so a later train step finds them.
        run_aux = self.aux_logits and (train or self.is_initializing())
        feats, aux = {}, []
        x = jnp.asarray(x, d)
        if self.small_input:
            x = _conv(ch(192), 3, d, "stem_conv")(x)
        else:
            x = pool(_conv(ch(64), 7, d, "conv1", strides=2)(x))
            x = _conv(ch(64), 1, d, "conv2_reduce")(lrn(x))
            x = pool(lrn(_conv(ch(192), 3, d, "conv2")(x)))
        feats["stem"] = x
        stage = None
        for name, *cs in self.inception_cfg:
            if stage is not None and name[0] != stage:  # 3×3/2 max pooling between stages
                x = pool(x)
            stage = name[0]
            x = Inception(*(ch(c) for c in cs), dtype=d, name=f"inception{name}")(x)
            feats[f"inception{name}"] = x
            if run_aux and name in ("4a", "4d"):
                head = AuxClassifier(self.num_classes, self.width, d, name=f"aux{len(aux) + 1}")
                aux.append(head(x, train))
        x = feats["pool"] = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = Dense(self.num_classes, dtype=d, name="fc")(x).astype(jnp.float32)
        if aux and train:
            feats["aux1"], feats["aux2"] = aux
        if return_features:
            return logits, feats
        return (logits, tuple(aux)) if aux and train else logits


# For tests: 32×32 inputs, a few channels per branch, four modules (those the aux
# classifiers hang on among them), aux classifiers on.
_GoogLeNetTiny = partial(
    GoogLeNet, width=0.0625, small_input=True, aux_logits=True,
    inception_cfg=tuple(m for m in INCEPTION_V1 if m[0] in ("3a", "4a", "4d", "5a")))
