"""Pictures of a run, as PNGs in `W/pictures/`: what training did, what the model learnt, and the lecture's
convolution and pooling on a real photograph.

| file | what |
|---|---|
| `learning_curves.png` | losses, accuracies (mAP, mIoU) and the learning rate against the step, from `metrics.jsonl` |
| `confusion_matrix.png` | test-set counts of (true class, predicted class), classification only |
| `filters.png` | the first layer's kernels (or, for a dense first layer, each unit's weights in the input's shape) |
| `feature_maps.png` | one layer's output for one test input (`config.pictures.layer`, `config.pictures.example`) |
| `edges.png` | hand-set edge kernels (Sobel, Laplacian) and the model's learnt first-layer kernels on a photograph |
| `padding.png` | zero and replicate padding (`jaxdl.nn.conv2d`) side by side, and what each does at the border |
| `pooling.png` | max, average and weighted-average pooling of the same feature map |

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, never through
`pyplot`, so making pictures changes no global matplotlib state (a notebook's backend
stays as it was) and needs no display. The photograph is scikit-learn's
`china.jpg`, shipped with the package.
"""
from __future__ import annotations

import functools
import io
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.errors import UserError

FILES = ("learning_curves.png", "confusion_matrix.png", "filters.png", "feature_maps.png",
         "edges.png", "padding.png", "pooling.png")

# The lecture's hand-set kernels: horizontal and vertical change, and the Laplacian.
EDGE_KERNELS = {
    "Sobel x (vertical edges)": np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32),
    "Sobel y (horizontal edges)": np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], np.float32),
    "Laplacian (any edge)": np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32),
}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    return _write(path, _png(fig))


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _write(path: str, png: bytes) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(png)
    return path


@functools.lru_cache(maxsize=1)
def _china() -> np.ndarray:
    import importlib.util

    from PIL import Image

    # The file `sklearn.datasets.load_sample_image` reads, found without importing
    # scikit-learn (seconds) or decoding its other sample images.
    package = importlib.util.find_spec("sklearn").submodule_search_locations[0]
    with Image.open(os.path.join(package, "datasets", "images", "china.jpg")) as im:
        image = np.asarray(im.convert("RGB"))
    image.setflags(write=False)
    return image


def photograph(scale: int = 3) -> np.ndarray:
    """scikit-learn's `china.jpg` as float32 RGB in [0, 1], (H, W, 3), every `scale`-th pixel."""
    return _china()[::scale, ::scale].astype(np.float32) / 255.0


def _gray(image: np.ndarray) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114], np.float32)


def _signed(ax, image: np.ndarray, title: str) -> None:
    """A signed map, white at zero, red positive, blue negative, symmetric in its own range."""
    v = float(np.max(np.abs(image))) or 1.0
    ax.imshow(image, cmap="RdBu_r", vmin=-v, vmax=v, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


# ----------------------------------------------------------------------------------
# What training did.

_QUALITY = re.compile(r"accuracy|iou|map")


def learning_curves(records: Sequence[Mapping[str, Any]], path: str) -> str | None:
    """Losses, quality metrics (accuracy, mAP, mIoU) and `lr` against the step, ±1 std over seeds.

    Args:
      records: `metrics.jsonl` records (`step` plus numbers, as the training loop logs them).
      path: the PNG to write.

    Returns:
      `path`, or None when no record has a number to plot.
    """
    series: dict[str, list[tuple[int, float, float]]] = {}
    for r in records:
        for k, v in r.items():
            if k == "step" or k.endswith(("_std", "_per_seed")) or isinstance(v, bool) \
                    or not isinstance(v, (int, float)):
                continue
            series.setdefault(k, []).append((r["step"], float(v), float(r.get(f"{k}_std", 0.0))))
    panels = [("loss", [k for k in series if "loss" in k]),
              ("accuracy / mAP / mIoU", [k for k in series if _QUALITY.search(k) and "loss" not in k]),
              ("learning rate", [k for k in series if k == "lr"])]
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        return None
    fig = _figure(4.2 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, keys) in zip(axes, panels):
        for k in sorted(keys):
            steps, mean, std = (np.array(c) for c in zip(*series[k]))
            marker = "o" if len(steps) < 30 else None
            (line,) = ax.plot(steps, mean, label=k, marker=marker, markersize=3)
            if np.any(std > 0):
                ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if title == "loss" and all(v > 0 for k in keys for _, v, _ in series[k]):
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    return _save(fig, path)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int, path: str,
                     class_names: Sequence[str] | None = None) -> str:
    """The (true, predicted) count matrix of a test set, each count written in its cell.

    Args:
      labels, predictions: (N,) integer classes.
      num_classes: K.
      path: the PNG to write.
      class_names: K names (default 0 … K−1).
    """
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    cm = np.bincount(labels * num_classes + predictions, minlength=num_classes ** 2).reshape(num_classes, -1)
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    side = min(12.0, 2.5 + 0.45 * num_classes)
    fig = _figure(side + 1.0, side)
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8)
    if num_classes <= 30:
        ticks = np.arange(num_classes)
        ax.set_xticks(ticks, names, rotation=90 if max(map(len, names)) > 2 else 0, fontsize=7)
        ax.set_yticks(ticks, names, fontsize=7)
        threshold = cm.max() / 2
        for i in range(num_classes):
            for j in range(num_classes):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if cm[i, j] > threshold else "black")
    accuracy = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"confusion matrix: {cm.sum()} test examples, accuracy {100 * accuracy:.1f} %")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    return _save(fig, path)


