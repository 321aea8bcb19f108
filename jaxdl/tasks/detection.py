"""Object detection: an SSD on a zoo backbone, trained on a detection dataset, scored by mAP.

Config (see `experiments/detect_digit_scenes.py`): `dataset.{name, image_size,
max_boxes, image_dtype, mean, std}` (and `dataset.options`, `digit_scenes` generator
parameters, when set from Python), `model.backbone` (a zoo model's name and fields),
`model.{sources, fc_from, fc_channels, extra_channels, l2norm_first}`,
`model.anchors.{scales, aspect_ratios}`, `loss.{iou_threshold, neg_pos_ratio,
box_weight}`, `detect.{score_threshold, iou_threshold, max_detections,
pre_nms_top_k}`, `augment.flip`, `num_pictures`, and the usual `seed`, `batch_size`,
`num_steps`/`num_epochs`, `log_every`, `eval_every`, `checkpoint_every`, `optim`.

The workdir gets `metrics.jsonl`, `checkpoints/`, `config.json`, `results.json`
({map50: VOC-style mAP@0.5, map50_95: COCO-style mAP@[.5:.95], map50_coco,
ap50_per_class, step, train_time_s}) and `pictures/` (test images with the predicted
boxes, classes and scores drawn over them). As in `jaxdl.train`, the train set lives on
the device, batches are gathered inside jit from the (seed, step) permutation, and a
rerun resumes from the latest checkpoint.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdl import compiler, loop, progress
from jaxdl import optim as optim_lib
from jaxdl.data import scenes
from jaxdl.detection import boxes as boxes_lib
from jaxdl.detection import loss as loss_lib
from jaxdl.detection import metrics as metrics_lib
from jaxdl.detection import ssd as ssd_lib
from jaxdl.errors import UserError
from jaxdl.train import TrainState, create_state, gradient_step, make_backbone

# ----------------------------------------------------------------------------------
# Config → objects.

def make_model(config: ml_collections.ConfigDict, num_classes: int) -> ssd_lib.SSD:
    """The SSD of `config.model` over its zoo backbone, for K = `num_classes`."""
    m = config.model
    backbone = make_backbone(m.backbone.to_dict())
    ratios = [tuple(r) for r in m.anchors.aspect_ratios]
    return ssd_lib.SSD(backbone=backbone, num_classes=num_classes, sources=tuple(m.sources),
                       anchors_per_cell=tuple(boxes_lib.anchors_per_cell(r) for r in ratios),
                       fc_from=m.get("fc_from"), fc_channels=m.get("fc_channels") or 1024,
                       extra_channels=tuple(m.get("extra_channels") or ()),
                       l2norm_first=bool(m.get("l2norm_first", False)))


def make_anchors(config: ml_collections.ConfigDict, model: ssd_lib.SSD,
                 input_shape: tuple[int, ...]) -> np.ndarray:
    """The model's anchors (A, 4) for (H, W, C) inputs."""
    try:
        grids = ssd_lib.grid_sizes(model, input_shape)
    except ValueError as e:
        raise UserError(f"the detector cannot take inputs of shape {input_shape}: {e}") from e
    a = config.model.anchors
    if len(a.scales) != len(grids) + 1:
        raise UserError(f"the detector has {len(grids)} feature maps {grids}; model.anchors.scales "
                        f"needs {len(grids) + 1} values (one per map and one more), got {len(a.scales)}")
    return boxes_lib.make_anchors(grids, tuple(a.scales), [tuple(r) for r in a.aspect_ratios])


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises UserError for config values that cannot work, before any data is read."""
    loop.check_config(config, seeds=False)
    m = config.model
    num_maps = len(m.sources) + (m.get("fc_from") is not None) + len(m.get("extra_channels") or ())
    if len(m.anchors.aspect_ratios) != num_maps:
        raise UserError("model.anchors.aspect_ratios needs one entry per feature map (sources, "
                        "then fc7 if fc_from is set, then extra_channels)")
    if any(r <= 0 for rs in m.anchors.aspect_ratios for r in rs):
        raise UserError("model.anchors.aspect_ratios must be positive")
    if not 0 < config.loss.iou_threshold <= 1:
        raise UserError(f"loss.iou_threshold must lie in (0, 1], got {config.loss.iou_threshold}")
    optim_lib.check(config.optim)


# ----------------------------------------------------------------------------------
# Steps.

def _inputs(images: jax.Array, mean, std) -> jax.Array:
    """Stored images (uint8 0–255 or float in [0, 1]) → normalised float32 model inputs."""
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    # Per-channel statistics (C,) broadcast over (B, H, W, C) without rank promotion.
    mean = jnp.reshape(jnp.asarray(mean, jnp.float32), (-1,))
    std = jnp.reshape(jnp.asarray(std, jnp.float32), (-1,))
    return (x - mean[None, None, None]) / std[None, None, None]


def flip(key: jax.Array, images: jax.Array, boxes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mirrors each image (B, H, W, C) and its boxes (B, M, 4) left–right with probability ½."""
    f = jax.random.bernoulli(key, 0.5, (images.shape[0],))
    images = jnp.where(f[:, None, None, None], images[:, :, ::-1], images)
    mirrored = jnp.stack([boxes[..., 0], 1 - boxes[..., 3], boxes[..., 2], 1 - boxes[..., 1]], -1)
    return images, jnp.where(f[:, None, None], mirrored, boxes)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, anchors: jax.Array,
               loss_kwargs: dict, mean: Any = 0.0, std: Any = 1.0) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on SSD's loss.

    Args:
      state: the replica's state.
      batch: {images (B, H, W, C), boxes (B, M, 4), labels (B, M), mask (B, M)}.
      anchors: (A, 4).
      loss_kwargs: keyword arguments of `jaxdl.detection.loss.ssd_loss`.

    Returns:
      The new state and {loss, conf, loc, positives, accuracy, grad_norm}.
    """
    def loss_of_output(out):
        return loss_lib.ssd_loss(out["logits"], out["deltas"], batch["boxes"], batch["labels"],
                                 batch["mask"], anchors, **loss_kwargs)

    new_state, (loss, aux, grad_norm) = gradient_step(state, _inputs(batch["images"], mean, std), loss_of_output)
    return new_state, {"loss": loss, **aux, "grad_norm": grad_norm}


def train_steps(state: TrainState, data: dict[str, jax.Array], *, batch_size: int, num: int,
                unroll: bool, flip_images: bool = False,
                **step_kwargs: Any) -> tuple[TrainState, dict[str, jax.Array]]:
    """`num` train steps on the device-resident train set, batches gathered inside jit.

    The data order of `jaxdl.loop.scan_steps`, each batch's images and boxes flipped
    together. Returns the new state and per-step metrics (num,).
    """
    augment_fn = None
    if flip_images:
        def augment_fn(key, batch):
            images, boxes = flip(key, batch["images"], batch["boxes"])
            return {**batch, "images": images, "boxes": boxes}
    return loop.scan_steps(state, data, functools.partial(train_step, **step_kwargs), batch_size=batch_size,
                           num=num, unroll=unroll, augment_fn=augment_fn)


def predict(state: TrainState, images: jax.Array, *, anchors: jax.Array, detect_kwargs: dict,
            variances: Any = boxes_lib.VARIANCES, mean: Any = 0.0, std: Any = 1.0) -> dict[str, jax.Array]:
    """Detections of a batch (B, H, W, C): {boxes (B, D, 4), scores, labels, valid (B, D)}."""
    out = state.apply_fn(state.variables(), _inputs(images, mean, std), train=False)
    detect = functools.partial(ssd_lib.detect, anchors=anchors, variances=variances, **detect_kwargs)
    return jax.vmap(detect)(out["logits"], out["deltas"])


def detections(predict_fn: Callable, state: TrainState, images: np.ndarray,
               batch_size: int) -> dict[str, np.ndarray]:
    """Runs `predict_fn` over all images in fixed-size batches (the last padded): (N, D, ...)."""
    n = len(images)
    batch_size = min(batch_size, n)
    outs = []
    for i in progress.track(range(0, n, batch_size), desc="detect"):
        xb = images[i:i + batch_size]
        pad = batch_size - len(xb)
        if pad:
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
        outs.append(jax.device_get(predict_fn(state, xb)))
    return {k: np.concatenate([o[k] for o in outs])[:n] for k in outs[0]}


def score(dets: dict[str, np.ndarray], ds: scenes.SceneDataset) -> dict[str, Any]:
    """VOC- and COCO-style mAP of padded detections against the dataset's boxes."""
    predicted = metrics_lib.from_padded(dets["boxes"], dets["labels"], dets["valid"], dets["scores"])
    truth = metrics_lib.from_padded(ds.boxes, ds.labels, ds.mask)
    return metrics_lib.detection_metrics(predicted, truth, ds.num_classes)


