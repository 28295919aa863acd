"""PyTorch's side of the parity cases (tests/common/parity.rs): applies each case's steps with
torch.nn.utils.prune on a module that holds the case's tensor as `weight`, on DEVICE, and
saves the masks and pruned tensors (on the CPU).

    parity.py CASES.json INPUTS.safetensors OUT.safetensors DEVICE
"""
import json, sys, torch
import torch.nn.utils.prune as prune
from safetensors.torch import load_file, save_file
cases = json.load(open(sys.argv[1]))
device = torch.device(sys.argv[4])
assert device.type == "cpu" or torch.cuda.is_available(), "PyTorch sees no GPU"
inputs = load_file(sys.argv[2])
out = {}
def norm(n):
    return n if n in ("fro", "nuc") else float(n)
for case in cases:
    mods = {}
    for name in case["tensors"]:
        m = torch.nn.Module()
        m.register_parameter("weight", torch.nn.Parameter(inputs[name].clone().to(device)))
        mods[name] = m
    for i, step in enumerate(case["steps"]):
        if "seed" in step:
            torch.manual_seed(step["seed"])
        scores = {n: inputs[f"{n}.scores{i}"].to(device) for n in case["tensors"] if f"{n}.scores{i}" in inputs}
        kind, amount = step["method"], step.get("amount")
        if kind == "global_l1" or kind == "global_random":
            cls = prune.L1Unstructured if kind == "global_l1" else prune.RandomUnstructured
            prune.global_unstructured([(mods[n], "weight") for n in case["tensors"]], pruning_method=cls,
                importance_scores={(mods[n], "weight"): s for n, s in scores.items()}, amount=amount)
            continue
        name = case["tensors"][0]
        m, s = mods[name], scores.get(name)
        if kind == "l1": prune.l1_unstructured(m, "weight", amount, importance_scores=s)
        elif kind == "random": prune.random_unstructured(m, "weight", amount)
        elif kind == "ln": prune.ln_structured(m, "weight", amount, norm(step["n"]), step["dim"], importance_scores=s)
        elif kind == "random_structured": prune.random_structured(m, "weight", amount, step["dim"])
        elif kind == "identity": prune.identity(m, "weight")
        else: raise ValueError(kind)
    for name, m in mods.items():
        out[f"{name}.mask"] = m.weight_mask.contiguous().cpu()
        out[f"{name}.pruned"] = m.weight.detach().contiguous().cpu()
save_file(out, sys.argv[3])
