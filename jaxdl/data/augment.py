"""Training-time augmentation inside jit: random crop with padding and horizontal flip.

The AlexNet recipe (random crops and mirror images), on (B, H, W, C) batches, with
one key per step so the augmented batch is a pure function of (seed, step).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def random_crop(key: jax.Array, x: jax.Array, padding: int) -> jax.Array:
    """Pads each image by `padding` zeros on every side and crops it back at a random offset.

    Args:
      key: PRNG key.
      x: (B, H, W, C) images.
      padding: p; offsets are uniform in [0, 2p] along each axis.

    Returns:
      (B, H, W, C), each image shifted by up to p pixels.
    """
    if padding == 0:
        return x
    b, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
    return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, x: jax.Array) -> jax.Array:
    """Mirrors each image left–right with probability ½. x: (B, H, W, C)."""
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
    return jnp.where(flip, x[:, :, ::-1, :], x)


def augment(key: jax.Array, x: jax.Array, crop_padding: int = 0, flip: bool = False) -> jax.Array:
    """Random crop (if `crop_padding` > 0), then random flip (if `flip`), of (B, H, W, C) images."""
    crop_key, flip_key = jax.random.split(key)
    x = random_crop(crop_key, x, crop_padding)
    return random_flip(flip_key, x) if flip else x