# ----------------------------------------------------------------------------------
# Pictures.

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def draw(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
         class_names: Sequence[str], gt_boxes: np.ndarray | None = None, min_side: int = 256) -> Any:
    """A PIL image of `image` (H, W, C) in [0, 1] with boxes (D, 4), class names and scores.

    Small images are enlarged (nearest neighbour) to at least `min_side` pixels so the
    labels stay legible; ground-truth boxes, if given, are drawn thin and grey beneath.
    """
    from PIL import Image, ImageDraw

    pixels = np.clip(np.asarray(image, np.float32) * 255, 0, 255).astype(np.uint8)
    pixels = np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels[..., :3]
    h, w = pixels.shape[:2]
    zoom = max(1, -(-min_side // min(h, w)))
    picture = Image.fromarray(pixels).resize((w * zoom, h * zoom), Image.NEAREST)
    pen = ImageDraw.Draw(picture)
    scale = np.array([h, w, h, w], np.float32) * zoom

    def rect(box):
        y0, x0, y1, x1 = (np.asarray(box) * scale).tolist()
        return [x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)]

    for box in ([] if gt_boxes is None else gt_boxes):
        pen.rectangle(rect(box), outline=(128, 128, 128), width=1)
    for box, label, s in zip(boxes, labels, scores):
        colour = _PALETTE[int(label) % len(_PALETTE)]
        r = rect(box)
        pen.rectangle(r, outline=colour, width=2)
        text = f"{class_names[int(label)]} {s:.2f}"
        tx, ty = r[0], max(0, r[1] - 11)
        pen.rectangle(pen.textbbox((tx, ty), text), fill=colour)
        pen.text((tx, ty), text, fill=(0, 0, 0))
    return picture


def write_pictures(directory: str, ds: scenes.SceneDataset, dets: dict[str, np.ndarray],
                   count: int, min_score: float) -> list[str]:
    """Draws the first `count` images of `ds` with their detections scoring ≥ `min_score`."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i in range(min(count, len(ds))):
        keep = dets["valid"][i] & (dets["scores"][i] >= min_score)
        image = ds.images[i].astype(np.float32) / (255.0 if ds.images.dtype == np.uint8 else 1.0)
        picture = draw(image, dets["boxes"][i][keep], dets["labels"][i][keep], dets["scores"][i][keep],
                       ds.class_names, gt_boxes=ds.boxes[i][ds.mask[i]])
        path = os.path.join(directory, f"test_{i:03d}.png")
        picture.save(path)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------
# Runs.

def _load(config: ml_collections.ConfigDict, split: str, max_boxes: int | None) -> scenes.SceneDataset:
    ds = config.dataset
    options = ds.get("options")
    return scenes.load_scenes(ds.name, split, directory=ds.get("data_dir"),
                              download=ds.get("download", False), image_size=ds.get("image_size"),
                              max_boxes=max_boxes, dtype=np.dtype(ds.get("image_dtype") or "float32"),
                              options=options.to_dict() if options else None)


def _setup(config: ml_collections.ConfigDict, train: bool = True):
    """Data, anchors, step count and the state's initialiser for `config`.

    Returns (train_ds, test_ds, anchors, num_steps, init) with `init() -> TrainState`.
    """
    check_config(config)
    ds_cfg = config.dataset
    test_ds = _load(config, ds_cfg.get("test_split", "test"), None)
    train_ds = _load(config, ds_cfg.get("train_split", "train"), ds_cfg.get("max_boxes")) if train else None
    num_examples = len(train_ds) if train else 1
    if train:
        loop.check_batch_size(config, num_examples, "training images")
    num_steps = loop.num_train_steps(config, num_examples) if train else 0
    model = make_model(config, test_ds.num_classes)
    input_shape = test_ds.images.shape[1:]
    anchors = make_anchors(config, model, input_shape)
    tx = optim_lib.make_optimizer(config.optim, max(num_steps, 1))
    sample = jnp.zeros((1, *input_shape), jnp.float32)
    key = jax.random.PRNGKey(config.seed)

    def init():
        return create_state(key, model, tx, sample)

    return train_ds, test_ds, anchors, num_steps, init


def _predict_fn(config: ml_collections.ConfigDict, anchors: np.ndarray):
    d = config.detect
    detect_kwargs = {"score_threshold": d.score_threshold, "iou_threshold": d.iou_threshold,
                     "max_detections": d.max_detections, "pre_nms_top_k": d.pre_nms_top_k}
    return compiler.jit(functools.partial(predict, anchors=jnp.asarray(anchors), detect_kwargs=detect_kwargs,
                                          mean=_stat(config, "mean", 0.0), std=_stat(config, "std", 1.0)))


def _stat(config, name, default):
    value = config.dataset.get(name)
    return default if value is None else tuple(value)


def _scorers(config: ml_collections.ConfigDict, workdir: str, test_ds: scenes.SceneDataset,
             anchors: np.ndarray, print_fn: Callable[[str], None]):
    """(evaluate, finish): the test split's mAPs during training; at the end, also pictures."""
    predict_fn = _predict_fn(config, anchors)
    batch_size = config.get("eval_batch_size", 100)

    def evaluate_state(state):
        scores = score(detections(predict_fn, state, test_ds.images, batch_size), test_ds)
        return {k: scores[k] for k in ("map50", "map50_95")}

    def finish(state, step):
        dets = detections(predict_fn, state, test_ds.images, batch_size)
        _test_pictures(config, workdir, test_ds, dets, print_fn)
        return score(dets, test_ds)

    return evaluate_state, finish


def _test_pictures(config: ml_collections.ConfigDict, workdir: str, test_ds: scenes.SceneDataset,
                   dets: dict[str, np.ndarray], print_fn: Callable[[str], None]) -> list[str]:
    directory = os.path.join(workdir, "pictures")
    paths = write_pictures(directory, test_ds, dets, config.get("num_pictures", 8),
                           config.get("picture_min_score", 0.5))
    print_fn(f"{len(paths)} pictures in {directory}")
    return paths


def _model_pictures(config: ml_collections.ConfigDict, workdir: str, state: TrainState,
                    test_ds: scenes.SceneDataset) -> list[str]:
    """The network's filters, feature maps and kernels on a photograph (`jaxdl.pictures`)."""
    from jaxdl import pictures as pictures_lib

    layer, example = pictures_lib.options(config)
    x = _inputs(jnp.asarray(test_ds.images[example:example + 1]), _stat(config, "mean", 0.0),
                _stat(config, "std", 1.0))
    return pictures_lib.model_pictures(os.path.join(workdir, "pictures"), state.apply_fn, state.variables(),
                                       np.asarray(x), layer)


def pictures(config: ml_collections.ConfigDict, workdir: str,
             print_fn: Callable[[str], None] = print) -> list[str]:
    """Draws the pictures of the latest checkpoint in `workdir` (detections, filters, feature maps, …)."""
    loop.check_resumable(config, workdir)
    _, test_ds, anchors, _, init = _setup(config, train=False)
    state = loop.restore_latest(workdir, init)
    dets = detections(_predict_fn(config, anchors), state, test_ds.images, config.get("eval_batch_size", 100))
    workdir = os.path.abspath(workdir)
    return (_test_pictures(config, workdir, test_ds, dets, print_fn)
            + _model_pictures(config, workdir, state, test_ds))


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str,
                     print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Scores the latest checkpoint in `workdir` on the test split; writes `eval.json` and pictures."""
    loop.check_resumable(config, workdir)
    _, test_ds, anchors, _, init = _setup(config, train=False)
    _, finish = _scorers(config, os.path.abspath(workdir), test_ds, anchors, print_fn)
    return loop.evaluate_workdir(config, workdir, init, finish, print_fn)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Trains the configured SSD, evaluating, logging and checkpointing; resumes if it can.

    Returns:
      {map50, map50_95, map50_coco, ap50_per_class, step, train_time_s}, also written
      to `W/results.json`.
    """
    def build() -> loop.Run:
        train_ds, test_ds, anchors, num_steps, init = _setup(config)
        lc = config.loss
        step_kwargs = {"anchors": jnp.asarray(anchors), "mean": _stat(config, "mean", 0.0),
                       "std": _stat(config, "std", 1.0),
                       "loss_kwargs": {"iou_threshold": lc.iou_threshold, "neg_pos_ratio": lc.neg_pos_ratio,
                                       "box_weight": lc.box_weight}}

        def make_steps(num):
            fn = functools.partial(train_steps, batch_size=config.batch_size, num=num,
                                   unroll=config.get("unroll", True),
                                   flip_images=bool((config.get("augment") or {}).get("flip", False)),
                                   **step_kwargs)
            return compiler.jit(fn, donate_argnums=0)

        evaluate_state, finish = _scorers(config, os.path.abspath(workdir), test_ds, anchors, print_fn)
        data = {"images": train_ds.images, "boxes": train_ds.boxes, "labels": train_ds.labels,
                "mask": train_ds.mask}
        return loop.Run(
            init=init, num_steps=num_steps, make_steps=make_steps, data=(jax.device_put(data),),
            evaluate=evaluate_state, finish=finish, schedule=optim_lib.make_schedule(config.optim, num_steps),
            pictures=lambda state: _model_pictures(config, os.path.abspath(workdir), state, test_ds),
            description=f"SSD on {config.model.backbone.name} on {config.dataset.name} ({len(anchors)} anchors)")

    return loop.run(config, workdir, build, print_fn)
