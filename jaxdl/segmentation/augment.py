"""Random crop and horizontal flip applied jointly to images and their masks, inside jit."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdl.data import augment as augment_lib
from jaxdl.segmentation.losses import IGNORE_LABEL


def joint_crop_flip(key: jax.Array, image: jax.Array, mask: jax.Array, padding: int = 0,
                    crop_size: int | None = None, flip: bool = False,
                    mask_fill: int = IGNORE_LABEL) -> tuple[jax.Array, jax.Array]:
    """The same random crop and the same random flip for each image and its mask.

    The mask travels as one more channel of the image through `jaxdl.data.augment`, so
    the two cannot drift apart. The crop is either the classification one (pad by
    `padding` and crop back to H×W; padded mask pixels get `mask_fill`) or, with
    `crop_size` S, an S×S window at a random offset inside the image.

    Args:
      key: PRNG key; the result is a pure function of it.
      image: (B, H, W, C) float.
      mask: (B, H, W) integer labels.
      padding: p for the pad-and-crop mode (ignored when `crop_size` is set).
      crop_size: S ≤ min(H, W), or None.
      flip: mirror left–right with probability ½.
      mask_fill: label of mask pixels that come from padding.

    Returns:
      image (B, H', W', C) and mask (B, H', W') of the mask's dtype, with H' = W' = S
      when `crop_size` is set, else H, W.
    """
    crop_key, flip_key = jax.random.split(key)
    # Shifted so that the zeros of padding become `mask_fill`; exact in float32 for labels < 2^24.
    m = (mask.astype(jnp.float32) - mask_fill)[..., None]
    x = jnp.concatenate([image.astype(jnp.float32), m], axis=-1)
    if crop_size is not None:
        b, h, w, c = x.shape
        if not 0 < crop_size <= min(h, w):
            raise ValueError(f"crop_size {crop_size} must lie in 1…{min(h, w)} for {h}×{w} images")
        hi = jnp.array([[h - crop_size + 1, w - crop_size + 1]])
        offsets = jax.random.randint(crop_key, (b, 2), 0, hi)
        x = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (crop_size, crop_size, c)))(x, offsets)
    else:
        x = augment_lib.random_crop(crop_key, x, padding)
    if flip:
        x = augment_lib.random_flip(flip_key, x)
    out_mask = jnp.round(x[..., -1] + mask_fill).astype(mask.dtype)
    return x[..., :-1].astype(image.dtype), out_mask
