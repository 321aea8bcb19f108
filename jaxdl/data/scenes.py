"""Scenes of real handwritten digits for detection and segmentation, and a padded-array loader.

`digit_scenes` places 1–4 of scikit-learn's handwritten digits (upsampled bilinearly
from 8×8 to 12–24 pixels) at random positions on a black 64×64 canvas, with the
ground-truth boxes of any two digits overlapping by IoU ≤ 0.2. Train scenes use only
the digits of the `digits` train split, test scenes only those of its test split
(`jaxdl.data.builders.digits_split`), so a detector is scored on writing it never saw.
Every scene is a pure function of (seed, split, index).

Features:
  image: uint8 (H, W, 1), 0–255.
  objects/bbox: float32 (n, 4) normalised (ymin, xmin, ymax, xmax), the tight box of
    the digit's ink (pixels above `INK_THRESHOLD` of full intensity).
  objects/label: the digit 0–9, (n,).
  objects/digit_id: the digit's index in `sklearn.datasets.load_digits()`, (n,).
  segmentation_mask: uint8 (H, W): 0 background, d + 1 where digit d's ink is the
    brightest stroke of the pixel.

`load_scenes` reads any dataset with `image` and `objects/{bbox,label}` features
(`digit_scenes`, `voc/2007`, `coco/2017`) into fixed-shape arrays padded with a mask.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re

import numpy as np
import tensorflow_datasets as tfds

from jaxdl import progress
from jaxdl.errors import UserError

# A pixel belongs to a digit's ink (box and mask) above this fraction of full intensity.
INK_THRESHOLD = 0.25
_PLACEMENT_TRIES = 100
_SPLIT_IDS = {"train": 0, "test": 1}


@dataclasses.dataclass(eq=False)
class DigitScenesConfig(tfds.core.BuilderConfig):
    """The scene generator's parameters (the defaults are the `default` config).

    Attributes:
      image_size: canvas side S (pixels).
      min_digits, max_digits: digits per scene, uniform in [min, max].
      min_size, max_size: side of a placed digit (pixels), uniform in [min, max].
      max_iou: largest IoU allowed between the boxes of two digits of a scene.
      num_train, num_test: scenes per split.
      seed: generator seed.
    """

    image_size: int = 64
    min_digits: int = 1
    max_digits: int = 4
    min_size: int = 12
    max_size: int = 24
    max_iou: float = 0.2
    num_train: int = 2000
    num_test: int = 500
    seed: int = 0


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DigitScenesConfig)
             if f.name not in {g.name for g in dataclasses.fields(tfds.core.BuilderConfig)}}


def scene_config(**options) -> DigitScenesConfig:
    """A config with some parameters changed, named after them so its data gets its own folder.

    For example `scene_config(image_size=96, max_digits=6)` is named
    `image_size96-max_digits6`; pass it as `DigitScenes(config=...)`, or pass the same
    options to `DigitScenes(image_size=96, max_digits=6)` directly.
    """
    unknown = sorted(set(options) - set(_DEFAULTS))
    if unknown:
        raise UserError(f"unknown digit_scenes option(s) {', '.join(unknown)}; valid: {', '.join(_DEFAULTS)}")
    changed = {k: v for k, v in options.items() if v != _DEFAULTS[k]}
    name = "-".join(f"{k}{v}" for k, v in sorted(changed.items())) or "default"
    if len(name) > 64:  # keep folder names short
        name = "custom-" + hashlib.sha1(name.encode()).hexdigest()[:12]
    config = DigitScenesConfig(name=name, description=f"digit scenes with {changed or 'the defaults'}",
                               **options)
    _check(config)
    return config


def _check(c: DigitScenesConfig) -> None:
    if not 1 <= c.min_digits <= c.max_digits:
        raise UserError(f"digit_scenes needs 1 <= min_digits <= max_digits, got {c.min_digits}, {c.max_digits}")
    if not 2 <= c.min_size <= c.max_size <= c.image_size:
        raise UserError(f"digit_scenes needs 2 <= min_size <= max_size <= image_size, got "
                        f"{c.min_size}, {c.max_size}, {c.image_size}")
    if not 0 <= c.max_iou <= 1:
        raise UserError(f"digit_scenes max_iou must lie in [0, 1], got {c.max_iou}")


class DigitScenes(tfds.core.GeneratorBasedBuilder):
    """Canvases of real handwritten digits with boxes, labels and per-pixel masks.

    Configs: `default` (64×64, 1–4 digits of 12–24 px, 2,000 train / 500 test scenes);
    `train20k`, the same with 20,000 train scenes (its test split equals the default's);
    `large` (128×128, 1–8 digits of 16–40 px, 4,000 / 1,000). Other parameters:
    `DigitScenes(data_dir=..., image_size=96, max_digits=6)` (see `scene_config`).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        DigitScenesConfig(name="default", description="64x64, 1-4 digits of 12-24 px"),
        DigitScenesConfig(name="train20k", description="the default with 20,000 train scenes",
                          num_train=20000),
        DigitScenesConfig(name="large", description="128x128, 1-8 digits of 16-40 px",
                          image_size=128, max_digits=8, min_size=16, max_size=40,
                          num_train=4000, num_test=1000),
    ]

    def __init__(self, *, config=None, **kwargs):
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in _DEFAULTS}
        if options:
            if config is not None:
                raise UserError("pass digit_scenes options or a config, not both")
            config = scene_config(**options)
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description="Real handwritten digits (scikit-learn) placed on canvases, for "
                        "detection and segmentation.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(s, s, 1), dtype=np.uint8),
                "objects": tfds.features.Sequence({
                    "bbox": tfds.features.BBoxFeature(),
                    "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
                    "digit_id": tfds.features.Scalar(dtype=np.int32),
                }),
                "segmentation_mask": tfds.features.Tensor(shape=(s, s), dtype=np.uint8),
            }),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing is downloaded.
        # Imported here: builders.py imports this module to register the builder.
        from jaxdl.data.builders import digits_split

        c = self.builder_config
        _check(c)
        sizes = {"train": c.num_train, "test": c.num_test}
        return {split: self._generate_examples(split, idx, sizes[split])
                for split, idx in digits_split().items()}

    def _generate_examples(self, split, digit_indices, num_scenes):
        from sklearn.datasets import load_digits

        data = load_digits()
        images = data.images[digit_indices].astype(np.float32) / 16.0
        for i in range(num_scenes):
            yield i, make_scene(self.builder_config, split, i, images, data.target[digit_indices],
                                digit_indices)


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a square (h, h) image to (size, size), pixel centres aligned."""
    n = image.shape[0]
    pos = np.clip((np.arange(size) + 0.5) * (n / size) - 0.5, 0, n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    f = (pos - lo).astype(np.float32)
    rows = image[lo] * (1 - f)[:, None] + image[hi] * f[:, None]
    return rows[:, lo] * (1 - f)[None, :] + rows[:, hi] * f[None, :]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box a (4,) with each of boxes b (n, 4), corners (ymin, xmin, ymax, xmax)."""
    inter = (np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
             * np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None))
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def make_scene(c: DigitScenesConfig, split: str, index: int, images: np.ndarray,
               labels: np.ndarray, ids: np.ndarray) -> dict:
    """Scene `index` of `split`: a function of (c.seed, split, index) and the digit pool.

    Args:
      c: generator parameters.
      split: `train` or `test` (seeds differ per split).
      index: scene number.
      images: the split's digits (n, 8, 8) in [0, 1].
      labels: their labels (n,).
      ids: their indices in `load_digits()` (n,).
    """
    rng = np.random.default_rng([c.seed, _SPLIT_IDS[split], index])
    s = c.image_size
    brightest = np.zeros((s, s), np.float32)  # the canvas: digits composed by maximum
    owner = np.zeros((s, s), np.uint8)         # which digit gives each pixel its value, + 1
    boxes, classes, used = [], [], []
    for _ in range(rng.integers(c.min_digits, c.max_digits + 1)):
        k = rng.integers(len(images))
        size = int(rng.integers(c.min_size, c.max_size + 1))
        # Quantised to the stored 8 bits first, so boxes and masks agree with the image.
        patch = np.round(resize_bilinear(images[k], size) * 255) / 255
        rows, cols = np.nonzero(patch > INK_THRESHOLD)
        for _ in range(_PLACEMENT_TRIES):
            y, x = rng.integers(0, s - size + 1, size=2)
            box = np.array([y + rows.min(), x + cols.min(), y + rows.max() + 1, x + cols.max() + 1],
                           np.float32) / s
            if not boxes or _iou(box, np.stack(boxes)).max() <= c.max_iou:
                break
        else:
            continue  # no room for this digit: the scene keeps fewer
        region = (slice(y, y + size), slice(x, x + size))
        wins = patch > brightest[region]
        brightest[region] = np.where(wins, patch, brightest[region])
        owner[region] = np.where(wins, len(boxes) + 1, owner[region])
        boxes.append(box)
        classes.append(int(labels[k]))
        used.append(int(ids[k]))
    mask = np.zeros((s, s), np.uint8)
    ink = brightest > INK_THRESHOLD
    mask[ink] = np.asarray(classes, np.uint8)[owner[ink] - 1] + 1
    return {
        "image": np.round(brightest * 255).astype(np.uint8)[:, :, None],
        "objects": {"bbox": np.stack(boxes), "label": np.asarray(classes, np.int64),
                    "digit_id": np.asarray(used, np.int32)},
        "segmentation_mask": mask,
    }


