"""U-Net segmenting handwritten digits in `digit_scenes` into 11 classes (CPU).

  python launch.py --config=experiments/segment_digit_scenes.py --workdir=runs/segment_digits

Measured with this command and `--config.num_steps=N` (cosine schedule over N steps)
on the 2-core CPU machine while other jobs shared it (wall time of the whole command;
CPU time of the process in brackets), by an earlier version of jaxdl; the current one,
from a fresh clone on 2026-12-06 at a load average of 1.6–1.9, with the dataset
prepared in the same command: the default 1,600 steps gave mIoU 0.861, background IoU
0.996, pixel accuracy 0.991, weakest digit 8: 0.761, in 6 min 53 s.

| N | mIoU | background IoU | pixel accuracy | weakest digit | wall (CPU) | load average |
|---|---|---|---|---|---|---|
| 1,200 | 0.819 | 0.996 | 0.988 | 9: 0.648 | 17 min 20 s (8 min 12 s) | 5–9 |
| 1,600 (the default) | 0.873 | 0.997 | 0.991 | 8: 0.740 | 11 min 45 s (11 min 37 s) | 1–4 |
| 2,000 | 0.888 | 0.997 | 0.993 | 8: 0.786 | 19 min 57 s (13 min 32 s) | 3–6 |
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.task = "segmentation"
    config.seed = 0
    config.batch_size = 32
    config.num_steps = 1600
    config.num_epochs = ml_collections.config_dict.placeholder(int)  # wins over num_steps when set
    config.log_every = 50
    config.eval_every = 800
    config.checkpoint_every = 400
    config.keep_checkpoints = 1
    config.steps_per_call = 1
    config.unroll = True
    config.eval_batch_size = 100
    config.num_pictures = 8

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "digit_scenes"
    config.dataset.data_dir = ml_collections.config_dict.placeholder(str)
    config.dataset.download = False
    config.dataset.train_split = "train"
    config.dataset.test_split = "test"
    config.dataset.image_size = ml_collections.config_dict.placeholder(int)
    config.dataset.mean = ml_collections.config_dict.placeholder(tuple)
    config.dataset.std = ml_collections.config_dict.placeholder(tuple)
    config.dataset.class_names = ml_collections.config_dict.placeholder(tuple)  # background, 0…9
    config.dataset.label_map = ml_collections.config_dict.placeholder(tuple)

    config.augment = ml_collections.ConfigDict()
    config.augment.padding = 4
    config.augment.flip = False  # a mirrored digit is not a digit
    config.augment.mask_fill = 0  # the canvas is black: padding is background

    config.loss = ml_collections.ConfigDict()
    config.loss.ignore_label = 255
    # Digits cover about 8 % of the pixels; down-weighting the background speeds up
    # learning which digit a stroke belongs to.
    config.loss.class_weights = (0.25,) + (1.0,) * 10

    config.model = ml_collections.ConfigDict()
    config.model.name = "UNet"
    config.model.features = (8, 16, 32, 64, 128)
    config.model.upsample = "learned"
    config.model.backbone = ml_collections.config_dict.placeholder(dict)

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adam"
    config.optim.lr = 3e-3
    config.optim.momentum = 0.0
    config.optim.weight_decay = 0.0
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 20
    return config