# ----------------------------------------------------------------------------------
# What the model learnt.

def capture(apply_fn: Callable, variables: Mapping, x: jax.Array) -> list[dict[str, Any]]:
    """Every module call of one forward pass, in call order.

    Args:
      apply_fn: a Linen module's `apply` (`state.apply_fn`).
      variables: its variables.
      x: a batch of inputs (B, ...).

    Returns:
      Rows {"name" (the module path, e.g. `conv1` or `ResNetBlock_0/Conv_0`), "type",
      "output" (the first array it returned), "kernel" (its own `kernel` parameter, or
      None)}; a module called twice is listed once.
    """
    import flax.linen as nn

    meta: list[tuple[tuple[str, ...], str]] = []  # filled while tracing

    def forward(variables, x):
        outputs, seen = [], set()

        def record(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            path = context.module.path
            leaves = [o for o in jax.tree.leaves(out) if hasattr(o, "shape")]
            if context.method_name == "__call__" and path and path not in seen and leaves:
                seen.add(path)
                meta.append((path, type(context.module).__name__))
                outputs.append(leaves[0])
            return out

        with nn.intercept_methods(record):
            apply_fn(variables, x, train=False)
        return outputs

    # Compiled as one program: run eagerly, each of the model's ops would compile on its own.
    outputs = jax.device_get(jax.jit(forward)(variables, x))
    rows = []
    for (path, kind), out in zip(meta, outputs):
        node = variables.get("params", {})
        for p in path:
            node = node.get(p, {}) if hasattr(node, "get") else {}
        kernel = node.get("kernel") if hasattr(node, "get") else None
        rows.append({"name": "/".join(path), "type": kind, "output": np.asarray(out),
                     "kernel": np.asarray(kernel) if hasattr(kernel, "shape") else None})
    return rows


def first_layer(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The first module with a kernel, preferring a convolution (a kernel of 3 or more dims)."""
    with_kernel = [r for r in rows if r["kernel"] is not None]
    convs = [r for r in with_kernel if r["kernel"].ndim >= 3]
    return (convs or with_kernel or [None])[0]


def filters(kernel: np.ndarray, path: str, input_shape: tuple[int, ...] | None = None,
            title: str = "first-layer kernels") -> str:
    """The kernels of one layer: (kh, kw, C, K) as K tiles, (k, C, K) as K rows, (d, K) in the input's shape.

    Args:
      kernel: the layer's kernel.
      path: the PNG to write.
      input_shape: one input's shape (no batch axis); lets a dense first layer's (d, K)
        weights be drawn as K pictures of the input.
      title: the figure's title.
    """
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim == 2 and input_shape is not None and math.prod(input_shape) == kernel.shape[0]:
        kernel = kernel.T.reshape(-1, *input_shape)  # unit k's weights, one per input pixel
        kernel = np.moveaxis(kernel, 0, -1)  # (*input_shape, K): (H, W, C, K) or (W, C, K)
    if kernel.ndim == 4:
        kh, kw, c, k = kernel.shape
        shown = min(k, 64)
        cols = math.ceil(math.sqrt(shown))
        rows = math.ceil(shown / cols)
        fig = _figure(1.1 * cols + 0.5, 1.1 * rows + 0.6)
        axes = fig.subplots(rows, cols, squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= shown:
                ax.axis("off")
                continue
            tile = kernel[..., i]
            if c == 3:
                lo, hi = tile.min(), tile.max()
                ax.imshow((tile - lo) / (hi - lo + 1e-12), interpolation="nearest")
            else:
                v = float(np.max(np.abs(tile))) or 1.0
                ax.imshow(tile.mean(-1), cmap="RdBu_r", vmin=-v, vmax=v, interpolation="nearest")
        what = "RGB" if c == 3 else ("" if c == 1 else f"mean over {c} channels")
        fig.suptitle(f"{title}: {k} kernels of {kh}×{kw}×{c}" + (f" ({what})" if what else "")
                     + (f", first {shown}" if shown < k else ""), fontsize=9)
    elif kernel.ndim == 3:
        width, c, k = kernel.shape
        table = np.moveaxis(kernel, -1, 0).transpose(0, 2, 1).reshape(k, c * width)  # row k: its C blocks
        fig = _figure(max(6.0, 0.35 * c * width + 1.5), max(2.5, 0.22 * k + 1.0))
        ax = fig.subplots()
        v = float(np.max(np.abs(table))) or 1.0
        im = ax.imshow(table, cmap="RdBu_r", vmin=-v, vmax=v, aspect="auto", interpolation="nearest")
        fig.colorbar(im, ax=ax)
        ax.set_xlabel("kernel offset" + (f" (channels side by side, {width} each)" if c > 1 else ""))
        ax.set_ylabel("kernel")
        ax.set_title(f"{title}: {k} kernels of length {width} over {c} channel(s)", fontsize=9)
    else:
        table = kernel.reshape(kernel.shape[0], -1).T
        fig = _figure(6.0, 4.0)
        ax = fig.subplots()
        v = float(np.max(np.abs(table))) or 1.0
        im = ax.imshow(table, cmap="RdBu_r", vmin=-v, vmax=v, aspect="auto", interpolation="nearest")
        fig.colorbar(im, ax=ax)
        ax.set_xlabel("input")
        ax.set_ylabel("unit")
        ax.set_title(f"{title}: {table.shape[0]} units × {table.shape[1]} inputs", fontsize=9)
    return _save(fig, path)


def feature_maps(x: np.ndarray, output: np.ndarray, layer: str, path: str, max_maps: int = 16) -> str:
    """One input and one layer's output for it (a module's output: before the activation that follows it).

    Args:
      x: the input, no batch axis: (H, W, C) an image, (W, C) a signal.
      output: the layer's output, no batch axis: (H', W', K) maps, (W', K) or (n,).
      layer: the layer's name, for the title.
      path: the PNG to write.
      max_maps: how many of K image maps to draw.
    """
    x, output = np.asarray(x, np.float32), np.asarray(output, np.float32)
    if output.ndim == 3:
        k = output.shape[-1]
        shown = min(k, max_maps)
        cols = min(shown + 1, 6)
        rows = math.ceil((shown + 1) / cols)
        fig = _figure(1.9 * cols, 1.9 * rows + 0.4)
        axes = fig.subplots(rows, cols, squeeze=False).flat
        _show_input(next(axes), x)
        for i in range(shown):
            ax = next(axes)
            ax.imshow(output[..., i], cmap="viridis", interpolation="nearest")
            ax.set_title(f"map {i}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes:
            ax.axis("off")
        fig.suptitle(f"layer {layer}: {k} feature maps of {output.shape[0]}×{output.shape[1]}"
                     + (f", first {shown}" if shown < k else ""), fontsize=9)
    else:
        fig = _figure(7.0, 5.0)
        top, bottom = fig.subplots(2, 1, height_ratios=[1, 2])
        _show_input(top, x)
        table = output.T if output.ndim == 2 else output[None]
        im = bottom.imshow(table, cmap="viridis", aspect="auto", interpolation="nearest")
        fig.colorbar(im, ax=bottom)
        bottom.set_xlabel("position" if output.ndim == 2 else "unit")
        bottom.set_ylabel("feature map" if output.ndim == 2 else "")
        bottom.set_title(f"layer {layer}: output {tuple(output.shape)}", fontsize=9)
    return _save(fig, path)


def _show_input(ax, x: np.ndarray) -> None:
    if x.ndim == 3:
        image = x if x.shape[-1] == 3 else x.mean(-1)
        lo, hi = float(image.min()), float(image.max())
        ax.imshow((image - lo) / (hi - lo + 1e-12), cmap=None if image.ndim == 3 else "gray",
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        signal = x.reshape(x.shape[0], -1)
        for c in range(signal.shape[1]):
            ax.plot(signal[:, c], linewidth=1)
        ax.set_xlim(0, len(signal) - 1)
        ax.grid(alpha=0.3)
    ax.set_title(f"input {tuple(x.shape)}", fontsize=8)


# ----------------------------------------------------------------------------------
# The lecture on a photograph.

def _conv(image: np.ndarray, kernels: np.ndarray, padding: str = "replicate") -> np.ndarray:
    """(H, W, C) image, (kh, kw, C, K) kernels → (H', W', K) with `jaxdl.nn.conv2d`."""
    from jaxdl.nn import conv2d

    # One compiled program: eagerly, every op of the padding and the sum compiles on its own.
    conv = jax.jit(conv2d, static_argnames=("padding", "impl"))
    return np.asarray(conv(jnp.asarray(image)[None], jnp.asarray(kernels), padding=padding, impl="xla")[0])


def learned_on_photo(kernel: np.ndarray | None, image: np.ndarray,
                     count: int = 3) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The `count` strongest learnt kernels as 2D kernels and their responses on `image` (H, W, 3).

    2D kernels (kh, kw, C, K) apply to the photograph in colour (C = 3) or in grey
    (C = 1); 1D kernels (k, 1, K) apply along its rows, as 1×k kernels. Other kernels
    (several non-colour channels, dense layers) have no reading on a photograph: [].
    Returns [(title, kernel (kh, kw), response (H, W))].
    """
    if kernel is None:
        return []
    kernel = np.asarray(kernel, np.float32)
    if kernel.ndim == 3 and kernel.shape[1] == 1:
        kernel = kernel[None]  # (1, k, 1, K): a row kernel
    if kernel.ndim != 4 or kernel.shape[2] not in (1, 3) or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        return []
    source = image if kernel.shape[2] == 3 else _gray(image)[..., None]
    order = np.argsort(-np.sqrt(np.sum(kernel ** 2, axis=(0, 1, 2))), kind="stable")[:count]
    responses = _conv(source, kernel[..., order])
    shape = "×".join(map(str, kernel.shape[:3]))
    return [(f"learnt kernel {int(k)} ({shape})", kernel[..., k].mean(-1), responses[..., i])
            for i, k in enumerate(order)]


