"""The CNN zoo on ImageNet (ILSVRC-2012) with the papers' recipes, streamed from the TFDS data source.

  python launch.py --config=experiments/imagenet.py:resnet50 --workdir=runs/imagenet_resnet50
  python launch.py --config=experiments/imagenet.py:resnet50 --mode=summary

The first trains ResNet-50 for 90 epochs; it needs an accelerator host with
`imagenet2012` prepared in the TFDS data dir (TFDS cannot download it: the ILSVRC
archives are fetched by hand into TFDS's manual dir, then prepared once with
`--config.dataset.download=True`). Not run here: nothing in this project has been
trained on ImageNet yet. The second prints ResNet-50's layers and 25,557,032
parameters without any data.

The input is streamed (`dataset.stream`, `jaxdl.train_stream`): the in-memory path
would hold the 1,281,167 training images as float32, about 770 GB. Instead the host
reads each minibatch's JPEGs from the data source by index, decodes, crops and flips
them in grain's threads, and sends them to the device as uint8 while earlier steps
train; the per-channel normalisation happens on the device, inside the compiled
step. The 50,000 validation images are streamed the same way, in padded and masked
batches of `eval_batch_size`. The data order is the in-memory path's permutation of
(seed, step) and every random crop is a function of (seed, step, position), so a
rerun resumes with exactly the batches an uninterrupted run would read.

Argument: `alexnet`, `vgg11`, `vgg13`, `vgg16`, `vgg19`, `googlenet`, `resnet18`,
`resnet34`, `resnet50`, `resnet101` or `resnet152` (default `resnet50`). Published
top-1 validation errors: AlexNet 40.7 % (one net, 10 crops), VGG-16 27.0 % (single
scale 256), ResNet-50 23.9 % (torchvision's single-crop reference, this recipe).

Recipe: SGD with momentum 0.9, batch 256, 90 epochs, lr divided by 10 after epochs
30 and 60; lr 0.1 and weight decay 1e-4 for ResNets (He et al., 2016), lr 0.01 and
weight decay 5e-4 for AlexNet and VGG (Krizhevsky et al., 2012; Simonyan and
Zisserman, 2015), lr 0.01 and weight decay 2e-4 for GoogLeNet (the reference Caffe
solver), whose two auxiliary classifiers train with the paper's weight 0.3.
Training crops, each flipped left–right with probability ½:
- ResNets and GoogLeNet: the random-resized ("Inception") crop of Szegedy et al.
  (2015), a window of 8–100 % of the image's area with aspect ratio 3/4–4/3,
  resized to 224×224 (`augment.crop='inception'`; torchvision's ResNet recipe, the
  one its 23.9 % comes from; He et al. rescaled the shorter side to 256–480 instead).
- AlexNet and VGG: a random 227×227 (AlexNet) or 224×224 (VGG) window of the image
  rescaled to shorter side 256 (`augment.crop='random'`, `augment.crop_scale`;
  VGG's scale jitter is `--config.augment.crop_scale="(256,512)"`).
Evaluation: shorter side 256 (`dataset.resize`), the central 224×224 (227×227 for
AlexNet), one crop.

Host throughput (read + JPEG decode + Inception crop + flip), measured with

  python benchmarks/stream_throughput.py --images=1024 --threads=1,2,4,8 --processes=0,2 --repeats=3

on synthetic 500×375 JPEGs of ILSVRC's mean file size (~110 KB), on the 2-core CPU
machine this project is built on, shared with other work (load average 6–8): 668
images/s with 8 threads in the training process (467 with one; evaluation crops 590),
and at most 409 with 2 worker processes (`dataset.host_processes=2`), which pay for
spawning and for shared-memory transfers and find no idle core here. That machine
is not where ImageNet trains: at ~650 images/s one epoch is half an hour of host
work before any training. An accelerator that trains thousands of images per second
needs a host with tens of cores (`dataset.host_threads`, and worker processes where
Python's GIL limits threads; measure with the command above on that host).
"""
import ml_collections

from jaxdl import parallel

# Per-channel mean and std of the ImageNet training images (pixels in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MODELS = {
    "alexnet": {"name": "AlexNet"},
    "vgg11": {"name": "VGG11"},
    "vgg13": {"name": "VGG13"},
    "vgg16": {"name": "VGG16"},
    "vgg19": {"name": "VGG19"},
    "googlenet": {"name": "GoogLeNet", "aux_logits": True},
    "resnet18": {"name": "ResNet18"},
    "resnet34": {"name": "ResNet34"},
    "resnet50": {"name": "ResNet50"},
    "resnet101": {"name": "ResNet101"},
    "resnet152": {"name": "ResNet152"},
}

# The papers' training crops: AlexNet and VGG take random windows of the image
# rescaled to shorter side 256; GoogLeNet (and the reference ResNet recipe) the
# random-resized crop.
CROPS = {arch: "random" if arch == "alexnet" or arch.startswith("vgg") else "inception" for arch in MODELS}
# grain's default; 8 and 16 threads measured alike on the 2-core machine (~510 images/s),
# and hosts with more cores need more.
HOST_THREADS = 16


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
    config.dataset.image_size = size  # the side of the crops the model sees
    config.dataset.input_shape = (size, size, 3)
    config.dataset.num_classes = 1000
    config.dataset.mean = IMAGENET_MEAN
    config.dataset.std = IMAGENET_STD
    config.dataset.stream = True  # read, crop and batch on the host (jaxdl.train_stream)
    config.dataset.resize = 256  # shorter side before the evaluation's central crop
    config.dataset.host_threads = HOST_THREADS
    config.dataset.host_processes = 0
    config.dataset.prefetch = 2

    config.augment = ml_collections.ConfigDict()
    config.augment.crop = CROPS[arch]
    config.augment.crop_area = (0.08, 1.0)
    config.augment.crop_aspect = (3 / 4, 4 / 3)
    config.augment.crop_scale = (256, 256)
    config.augment.flip = True

    config.model = ml_collections.ConfigDict(MODELS[arch])

    resnet = arch.startswith("resnet")
    # Devices and precision (jaxdl.parallel): a mesh over every device, the batch split over
    # them, the state replicated (parallel.fsdp > 1 shards it); float32, bfloat16 or float16.
    config.parallel = parallel.default_config()
    config.precision = "float32"

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
