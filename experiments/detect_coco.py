"""SSD300 with a VGG-16 backbone on COCO 2017 (Liu et al., 2016), for accelerators.

  python launch.py --config=experiments/detect_coco.py --workdir=runs/detect_coco \
      --config.dataset.download=True

The VOC configuration (`experiments/detect_voc.py`, with its differences from the
paper) with COCO's 80 classes, the paper's smaller COCO scales (0.07–0.87) and 400k
steps (decay at 280k and 360k); train on `train`, test on `validation`. Crowd boxes
count as ordinary ones. TFDS's COCO builder imports TensorFlow: install the `tf` extra
(`pip install 'jaxdl[tf]'`). The 118,287 training images are kept as uint8 on the
device at 300×300: about 32 GB. Not measured here; the paper reports 23.2 % mAP@[.5:.95]
and 41.2 % mAP@0.5 with pretraining and its augmentations.
"""
import ml_collections

from experiments import detect_voc


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = detect_voc.get_config()
    config.num_steps = 400_000
    config.eval_every = 50_000
    config.checkpoint_every = 10_000
    config.dataset.name = "coco/2017"
    config.dataset.train_split = "train"
    config.dataset.test_split = "validation"
    config.dataset.max_boxes = 100
    config.model.anchors.scales = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
    config.optim.step_boundaries = (280_000 / 400_000, 360_000 / 400_000)
    return config
