"""Loading a split of any dataset with `image` and `segmentation_mask` features into arrays."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxdl.data.scenes import _resize_image
from jaxdl.errors import UserError
from jaxdl.segmentation.losses import IGNORE_LABEL


@dataclasses.dataclass(frozen=True)
class SegmentationDataset:
    """One split held in memory.

    Attributes:
      images: (N, H, W, C) uint8, 0–255.
      masks: (N, H, W) uint8 classes 0…K-1, or the ignore label.
      class_names: the K class names.
      name: dataset name as configured.
    """

    images: np.ndarray
    masks: np.ndarray
    class_names: tuple[str, ...]
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)


def _label_table(label_map: Sequence[int] | None, ignore_label: int) -> np.ndarray:
    """Lookup (256,) from stored mask values to classes; values not mapped are ignored."""
    if label_map is None:
        return np.arange(256, dtype=np.uint8)
    table = np.full(256, ignore_label, np.uint8)
    table[:len(label_map)] = np.asarray(label_map, np.uint8)
    return table


def load_segmentation(name: str, split: str, directory: str | None = None, download: bool = False,
                      image_size: int | None = None, label_map: Sequence[int] | None = None,
                      class_names: Sequence[str] | None = None,
                      ignore_label: int = IGNORE_LABEL) -> SegmentationDataset:
    """Reads a split of a dataset with `image` and `segmentation_mask` features.

    Args:
      name: `digit_scenes` (offline), or a TFDS catalogue name such as `oxford_iiit_pet`.
      split: TFDS split.
      directory: TFDS data dir (see `jaxdl.data.data_dir`).
      download: allow TFDS to download a catalogue dataset.
      image_size: resize images (bilinear) and masks (nearest neighbour) to this square
        size; masks are resized to their image's size even when their sizes disagree.
      label_map: class of each stored mask value 0, 1, …; values past its end become
        `ignore_label` (for `oxford_iiit_pet`'s trimap: (255, 1, 0, 255)). None keeps
        the stored values.
      class_names: the K names; default "background" followed by the names of
        `objects/label` (`digit_scenes`: background, 0…9).

    Raises:
      UserError: for a dataset without masks, images of different sizes without
        `image_size`, or no class names.
    """
    from jaxdl import data as data_lib

    try:
        source, info = data_lib.data_source(name, split, directory, download)
    except ModuleNotFoundError as e:
        raise UserError(f"preparing or reading {name!r} needs {e.name}, which is not installed; "
                        f"pip install 'jaxdl[tf]' for catalogue datasets whose builders need it") from e
    features = info.features
    if "image" not in features or "segmentation_mask" not in features:
        raise UserError(f"dataset {name!r} has no `image` and `segmentation_mask` features; it "
                        f"cannot be used for segmentation")
    if class_names is None:
        if "objects" not in features or "label" not in features["objects"].feature:
            raise UserError(f"dataset {name!r} does not name its mask classes; set dataset.class_names")
        class_names = ("background", *features["objects"]["label"].names)
    n = len(source)
    if n == 0:
        raise UserError(f"split {split!r} of dataset {name!r} is empty")
    try:
        examples = source.__getitems__(list(range(n)))
    except TypeError:  # tfds.testing.mock_data's sources read one record at a time
        examples = [source[i] for i in range(n)]
    table = _label_table(label_map, ignore_label)
    images, masks = [], []
    for e in examples:
        image = np.asarray(e["image"])
        image = image[:, :, None] if image.ndim == 2 else image
        mask = np.asarray(e["segmentation_mask"])
        mask = mask[..., 0] if mask.ndim == 3 else mask
        mask = mask.astype(np.uint8)
        if image_size is not None and image.shape[:2] != (image_size, image_size):
            image = _resize_image(image, image_size)
        if mask.shape != image.shape[:2]:
            mask = _resize_image(mask, image.shape[0], nearest=True)
            if mask.shape != image.shape[:2]:
                raise UserError(f"dataset {name!r} has non-square images; set dataset.image_size")
        images.append(image)
        masks.append(table[mask])
    if len({im.shape for im in images}) > 1:
        raise UserError(f"images of {name!r} have different sizes; set dataset.image_size to "
                        f"resize them to one square size")
    return SegmentationDataset(images=np.stack(images).astype(np.uint8), masks=np.stack(masks),
                               class_names=tuple(class_names), name=name)
