"""FCN-8s on VGG-16 segmenting pets from background in `oxford_iiit_pet` (accelerator).

  python launch.py --config=experiments/segment_pets.py --workdir=runs/segment_pets --config.dataset.download=True

Expected: not measured here (it needs an accelerator and the downloaded dataset).
The trimap's pet (1) becomes class 1, its background (2) class 0 and its border (3)
the ignore label, as in the common two-class protocol.
"""
import ml_collections

from experiments import segment_digit_scenes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = segment_digit_scenes.get_config()
    config.batch_size = 16
    config.num_steps = 20000
    config.log_every = 100
    config.eval_every = 2000
    config.checkpoint_every = 2000
    config.keep_checkpoints = 3
    config.eval_batch_size = 32

    config.dataset.name = "oxford_iiit_pet"
    config.dataset.image_size = 224
    config.dataset.mean = (0.485, 0.456, 0.406)  # ImageNet statistics
    config.dataset.std = (0.229, 0.224, 0.225)
    config.dataset.class_names = ("background", "pet")
    config.dataset.label_map = (255, 1, 0, 255)  # stored trimap value → class

    config.augment.padding = 16
    config.augment.flip = True
    config.augment.mask_fill = 255  # padding is no class
    config.loss.class_weights = None

    config.model = ml_collections.ConfigDict()
    config.model.name = "FCN8s"
    config.model.upsample = "learned"
    config.model.fc_channels = 4096
    config.model.fc_kernel = 7
    config.model.backbone = ml_collections.ConfigDict({"name": "VGG16"})

    config.optim.lr = 1e-4
    config.optim.warmup_steps = 500
    return config
