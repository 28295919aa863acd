"""The reference side of tests/pruning/calibrated.rs: Wanda and SparseGPT as their authors' code
does them, on small GPT-2-shaped and LLaMA-shaped stacks of blocks (random init), and the
results saved for the Rust side to match.

    calibrated.py OUT_DIR ARCH DTYPE

ARCH is gpt2 or llama, DTYPE float32 or float64. Writes OUT_DIR/model.safetensors (the initial
weights and `calibration`, the hidden states entering block 0: [samples, tokens, hidden]), the
same model as TorchScript (OUT_DIR/model.pt) with its calibration file for the command line
(OUT_DIR/calibration.safetensors, the tensor `input`), and
OUT_DIR/results.safetensors: for every case `METHOD/SPARSITY/ORDER`, each pruned weight
(`CASE/NAME`) and, for Wanda, its mask (`CASE/NAME.mask`, 1 = kept); for SparseGPT, the `H`
the reference gathered and the weight it was handed (`CASE/NAME.H`, `CASE/NAME.before`).

The code below the "reference" markers is copied from the references, changed only where said:
  locuslab/wanda   lib/layerwrapper.py  WrappedGPT            (verbatim)
                   lib/prune.py         prune_wanda            (the per-layer selection, verbatim;
                                                                the loop over blocks, verbatim
                                                                but for the model plumbing)
  IST-DASLab/sparsegpt sparsegpt.py     SparseGPT              (verbatim, without the quantizer,
                                                                the DEBUG prints and the timing)
                   opt.py               opt_sequential         (the loop over blocks, likewise)
The one-shot order (every layer calibrated on the dense model, then all pruned) is the same code
with the hooks on every block during one pass.
"""
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

torch.backends.cuda.matmul.allow_tf32 = False


# ---- the models: the same operations, in the same order, as tests/pruning/calibrated.rs ----

def attention(q, k, v, heads: int):
    b, t, c = q.shape
    d = c // heads
    q = q.reshape(b, t, heads, d).transpose(1, 2)
    k = k.reshape(b, t, heads, d).transpose(1, 2)
    v = v.reshape(b, t, heads, d).transpose(1, 2)
    att = q.matmul(k.transpose(-2, -1)) * (1.0 / math.sqrt(d))
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    att = att.masked_fill(causal.logical_not(), float("-inf")).softmax(-1)
    return att.matmul(v).transpose(1, 2).reshape(b, t, c)


class Gpt2Attention(nn.Module):
    def __init__(self, h, heads):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(h, 3 * h)
        self.c_proj = nn.Linear(h, h)

    def forward(self, x):
        q, k, v = self.c_attn(x).chunk(3, -1)
        return self.c_proj(attention(q, k, v, self.heads))


class Gpt2Mlp(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.c_fc = nn.Linear(h, 4 * h)
        self.c_proj = nn.Linear(4 * h, h)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Gpt2Block(nn.Module):
    def __init__(self, h, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(h)
        self.attn = Gpt2Attention(h, heads)
        self.ln_2 = nn.LayerNorm(h)
        self.mlp = Gpt2Mlp(h)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class RmsNorm(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(h))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class LlamaAttention(nn.Module):
    def __init__(self, h, heads):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, h, bias=False)
        self.v_proj = nn.Linear(h, h, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)

    def forward(self, x):
        y = attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads)
        return self.o_proj(y)


