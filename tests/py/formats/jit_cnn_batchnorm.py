"""A scripted CNN with batch norm, after training steps.

    jit_cnn_batchnorm.py OUT.pt REF.safetensors
"""
import sys
import torch
from torch import nn
from jit_reference import reference

pt, ref = sys.argv[1:3]
torch.manual_seed(1)
m = nn.Sequential(
    nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
m.train()
m(torch.randn(2, 3, 8, 8)); m(torch.randn(2, 3, 8, 8))
torch.jit.save(torch.jit.script(m), pt)
sd = reference(pt, ref)
assert sd["1.num_batches_tracked"].dtype == torch.int64
assert not torch.equal(sd["1.running_mean"], torch.zeros(4))
