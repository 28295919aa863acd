"""A checkpoint pruned by PyTorch (`_orig`/`_mask` pairs in a torch.save state dict), for the
tests that load one onto another device.

    pruned_checkpoint.py DIR     writes DIR/pruned.sd.pt
"""
import sys

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

torch.manual_seed(1)
m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.BatchNorm2d(6),
                  nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
prune.l1_unstructured(m[0], "weight", 0.3)
prune.ln_structured(m[3], "weight", 1, n=2, dim=0)
prune.random_unstructured(m[7], "bias", 2)
torch.save(m.state_dict(), f"{sys.argv[1]}/pruned.sd.pt")
