"""A scripted model converted to float16 (its num_batches_tracked stays int64).

    jit_half.py OUT.pt REF.safetensors
"""
import sys
import torch
from torch import nn
from jit_reference import reference

pt, ref = sys.argv[1:3]
torch.manual_seed(4)
m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.LayerNorm(3))
m.train()
m(torch.randn(5, 4))
m = m.half()
torch.jit.save(torch.jit.script(m), pt)
sd = reference(pt, ref)
assert sd["0.weight"].dtype == torch.float16 and sd["1.num_batches_tracked"].dtype == torch.int64
