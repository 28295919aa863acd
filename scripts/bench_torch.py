"""PyTorch's side of `make bench` (scripts/bench.py drives it; examples/bench.rs is the crate's).

One measurement per process, so that each peak resident set size is its own:

  bench_torch.py <case> <d> <blocks> <seed> <out-dir>     one JSON line, as examples/bench.rs
  bench_torch.py checksum <d> <blocks> <seed>             the bit sum of every tensor
  bench_torch.py write-model <d> <blocks> <seed> <path>   the model as safetensors (CLI case)
  bench_torch.py cli <d> <blocks> <in> <out> [global|l1|ln|nm]
                                                          what the CLI cases' tch-prune does
  bench_torch.py ties <case> <d> <blocks> <seed> <crate-bits> <torch-bits>
                                                          are the masks' differences all ties?

Cases: l1, ln, global, forward, train (see scripts/bench.py).
"""
import json
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

# A transformer block's Linear layers as (name, out factor, in factor); ReLU after ff1.
BLOCK = [("q", 1, 1), ("k", 1, 1), ("v", 1, 1), ("o", 1, 1), ("ff1", 4, 1), ("ff2", 1, 4)]


class Stack(nn.Module):
    """The model of examples/bench.rs, drawn in the same order from the same libtorch generator
    (each layer's weight, then its bias), so both sides hold bit-identical weights. With
    seed=None the weights stay on the meta device, to be loaded with assign=True."""

    def __init__(self, d, blocks, seed):
        super().__init__()
        if seed is not None:
            torch.manual_seed(seed)
        for b in range(blocks):
            for j, (kind, fo, fi) in enumerate(BLOCK):
                lin = nn.Linear(fi * d, fo * d, device="meta")  # no init: replaced below
                if seed is not None:
                    lin.weight = nn.Parameter(torch.randn(fo * d, fi * d).mul_(1 / math.sqrt(fi * d)))
                    lin.bias = nn.Parameter(torch.randn(fo * d).mul_(0.02))
                # Sorted names (a safetensors file's order) are the model's order.
                self.add_module(f"layer{b * 6 + j:03}_{kind}", lin)

    def forward(self, x):
        for name, lin in self.named_children():
            x = lin(x)
            if name.endswith("_ff1"):
                x = torch.relu(x)
        return x


def status_bytes(field):
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith(field))
    return int(line.split()[1]) * 1024


def reset_peak():
    """Resets the kernel's peak-RSS mark (VmHWM) to the current RSS, so the peak read later is
    the peak of what follows, not of building the model. Returns that baseline RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_bytes("VmRSS:")


def timings(repeats, step):
    """Times `step` `repeats` times after a warm-up; the seconds of each run."""
    step()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        runs.append(time.perf_counter() - start)
    return runs


def median(runs):
    return sorted(runs)[len(runs) // 2]


def write_bits(path, masks):
    """Masks in layer order as packed bits (1 = kept), numpy.packbits' format per tensor."""
    with open(path, "wb") as f:
        for mask in masks:
            f.write(np.packbits(mask.reshape(-1).ne(0).numpy()).tobytes())


def measure(case, d, blocks, seed, out_dir):
    threads = int(os.environ.get("BENCH_THREADS", "2"))
    repeats = int(os.environ.get("BENCH_REPEATS", "5"))
    torch.set_num_threads(threads)
    model = Stack(d, blocks, seed)
    params = sum(p.numel() for p in model.parameters())
    linears = list(model.children())
    masks, extra = [], {}

    baseline = reset_peak()
    start = time.perf_counter()
    base = case.removesuffix("-at-once")
    if base in ("l1", "ln", "global"):
        if base == "l1":
            for lin in linears:
                prune.l1_unstructured(lin, "weight", amount=0.5)
        elif base == "ln":
            for lin in linears:
                prune.ln_structured(lin, "weight", amount=0.5, n=2, dim=0)
        else:
            prune.global_unstructured([(lin, "weight") for lin in linears],
                                      pruning_method=prune.L1Unstructured, amount=0.5)
        if base == case:
            masks = [lin.weight_mask for lin in linears]  # the buffers themselves, no copy
        for lin in linears:
            prune.remove(lin, "weight")
        seconds = time.perf_counter() - start
    elif case == "forward":
        # Inference with the masks in place (the hooks recompute weight = orig * mask on every
        # call), against the same model unpruned.
        x = torch.randn(8, 128, d)
        with torch.no_grad():
            unpruned = timings(repeats, lambda: model(x))
            for lin in linears:
                prune.l1_unstructured(lin, "weight", amount=0.5)
            pruned = timings(repeats, lambda: model(x))
        seconds = median(pruned)
        extra = {"unpruned_seconds": median(unpruned), "ratio": seconds / median(unpruned),
                 "runs": pruned, "unpruned_runs": unpruned}
    elif case == "train":
        for lin in linears:
            prune.l1_unstructured(lin, "weight", amount=0.5)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        x = torch.randn(8, 128, d)

        def step():
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()

        runs = timings(min(repeats, 3), step)
        seconds, extra = median(runs), {"runs": runs}
    else:
        sys.exit(f"unknown case '{case}'")
    peak = status_bytes("VmHWM:") - baseline
    if case.endswith("-at-once"):
        # The crate keeps no masks there: both sides compare their final weights' non-zeros.
        masks = [lin.weight.detach() for lin in linears]

    mask_file = None
    if masks:
        mask_file = os.path.join(out_dir, f"torch-{case}.bits")
        write_bits(mask_file, masks)
    print(json.dumps({"side": "torch", "case": case, "params": params, "threads": threads,
                      "seconds": seconds, "peak_bytes": peak, "baseline_rss_bytes": baseline,
                      "mask_file": mask_file, **extra}))


