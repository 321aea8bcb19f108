"""The model zoo: every model is a Flax Linen module built as `Model(num_classes=..., ...)`."""
from jaxdl.models.cnn1d import CNN1D
from jaxdl.models.mlp import MLP, LogReg

__all__ = ["CNN1D", "LogReg", "MLP"]
