"""The CNN zoo on CIFAR-10 with the papers' recipe: for an accelerator host with the data.

  python launch.py --config=experiments/cifar10.py:resnet18 --workdir=runs/cifar10_resnet18 \\
      --config.dataset.download=True

Argument: `lenet5`, `alexnet`, `vgg11`, `vgg13`, `vgg16`, `vgg19`, `googlenet`,
`resnet18`, `resnet34`, `resnet50`, `resnet101` or `resnet152` (default `resnet18`).
Not measured here (it needs the CIFAR-10 download and an accelerator); test
accuracies reported for these 32×32 variants with similar recipes are 93–95 % for
ResNet-18, VGG-16 with batch norm and GoogLeNet.

The recipe of He et al. (2016, §4.2): SGD with momentum 0.9, batch 128, lr 0.1
divided by 10 at 50 % and 75 % of the run (their 32k and 48k of 64k iterations:
164 epochs), random 32×32 crops of the image padded by 4, horizontal flips, and
per-channel normalisation. Weight decay is 5e-4 (the AlexNet and VGG papers' value;
He et al. use 1e-4). Every model but LeNet-5 (made for 32×32) takes its small-input
stem (3×3, no early downsampling, narrow dense layers; see each model's docstring).
Models without batch norm (LeNet-5, AlexNet, GoogLeNet) take AlexNet's lr 0.01; VGG
uses batch norm (`--config.model.batch_norm=False --config.optim.lr=0.01` for the
paper's plain VGG). GoogLeNet is trained without its auxiliary classifiers.
`--mode=summary` works without the data (`dataset.input_shape` is set).
"""
import ml_collections

from jaxdl import parallel

# Per-channel mean and std of the 50,000 CIFAR-10 training images (pixels in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

MODELS = {
    "lenet5": {"name": "LeNet5"},
    "alexnet": {"name": "AlexNet", "small_input": True},
    "vgg11": {"name": "VGG11", "small_input": True, "batch_norm": True},
    "vgg13": {"name": "VGG13", "small_input": True, "batch_norm": True},
    "vgg16": {"name": "VGG16", "small_input": True, "batch_norm": True},
    "vgg19": {"name": "VGG19", "small_input": True, "batch_norm": True},
    "googlenet": {"name": "GoogLeNet", "small_input": True},
    "resnet18": {"name": "ResNet18", "small_input": True},
    "resnet34": {"name": "ResNet34", "small_input": True},
    "resnet50": {"name": "ResNet50", "small_input": True},
    "resnet101": {"name": "ResNet101", "small_input": True},
    "resnet152": {"name": "ResNet152", "small_input": True},
}
# Models without batch norm: AlexNet's lr.
LR = {"lenet5": 0.01, "alexnet": 0.01, "googlenet": 0.01}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arch = arg or "resnet18"
    if arch not in MODELS:
        raise ValueError(f"unknown architecture {arch!r} in experiments/cifar10.py:{arg}; "
                         f"valid: {', '.join(MODELS)}")
    config = ml_collections.ConfigDict()
    config.task = "classification"
    config.seed = 0
    config.num_seeds = 1
    config.batch_size = 128
    config.num_steps = 64000
    config.num_epochs = 164  # wins over num_steps: 164 × 390 = 63,960 steps
    config.log_every = 390
    config.eval_every = 3900
    config.checkpoint_every = 3900
    config.keep_checkpoints = 3
    config.steps_per_call = 1
    config.unroll = True
    config.eval_batch_size = 1000

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "cifar10"
    config.dataset.data_dir = ml_collections.config_dict.placeholder(str)
    config.dataset.download = False
    config.dataset.image_size = ml_collections.config_dict.placeholder(int)
    config.dataset.input_shape = (32, 32, 3)
    config.dataset.num_classes = 10
    config.dataset.mean = CIFAR10_MEAN
    config.dataset.std = CIFAR10_STD

    config.augment = ml_collections.ConfigDict()
    config.augment.crop_padding = 4
    config.augment.flip = True

    config.model = ml_collections.ConfigDict(MODELS[arch])

    # Devices and precision (jaxdl.parallel): a mesh over every device, the batch split over

    # them, the state replicated (parallel.fsdp > 1 shards it); float32, bfloat16 or float16.

    config.parallel = parallel.default_config()

    config.precision = "float32"


    config.optim = ml_collections.ConfigDict()
    config.optim.name = "sgd"
    config.optim.lr = LR.get(arch, 0.1)
    config.optim.momentum = 0.9
    config.optim.weight_decay = 5e-4
    config.optim.schedule = "step"
    config.optim.step_boundaries = (0.5, 0.75)
    config.optim.step_factor = 0.1
    config.optim.warmup_steps = 0
    return config
