"""The CNN zoo on ImageNet (ILSVRC-2012) with the papers' recipes: layer summaries offline.

  python launch.py --config=experiments/imagenet.py:resnet50 --mode=summary

prints ResNet-50's layers and 25,557,032 parameters without any data. Training
needs an accelerator host with `imagenet2012` prepared in the TFDS data dir (TFDS
cannot download it: the ILSVRC archives are fetched by hand) and a streaming input
pipeline: the in-memory pipeline of `jaxdl.data` holds a whole split as float32,
which for the 1,281,167 training images at 224×224 is about 770 GB.

Argument: `alexnet`, `vgg11`, `vgg13`, `vgg16`, `vgg19`, `googlenet`, `resnet18`,
`resnet34`, `resnet50`, `resnet101` or `resnet152` (default `resnet50`). Published
top-1 validation errors: AlexNet 40.7 % (one net, 10 crops), VGG-16 27.0 % (single
scale 256), ResNet-50 23.9 % (torchvision's single-crop reference, this recipe).

Recipe: SGD with momentum 0.9, batch 256, 90 epochs, lr divided by 10 after epochs
30 and 60; lr 0.1 and weight decay 1e-4 for ResNets (He et al., 2016), lr 0.01 and
weight decay 5e-4 for AlexNet and VGG (Krizhevsky et al., 2012; Simonyan and
Zisserman, 2015), lr 0.01 and weight decay 2e-4 for GoogLeNet (the reference Caffe
solver; the paper's aux classifiers are off: the train loop has no aux loss).
Images are resized to 224×224 (227×227 for AlexNet), normalised per channel and
flipped at random; the papers' random 224 crops of rescaled images are not done.
"""
import ml_collections

# Per-channel mean and std of the ImageNet training images (pixels in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MODELS = {
    "alexnet": {"name": "AlexNet"},
    "vgg11": {"name": "VGG11"},
    "vgg13": {"name": "VGG13"},
    "vgg16": {"name": "VGG16"},
    "vgg19": {"name": "VGG19"},
    "googlenet": {"name": "GoogLeNet"},
    "resnet18": {"name": "ResNet18"},
    "resnet34": {"name": "ResNet34"},
    "resnet50": {"name": "ResNet50"},
    "resnet101": {"name": "ResNet101"},
    "resnet152": {"name": "ResNet152"},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arch = arg or "resnet50"
    if arch not in MODELS:
        raise ValueError(f"unknown architecture {arch!r} in experiments/imagenet.py:{arg}; "
                         f"valid: {', '.join(MODELS)}")
    size = 227 if arch == "alexnet" else 224
    config = ml_collections.ConfigDict()
    config.task = "classification"
    config.seed = 0
    config.num_seeds = 1
    config.batch_size = 256
    config.num_steps = 450360
    config.num_epochs = 90  # wins over num_steps: 90 × 5,004 steps
    config.log_every = 500
    config.eval_every = 5004
    config.checkpoint_every = 5004
    config.keep_checkpoints = 3
    config.steps_per_call = 1
    config.unroll = True
    config.eval_batch_size = 500

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "imagenet2012"
    config.dataset.data_dir = ml_collections.config_dict.placeholder(str)
    config.dataset.download = False
    config.dataset.train_split = "train"
    config.dataset.test_split = "validation"  # the test labels are not public
    config.dataset.image_size = size
    config.dataset.input_shape = (size, size, 3)
    config.dataset.num_classes = 1000
    config.dataset.mean = IMAGENET_MEAN
    config.dataset.std = IMAGENET_STD

    config.augment = ml_collections.ConfigDict()
    config.augment.crop_padding = 0
    config.augment.flip = True

    config.model = ml_collections.ConfigDict(MODELS[arch])

    resnet = arch.startswith("resnet")
    config.optim = ml_collections.ConfigDict()
    config.optim.name = "sgd"
    config.optim.lr = 0.1 if resnet else 0.01
    config.optim.momentum = 0.9
    config.optim.weight_decay = 1e-4 if resnet else 2e-4 if arch == "googlenet" else 5e-4
    config.optim.schedule = "step"
    config.optim.step_boundaries = (1 / 3, 2 / 3)  # after epochs 30 and 60
    config.optim.step_factor = 0.1
    config.optim.warmup_steps = 0
    return config
