"""PyTorch's side of the training checks (tests/cuda.rs): the MLP of tests/common/moves.rs,
pruned with the crate's masks (prune.identity, then the crate's `_orig` and `_mask` loaded
strictly), one forward and backward pass on DEVICE in DTYPE; saves each `weight_orig.grad`.

    training_grads.py STATE.safetensors OUT.safetensors DEVICE DTYPE
"""
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from safetensors.torch import load_file, save_file

state, out, device, dtype = sys.argv[1], sys.argv[2], torch.device(sys.argv[3]), getattr(torch, sys.argv[4])
assert device.type == "cpu" or torch.cuda.is_available(), "PyTorch sees no GPU"
t = load_file(state)
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).to(device=device, dtype=dtype)
for i in (0, 2):
    prune.identity(model[i], "weight")
model.load_state_dict({k.replace("fc1.", "0.").replace("fc2.", "2."): v.to(device)
                       for k, v in t.items() if k.startswith("fc")}, strict=True)
x, y = t["x"].to(device), t["y"].to(device)
# tch's cross_entropy_for_logits: log_softmax in f32, then nll_loss.
loss = F.nll_loss(torch.log_softmax(model(x), -1, dtype=torch.float32), y)
loss.backward()
save_file({"fc1.weight_orig.grad": model[0].weight_orig.grad.cpu().contiguous(),
           "fc2.weight_orig.grad": model[2].weight_orig.grad.cpu().contiguous(),
           "loss": loss.detach().cpu().reshape(1)}, out)
