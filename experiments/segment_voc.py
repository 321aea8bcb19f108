"""FCN-8s on VGG-16 on PASCAL VOC 2012 segmentation, 21 classes (accelerator).

  python launch.py --config=experiments/segment_voc.py --workdir=runs/segment_voc --config.dataset.name=NAME

Expected: not measured here. TFDS's catalogue `voc` has boxes only; NAME is a TFDS
dataset of VOC 2012 (or SBD-augmented) segmentation with `image` and
`segmentation_mask` features (labels 0–20, 255 on object borders), prepared in the
data dir. Derived from `segment_pets`: only the data and the classes change.
"""
import ml_collections

from experiments import segment_pets

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = segment_pets.get_config()
    config.num_steps = 30000
    config.dataset.name = "voc_segmentation"
    config.dataset.train_split = "train"
    config.dataset.test_split = "validation"
    config.dataset.image_size = 320
    config.dataset.class_names = VOC_CLASSES
    config.dataset.label_map = None  # masks already hold 0–20 and 255
    return config
