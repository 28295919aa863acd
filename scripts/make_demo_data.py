"""Makes the demo's shipped files, once (they are committed under data/):

- data/digits.safetensors: the 8x8 handwritten digits that scikit-learn ships (1797 images,
  pixel values 0..16 as uint8), shuffled with a fixed seed and split 1437 train / 360 test;
- data/digits_cnn.pt: a small CNN with batch norm trained on them in PyTorch, as TorchScript.

Run with the provisioned Python: eval "$(scripts/torch-env.sh)"; $TCH_PRUNE_PYTHON scripts/make_demo_data.py
"""
import os

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file
from sklearn.datasets import load_digits

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")
digits = load_digits()
order = np.random.default_rng(0).permutation(len(digits.target))
x = torch.tensor(digits.images[order], dtype=torch.uint8).unsqueeze(1)
y = torch.tensor(digits.target[order], dtype=torch.int64)
split = 1437
save_file(
    {"train_x": x[:split].contiguous(), "train_y": y[:split].contiguous(),
     "test_x": x[split:].contiguous(), "test_y": y[split:].contiguous()},
    os.path.join(here, "digits.safetensors"),
)

torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
train_x, train_y = x[:split].float() / 16, y[:split]
for epoch in range(15):
    model.train()
    perm = torch.randperm(split)
    for i in range(0, split, 64):
        idx = perm[i : i + 64]
        loss = nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
model.eval()
with torch.no_grad():
    accuracy = (model(x[split:].float() / 16).argmax(1) == y[split:]).float().mean().item()
print(f"test accuracy {accuracy:.4f}")
torch.jit.save(torch.jit.script(model), os.path.join(here, "digits_cnn.pt"))
