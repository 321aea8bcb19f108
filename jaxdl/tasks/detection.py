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
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdl import data as data_lib
from jaxdl import models
from jaxdl import optim as optim_lib
from jaxdl.checkpoint import Checkpoints
from jaxdl.data import scenes
from jaxdl.detection import boxes as boxes_lib
from jaxdl.detection import loss as loss_lib
from jaxdl.detection import metrics as metrics_lib
from jaxdl.detection import ssd as ssd_lib
from jaxdl.errors import UserError, unknown_name
from jaxdl.train import MetricsLog, TrainingDiverged, TrainState, _check_resumable, create_state, num_train_steps

# The key streams of `jaxdl.train` (fold_in of the replica key).
_DATA, _DROPOUT, _AUGMENT = 1, 2, 3


# ----------------------------------------------------------------------------------
# Config → objects.

def make_model(config: ml_collections.ConfigDict, num_classes: int) -> ssd_lib.SSD:
    """The SSD of `config.model` over its zoo backbone, for K = `num_classes`."""
    m = config.model
    fields = m.backbone.to_dict()
    name = fields.pop("name")
    if name not in models.__all__:
        raise unknown_name("backbone", name, models.__all__, "model.backbone.name")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    cls = getattr(models, name)
    # The classifier output is unused: K=1 (and, for VGG, fc6/fc7 of width 1) keeps its
    # parameters negligible, where VGG-16's fc6 alone would hold 100M at 300×300.
    try:
        try:
            backbone = cls(num_classes=1, hidden=1, **fields)
        except TypeError:
            backbone = cls(num_classes=1, **fields)
    except TypeError as e:
        raise UserError(f"backbone {name!r} does not take these model.backbone fields: {e}") from e
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
    for field in ("batch_size", "log_every", "eval_every", "checkpoint_every"):
        value = config.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{field} must be an integer >= 1, got {value!r}")
    if not config.get("num_epochs") and (not isinstance(config.get("num_steps"), int) or config.num_steps < 1):
        raise UserError(f"num_steps must be an integer >= 1 (or set num_epochs), got {config.get('num_steps')!r}")
    if config.get("num_seeds", 1) != 1:
        raise UserError("the detection task trains one seed; set num_seeds=1 and vary seed instead")
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
               loss_kwargs: dict, mean=0.0, std=1.0) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on SSD's loss.

    Args:
      state: the replica's state.
      batch: {images (B, H, W, C), boxes (B, M, 4), labels (B, M), mask (B, M)}.
      anchors: (A, 4).
      loss_kwargs: keyword arguments of `jaxdl.detection.loss.ssd_loss`.

    Returns:
      The new state and {loss, conf, loc, positives, accuracy, grad_norm}.
    """
    x = _inputs(batch["images"], mean, std)
    dropout_key = jax.random.fold_in(jax.random.fold_in(state.key, _DROPOUT), state.step)

    def loss_fn(params):
        variables = {**state.variables(), "params": params}
        mutable = ["batch_stats"] if state.batch_stats else False
        out = state.apply_fn(variables, x, train=True, rngs={"dropout": dropout_key}, mutable=mutable)
        out, updates = out if mutable else (out, {})
        loss, aux = loss_lib.ssd_loss(out["logits"], out["deltas"], batch["boxes"], batch["labels"],
                                      batch["mask"], anchors, **loss_kwargs)
        return loss, (aux, updates)

    (loss, (aux, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    opt_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, opt_updates),
        opt_state=opt_state, batch_stats=updates.get("batch_stats", state.batch_stats))
    return new_state, {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads)}


def train_steps(state: TrainState, data: dict[str, jax.Array], *, batch_size: int, num: int,
                unroll: bool, flip_images: bool = False, **step_kwargs):
    """`num` train steps on the device-resident train set, batches gathered inside jit.

    Step s trains on `jaxdl.data.batch_indices(fold_in(key, 1), s, N, B)`, the data
    order of `jaxdl.train.train_steps`. Returns the new state and per-step metrics (num,).
    """
    n = data["images"].shape[0]
    steps_per_epoch = n // batch_size
    span = (steps_per_epoch + num - 2) // steps_per_epoch + 1  # epochs one call can touch
    first_epoch = state.step // steps_per_epoch
    perms = data_lib.epoch_permutations(jax.random.fold_in(state.key, _DATA),
                                        first_epoch + jnp.arange(span), n)

    def body(s, _):
        epoch, i = jnp.divmod(s.step, steps_per_epoch)
        idx = jax.lax.dynamic_slice_in_dim(perms[epoch - first_epoch], i * batch_size, batch_size)
        batch = {k: v[idx] for k, v in data.items()}
        if flip_images:
            key = jax.random.fold_in(jax.random.fold_in(s.key, _AUGMENT), s.step)
            batch["images"], batch["boxes"] = flip(key, batch["images"], batch["boxes"])
        return train_step(s, batch, **step_kwargs)

    return jax.lax.scan(body, state, None, length=num, unroll=0 if unroll else 1)


def predict(state: TrainState, images: jax.Array, *, anchors: jax.Array, detect_kwargs: dict,
            variances=boxes_lib.VARIANCES, mean=0.0, std=1.0) -> dict[str, jax.Array]:
    """Detections of a batch (B, H, W, C): {boxes (B, D, 4), scores, labels, valid (B, D)}."""
    out = state.apply_fn(state.variables(), _inputs(images, mean, std), train=False)
    detect = functools.partial(ssd_lib.detect, anchors=anchors, variances=variances, **detect_kwargs)
    return jax.vmap(detect)(out["logits"], out["deltas"])


def detections(predict_fn, state: TrainState, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Runs `predict_fn` over all images in fixed-size batches (the last padded): (N, D, ...)."""
    n = len(images)
    batch_size = min(batch_size, n)
    outs = []
    for i in range(0, n, batch_size):
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
         class_names, gt_boxes: np.ndarray | None = None, min_side: int = 256):
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


