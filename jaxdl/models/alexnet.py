"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012) with the paper's LRN, dropout and two towers."""
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdl.nn.conv import Conv2D
from jaxdl.nn.dense import Dense
from jaxdl.nn.norm import LocalResponseNorm
from jaxdl.nn.pool import max_pool


def _side(h: int, small_input: bool) -> int:
    """Side of the pool5 map for an input side `h` (below 1: the input is too small)."""
    if not small_input:
        h = (h - 11) // 4 + 1             # conv1, 11×11 stride 4
        if h < 1:
            return 0
    for _ in range(3):                    # pool1, pool2, pool5: 3×3 stride 2
        h = (h - 3) // 2 + 1
        if h < 1:
            return 0
    return h


class AlexNet(nn.Module):
    """AlexNet: five convolutions and three dense layers, (B, 227, 227, 3) → (B, K).

    conv1 96@11×11/4 → ReLU → LRN → max pool 3×3/2 → conv2 256@5×5 → ReLU → LRN → pool
    → conv3 384@3×3 → conv4 384@3×3 → conv5 256@3×3 → pool → fc6 → fc7 → fc8, with
    dropout 0.5 after fc6 and fc7. At 227×227 the layers hold 290,400 – 186,624 –
    64,896 – 64,896 – 43,264 – 4,096 – 4,096 – K neurons and the model 62,378,344
    parameters for K=1000 (60,965,224 with `groups=2`, the paper's two towers:
    conv2, conv4 and conv5 see only their own tower's half of the channels).
    The flatten size follows the input; anything smaller than 67×67 raises ValueError.

    `small_input=True` (for 32×32 images) replaces conv1 with a 3×3 stride-1 convolution
    and by default narrows fc6/fc7 to 512 (`hidden` sets it); pool5 is then 3×3 at 32×32.
    `width` scales every convolution and the hidden dense width.

    Features: `conv1`…`conv5` (after ReLU), `pool1`, `pool2`, `pool5`, `fc6`, `fc7`
    (B, hidden), `fc8` (the logits).
    """

    num_classes: int = 1000
    width: float = 1.0
    small_input: bool = False
    groups: int = 1
    hidden: int | None = None
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, return_features: bool = False):
        h, w = x.shape[1:3]
        if min(_side(h, self.small_input), _side(w, self.small_input)) < 1:
            least = next(s for s in range(1, 1024) if _side(s, self.small_input) >= 1)
            raise ValueError(f"AlexNet(small_input={self.small_input}) needs inputs of at least "
                             f"{least}×{least} pixels, got {h}×{w}.")

        def ch(c: int) -> int:
            # Both towers must get the same number of channels.
            return max(1, round(c * self.width / self.groups)) * self.groups

        def conv(c, k, name, stride=1, pad=0, groups=1):
            return Conv2D(ch(c), k, stride, padding=pad, groups=groups, dtype=self.dtype, name=name)

        def pool(y):
            return max_pool(y, 3, 2)

        hidden = self.hidden or (512 if self.small_input else 4096)
        hidden = max(1, round(hidden * self.width))
        lrn = LocalResponseNorm(k=2.0, n=5, alpha=1e-4, beta=0.75)
        g = self.groups
        feats = {}
        x = jnp.asarray(x, self.dtype)
        if self.small_input:
            x = nn.relu(conv(96, 3, "conv1", pad=1)(x))
        else:
            x = nn.relu(conv(96, 11, "conv1", stride=4)(x))
        feats["conv1"] = x
        x = feats["pool1"] = pool(lrn(x))
        x = feats["conv2"] = nn.relu(conv(256, 5, "conv2", pad=2, groups=g)(x))
        x = feats["pool2"] = pool(lrn(x))
        x = feats["conv3"] = nn.relu(conv(384, 3, "conv3", pad=1)(x))
        x = feats["conv4"] = nn.relu(conv(384, 3, "conv4", pad=1, groups=g)(x))
        x = feats["conv5"] = nn.relu(conv(256, 3, "conv5", pad=1, groups=g)(x))
        x = feats["pool5"] = pool(x)
        x = x.reshape((x.shape[0], -1))
        for name in ("fc6", "fc7"):
            x = feats[name] = nn.relu(Dense(hidden, dtype=self.dtype, name=name)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = Dense(self.num_classes, dtype=self.dtype, name="fc8")(x)
        logits = feats["fc8"] = logits.astype(jnp.float32)
        return (logits, feats) if return_features else logits


# For tests: 32×32 inputs, a few channels per layer.
_AlexNetTiny = partial(AlexNet, width=0.0625, small_input=True, groups=2)
