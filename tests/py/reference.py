"""PyTorch's side of the CLI tests: writes model files, and checks the CLI's outputs against
torch.nn.utils.prune applied to the same model, in the same order, with the same seed.

    reference.py fixtures DIR
    reference.py check SPEC.json     (prints OK, or fails with the first difference)
"""
import fnmatch
import json
import sys

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
from safetensors.torch import load_file, save_file


class Nested(nn.Module):
    """A module with nested names: block.layers.0.weight, head.proj.weight, ..."""

    def __init__(self):
        super().__init__()
        self.block = nn.Module()
        self.block.layers = nn.ModuleList([nn.Linear(8, 12), nn.Linear(12, 12)])
        self.head = nn.Module()
        self.head.proj = nn.Linear(12, 4, bias=False)
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x):
        for layer in self.block.layers:
            x = torch.relu(layer(x))
        return self.head.proj(x) * self.scale


def build(name):
    torch.manual_seed({"mlp": 0, "cnn": 1, "nested": 2}[name])
    if name == "mlp":
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    elif name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 6, 3), nn.BatchNorm2d(6), nn.ReLU(),
            nn.Flatten(), nn.Linear(6 * 4 * 4, 5),
        )
        # Non-trivial running statistics.
        model.train()
        model(torch.randn(4, 3, 8, 8))
    else:
        model = Nested()
    return model.eval()


def example_input(name):
    g = torch.Generator().manual_seed(99)
    shape = {"mlp": (5, 8), "cnn": (2, 3, 8, 8), "nested": (5, 8)}[name]
    return torch.randn(*shape, generator=g)


def fixtures(folder):
    for name in ["mlp", "cnn", "nested"]:
        model = build(name)
        torch.jit.save(torch.jit.script(model), f"{folder}/{name}.ts.pt")
        torch.save(model.state_dict(), f"{folder}/{name}.sd.pt")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{folder}/{name}.safetensors")


def resolve(model, name):
    *path, attr = name.split(".")
    module = model
    for part in path:
        module = getattr(module, part)
    return module, attr


def norm(n):
    return n if n in ("fro", "nuc") else float(n)


def reference(spec):
    """Prunes the eager model as the CLI was asked to; returns it with pruning removed."""
    model = build(spec["model"])
    if spec.get("seed") is not None:
        torch.manual_seed(spec["seed"])
    order = spec["order"]  # the file's parameter order, as the CLI reports it
    dims = dict((n, p.dim()) for n, p in model.named_parameters())
    order = [n for n in order if n in dims]
    pruned = []
    for step in spec["steps"]:
        pats = step.get("params")
        if pats is None:
            names = [n for n in order if n.endswith("weight") and dims[n] >= 2]
        else:
            pats = pats.split(",") if isinstance(pats, str) else pats
            names = [n for n in order if any(fnmatch.fnmatchcase(n, p) for p in pats)]
        method, amount = step["method"], step.get("amount")
        if step.get("global"):
            cls = {"l1-unstructured": prune.L1Unstructured, "random-unstructured": prune.RandomUnstructured,
                   "identity": prune.Identity}[method]
            kwargs = {} if method == "identity" else {"amount": amount}
            prune.global_unstructured([resolve(model, n) for n in names], pruning_method=cls, **kwargs)
        else:
            for n in names:
                m, a = resolve(model, n)
                if method == "l1-unstructured": prune.l1_unstructured(m, a, amount)
                elif method == "random-unstructured": prune.random_unstructured(m, a, amount)
                elif method == "ln-structured": prune.ln_structured(m, a, amount, norm(step["n"]), step["dim"])
                elif method == "random-structured": prune.random_structured(m, a, amount, step["dim"])
                elif method == "identity": prune.identity(m, a)
        pruned += [n for n in names if n not in pruned]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # reparametrized
    for n in pruned:
        prune.remove(*resolve(model, n))
    return model, state


def same(a, b, what):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} vs {b.dtype}"
    assert torch.equal(a, b), f"{what}: values differ"


def check(spec_path):
    spec = json.load(open(spec_path))
    model, reparam = reference(spec)
    expected = model.state_dict()
    out, fmt = spec["output"], spec["format"]
    if fmt == "ts":
        got_model = torch.jit.load(out)
        original = torch.jit.load(spec["input"])
        got = got_model.state_dict()
        assert list(got.keys()) == list(original.state_dict().keys()), "TorchScript structure changed"
        assert got_model.code == original.code, "TorchScript code changed"
        x = example_input(spec["model"])
        same(got_model(x), model(x), "outputs")
    elif fmt == "sd":
        got = torch.load(out, weights_only=True)
        # The input's order is kept (PyTorch's own remove() moves each weight after its bias).
        original = torch.load(spec["input"], weights_only=True)
        assert list(got.keys()) == list(original.keys()), f"keys {list(got.keys())}"
    else:
        got = load_file(out)
    for k, v in expected.items():
        same(got[k], v, k)
    assert set(got) == set(expected), f"extra or missing keys: {set(got) ^ set(expected)}"
    if spec.get("state_out"):
        state = load_file(spec["state_out"])
        assert set(state) == set(reparam), f"state keys differ: {set(state) ^ set(reparam)}"
        for k, v in reparam.items():
            same(state[k], v, f"state {k}")
        # It loads strictly into a model reparametrized with prune.identity.
        fresh = build(spec["model"])
        for n in [k[: -len("_orig")] for k in reparam if k.endswith("_orig")]:
            prune.identity(*resolve(fresh, n))
        fresh.load_state_dict(state, strict=True)
    print("OK")


if __name__ == "__main__":
    if sys.argv[1] == "fixtures":
        fixtures(sys.argv[2])
    else:
        check(sys.argv[2])
