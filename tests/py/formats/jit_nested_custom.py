"""Nested custom modules: None parameters and buffers, a non-persistent buffer, plain tensor
attributes, a scripted class holding a tensor, an enum attribute, lists and strings.

    jit_nested_custom.py OUT.pt REF.safetensors
"""
import sys
import torch
from torch import nn
from jit_reference import reference

import enum
pt, ref = sys.argv[1:3]
torch.manual_seed(2)
class Mode(enum.Enum):
    FAST = 1
    SLOW = 2

@torch.jit.script
class Holder:
    def __init__(self, x: torch.Tensor):
        self.x = x

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2)])
        self.register_buffer("scale", torch.tensor(0.5))
        self.register_buffer("cache", torch.ones(2), persistent=False)
        self.plain = torch.full((2,), 7.0)
        self.sizes = [1, 2]
        self.name = "block"
        self.holder = Holder(torch.ones(2))
        self.mode = Mode.FAST
    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        if self.mode == Mode.SLOW:
            x = x + 1
        return x * self.scale + self.cache + self.plain + self.holder.x

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(2, 1)
        self.register_buffer("steps", torch.tensor([3, -4], dtype=torch.int32))
        self.register_buffer("mask", torch.tensor([True, False]))
        self.register_buffer("nothing", None)
        self.gain = nn.Parameter(torch.randn(1, dtype=torch.float64))
    def forward(self, x):
        y = self.head(self.block(x)) * self.gain.float()
        return y + self.steps.float().sum() + self.mask.float().sum()

m = Net()
torch.jit.save(torch.jit.script(m), pt)
keys = list(reference(pt, ref).keys())
eager = list(m.state_dict().keys())
assert "block.cache" in keys and "block.cache" not in eager
assert [k for k in keys if k != "block.cache"] == eager
