"""Semantic segmentation: an FCN or U-Net trained per pixel, scored by mIoU over the test split.

Config (see `experiments/segment_digit_scenes.py`): `dataset.{name, image_size, mean,
std, class_names, label_map}`, `model.{name (FCN32s, FCN16s, FCN8s, UNet), upsample,
…its fields}`, `model.backbone` (a zoo model's name and fields, or None for U-Net's
own encoder), `loss.{ignore_label, class_weights}`, `augment.{padding, flip,
mask_fill}`, `num_pictures`, and the usual `seed`, `batch_size`,
`num_steps`/`num_epochs`, `log_every`, `eval_every`, `checkpoint_every`, `optim`.

The workdir gets `metrics.jsonl`, `checkpoints/`, `config.json`, `results.json`
({miou, pixel_accuracy, per_class_iou (class name → IoU, null for a class absent
from both prediction and truth), test_loss, step, train_time_s}) and `pictures/`
(each test image, its ground truth and the prediction overlaid, side by side). As in
`jaxdl.train`, the train set lives on the device, batches are gathered inside jit
from the (seed, step) permutation, and a rerun resumes from the latest checkpoint.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdl import compiler, loop, progress
from jaxdl import optim as optim_lib
from jaxdl.errors import UserError, unknown_name
from jaxdl.segmentation import augment as augment_lib
from jaxdl.segmentation import data as seg_data
from jaxdl.segmentation import losses as losses_lib
from jaxdl.segmentation import metrics as metrics_lib
from jaxdl.segmentation import models as seg_models
from jaxdl.train import TrainState, create_state, gradient_step, make_backbone

# ----------------------------------------------------------------------------------
# Config → objects.

def make_model(config: ml_collections.ConfigDict, num_classes: int) -> Any:
    """The segmenter of `config.model` (over its zoo backbone, if any), for K = `num_classes`."""
    fields = config.model.to_dict()
    name = fields.pop("name")
    if name not in seg_models.SEGMENTERS:
        raise unknown_name("segmenter", name, seg_models.SEGMENTERS, "model.name")
    spec = fields.pop("backbone", None)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    if spec:
        fields["backbone"] = make_backbone(spec)
    elif name != "UNet":
        raise UserError(f"{name} needs a VGG backbone; set model.backbone.name, e.g. 'VGG16'")
    if fields.get("upsample", "bilinear") not in seg_models.UPSAMPLING:
        raise UserError(f"model.upsample must be one of {', '.join(seg_models.UPSAMPLING)}, "
                        f"got {fields['upsample']!r}")
    try:
        return seg_models.SEGMENTERS[name](num_classes=num_classes, **fields)
    except TypeError as e:
        raise UserError(f"segmenter {name!r} does not take these model fields: {e}") from e


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises UserError for config values that cannot work, before any data is read."""
    loop.check_config(config, seeds=False)
    optim_lib.check(config.optim)


# ----------------------------------------------------------------------------------
# Steps.

def _inputs(images: jax.Array, mean, std) -> jax.Array:
    """uint8 images (B, H, W, C) → normalised float32 model inputs."""
    x = images.astype(jnp.float32) / 255.0
    c = x.shape[-1]
    mean = jnp.broadcast_to(jnp.asarray(mean, jnp.float32), (c,)).reshape(1, 1, 1, c)
    std = jnp.broadcast_to(jnp.asarray(std, jnp.float32), (c,)).reshape(1, 1, 1, c)
    return (x - mean) / std


