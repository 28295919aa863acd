"""A traced (not scripted) CNN with batch norm.

    jit_traced.py OUT.pt REF.safetensors
"""
import sys
import torch
from torch import nn
from jit_reference import reference

pt, ref = sys.argv[1:3]
torch.manual_seed(3)
m = nn.Sequential(
    nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
m.train()
m(torch.randn(2, 3, 8, 8))
m.eval()
torch.jit.save(torch.jit.trace(m, torch.randn(1, 3, 8, 8)), pt)
reference(pt, ref)
