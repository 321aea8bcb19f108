"""Convolutional models trained several steps per compiled call, in a rolled `lax.scan`.

  python -m benchmarks.loops [--models=lenet5,cnn1d] [--steps=10] [--rounds=7] [--min_chunk_s=0.3]

For each model, in interleaved turns: jaxdl's and plain Flax's single step, and each
of them `--steps` steps per call in a rolled loop (jaxdl: `jaxdl.train.train_steps`,
gathering its batches inside the call; plain Flax: `lax.scan` over batches it is
handed). XLA:CPU rewrites a convolution's gradients into the form its library runs
only at a program's top level, so inside a loop plain `lax` convolutions fall back to
XLA's own loops; jaxdl's convolutions (`impl="auto"`) write that form themselves
(`jaxdl.nn.conv`). Prints samples/s (medians) and each one's ratio to plain Flax's
single step (median of the per-turn ratios).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from jax import lax

from benchmarks import flax_plain
from benchmarks import run as bench

# --models, --rounds and --min_chunk_s are benchmarks.run's flags, with other defaults here.
flags.DEFINE_integer("steps", 10, "steps per call of the rolled loops")
FLAGS = flags.FLAGS
FLAGS.set_default("models", ["lenet5", "cnn1d"])


def flax_steps(name: str, num: int) -> bench.Contender:
    """Plain Flax's step, `num` per call in a rolled `lax.scan` over the given batches."""
    batch = bench.SPECS[name][0]
    xs, ys = bench._data(name, seed=1)
    rng = np.random.default_rng(2)
    idx = rng.integers(0, batch, size=(num, batch))
    xs, ys = jnp.asarray(xs[idx]), jnp.asarray(ys[idx])
    model = flax_plain.MODELS[name]()
    tx = optax.sgd(bench.LR, momentum=0.9)
    key = jax.random.PRNGKey(0)
    params, stats, opt = flax_plain.init(model, tx, xs[0, :1], key)
    step = functools.partial(flax_plain.train_step, model=model, tx=tx)

    def steps(params, stats, opt, count, xs, ys):
        def body(carry, xy):
            *carry, loss = step(*carry, xy[0], xy[1], key)
            return tuple(carry), loss
        return lax.scan(body, (params, stats, opt, count), (xs, ys))

    jitted = jax.jit(steps, donate_argnums=(0, 1, 2, 3))
    box = [params, stats, opt, jnp.zeros((), jnp.int32)]

    def run():
        box[:], losses = jitted(*box, xs, ys)
        jax.block_until_ready(losses)
    return bench.Contender(f"plain Flax, {num} per call", run, num * batch, 0.0)


def main(argv):
    del argv
    for name in FLAGS.models:
        spec = bench.SPECS[name]
        contenders = [bench.flax_step(name), flax_steps(name, FLAGS.steps), bench.jaxdl_step(name),
                      bench.jaxdl_steps(name, FLAGS.steps, False, f"jaxdl, {FLAGS.steps} per call")]
        rates = np.array(bench.interleave(contenders, FLAGS.rounds, FLAGS.min_chunk_s))
        print(f"{bench.TITLES[name]}, batch {spec[0]}, {FLAGS.rounds} turns:")
        for c, r in zip(contenders, rates):
            print(f"  {c.name:28s} {np.median(r):12,.0f} samples/s  "
                  f"{np.median(r / rates[0]):.2f}× plain Flax's single step")


if __name__ == "__main__":
    app.run(main)
