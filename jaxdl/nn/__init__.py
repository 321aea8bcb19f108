"""Functional building blocks: activations, convolution and pooling, as functions and modules."""
from jaxdl.nn import conv
from jaxdl.nn.activations import (
    PReLU,
    elu,
    elu_grad,
    get_activation,
    identity,
    identity_grad,
    leaky_relu,
    leaky_relu_grad,
    prelu,
    prelu_grad,
    relu,
    relu_grad,
    sigmoid,
    sigmoid_grad,
    softplus,
    softplus_grad,
    step,
    step_grad,
    tanh,
    tanh_grad,
)
from jaxdl.nn.conv import Conv, Conv1D, Conv2D, conv1d, conv2d
from jaxdl.nn.dense import Dense, matmul

# Normalisation layers (jaxdl.nn.norm).
from jaxdl.nn.norm import LocalResponseNorm, local_response_norm
from jaxdl.nn.pool import (
    AvgPool,
    GlobalAvgPool,
    MaxPool,
    WeightedAvgPool,
    avg_pool,
    global_avg_pool,
    max_pool,
    weighted_avg_pool,
)
