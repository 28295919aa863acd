"""A scripted Sequential MLP.

    jit_sequential_mlp.py OUT.pt REF.safetensors
"""
import sys
import torch
from torch import nn
from jit_reference import reference

pt, ref = sys.argv[1:3]
torch.manual_seed(0)
m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
torch.jit.save(torch.jit.script(m), pt)
reference(pt, ref)
