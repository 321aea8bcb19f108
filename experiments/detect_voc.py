"""SSD300 with a VGG-16 backbone on PASCAL VOC 2007 (Liu et al., 2016), for accelerators.

  python launch.py --config=experiments/detect_voc.py --workdir=runs/detect_voc \
      --config.dataset.download=True

The paper's detector: 300×300 inputs, conv4_3 (L2-normalised) and the converted
fc7 plus four extra stride-2 layers as the six maps, 4 or 6 anchors per cell with
scales 0.1–0.88, 3:1 hard-negative mining, SGD 1e-3 with momentum 0.9 and weight decay
5e-4 for 120k steps of 32 images (decay ×0.1 at 80k and 100k). It differs from the
paper in three ways: the backbone is not ImageNet-pretrained (jaxdl ships no weights),
so it has batch norm to train from scratch; the only augmentation is the horizontal
flip (not the paper's photometric distortion, zoom-out and random crops); and the
zoo's VGG pools without ceil mode, so the maps are 37, 18, 18, 9, 5, 3 and 2 cells
wide (the paper's 38, 19, 10, 5, 3, 1). Train on VOC 2007 trainval, test on VOC 2007
test; "difficult" boxes count as ordinary ones. Not measured here (no accelerator, no
download); the paper reports 74.3 % mAP@0.5 with pretraining and its augmentations.
Images are kept as uint8 on the device: 5,011 × 300 × 300 × 3 bytes = 1.4 GB.
"""
import ml_collections

from experiments import detect_digit_scenes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = detect_digit_scenes.get_config()
    config.batch_size = 32
    config.num_steps = 120_000
    config.log_every = 100
    config.eval_every = 10_000
    config.checkpoint_every = 5_000
    config.keep_checkpoints = 3
    config.eval_batch_size = 64

    config.dataset.name = "voc/2007"
    config.dataset.train_split = "train+validation"
    config.dataset.test_split = "test"
    config.dataset.image_size = 300
    config.dataset.image_dtype = "uint8"
    config.dataset.mean = (0.485, 0.456, 0.406)  # ImageNet statistics, pixels in [0, 1]
    config.dataset.std = (0.229, 0.224, 0.225)
    config.augment.flip = True

    config.model.backbone = ml_collections.ConfigDict(
        {"name": "VGG16", "width": 1.0, "small_input": False, "batch_norm": True})
    config.model.sources = ("conv4_3",)
    config.model.fc_from = "conv5_3"
    config.model.fc_channels = 1024
    config.model.extra_channels = (512, 256, 256, 256)
    config.model.l2norm_first = True
    # The scales of the reference implementation (30, 60, 111, 162, 213, 264, 315 px of 300).
    config.model.anchors.scales = (0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05)
    config.model.anchors.aspect_ratios = ((2.0,), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,))

    config.detect.max_detections = 200

    config.optim.name = "sgd"
    config.optim.lr = 1e-3
    config.optim.momentum = 0.9
    config.optim.weight_decay = 5e-4
    config.optim.schedule = "step"
    config.optim.step_boundaries = (80_000 / 120_000, 100_000 / 120_000)
    config.optim.step_factor = 0.1
    config.optim.warmup_steps = 1_000
    return config
