"""The benchmark models' convolutions, layer by layer: jaxdl on the CPU against PyTorch.

  python -m benchmarks.layers [--models=resnet18,vgg11] [--rounds=5] [--min_chunk_s=0.2]

For each 3×3 convolution shape of ResNet-18 and VGG-11 (32×32×3 input, batch 64), the
three products a train step takes of it, each compiled and timed on its own: the
forward pass, the input gradient and the kernel gradient.
jaxdl's are `jaxdl.nn.conv2d` (`impl="auto"`, the formulation its models use on the
CPU) and its reverse mode, compiled with `jaxdl.compiler.jit`; PyTorch's are
`torch.nn.functional.conv2d` and the two halves of `aten.convolution_backward`, which
its autograd runs, on 2 threads. All six take turns, interleaved in a new random order
every round. A first layer's input gradient is left out (a train step does not take
it). Prints milliseconds (medians), GFLOP/s (2 · batch · output positions · taps ·
channels in · channels out per product, padding included) and jaxdl's speed as a
multiple of PyTorch's (median of the per-turn ratios), as a Markdown table, and
writes it to `layers.md` and the numbers to `layers.json` in `--out_dir` (this
folder by default); `python -m benchmarks.run` puts `layers.md` into `RESULTS.md`.

Where a model trains slower in jaxdl than in PyTorch, this shows which layers and
which of the three products it loses in. ResNet-18's strided and 1×1 layers are left
out: its 3×3 unstrided layers carry most of its arithmetic. LeNet-5 is left out too:
its products take a millisecond or less, and alone each one also pays for its output's
fresh memory (the patches of its first layer are 10 MB), which the train step does not
in the same way, so its profile in `RESULTS.md` is the better guide.
"""
from __future__ import annotations

import ctypes
import sys