def train_step(state: TrainState, batch: dict[str, jax.Array], *, ignore_label: int,
               class_weights: jax.Array | None = None, mean: Any = 0.0,
               std: Any = 1.0) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on the per-pixel cross-entropy.

    Args:
      state: the replica's state.
      batch: {images (B, H, W, C) uint8, masks (B, H, W) integer}.

    Returns:
      The new state and {loss, accuracy (of the counted pixels), grad_norm}.
    """
    y = batch["masks"].astype(jnp.int32)

    def loss_of_output(logits):
        return losses_lib.pixel_cross_entropy(logits, y, ignore_label, class_weights), logits

    new_state, (loss, logits, grad_norm) = gradient_step(state, _inputs(batch["images"], mean, std), loss_of_output)
    valid = y != ignore_label
    accuracy = jnp.sum((jnp.argmax(logits, -1) == y) & valid) / jnp.maximum(jnp.sum(valid), 1)
    return new_state, {"loss": loss, "accuracy": accuracy, "grad_norm": grad_norm}


def train_steps(state: TrainState, data: dict[str, jax.Array], *, batch_size: int, num: int,
                unroll: bool, padding: int = 0, flip: bool = False, mask_fill: int = 0,
                **step_kwargs: Any) -> tuple[TrainState, dict[str, jax.Array]]:
    """`num` train steps on the device-resident train set, batches gathered inside jit.

    The data order of `jaxdl.loop.scan_steps`, each batch's images and masks cropped
    and flipped together. Returns the new state and per-step metrics (num,).
    """
    augment_fn = None
    if padding or flip:
        def augment_fn(key, batch):
            images, masks = augment_lib.joint_crop_flip(key, batch["images"], batch["masks"],
                                                        padding=padding, flip=flip, mask_fill=mask_fill)
            return {**batch, "images": images, "masks": masks}
    return loop.scan_steps(state, data, functools.partial(train_step, **step_kwargs), batch_size=batch_size,
                           num=num, unroll=unroll, augment_fn=augment_fn)


def eval_step(state: TrainState, images: jax.Array, masks: jax.Array, *, num_classes: int,
              ignore_label: int, mean: Any = 0.0, std: Any = 1.0) -> dict[str, jax.Array]:
    """Sums over a batch: {confusion (K, K), loss_sum, pixels}, and the predictions (B, H, W)."""
    logits = state.apply_fn(state.variables(), _inputs(images, mean, std), train=False)
    y = masks.astype(jnp.int32)
    pred = jnp.argmax(logits, -1).astype(jnp.int32)
    valid = (y != ignore_label) & (y < num_classes)
    pixels = jnp.sum(valid)
    loss_sum = losses_lib.pixel_cross_entropy(logits, y, ignore_label) * pixels
    return {"confusion": metrics_lib.confusion_matrix(y, pred, num_classes, ignore_label),
            "loss_sum": loss_sum, "pixels": pixels, "predictions": pred}


def evaluate(eval_fn: Callable, state: TrainState, ds: seg_data.SegmentationDataset, batch_size: int,
             ignore_label: int, keep: int = 0) -> tuple[dict[str, Any], np.ndarray]:
    """Scores `ds` in fixed-size batches (the last padded with ignored pixels).

    Returns the metrics of the summed confusion matrix plus `test_loss`, and the
    predictions (keep, H, W) of the first `keep` images.
    """
    n = len(ds)
    batch_size = min(batch_size, n)
    k = ds.num_classes
    confusion = np.zeros((k, k), np.int64)
    loss_sum, pixels, kept = 0.0, 0, []
    for i in progress.track(range(0, n, batch_size), desc="eval"):
        xb, yb = ds.images[i:i + batch_size], ds.masks[i:i + batch_size]
        pad = batch_size - len(xb)
        if pad:
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.full((pad, *yb.shape[1:]), ignore_label, yb.dtype)])
        out = jax.device_get(eval_fn(state, xb, yb))
        confusion += out["confusion"]
        loss_sum += float(out["loss_sum"])
        pixels += int(out["pixels"])
        if sum(len(p) for p in kept) < keep:
            kept.append(out["predictions"][:batch_size - pad])
    result = metrics_lib.segmentation_metrics(confusion)
    result["test_loss"] = loss_sum / max(pixels, 1)
    predictions = np.concatenate(kept)[:keep] if kept else np.zeros((0, *ds.masks.shape[1:]), np.int32)
    return result, predictions


def _record(metrics: dict[str, Any], class_names) -> dict[str, Any]:
    """JSON-ready metrics: per-class IoU by class name, null for absent classes."""
    per_class = {name: (None if np.isnan(v) else float(v))
                 for name, v in zip(class_names, metrics["per_class_iou"])}
    return {"miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"],
            "per_class_iou": per_class, "test_loss": metrics["test_loss"]}


# ----------------------------------------------------------------------------------
# Pictures.

_PALETTE = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                     (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
                     (0, 128, 128), (220, 190, 255), (170, 110, 40), (128, 0, 0), (170, 255, 195),
                     (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128), (255, 255, 255)],
                    np.float32)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """uint8 (H, W, 3): `image` (H, W, C) uint8 with classes ≥ 1 of `mask` (H, W) tinted.

    Class 0 (background) and labels past the palette's classes (ignore) stay untinted.
    """
    rgb = image.astype(np.float32)
    rgb = np.repeat(rgb, 3, -1) if rgb.shape[-1] == 1 else rgb[..., :3]
    m = mask.astype(np.int64)
    tint = (m > 0) & (m < 255)
    colour = _PALETTE[(m - 1) % len(_PALETTE)]
    out = np.where(tint[..., None], (1 - alpha) * rgb + alpha * colour, rgb)
    return np.clip(out, 0, 255).astype(np.uint8)


def write_pictures(directory: str, ds: seg_data.SegmentationDataset, predictions: np.ndarray,
                   min_side: int = 192) -> list[str]:
    """PNGs of test image | ground truth overlaid | prediction overlaid, one per prediction."""
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    paths = []
    for i, pred in enumerate(predictions):
        image = ds.images[i]
        rgb = np.repeat(image, 3, -1) if image.shape[-1] == 1 else image[..., :3]
        row = np.concatenate([rgb, overlay(image, ds.masks[i]), overlay(image, pred)], axis=1)
        h, w = row.shape[:2]
        zoom = max(1, -(-min_side // h))
        path = os.path.join(directory, f"test_{i:03d}.png")
        Image.fromarray(row).resize((w * zoom, h * zoom), Image.NEAREST).save(path)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------
# Runs.

def _load(config: ml_collections.ConfigDict, split: str) -> seg_data.SegmentationDataset:
    ds = config.dataset
    names = ds.get("class_names")
    label_map = ds.get("label_map")
    return seg_data.load_segmentation(
        ds.name, split, directory=ds.get("data_dir"), download=ds.get("download", False),
        image_size=ds.get("image_size"), label_map=None if label_map is None else tuple(label_map),
        class_names=None if names is None else tuple(names),
        ignore_label=config.loss.get("ignore_label", losses_lib.IGNORE_LABEL))


def _stat(config, name, default):
    value = config.dataset.get(name)
    return default if value is None else tuple(value)


def _setup(config: ml_collections.ConfigDict, train: bool = True):
    """Data, step count and the state's initialiser for `config`: (train_ds, test_ds, num_steps, init)."""
    check_config(config)
    ds_cfg = config.dataset
    test_ds = _load(config, ds_cfg.get("test_split", "test"))
    train_ds = _load(config, ds_cfg.get("train_split", "train")) if train else None
    num_examples = len(train_ds) if train else 1
    if train:
        loop.check_batch_size(config, num_examples, "training images")
    weights = config.loss.get("class_weights")
    if weights is not None and len(weights) != test_ds.num_classes:
        raise UserError(f"loss.class_weights has {len(weights)} values for {test_ds.num_classes} classes")
    num_steps = loop.num_train_steps(config, num_examples) if train else 0
    model = make_model(config, test_ds.num_classes)
    tx = optim_lib.make_optimizer(config.optim, max(num_steps, 1))
    sample = jnp.zeros((1, *test_ds.images.shape[1:]), jnp.float32)
    key = jax.random.PRNGKey(config.seed)

    def init():
        return create_state(key, model, tx, sample)

    try:
        jax.eval_shape(init)
    except ValueError as e:
        raise UserError(f"segmenter {config.model.name!r} cannot take inputs of shape "
                        f"{test_ds.images.shape[1:]}: {e}") from e
    return train_ds, test_ds, num_steps, init


