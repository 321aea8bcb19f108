"""LeNet-5 (LeCun et al., 1998) and the zoo's parameter counter."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdl.nn.conv import Conv2D
from jaxdl.nn.dense import Dense
from jaxdl.nn.pool import avg_pool, max_pool


def _side(h: int, small_input: bool) -> int:
    """Side of the C5 map for an input side `h` (below 1: the input is too small)."""
    if small_input:
        return h // 4
    h = (h - 4) // 2      # C1, S2
    h = (h - 4) // 2      # C3, S4
    return h - 4          # C5


class LeNet5(nn.Module):
    """LeNet-5: C1 6@5×5, S2, C3 16@5×5, S4, C5 120@5×5, F6 84, output K.

    (B, 32, 32, C) → (B, K). C3 is fully connected to S2 (not the paper's sparse
    table), so 10 classes give 61,706 parameters. Larger inputs make C5 larger than
    1×1, and F6 sees the flattened map. `classic=True` is the paper's tanh with 2×2/2
    average pooling (without its trainable subsampling coefficients); `classic=False`
    uses ReLU and max pooling. `small_input=True` SAME-pads every convolution, so the
    map shrinks only by pooling (C5: H/4 × W/4): 8×8 digits or 28×28 MNIST fit as is.

    Features: `C1`, `S2`, `C3`, `S4`, `C5` (maps) and `F6` (B, 84).
    """

    num_classes: int = 10
    width: float = 1.0
    small_input: bool = False
    classic: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, return_features: bool = False):
        h, w = x.shape[1:3]
        if min(_side(h, self.small_input), _side(w, self.small_input)) < 1:
            least = next(s for s in range(1, 1024) if _side(s, self.small_input) >= 1)
            raise ValueError(f"LeNet5(small_input={self.small_input}) needs inputs of at least "
                             f"{least}×{least} pixels, got {h}×{w}.")
        act = jnp.tanh if self.classic else nn.relu
        pool = avg_pool if self.classic else max_pool
        padding = "zero" if self.small_input else "valid"

        def ch(c: int) -> int:
            return max(1, round(c * self.width))

        def conv(c: int, name: str):
            return Conv2D(ch(c), 5, padding=padding, dtype=self.dtype, name=name)

        feats = {}
        x = jnp.asarray(x, self.dtype)
        x = feats["C1"] = act(conv(6, "C1")(x))
        x = feats["S2"] = pool(x, 2)
        x = feats["C3"] = act(conv(16, "C3")(x))
        x = feats["S4"] = pool(x, 2)
        x = feats["C5"] = act(conv(120, "C5")(x))
        x = x.reshape((x.shape[0], -1))
        x = feats["F6"] = act(Dense(ch(84), dtype=self.dtype, name="F6")(x))
        logits = Dense(self.num_classes, dtype=self.dtype, name="output")(x)
        logits = logits.astype(jnp.float32)
        return (logits, feats) if return_features else logits