def _keep_freed_memory() -> bool:
    """glibc: one malloc arena, no mmap for large blocks, no trimming of the heap.

    Alone, each product's output and temporaries are fresh memory every call. By default
    glibc maps a large block anew for each call and unmaps it when it is freed (above a
    threshold that starts at 128 KB and rises to at most 32 MB as such blocks are freed;
    on threads other than the main one, any block over 64 MB), so every call pays a page
    fault per 4 KB page it touches. Kept in the heap instead, both frameworks' products are timed
    without those faults: what the table compares is the arithmetic. Set before JAX and
    PyTorch start their threads (the arena limit applies to arenas made after it).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
    return all(mallopt(option, value) == 1
               for option, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2 ** 31 - 1)))


KEPT = _keep_freed_memory()

import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import run as bench  # noqa: E402  (exits with a one-line message without PyTorch)
from benchmarks.run import torch  # noqa: E402
from jaxdl import compiler  # noqa: E402
from jaxdl.nn import conv2d  # noqa: E402

# --models, --rounds, --min_chunk_s and --out_dir are benchmarks.run's flags, with other
# defaults here.
FLAGS = flags.FLAGS
FLAGS.set_default("models", ["resnet18", "vgg11"])
FLAGS.set_default("rounds", 5)
FLAGS.set_default("min_chunk_s", 0.2)

# Per model: batch, then (map size, channels in, channels out, kernel, padding) per layer.
LAYERS = {
    "resnet18": (64, [(32, 3, 64, 3, 1), (32, 64, 64, 3, 1), (16, 128, 128, 3, 1),
                      (8, 256, 256, 3, 1), (4, 512, 512, 3, 1)]),
    "vgg11": (64, [(32, 3, 64, 3, 1), (16, 64, 128, 3, 1), (8, 128, 256, 3, 1), (8, 256, 256, 3, 1),
                   (4, 256, 512, 3, 1), (4, 512, 512, 3, 1), (2, 512, 512, 3, 1)]),
}
PARTS = ("forward", "input gradient", "kernel gradient")


def _jaxdl_parts(x, kernel, dy, padding):
    """The three products as compiled jaxdl functions of no arguments that block."""
    def fwd(x, kernel):
        return conv2d(x, kernel, padding=padding, impl="auto")

    forward = compiler.jit(fwd)
    input_grad = compiler.jit(lambda x, kernel, dy: jax.vjp(lambda x: fwd(x, kernel), x)[1](dy)[0])
    kernel_grad = compiler.jit(lambda x, kernel, dy: jax.vjp(lambda k: fwd(x, k), kernel)[1](dy)[0])
    return {"forward": lambda: jax.block_until_ready(forward(x, kernel)),
            "input gradient": lambda: jax.block_until_ready(input_grad(x, kernel, dy)),
            "kernel gradient": lambda: jax.block_until_ready(kernel_grad(x, kernel, dy))}


def _torch_parts(x, kernel, dy, padding):
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    w = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    dy = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)))
    one, pad = [1, 1], [padding, padding]

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(dy, x, w, None, one, pad, one, False, [0, 0], 1, mask)

    def forward():
        with torch.no_grad():
            torch.nn.functional.conv2d(x, w, padding=padding)
    return {"forward": forward, "input gradient": backward([True, False, False]),
            "kernel gradient": backward([False, True, False])}


def measure_layer(batch: int, size: int, cin: int, cout: int, k: int, padding: int, first: bool) -> dict:
    rng = np.random.default_rng(0)
    out = size + 2 * padding - k + 1
    x = rng.normal(size=(batch, size, size, cin)).astype(np.float32)
    kernel = (rng.normal(size=(k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32)
    dy = rng.normal(size=(batch, out, out, cout)).astype(np.float32)
    parts = [p for p in PARTS if not (first and p == "input gradient")]
    ours = _jaxdl_parts(jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(dy), padding)
    theirs = _torch_parts(x, kernel, dy, padding)
    contenders = ([bench.Contender(f"jaxdl {p}", ours[p], 1, 0.0) for p in parts]
                  + [bench.Contender(f"PyTorch {p}", theirs[p], 1, 0.0) for p in parts])
    torch.set_num_threads(bench.THREADS)
    rates = [np.array(r) for r in bench.interleave(contenders, FLAGS.rounds, FLAGS.min_chunk_s)]
    flops = 2.0 * batch * out * out * k * k * cin * cout
    row = {"layer": f"{size}×{size}, {cin} → {cout}, {k}×{k}", "batch": batch}
    for i, p in enumerate(parts):
        mine, peer = rates[i], rates[i + len(parts)]
        row[p] = {"jaxdl_ms": 1e3 / float(np.median(mine)), "pytorch_ms": 1e3 / float(np.median(peer)),
                  "jaxdl_gflops": flops * float(np.median(mine)) / 1e9,
                  "pytorch_gflops": flops * float(np.median(peer)) / 1e9,
                  "ratio": float(np.median(mine / peer))}
    return row


def _cell(part: dict | None) -> str:
    if part is None:
        return "–"
    return (f"{part['jaxdl_ms']:.2f} / {part['pytorch_ms']:.2f} ms "
            f"({part['jaxdl_gflops']:.0f} / {part['pytorch_gflops']:.0f} GFLOP/s, {part['ratio']:.2f}×)")


def render(rows: dict) -> str:
    lines = ["| model | layer | " + " | ".join(PARTS) + " |", "|---|---|---|---|---|"]
    for name, model_rows in rows.items():
        for row in model_rows:
            lines.append(f"| {bench.TITLES[name]} | {row['layer']} | "
                         + " | ".join(_cell(row.get(p)) for p in PARTS) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    unknown = [m for m in FLAGS.models if m not in LAYERS]
    if unknown:
        raise app.UsageError(f"--models: unknown {unknown}; choose from {sorted(LAYERS)}")
    rows = {}
    started = time.strftime("%Y-%m-%dT%H:%M")
    for name in FLAGS.models:
        batch, layers = LAYERS[name]
        rows[name] = [measure_layer(batch, *layer, first=(i == 0)) for i, layer in enumerate(layers)]
    memory = "freed memory kept in the heap" if KEPT else "the C library's default allocator"
    text = "\n".join([
        f"`python -m benchmarks.layers`, measured {started}: {FLAGS.rounds} turns, {memory}. Each cell: "
        "jaxdl / PyTorch milliseconds and GFLOP/s, and jaxdl's speed as a multiple of PyTorch's.",
        "", render(rows)])
    print(text)
    with open(os.path.join(FLAGS.out_dir, "layers.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(FLAGS.out_dir, "layers.json"), "w") as f:
        json.dump({"measured": started, "rounds": FLAGS.rounds, "memory_kept": KEPT, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