def _eval_fn(config: ml_collections.ConfigDict, num_classes: int):
    return compiler.jit(functools.partial(eval_step, num_classes=num_classes, ignore_label=_ignore(config),
                                          mean=_stat(config, "mean", 0.0), std=_stat(config, "std", 1.0)))


def _ignore(config: ml_collections.ConfigDict) -> int:
    return config.loss.get("ignore_label", losses_lib.IGNORE_LABEL)


def _scorers(config: ml_collections.ConfigDict, workdir: str, test_ds: seg_data.SegmentationDataset,
             print_fn: Callable[[str], None]):
    """(evaluate, finish): the test split's mIoU during training; at the end, also pictures."""
    eval_fn = _eval_fn(config, test_ds.num_classes)
    batch_size = config.get("eval_batch_size", 100)

    def evaluate_state(state):
        ev, _ = evaluate(eval_fn, state, test_ds, batch_size, _ignore(config))
        return {k: ev[k] for k in ("miou", "pixel_accuracy", "test_loss")}

    def finish(state, step):
        metrics, predictions = evaluate(eval_fn, state, test_ds, batch_size, _ignore(config),
                                        keep=config.get("num_pictures", 8))
        _test_pictures(workdir, test_ds, predictions, print_fn)
        return _record(metrics, test_ds.class_names)

    return evaluate_state, finish


