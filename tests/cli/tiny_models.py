"""Small models for the command-line tests, loaded as ``<this file>:<factory>``."""

import torch
from torch import nn

NOT_CALLABLE = 3


def mlp():
    """An MLP whose Linear shapes every compression method takes (multiples of 16), with example inputs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 32))
    return model, torch.randn(16, 64)


def mlp_module_only():
    """The same MLP without example inputs: they are inferred from its first layer."""
    return mlp()[0]


def not_a_model():
    return "a string"


def broken():
    raise RuntimeError("weights are missing")


def wrong_inputs():
    return nn.Linear(8, 4), torch.randn(2, 5)


def conv_first():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten())