# ----------------------------------------------------------------------------------
# Loading any detection dataset into padded arrays.

@dataclasses.dataclass(frozen=True)
class SceneDataset:
    """One split of a detection dataset held in memory, padded to M boxes per image.

    Attributes:
      images: (N, H, W, C) float32 in [0, 1] (uint8 0–255 when loaded with `dtype=uint8`).
      boxes: (N, M, 4) float32 normalised (ymin, xmin, ymax, xmax); padding rows are 0.
      labels: (N, M) int32 classes 0…K-1; padding rows are 0.
      mask: (N, M) bool, true for real boxes.
      segmentation: (N, H, W) uint8 per-pixel classes (0 background), or None when the
        dataset has no `segmentation_mask`.
      class_names: the K class names.
      name: dataset name as configured.
    """

    images: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    segmentation: np.ndarray | None
    class_names: tuple[str, ...]
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)


def check_boxes(boxes: np.ndarray, where: str) -> None:
    """Raises UserError unless every box (n, 4) is finite, inside [0, 1] and has min <= max."""
    bad = ~np.all(np.isfinite(boxes), axis=-1)
    bad |= np.any((boxes < 0) | (boxes > 1), axis=-1)
    bad |= (boxes[:, 0] > boxes[:, 2]) | (boxes[:, 1] > boxes[:, 3])
    if bad.any():
        j = int(np.argmax(bad))
        raise UserError(
            f"{where} has box {j} = {np.round(boxes[j], 4).tolist()}, outside [0, 1] or with "
            f"ymin > ymax or xmin > xmax; boxes must be normalised (ymin, xmin, ymax, xmax): "
            f"fix or drop that example")


