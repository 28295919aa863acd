"""Imported by the jit_*.py scripts: reference(pt, ref) loads a TorchScript archive back in
Python, saves its state dict as the reference safetensors file and prints its keys as JSON.
"""
import sys, json, torch
from torch import nn
from safetensors.torch import save_file
def reference(pt, ref):
    sd = torch.jit.load(pt).state_dict()
    # clone: safetensors refuses tensors that share memory (tied weights).
    save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, ref)
    print(json.dumps(list(sd.keys())))
    return sd
