"""The model zoo: every model is a Flax Linen module built as `Model(num_classes=..., ...)`."""
from jaxdl.models.alexnet import AlexNet
from jaxdl.models.cnn1d import CNN1D
from jaxdl.models.googlenet import GoogLeNet, aux_weighted_loss, googlenet_loss_weights
from jaxdl.models.lenet import LeNet5
from jaxdl.models.mlp import MLP, LogReg
from jaxdl.models.resnet import ResNet, ResNet18, ResNet34, ResNet50, ResNet101, ResNet152
from jaxdl.models.vgg import VGG, VGG11, VGG13, VGG16, VGG19
from jaxdl.summary import count_params

__all__ = ["AlexNet", "CNN1D", "GoogLeNet", "LeNet5", "LogReg", "MLP", "ResNet", "ResNet18", "ResNet34",
           "ResNet50", "ResNet101", "ResNet152", "VGG", "VGG11", "VGG13", "VGG16", "VGG19"]