def _resize_image(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    from PIL import Image

    squeeze = image.ndim == 3 and image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    out = np.asarray(pil.resize((size, size), Image.NEAREST if nearest else Image.BILINEAR))
    return out[..., None] if squeeze else out


def _scene_source(name: str, split: str, directory: str | None, options: dict):
    """A data source of `digit_scenes` generated with `options` (see `scene_config`)."""
    from jaxdl import data as data_lib

    base, _, variant = name.partition("/")
    if base != "digit_scenes" or variant:
        raise UserError(f"dataset.options apply to 'digit_scenes' only, not {name!r}; remove them")
    builder = DigitScenes(data_dir=data_lib.data_dir(directory), file_format="array_record", **options)
    if not builder.is_prepared():
        with progress.tfds_bars():
            builder.download_and_prepare(file_format="array_record")
    return builder.as_data_source(split=split), builder.info


def load_scenes(name: str, split: str, directory: str | None = None, download: bool = False,
                image_size: int | None = None, max_boxes: int | None = None,
                dtype: np.dtype | type = np.float32, options: dict | None = None) -> SceneDataset:
    """Reads a split of a detection dataset into padded arrays.

    Args:
      name: `digit_scenes` (offline), or a TFDS catalogue name such as `voc/2007`.
      split: TFDS split, e.g. `train`, `test`, `train+validation`.
      directory: TFDS data dir (see `jaxdl.data.data_dir`).
      download: allow TFDS to download a catalogue dataset.
      image_size: resize every image to this square size (needed when sizes differ).
      max_boxes: M; default the most boxes of any image of the split. Images with more
        keep their first M.
      dtype: float32 (pixels in [0, 1]) or uint8 (0–255, a quarter of the memory).
      options: for `digit_scenes`, generator parameters (`DigitScenesConfig` fields,
        e.g. {"num_train": 20000}); the scenes are prepared once per set of options.

    Raises:
      UserError: for a dataset without boxes, images of different sizes without
        `image_size`, or a box outside [0, 1] or with min > max (naming the example).
    """
    from jaxdl import data as data_lib  # here: builders.py imports this module

    try:
        if options:
            source, info = _scene_source(name, split, directory, dict(options))
        else:
            source, info = data_lib.data_source(name, split, directory, download)
    except ModuleNotFoundError as e:
        # TFDS re-raises it with its own message, which loses `e.name`.
        found = re.search(r"No module named '([^']+)'", str(e))
        missing = e.name or (found.group(1) if found else "a module")
        raise UserError(f"preparing or reading {name!r} needs {missing}, which is not installed; "
                        f"pip install 'jaxdl[tf]' for catalogue datasets whose builders need it") from e
    features = info.features
    if "image" not in features or "objects" not in features or "bbox" not in features["objects"].feature:
        raise UserError(f"dataset {name!r} has no `image` and `objects/bbox` features; it cannot "
                        f"be used for detection")
    class_names = tuple(features["objects"]["label"].names)
    n = len(source)
    if n == 0:
        raise UserError(f"split {split!r} of dataset {name!r} is empty")
    try:
        examples = source.__getitems__(list(range(n)))
    except (TypeError, AttributeError):  # sources that read one record at a time (mock_data's)
        examples = [source[i] for i in range(n)]

    images, box_list, label_list, segs = [], [], [], []
    for i, e in enumerate(examples):
        image = np.asarray(e["image"])
        if image.ndim == 2:
            image = image[:, :, None]
        seg = np.asarray(e["segmentation_mask"]) if "segmentation_mask" in e else None
        if image_size is not None and image.shape[:2] != (image_size, image_size):
            image = _resize_image(image, image_size)
            seg = None if seg is None else _resize_image(seg, image_size, nearest=True)
        images.append(image)
        segs.append(seg)
        objects = e["objects"]
        # Sequence features come back as lists; mocked ones can disagree in length.
        k = min(len(objects["bbox"]), len(objects["label"]))
        boxes = np.asarray(objects["bbox"][:k], np.float32).reshape(k, 4)
        check_boxes(boxes, f"example {i} of {name!r} split {split!r}")
        box_list.append(boxes)
        label_list.append(np.asarray(objects["label"][:k], np.int32).reshape(k))

    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise UserError(f"images of {name!r} have different sizes ({len(shapes)} shapes); set "
                        f"dataset.image_size to resize them to one square size")
    m = max_boxes if max_boxes is not None else max(1, max(len(b) for b in box_list))
    boxes = np.zeros((n, m, 4), np.float32)
    labels = np.zeros((n, m), np.int32)
    mask = np.zeros((n, m), bool)
    for i, (b, lab) in enumerate(zip(box_list, label_list)):
        k = min(len(b), m)
        boxes[i, :k], labels[i, :k], mask[i, :k] = b[:k], lab[:k], True
    images = np.stack(images)
    if np.dtype(dtype) != np.uint8:
        images = images.astype(np.float32) / 255.0
    segmentation = np.stack(segs) if all(s is not None for s in segs) else None
    return SceneDataset(images=images, boxes=boxes, labels=labels, mask=mask,
                        segmentation=segmentation, class_names=class_names, name=name)
