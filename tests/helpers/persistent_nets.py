"""Tiny persistent networks used by the persistence tests (this file's text is what their pickles embed)."""

import numpy as np
import torch

from torch_utils import persistence


@persistence.persistent_class
class TinyBlock(torch.nn.Module):
    """Linear layer + leaky ReLU with a constant buffer; the unit nested inside TinyNet."""

    def __init__(self, in_features, out_features, gain=1.0):
        super().__init__()
        self.fc = torch.nn.Linear(in_features, out_features)
        self.register_buffer('offset', torch.linspace(-1, 1, out_features))
        self.gain = float(gain)

    def forward(self, x):
        return torch.nn.functional.leaky_relu(self.fc(x) * self.gain + self.offset, 0.2)


@persistence.persistent_class
class TinyNet(torch.nn.Module):
    """Stack of TinyBlocks: x [N, in_features] -> [N, out_features]."""

    def __init__(self, in_features, out_features, hidden=8, num_blocks=2, block_kwargs={}):  # pylint: disable=dangerous-default-value
        super().__init__()
        dims = [in_features] + [hidden] * (num_blocks - 1) + [out_features]
        self.blocks = torch.nn.ModuleList([TinyBlock(a, b, **block_kwargs) for a, b in zip(dims[:-1], dims[1:])])
        self.scale = np.float32(0.5)  # numpy scalar attribute, as in real networks

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x * float(self.scale)


@persistence.persistent_class
class Holder:
    """Plain (non-Module) persistent class storing whatever it is given."""

    def __init__(self, value=None, **extra):
        self.value = value
        self.extra = extra