def _test_pictures(workdir: str, test_ds: seg_data.SegmentationDataset, predictions: np.ndarray,
                   print_fn: Callable[[str], None]) -> list[str]:
    directory = os.path.join(workdir, "pictures")
    paths = write_pictures(directory, test_ds, predictions)
    print_fn(f"{len(paths)} pictures in {directory}")
    return paths


def _model_pictures(config: ml_collections.ConfigDict, workdir: str, state: TrainState,
                    test_ds: seg_data.SegmentationDataset) -> list[str]:
    """The network's filters, feature maps and kernels on a photograph (`jaxdl.pictures`)."""
    from jaxdl import pictures as pictures_lib

    layer, example = pictures_lib.options(config)
    x = _inputs(jnp.asarray(test_ds.images[example:example + 1]), _stat(config, "mean", 0.0),
                _stat(config, "std", 1.0))
    return pictures_lib.model_pictures(os.path.join(workdir, "pictures"), state.apply_fn, state.variables(),
                                       np.asarray(x), layer)


def pictures(config: ml_collections.ConfigDict, workdir: str,
             print_fn: Callable[[str], None] = print) -> list[str]:
    """Draws the pictures of the latest checkpoint in `workdir` (segmentations, filters, feature maps, …)."""
    loop.check_resumable(config, workdir)
    _, test_ds, _, init = _setup(config, train=False)
    state = loop.restore_latest(workdir, init)
    _, predictions = evaluate(_eval_fn(config, test_ds.num_classes), state, test_ds,
                              config.get("eval_batch_size", 100), _ignore(config), keep=config.get("num_pictures", 8))
    workdir = os.path.abspath(workdir)
    return _test_pictures(workdir, test_ds, predictions, print_fn) + _model_pictures(config, workdir, state, test_ds)


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str,
                     print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Scores the latest checkpoint in `workdir` on the test split; writes `eval.json` and pictures."""
    loop.check_resumable(config, workdir)
    _, test_ds, _, init = _setup(config, train=False)
    _, finish = _scorers(config, os.path.abspath(workdir), test_ds, print_fn)
    return loop.evaluate_workdir(config, workdir, init, finish, print_fn)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Trains the configured segmenter, evaluating, logging and checkpointing; resumes if it can.

    Returns:
      {miou, pixel_accuracy, per_class_iou, test_loss, step, train_time_s}, also
      written to `W/results.json`.
    """
    def build() -> loop.Run:
        train_ds, test_ds, num_steps, init = _setup(config)
        lc = config.loss
        weights = lc.get("class_weights")
        aug = config.get("augment") or {}
        step_kwargs = {"ignore_label": _ignore(config),
                       "class_weights": None if weights is None else jnp.asarray(weights, jnp.float32),
                       "mean": _stat(config, "mean", 0.0), "std": _stat(config, "std", 1.0)}

        def make_steps(num):
            fn = functools.partial(train_steps, batch_size=config.batch_size, num=num,
                                   unroll=config.get("unroll", True), padding=aug.get("padding", 0),
                                   flip=bool(aug.get("flip", False)),
                                   mask_fill=aug.get("mask_fill", _ignore(config)), **step_kwargs)
            return compiler.jit(fn, donate_argnums=0)

        evaluate_state, finish = _scorers(config, os.path.abspath(workdir), test_ds, print_fn)
        return loop.Run(
            init=init, num_steps=num_steps, make_steps=make_steps,
            data=(jax.device_put({"images": train_ds.images, "masks": train_ds.masks}),),
            evaluate=evaluate_state, finish=finish, schedule=optim_lib.make_schedule(config.optim, num_steps),
            pictures=lambda state: _model_pictures(config, os.path.abspath(workdir), state, test_ds),
            description=f"{config.model.name} on {config.dataset.name} ({test_ds.num_classes} classes)")

    return loop.run(config, workdir, build, print_fn)
