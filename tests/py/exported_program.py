"""Programs exported with torch.export for tests/files/exported_program.rs: each model's archive
`<name>.pt2`, and `<name>.io.safetensors` with its example input `x` and the output `y` of
`torch.export.load(archive).module()(x)`.

    exported_program.py OUT_DIR
"""
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torchvision
from safetensors.torch import save_file


class Mixed(nn.Module):
    """Operators beyond the CNNs': a tensor list (cat), an int list (view, permute), an optional
    tensor list (index), a dtype (to), a float scalar and a keyword-only argument (softmax's
    dtype), two outputs of one node (max with dim)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.register_buffer("table", torch.arange(8.0))
        self.register_buffer("pick", torch.tensor([0, 2]))

    def forward(self, x):
        h = self.fc(x).relu()
        both = torch.cat([h, x], dim=1).view(-1, 4, 4).permute(0, 2, 1)
        picked = both[:, self.pick]
        values, where = picked.max(dim=-1)
        soft = torch.softmax(values.to(torch.float64), dim=-1, dtype=torch.float32)
        return soft * 0.5 + where.float() + self.table[:2]


class Constant(nn.Module):
    """A tensor made in forward: torch.export lifts it into the archive's constants."""

    def forward(self, x):
        return x + torch.tensor([1.0, 2.0])


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    models = {
        "resnet18": (torchvision.models.resnet18(), torch.randn(2, 3, 64, 64)),
        "mobilenet_v3_small": (torchvision.models.mobilenet_v3_small(), torch.randn(1, 3, 64, 64)),
        "efficientnet_b0": (torchvision.models.efficientnet_b0(), torch.randn(1, 3, 64, 64)),
        "vit": (torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                     hidden_dim=32, mlp_dim=64, num_classes=10),
                torch.randn(2, 3, 32, 32)),
        "mixed": (Mixed(), torch.randn(2, 8)),
        "constant": (Constant(), torch.randn(3, 2)),
    }
    for name, (model, x) in models.items():
        model.eval()
        with torch.no_grad():
            # BatchNorm's running statistics away from their initial 0 and 1, so that they count.
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
        ep = torch.export.export(model, (x,))
        torch.export.save(ep, out / f"{name}.pt2")
        with torch.no_grad():
            y = torch.export.load(out / f"{name}.pt2").module()(x)
        save_file({"x": x.contiguous(), "y": y.contiguous()}, out / f"{name}.io.safetensors")


if __name__ == "__main__":
    main()