class LlamaMlp(nn.Module):
    def __init__(self, h, inner):
        super().__init__()
        self.gate_proj = nn.Linear(h, inner, bias=False)
        self.up_proj = nn.Linear(h, inner, bias=False)
        self.down_proj = nn.Linear(inner, h, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    def __init__(self, h, heads, inner):
        super().__init__()
        self.input_layernorm = RmsNorm(h)
        self.self_attn = LlamaAttention(h, heads)
        self.post_attention_layernorm = RmsNorm(h)
        self.mlp = LlamaMlp(h, inner)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class Stack(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


# Sizes shared with the Rust side: hidden 64, 4 heads, 2 blocks; 16 samples of 48 tokens (more
# tokens than any layer has inputs, so that H is well conditioned, as with real calibration sets).
HIDDEN, HEADS, BLOCKS, SAMPLES, TOKENS = 64, 4, 2, 16, 48


def make(arch):
    if arch == "gpt2":
        return Stack([Gpt2Block(HIDDEN, HEADS) for _ in range(BLOCKS)])
    return Stack([LlamaBlock(HIDDEN, HEADS, 172) for _ in range(BLOCKS)])


# ---- reference: locuslab/wanda lib/layerwrapper.py (verbatim) ----

class WrappedGPT:
    """
    This class wraps a GPT layer for specific operations.
    """

    def __init__(self, layer, layer_id=0, layer_name="none"):
        self.layer = layer
        self.dev = self.layer.weight.device
        self.rows = layer.weight.data.shape[0]
        self.columns = layer.weight.data.shape[1]

        self.scaler_row = torch.zeros((self.columns), device=self.dev)
        self.nsamples = 0

        self.layer_id = layer_id
        self.layer_name = layer_name

    def add_batch(self, inp, out):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if isinstance(self.layer, nn.Linear):
            if len(inp.shape) == 3:
                inp = inp.reshape((-1, inp.shape[-1]))
            inp = inp.t()

        self.scaler_row *= self.nsamples / (self.nsamples+tmp)
        self.nsamples += tmp

        inp = inp.type(torch.float32)
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2  / self.nsamples


# ---- reference: IST-DASLab/sparsegpt sparsegpt.py (without quantizer, DEBUG, timing) ----

class SparseGPT:

    def __init__(self, layer):
        self.layer = layer
        self.dev = self.layer.weight.device
        W = layer.weight.data.clone()
        self.rows = W.shape[0]
        self.columns = W.shape[1]
        self.H = torch.zeros((self.columns, self.columns), device=self.dev)
        self.nsamples = 0

    def add_batch(self, inp, out, blocksize=1024):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if isinstance(self.layer, nn.Linear):
            if len(inp.shape) == 3:
                inp = inp.reshape((-1, inp.shape[-1]))
            inp = inp.t()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.float()
        self.H += inp.matmul(inp.t())

    def fasterprune(
        self, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=.01
    ):
        W = self.layer.weight.data.clone()
        W = W.float()

        H = self.H
        del self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0

        Losses = torch.zeros(self.rows, device=self.dev)

        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(self.columns, device=self.dev)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        H = torch.linalg.cholesky(H, upper=True)
        Hinv = H

        mask = None

        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1

            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Losses1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]

            if prunen == 0:
                if mask is not None:
                    mask1 = mask[:, i1:i2]
                else:
                    tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
                    thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
                    mask1 = tmp <= thresh
            else:
                mask1 = torch.zeros_like(W1) == 1

            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]

                if prunen != 0 and i % prunem == 0:
                    tmp = W1[:, i:(i + prunem)] ** 2 / (torch.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                    mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)

                q = w.clone()
                q[mask1[:, i]] = 0

                Q1[:, i] = q
                Losses1[:, i] = (w - q) ** 2 / d ** 2

                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1

            W[:, i1:i2] = Q1
            Losses += torch.sum(Losses1, 1) / 2

            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

        self.error = torch.sum(Losses).item()
        self.layer.weight.data = W.reshape(self.layer.weight.shape).to(self.layer.weight.data.dtype)

    def free(self):
        self.H = None


# ---- reference: locuslab/wanda lib/prune.py find_layers and prune_wanda's selection ----

def find_layers(module, layers=[nn.Linear], name=''):
    if type(module) in layers:
        return {name: module}
    res = {}
    for name1, child in module.named_children():
        res.update(find_layers(
            child, layers=layers, name=name + '.' + name1 if name != '' else name1
        ))
    return res


def wanda_select(subset, wrapped_layers, name, sparsity_ratio, prune_n, prune_m):
    W_metric = torch.abs(subset[name].weight.data) * torch.sqrt(wrapped_layers[name].scaler_row.reshape((1,-1)))

    W_mask = (torch.zeros_like(W_metric) == 1)  ## initialize a mask to be all False
    if prune_n != 0:
        # structured n:m sparsity
        for ii in range(W_metric.shape[1]):
            if ii % prune_m == 0:
                tmp = W_metric[:,ii:(ii+prune_m)].float()
                W_mask.scatter_(1,ii+torch.topk(tmp, prune_n,dim=1, largest=False)[1], True)
    else:
        sort_res = torch.sort(W_metric, dim=-1, stable=True)
        # unstructured pruning
        indices = sort_res[1][:,:int(W_metric.shape[1]*sparsity_ratio)]
        W_mask.scatter_(1, indices, True)

    subset[name].weight.data[W_mask] = 0  ## set weights to zero
    return W_mask