def edges(path: str, learned: np.ndarray | None = None, layer: str = "") -> str:
    """Hand-set edge kernels, and the model's first-layer kernels when given, applied to a photograph.

    Args:
      path: the PNG to write.
      learned: the model's first-layer kernel (see `learned_on_photo`), or None.
      layer: its name, for the title.
    """
    image = photograph()
    gray = _gray(image)
    hand = np.stack(list(EDGE_KERNELS.values()), -1)[:, :, None]  # (3, 3, 1, 3)
    responses = _conv(gray[..., None], hand)
    blocks = [("hand-set kernels", [("photograph", None, image)]
               + [(n, k, responses[..., i]) for i, (n, k) in enumerate(EDGE_KERNELS.items())])]
    taught = learned_on_photo(learned, image)
    if taught:
        blocks.append((f"learnt kernels of {layer}" if layer else "learnt kernels", taught))
    cols = 4
    fig = _figure(3.2 * cols, 3.2 * len(blocks) + 0.4)
    sub = fig.subfigures(len(blocks), 1, squeeze=False)[:, 0]
    for sf, (title, panels) in zip(sub, blocks):
        axes = sf.subplots(2, cols, height_ratios=[1, 3], squeeze=False)
        for j in range(cols):
            kax, rax = axes[0, j], axes[1, j]
            kax.axis("off")
            if j >= len(panels):
                rax.axis("off")
                continue
            name, kernel, out = panels[j]
            if kernel is not None:
                kax.axis("on")
                _signed(kax, kernel, "")
            if out.ndim == 3:
                rax.imshow(out)
                rax.set_xticks([])
                rax.set_yticks([])
                rax.set_title(name, fontsize=8)
            else:
                _signed(rax, out, name)
        sf.suptitle(title, fontsize=10)
    return _save(fig, path)