def _setup(config: ml_collections.ConfigDict, train: bool = True, abstract: bool = False):
    """Data, model, anchors, step count and a fresh state for `config`.

    With `abstract`, the state holds only shapes and dtypes: enough to restore a
    checkpoint into, without compiling the initialisation.
    """
    check_config(config)
    ds_cfg = config.dataset
    test_ds = _load(config, ds_cfg.get("test_split", "test"), None)
    train_ds = _load(config, ds_cfg.get("train_split", "train"), ds_cfg.get("max_boxes")) if train else None
    num_examples = len(train_ds) if train else 1
    if train and config.batch_size > num_examples:
        raise UserError(f"batch_size {config.batch_size} is larger than the {num_examples} training "
                        f"images of {ds_cfg.name!r}; lower --config.batch_size")
    num_steps = num_train_steps(config, num_examples) if train else 0
    model = make_model(config, test_ds.num_classes)
    input_shape = test_ds.images.shape[1:]
    anchors = make_anchors(config, model, input_shape)
    tx = optim_lib.make_optimizer(config.optim, max(num_steps, 1))
    sample = jnp.zeros((1, *input_shape), jnp.float32)
    init = lambda k: create_state(k, model, tx, sample)
    key = jax.random.PRNGKey(config.seed)
    if abstract:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                             jax.eval_shape(init, key))
    else:
        state = jax.jit(init)(key)
    return train_ds, test_ds, model, anchors, num_steps, state


def _predict_fn(config: ml_collections.ConfigDict, anchors: np.ndarray):
    d = config.detect
    detect_kwargs = {"score_threshold": d.score_threshold, "iou_threshold": d.iou_threshold,
                     "max_detections": d.max_detections, "pre_nms_top_k": d.pre_nms_top_k}
    return jax.jit(functools.partial(predict, anchors=jnp.asarray(anchors), detect_kwargs=detect_kwargs,
                                     mean=_stat(config, "mean", 0.0), std=_stat(config, "std", 1.0)))


