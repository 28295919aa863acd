"""A module held under two names, and a weight tied between two Linear layers.

    jit_tied.py OUT.pt REF.safetensors
"""
import sys
import torch
from torch import nn
from jit_reference import reference

pt, ref = sys.argv[1:3]
torch.manual_seed(5)
class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(2, 2)
        self.again = self.shared
        self.other = nn.Linear(2, 2)
        self.other.weight = self.shared.weight
    def forward(self, x):
        return self.shared(x) + self.again(x) + self.other(x)
torch.jit.save(torch.jit.script(Tied()), pt)
reference(pt, ref)
