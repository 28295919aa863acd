"""PyTorch's side of tests/files/streaming_pt2.rs: torch.export archives (.pt2) to prune on the
streaming path, and the check that what it wrote loads and runs.

    streaming_pt2.py make DIR            writes DIR/{cnn,mlp_half,mlp_bf16,tied}.pt2
    streaming_pt2.py check INPUT OUTPUT  prints "OK <zeros>" when torch.export.load reads OUTPUT,
                                         its program runs, and its names are INPUT's, in order
"""
import sys

import torch
import torch.nn as nn


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x)).mean((2, 3))
        return self.fc(x)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 16)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.out = nn.Linear(16, 50, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(self.emb(x))


def example(name):
    g = torch.Generator().manual_seed(5)
    if name == "cnn":
        return torch.randn(2, 3, 16, 16, generator=g)
    if name == "tied":
        return torch.randint(0, 50, (2, 8), generator=g)
    dtype = torch.float16 if name == "mlp_half" else torch.bfloat16
    return torch.randn(4, 64, generator=g).to(dtype)


def make(folder):
    torch.manual_seed(0)
    models = {"cnn": Cnn(), "mlp_half": Mlp().half(), "mlp_bf16": Mlp().bfloat16(), "tied": Tied()}
    for name, model in models.items():
        model.eval()
        ep = torch.export.export(model, (example(name),))
        torch.export.save(ep, f"{folder}/{name}.pt2")


def check(inp, out):
    before, after = torch.export.load(inp), torch.export.load(out)
    assert list(before.state_dict) == list(after.state_dict), "names or their order changed"
    name = inp.rsplit("/", 1)[-1].removesuffix(".pt2")
    after.module()(example(name))
    zeros = sum(int((v == 0).sum()) for v in after.state_dict.values())
    print(f"OK {zeros}")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        check(sys.argv[2], sys.argv[3])