def _stat(config, name, default):
    value = config.dataset.get(name)
    return default if value is None else tuple(value)


def _finish(config, workdir, state, step, test_ds, predict_fn, print_fn, extra=None) -> dict[str, Any]:
    """Scores the test split, writes the pictures and returns the result record."""
    dets = detections(predict_fn, state, test_ds.images, config.get("eval_batch_size", 100))
    result = {"step": step, **score(dets, test_ds), **(extra or {})}
    pictures = write_pictures(os.path.join(workdir, "pictures"), test_ds, dets,
                              config.get("num_pictures", 8), config.get("picture_min_score", 0.5))
    print_fn(f"step {step}: mAP@0.5 {result['map50']:.4f} (VOC)  mAP@[.5:.95] {result['map50_95']:.4f} "
             f"(COCO); {len(pictures)} pictures in {os.path.join(workdir, 'pictures')}")
    return result


def _latest_step(workdir: str) -> int | None:
    """The newest checkpoint's step in `workdir`, None if there is none (creating nothing)."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return None
    ckpts = Checkpoints(workdir)
    step = ckpts.latest_step()
    ckpts.close()
    return step


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str,
                     print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Scores the latest checkpoint in `workdir` on the test split; writes `eval.json` and pictures."""
    workdir = os.path.abspath(workdir)
    step = _latest_step(workdir)
    if step is None:
        raise UserError(f"no checkpoint in {workdir}; train first (--mode=train) or pass the run's --workdir")
    config_path = os.path.join(workdir, "config.json")
    if os.path.exists(config_path):
        with open(config_path) as f:
            _check_resumable(json.load(f), config, workdir)
    _, test_ds, _, anchors, _, state = _setup(config, train=False, abstract=True)
    ckpts = Checkpoints(workdir)
    state = ckpts.restore(step, state)
    ckpts.close()
    result = _finish(config, workdir, state, step, test_ds, _predict_fn(config, anchors), print_fn)
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Trains the configured SSD, evaluating, logging and checkpointing; resumes if it can.

    Returns:
      {map50, map50_95, map50_coco, ap50_per_class, step, train_time_s}, also written
      to `W/results.json`.
    """
    # ---------------------------------------------------------------- resumable? (before any work)
    workdir = os.path.abspath(workdir)
    config_path = os.path.join(workdir, "config.json")
    start = _latest_step(workdir)
    if start is not None and os.path.exists(config_path):
        with open(config_path) as f:
            _check_resumable(json.load(f), config, workdir)

    # ---------------------------------------------------------------- data, model and optimiser
    train_ds, test_ds, model, anchors, num_steps, state = _setup(config, abstract=start is not None)
    schedule = optim_lib.make_schedule(config.optim, num_steps)

    # ---------------------------------------------------------------- workdir and restore
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create workdir {workdir}: {e.strerror}") from e
    ckpts = Checkpoints(workdir, keep=config.get("keep_checkpoints", 3))
    log = MetricsLog(workdir)
    if start is not None:
        state = ckpts.restore(start, state)
        log.truncate_after(start)
        print_fn(f"resumed from {ckpts.path(start)} at step {start}")
    else:
        start = 0
        if os.path.exists(log.path):
            os.remove(log.path)  # a log without a checkpoint belongs to no run we can continue
    with open(config_path, "w") as f:
        f.write(config.to_json(indent=2))

    # ---------------------------------------------------------------- compiled steps
    data = {"images": train_ds.images, "boxes": train_ds.boxes, "labels": train_ds.labels,
            "mask": train_ds.mask}
    data = jax.device_put(data)
    lc = config.loss
    step_kwargs = {"anchors": jnp.asarray(anchors), "mean": _stat(config, "mean", 0.0),
                   "std": _stat(config, "std", 1.0),
                   "loss_kwargs": {"iou_threshold": lc.iou_threshold, "neg_pos_ratio": lc.neg_pos_ratio,
                                   "box_weight": lc.box_weight}}
    chunk = max(1, min(config.get("steps_per_call", 1), num_steps))

    def compiled(num):
        fn = functools.partial(train_steps, batch_size=config.batch_size, num=num,
                               unroll=config.get("unroll", True),
                               flip_images=bool((config.get("augment") or {}).get("flip", False)),
                               **step_kwargs)
        return jax.jit(fn, donate_argnums=0)

    step_chunk, step_one = compiled(chunk), compiled(1)
    predict_fn = _predict_fn(config, anchors)

    # ---------------------------------------------------------------- loop
    print_fn(f"training SSD on {config.model.backbone.name} on {config.dataset.name}: {num_steps} steps, "
             f"batch {config.batch_size}, {len(anchors)} anchors, workdir {workdir}")
    pending: list[dict] = []  # per-call metrics still on the device
    fetched: list[dict] = []  # on the host, not yet logged
    step = int(start)
    last_saved = start if start else None
    t_log, s_log, t0 = time.time(), step, time.time()

    def crossed(prev, now, every):
        return now // every > prev // every

    def fetch() -> None:
        """Brings the pending metrics to the host; stops on a non-finite loss or gradient."""
        if not pending:
            return
        metrics = jax.device_get(jax.tree.map(lambda *a: jnp.concatenate(a), *pending))
        pending.clear()
        if not (np.all(np.isfinite(metrics["loss"])) and np.all(np.isfinite(metrics["grad_norm"]))):
            kept = (f"the last good checkpoint is {ckpts.path(last_saved)}" if last_saved
                    else "no checkpoint was written")
            raise TrainingDiverged(f"non-finite loss or gradient at or before step {step}; {kept}")
        fetched.append(metrics)

    while step < num_steps:
        num = chunk if num_steps - step >= chunk else 1
        state, metrics = (step_chunk if num == chunk else step_one)(state, data)
        pending.append(metrics)
        prev, step = step, step + num
        done = step >= num_steps
        record = {}
        if crossed(prev, step, config.log_every) or done:
            fetch()
            record.update({f"train_{k}": float(np.mean(np.concatenate([m[k] for m in fetched])))
                           for k in fetched[0] if k != "grad_norm"})
            fetched.clear()
            record["lr"] = float(schedule(step - 1))
            now = time.time()
            rate = (step - s_log) / max(now - t_log, 1e-9)
            t_log, s_log = now, step
            print_fn(f"step {step}/{num_steps}  loss {record['train_loss']:.4f} (conf "
                     f"{record['train_conf']:.4f}, loc {record['train_loc']:.4f})  {rate:.2f} steps/s  "
                     f"ETA {int((num_steps - step) / max(rate, 1e-9))} s")
        if crossed(prev, step, config.eval_every) and not done:  # the final one comes below
            scores = score(detections(predict_fn, state, test_ds.images,
                                      config.get("eval_batch_size", 100)), test_ds)
            record.update({k: scores[k] for k in ("map50", "map50_95")})
            print_fn(f"step {step}/{num_steps}  test mAP@0.5 {scores['map50']:.4f}  "
                     f"mAP@[.5:.95] {scores['map50_95']:.4f}")
        # The log line goes first: a run killed before its checkpoint completes resumes
        # from the previous checkpoint and drops the lines after it, so none is lost.
        if record:
            log.append({"step": step, **record})
        if crossed(prev, step, config.checkpoint_every) or done:
            fetch()  # never checkpoint a diverged state
            ckpts.save(step, state)
            last_saved = step
    ckpts.close()
    train_time = round(time.time() - t0, 2)

    # ---------------------------------------------------------------- results
    final = _finish(config, workdir, state, step, test_ds, predict_fn, print_fn,
                    extra={"train_time_s": train_time})
    if step > start:  # a resumed finished run has logged this already
        log.append({"step": step, "map50": final["map50"], "map50_95": final["map50_95"]})
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(final, f, indent=2)
    print_fn(f"done: mAP@0.5 {final['map50']:.4f}, mAP@[.5:.95] {final['map50_95']:.4f}; results in "
             f"{os.path.join(workdir, 'results.json')}")
    return final