# ---- the loops over blocks (prune_wanda / opt_sequential, and the one-shot order) ----

@torch.no_grad()
def run(model, calibration, method, sparsity, prune_n, prune_m, sequential):
    layers = model.blocks
    nsamples = calibration.shape[0]
    masks, solver_inputs = {}, {}

    def wrap(layer):
        return WrappedGPT(layer) if method == "wanda" else SparseGPT(layer)

    def prune_subset(i, subset, wrapped):
        for name in subset:
            full = f"blocks.{i}.{name}.weight"
            if method == "wanda":
                masks[full] = wanda_select(subset, wrapped, name, sparsity, prune_n, prune_m).logical_not()
            else:
                solver_inputs[f"{full}.H"] = wrapped[name].H.clone()
                solver_inputs[f"{full}.before"] = subset[name].weight.data.clone()
                wrapped[name].fasterprune(sparsity, prunen=prune_n, prunem=prune_m, percdamp=.01, blocksize=128)
                wrapped[name].free()

    if sequential:
        inps = calibration.clone()
        outs = torch.zeros_like(inps)
        for i in range(len(layers)):
            layer = layers[i]
            subset = find_layers(layer)
            wrapped = {name: wrap(subset[name]) for name in subset}

            def add_batch(name):
                def tmp(_, inp, out):
                    wrapped[name].add_batch(inp[0].data, out.data)
                return tmp
            handles = [subset[name].register_forward_hook(add_batch(name)) for name in wrapped]
            for j in range(nsamples):
                outs[j] = layer(inps[j].unsqueeze(0))[0]
            for h in handles:
                h.remove()
            prune_subset(i, subset, wrapped)
            for j in range(nsamples):
                outs[j] = layer(inps[j].unsqueeze(0))[0]
            inps, outs = outs, inps
    else:
        subsets = [find_layers(layer) for layer in layers]
        wrapped = [{name: wrap(s[name]) for name in s} for s in subsets]
        handles = []
        for s, w in zip(subsets, wrapped):
            def add_batch(w, name):
                def tmp(_, inp, out):
                    w[name].add_batch(inp[0].data, out.data)
                return tmp
            handles += [s[name].register_forward_hook(add_batch(w, name)) for name in w]
        for j in range(nsamples):
            x = calibration[j].unsqueeze(0)
            for layer in layers:
                x = layer(x)
        for h in handles:
            h.remove()
        for i, (s, w) in enumerate(zip(subsets, wrapped)):
            prune_subset(i, s, w)
    return masks, solver_inputs


def main():
    out_dir, arch, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
    torch.manual_seed(0)
    model = make(arch).to(dtype)
    # Hidden states that look like an embedding's: unit scale, a few outlier features (what
    # makes Wanda differ from magnitude in LLMs).
    calibration = torch.randn(SAMPLES, TOKENS, HIDDEN, dtype=dtype)
    calibration[..., :4] *= 20.0
    initial = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    save_file({**initial, "calibration": calibration.contiguous()}, f"{out_dir}/model.safetensors")
    # The same model as TorchScript, and its calibration file, for the command line.
    torch.jit.script(model).save(f"{out_dir}/model.pt")
    save_file({"input": calibration.contiguous()}, f"{out_dir}/calibration.safetensors")

    results = {}
    for method in ("wanda", "sparsegpt"):
        for label, sparsity, n, m in (("0.5", 0.5, 0, 0), ("2:4", 0.0, 2, 4)):
            for order in ("sequential", "oneshot"):
                model.load_state_dict(initial)
                masks, solver_inputs = run(model, calibration, method, sparsity, n, m, order == "sequential")
                case = f"{method}/{label}/{order}"
                for name, layer in find_layers(model).items():
                    results[f"{case}/{name}.weight"] = layer.weight.data.clone().contiguous()
                for name, mask in masks.items():
                    results[f"{case}/{name}.mask"] = mask.to(dtype).contiguous()
                for name, t in solver_inputs.items():
                    results[f"{case}/{name}"] = t.contiguous()
    save_file(results, f"{out_dir}/results.safetensors")


if __name__ == "__main__":
    main()