def padding(path: str, size: int = 15) -> str:
    """A `size`×`size` mean filter on a photograph with zero and with replicate padding.

    Zero padding brings black in from outside the image, so the filtered border darkens;
    replicate padding repeats the edge pixels, so it does not.
    """
    return _write(path, _padding_png(size))


@functools.lru_cache(maxsize=2)
def _padding_png(size: int) -> bytes:
    """The PNG of `padding`; the same in every run, so drawn once per process."""
    gray = _gray(photograph(scale=4))[..., None]
    p = (size - 1) // 2
    box = np.full((size, size, 1, 1), 1.0 / size ** 2, np.float32)
    padded = {"zero": np.pad(gray, ((p, p), (p, p), (0, 0))),
              "replicate": np.pad(gray, ((p, p), (p, p), (0, 0)), mode="edge")}
    fig = _figure(9.0, 6.6)
    axes = fig.subplots(2, 2)
    for j, mode in enumerate(("zero", "replicate")):
        out = _conv(gray, box, padding=mode)[..., 0]
        for ax, pic, title in ((axes[0, j], padded[mode][..., 0], f"{mode} padding: input padded by {p}"),
                               (axes[1, j], out, f"{size}×{size} mean filter, padding={mode!r}")):
            ax.imshow(pic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("zero padding darkens the border; replicate padding keeps it", fontsize=10)
    return _png(fig)


def pooling(path: str, window: int = 4) -> str:
    """Max, average and weighted-average pooling (`jaxdl.nn`) of one edge-detector feature map."""
    return _write(path, _pooling_png(window))


@functools.lru_cache(maxsize=2)
def _pooling_png(window: int) -> bytes:
    """The PNG of `pooling`; the same in every run, so drawn once per process."""
    from jaxdl.nn import avg_pool, max_pool, weighted_avg_pool

    gray = _gray(photograph())[..., None]
    sobel = EDGE_KERNELS["Sobel x (vertical edges)"][:, :, None, None]
    fmap = np.maximum(_conv(gray, sobel), 0)  # conv → ReLU: the feature map pooling sees
    x = jnp.asarray(fmap)[None]
    ramp = np.minimum(np.arange(window), np.arange(window)[::-1]) + 1.0
    weights = np.outer(ramp, ramp)  # centre-weighted
    pools = jax.jit(lambda x, w: (max_pool(x, window), avg_pool(x, window), weighted_avg_pool(x, w)))
    names = ("max_pool", "avg_pool",
             f"weighted_avg_pool, weights ∝ {ramp.astype(int).tolist()}ᵀ{ramp.astype(int).tolist()}")
    pooled = list(zip(names, pools(x, jnp.asarray(weights))))
    fig = _figure(10.0, 7.4)
    axes = fig.subplots(2, 2).flat
    panels = [(f"feature map: ReLU(Sobel x) {fmap.shape[0]}×{fmap.shape[1]}", fmap[..., 0])]
    panels += [(f"{name}, window {window}, stride {window}: {int(o.shape[1])}×{int(o.shape[2])}",
                np.asarray(o[0, ..., 0])) for name, o in pooled]
    vmax = float(np.percentile(fmap, 99.5)) or 1.0
    for ax, (title, pic) in zip(axes, panels):
        ax.imshow(pic, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return _png(fig)


# ----------------------------------------------------------------------------------
# A run's pictures.

def model_pictures(directory: str, apply_fn: Callable, variables: Mapping, x: np.ndarray,
                   layer: str | None = None) -> list[str]:
    """filters.png, feature_maps.png, edges.png, padding.png and pooling.png for one model.

    Args:
      directory: where the PNGs go.
      apply_fn, variables: the model (one replica).
      x: one input with its batch axis (1, ...), e.g. a test example.
      layer: the module whose output `feature_maps.png` shows (its path, e.g. `conv2`);
        default the first layer with a kernel.

    Returns:
      The paths written.

    Raises:
      UserError: `layer` is not a module of the model (the message lists them).
    """
    if len(x) == 0:
        raise UserError("pictures.example is outside the test split; choose an index of a test example")
    rows = capture(apply_fn, variables, jnp.asarray(x))
    first = first_layer(rows)
    named = {r["name"]: r for r in rows if r["output"] is not None}
    if layer is not None and layer not in named:
        raise UserError(f"pictures.layer {layer!r} is not a layer of the model; layers: {', '.join(named)}")
    chosen = named[layer] if layer is not None else (first if first is not None else rows[0])
    paths = []
    if first is not None:
        paths.append(filters(first["kernel"], os.path.join(directory, "filters.png"), tuple(x.shape[1:]),
                             title=f"first-layer kernels ({first['name']})"))
    paths.append(feature_maps(x[0], chosen["output"][0], chosen["name"], os.path.join(directory, "feature_maps.png")))
    paths += lecture_pictures(directory, None if first is None else first["kernel"],
                              "" if first is None else first["name"])
    return paths


def lecture_pictures(directory: str, learned: np.ndarray | None = None, layer: str = "") -> list[str]:
    """edges.png (with `learned` kernels when given), padding.png and pooling.png in `directory`."""
    return [edges(os.path.join(directory, "edges.png"), learned, layer),
            padding(os.path.join(directory, "padding.png")),
            pooling(os.path.join(directory, "pooling.png"))]


def classifier_pictures(directory: str, state: Any, x: np.ndarray, y: np.ndarray, num_classes: int, *,
                        layer: str | None = None, example: int = 0, batch_size: int = 1000) -> list[str]:
    """A classifier's pictures: the confusion matrix on (x, y) and `model_pictures` for x[example].

    Args:
      directory: where the PNGs go.
      state: a `jaxdl.train.TrainState` with a leading seed axis (K, ...); replica 0 is drawn.
      x, y: the test split, (N, ...) inputs and (N,) labels.
      num_classes: K classes.
      layer, example: the layer and the test example of `feature_maps.png`.
    """
    if not 0 <= example < len(x):
        raise UserError(f"pictures.example {example} is outside the test split's {len(x)} examples")
    one = jax.tree.map(lambda a: a[0], state)
    variables = one.variables()
    def predict(v, xb):
        out = one.apply_fn(v, xb, train=False)
        return jnp.argmax(out[0] if isinstance(out, tuple) else out, -1)

    predict = jax.jit(predict)
    predictions = [np.asarray(predict(variables, jnp.asarray(x[i:i + batch_size])))
                   for i in range(0, len(x), batch_size)]
    paths = [confusion_matrix(y, np.concatenate(predictions), num_classes,
                              os.path.join(directory, "confusion_matrix.png"))]
    return paths + model_pictures(directory, one.apply_fn, variables, np.asarray(x[example:example + 1]), layer)


def options(config: Any) -> tuple[str | None, int]:
    """(`pictures.layer`, `pictures.example`) of a config, defaults (None, 0)."""
    pics = config.get("pictures") or {}
    return pics.get("layer"), int(pics.get("example") or 0)
