"""Models for tests/shrink_architectures.rs: architectures whose channel coupling goes beyond
conv/BN/residual chains, scripted with random init into the folder given as argv[1].

Small torchvision models as they are (shufflenet_v2_x0_5: chunk + channel shuffle;
regnet_y_400mf: grouped convs + squeeze-and-excitation; squeezenet1_1: fire modules that
concatenate; mnasnet0_5; googlenet: inception branches), reduced configurations of the heavier
families (a ResNeXt, a DenseNet, a ConvNeXt: channels-last layer norm, linear layers and a
layer-scale parameter), and hand-written blocks for chunk and split: a GLU, a channel-split
block that concatenates back, and a split with sizes fixed in the code (which must keep its
channels). GPT-2's MLP (Hugging Face `Conv1D`: `addmm` with a weight laid out [in, out]),
scripted and traced, and a small GPT-2 traced from transformers (input: token ids).
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


class Gpt2Mlp(nn.Module):
    """GPT-2's MLP block with transformers' own Conv1D: c_fc -> gelu -> c_proj, input [B, T, 16]."""

    def __init__(self):
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.c_fc = Conv1D(64, 16)
        self.c_proj = Conv1D(16, 64)

    def forward(self, x):
        return self.c_proj(nn.functional.gelu(self.c_fc(x), approximate="tanh"))


class Gpt2Block(nn.Module):
    """A GPT-2 block written with transformers' Conv1D, scriptable (transformers' own is not):
    q/k/v from one c_attn split by the width read at run time, heads by view."""

    def __init__(self, d, h):
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.n_head = h
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = Conv1D(3 * d, d)
        self.attn_proj = Conv1D(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = Conv1D(4 * d, d)
        self.c_proj = Conv1D(d, 4 * d)

    def forward(self, x):
        b, t, d = x.size()
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q = q.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)
        k = k.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)
        v = v.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, d))
        return x + self.c_proj(nn.functional.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

class MiniGpt2(nn.Module):
    """A 2-layer GPT-2 of Gpt2Blocks over token ids (vocabulary 100), scripted."""

    def __init__(self, vocab=100, d=32, h=4, n=2, ctx=64):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(ctx, d)
        self.h = nn.ModuleList([Gpt2Block(d, h) for _ in range(n)])
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        pos = torch.arange(ids.size(1), device=ids.device)
        x = self.wte(ids) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))

class Gpt2Logits(nn.Module):
    """A transformers GPT-2 returning its logits only (tracing refuses its output dict)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids, use_cache=False, return_dict=False)[0]


def gpt2_models(out):
    """GPT-2's MLP scripted and traced, a 2-layer GPT-2 (vocabulary 100) of Conv1D scripted, and
    transformers' GPT-2 of the same size traced."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    mlp = Gpt2Mlp().eval()
    for p in mlp.parameters():
        nn.init.normal_(p, std=0.1)
    torch.jit.save(torch.jit.script(mlp), f"{out}/gpt2_mlp.pt")
    torch.jit.save(torch.jit.trace(mlp, torch.randn(2, 5, 16)), f"{out}/gpt2_mlp_traced.pt")
    gpt2 = MiniGpt2().eval()
    for p in gpt2.parameters():
        if p.dim() == 1 and p.abs().max() == 0:
            nn.init.normal_(p, std=0.05)
    torch.jit.save(torch.jit.script(gpt2), f"{out}/gpt2_scripted.pt")
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=100,
                        bos_token_id=0, eos_token_id=0, use_cache=False)
    gpt2 = Gpt2Logits(GPT2LMHeadModel(config).eval()).eval()
    traced = torch.jit.trace(gpt2, torch.randint(0, 100, (1, 8)), check_trace=False)
    torch.jit.save(traced, f"{out}/gpt2_traced.pt")


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
    gpt2_models(out)
    print("ok")


if __name__ == "__main__":
    main()
