"""Models for tests/shrink_architectures.rs: architectures whose channel coupling goes beyond
conv/BN/residual chains, scripted with random init into the folder given as argv[1].

Small torchvision models as they are (shufflenet_v2_x0_5: chunk + channel shuffle;
regnet_y_400mf: grouped convs + squeeze-and-excitation; squeezenet1_1: fire modules that
concatenate; mnasnet0_5; googlenet: inception branches), reduced configurations of the heavier
families (a ResNeXt, a DenseNet, a ConvNeXt: channels-last layer norm, linear layers and a
layer-scale parameter), and hand-written blocks for chunk and split: a GLU, a channel-split
block that concatenates back, and a split with sizes fixed in the code (which must keep its
channels).
"""
import sys

import torch
import torch.nn as nn
import torchvision
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.densenet import DenseNet
from torchvision.models.resnet import Bottleneck, ResNet


class Glu(nn.Module):
    """conv -> chunk(2) -> a * sigmoid(b) -> conv: both halves lose the same channels."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.gate = nn.Conv2d(32, 48, 1)
        self.mix = nn.Conv2d(24, 24, 3, padding=1, groups=4)
        self.out = nn.Conv2d(24, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        a, b = self.gate(x).chunk(2, dim=1)
        x = self.mix(a * torch.sigmoid(b))
        x = torch.relu(self.out(x))
        return self.head(x.mean((2, 3)))


class ChannelSplit(nn.Module):
    """A channel-split block: half the channels pass, half go through a branch, concatenated
    back; then `torch.split` with a size computed from nothing (a constant) and list indexing."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.branch = nn.Conv2d(16, 16, 3, padding=1)
        self.fixed = nn.Conv2d(32, 24, 1)
        self.a = nn.Conv2d(16, 8, 1)
        self.b = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        parts = torch.chunk(x, 2, 1)
        x = torch.cat([parts[0], torch.relu(self.branch(parts[1]))], 1)
        y = self.fixed(x)
        p, q = torch.split(y, [16, 8], dim=1)
        z = torch.cat([self.a(p), self.b(q)], 1)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(z, 1), 1))


def randomise(m):
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    for p in m.parameters():
        if p.dim() >= 2 and p.abs().max() == 0:
            nn.init.normal_(p, std=0.05)
    return m.eval()


def models():
    """The models, randomised and in eval mode, by name (seeded: the same every call)."""
    torch.manual_seed(0)
    models = {
        name: torchvision.models.get_model(name, weights=None)
        for name in ["shufflenet_v2_x0_5", "regnet_y_400mf", "squeezenet1_1", "mnasnet0_5"]
    }
    models["googlenet"] = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    models["resnext"] = ResNet(Bottleneck, [1, 1, 1, 1], groups=8, width_per_group=4, num_classes=10)
    models["densenet"] = DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=10)
    models["convnext"] = ConvNeXt(
        [CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], layer_scale=0.5, num_classes=10)
    models["glu"] = Glu()
    models["channel_split"] = ChannelSplit()
    for name, m in models.items():
        m = randomise(m)
        if name == "convnext":
            # layer_scale starts as a constant: make it a real per-channel scale.
            for mod in m.modules():
                if hasattr(mod, "layer_scale"):
                    mod.layer_scale.data.uniform_(0.5, 1.5)
    return models


def main():
    out = sys.argv[1]
    for name, m in models().items():
        torch.jit.save(torch.jit.script(m), f"{out}/{name}.pt")
    print("ok")


if __name__ == "__main__":
    main()