def checksum(d, blocks, seed):
    """The sum of each tensor's bit patterns: any differing bit changes it."""
    model = Stack(d, blocks, seed)
    sums = [int(p.detach().view(torch.int32).sum(dtype=torch.int64)) for p in model.parameters()]
    print(json.dumps({"params": sum(p.numel() for p in model.parameters()), "checksums": sums,
                      "torch_version": torch.__version__}))


def cli(d, blocks, src, dst, method="global"):
    """What `tch-prune prune src -o dst` does with `--method l1-unstructured --amount 0.5
    --global` (global), `--method l1-unstructured --amount 0.5` (l1) or `--method ln-structured
    --amount 0.5 --n 2 --dim 0` (ln) or `--method nm --pattern 2:4` (nm: the two largest
    magnitudes of every four consecutive entries of a row kept, a custom_from_mask mask)."""
    from safetensors.torch import load_file, save_file
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    model = Stack(d, blocks, None)
    model.load_state_dict(load_file(src), assign=True)  # assign: no second copy of the weights
    # The CLI's default selection: every parameter named *weight with at least two dims.
    params = [(model.get_submodule(n.rsplit(".", 1)[0]), "weight")
              for n, p in model.named_parameters() if n.endswith("weight") and p.dim() >= 2]
    if method == "global":
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.5)
    for module, name in params:
        if method == "l1":
            prune.l1_unstructured(module, name, amount=0.5)
        elif method == "ln":
            prune.ln_structured(module, name, amount=0.5, n=2, dim=0)
        elif method == "nm":
            w = module.weight.detach()
            blocks = w.abs().reshape(-1, 4)
            keep = torch.zeros_like(blocks, dtype=torch.bool)
            keep.scatter_(1, blocks.topk(2, dim=1).indices, True)
            prune.custom_from_mask(module, name, keep.reshape(w.shape))
        prune.remove(module, name)
    save_file(model.state_dict(), dst)


def ties(case, d, blocks, seed, crate_bits, torch_bits):
    """Where the two masks differ, is every differing entry's score equal to PyTorch's
    threshold (the largest score it pruned)? Then both masks are valid answers and differ only
    in how ties are broken. Scores are |w| (unstructured, nm) or the row's 2-norm (ln, dim=0);
    the threshold is per tensor, over all tensors for global pruning, or per block of four
    (nm: the largest score PyTorch pruned in the block)."""
    case = case.removesuffix("-at-once")
    model = Stack(d, blocks, seed)
    per_tensor = []  # (threshold, scores where the masks differ, pruned by crate, by torch)
    with open(crate_bits, "rb") as fc, open(torch_bits, "rb") as ft:
        for lin in model.children():
            w = lin.weight.detach()
            n = w.numel()
            c, t = (torch.from_numpy(np.unpackbits(np.frombuffer(f.read((n + 7) // 8), np.uint8),
                                                   count=n).astype(bool)).view_as(w)
                    for f in (fc, ft))
            if case == "ln":
                score = torch.norm(w, p=2, dim=[1], keepdim=True).expand_as(w)
            else:
                score = w.abs()
            if case == "nm":
                pruned = torch.where(t, torch.full_like(score, -math.inf), score).reshape(-1, 4)
                block = pruned.max(dim=1, keepdim=True).values.expand(-1, 4).reshape(w.shape)
                differ = c != t
                per_tensor.append((0.0, score[differ] - block[differ], int((~c).sum()), int((~t).sum())))
                continue
            threshold = score[~t].max().item() if (~t).any() else -math.inf
            per_tensor.append((threshold, score[c != t], int((~c).sum()), int((~t).sum())))
    if case == "global":
        top = max(th for th, _, _, _ in per_tensor)
        per_tensor = [(top, s, pc, pt) for _, s, pc, pt in per_tensor]
        counts_equal = sum(pc for *_, pc, _ in per_tensor) == sum(pt for *_, pt in per_tensor)
    else:
        counts_equal = all(pc == pt for *_, pc, pt in per_tensor)
    print(json.dumps({
        "differing": sum(s.numel() for _, s, _, _ in per_tensor),
        "not_at_threshold": sum(int((s != th).sum()) for th, s, _, _ in per_tensor),
        "pruned_counts_equal": counts_equal,
    }))


def main():
    a = sys.argv[1:]
    if a[0] == "checksum":
        checksum(int(a[1]), int(a[2]), int(a[3]))
    elif a[0] == "write-model":
        from safetensors.torch import save_file
        save_file(Stack(int(a[1]), int(a[2]), int(a[3])).state_dict(), a[4])
    elif a[0] == "cli":
        cli(int(a[1]), int(a[2]), a[3], a[4], *a[5:6])
    elif a[0] == "ties":
        ties(a[1], int(a[2]), int(a[3]), int(a[4]), a[5], a[6])
    else:
        measure(a[0], int(a[1]), int(a[2]), int(a[3]), a[4])


if __name__ == "__main__":
    main()
