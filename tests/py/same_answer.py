"""PyTorch's side of tests/cli/same_answer.rs: one model, the same answer whatever file it came in.

    same_answer.py fixtures DIR        tied.{ts.pt,sd.pt,safetensors}, cnn.{...}
    same_answer.py check SPECS.json    prints OK per spec, or fails with the first difference
    same_answer.py tied-states TS SD ST
                                       loads each --state-out of the tied model (from its
                                       TorchScript, torch.save and safetensors files) strictly;
                                       prints OK

Each spec names the model, the input and output files, the steps (names given in the order
PyTorch is to prune them, a tied parameter under its named_parameters() name) and the seed.
"""
import json
import sys

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_model


class Tied(nn.Module):
    """An embedding tied to the output projection, as language models have it."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(40, 8)
        self.hidden = nn.Linear(8, 8)
        self.decoder = nn.Linear(8, 40, bias=False)
        self.decoder.weight = self.embed.weight

    def forward(self, x):
        return self.decoder(torch.relu(self.hidden(self.embed(x))))


def build(name):
    torch.manual_seed(5)
    if name == "tied":
        return Tied().eval()
    # Named as torchvision names its models: safetensors orders classifier.* before features.*.
    model = nn.Module()
    model.features = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3))
    model.classifier = nn.Linear(4 * 4 * 4, 5)
    model.forward = lambda x: model.classifier(torch.flatten(model.features(x), 1))
    model.train()
    model(torch.randn(4, 3, 8, 8))  # non-trivial running statistics
    return model.eval()


class Cnn(nn.Module):
    """build("cnn") as a class, for TorchScript."""

    def __init__(self, source):
        super().__init__()
        self.features = source.features
        self.classifier = source.classifier

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def example_input(name):
    if name == "tied":
        return torch.arange(10).reshape(2, 5)
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def fixtures(folder):
    for name in ["tied", "cnn"]:
        model = build(name)
        scriptable = model if name == "tied" else Cnn(model)
        torch.jit.save(torch.jit.script(scriptable), f"{folder}/{name}.ts.pt")
        torch.save(model.state_dict(), f"{folder}/{name}.sd.pt")
        save_model(model, f"{folder}/{name}.safetensors")


def resolve(model, name):
    *path, attr = name.split(".")
    module = model
    for part in path:
        module = getattr(module, part)
    return module, attr


def reference(spec):
    model = build(spec["model"])
    if spec.get("seed") is not None:
        torch.manual_seed(spec["seed"])
    pruned = []
    for step in spec["steps"]:
        names, method, amount = step["names"], step["method"], step["amount"]
        if step.get("global"):
            cls = {"l1-unstructured": prune.L1Unstructured, "random-unstructured": prune.RandomUnstructured}[method]
            prune.global_unstructured([resolve(model, n) for n in names], pruning_method=cls, amount=amount)
        else:
            fn = {"l1-unstructured": prune.l1_unstructured, "random-unstructured": prune.random_unstructured}[method]
            for n in names:
                fn(*resolve(model, n), amount)
        pruned += [n for n in names if n not in pruned]
    for n in pruned:
        prune.remove(*resolve(model, n))
    return model


def same(a, b, what):
    assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
    assert torch.equal(a, b), f"{what}: values differ"


def check(spec):
    expected = reference(spec)
    name, fmt, out = spec["model"], spec["format"], spec["output"]
    fresh = build(name)
    if fmt == "ts":
        got = torch.jit.load(out)
        x = example_input(name)
        same(got(x), expected(x), "outputs")
        fresh.load_state_dict(got.state_dict())
    elif fmt == "sd":
        sd = torch.load(out, weights_only=True)
        if name == "tied":
            # One storage for the tied names, as torch.save writes a tied model: no second copy.
            assert sd["decoder.weight"].untyped_storage().data_ptr() == sd["embed.weight"].untyped_storage().data_ptr(), \
                "the tie is lost: two storages"
        fresh.load_state_dict(sd)
    else:
        if name == "tied":
            # One name plus save_model's metadata convention for the other.
            with safe_open(out, "pt") as f:
                keys, metadata = set(f.keys()), f.metadata()
            assert "embed.weight" not in keys and "decoder.weight" in keys, f"keys {keys}"
            assert metadata.get("embed.weight") == "decoder.weight", f"metadata {metadata}"
        load_model(fresh, out)
    for k, v in expected.state_dict().items():
        same(fresh.state_dict()[k], v, k)
    if name == "tied":
        assert fresh.decoder.weight is fresh.embed.weight
    print("OK")


def tied_states(states):
    """Each state loads strictly into the tied model reparametrized under the name the tensor
    was pruned under (embed in TorchScript and torch.save files, decoder, the name the file
    holds, in safetensors), the other name holding `_orig`'s values."""
    for state, kept in zip(states, ["embed", "embed", "decoder"]):
        model = build("tied")
        prune.identity(getattr(model, kept), "weight")
        prune.identity(model.hidden, "weight")
        model.load_state_dict(load_file(state), strict=True)
        other = "decoder" if kept == "embed" else "embed"
        assert getattr(model, other).weight is getattr(model, kept).weight_orig
    print("OK")


if __name__ == "__main__":
    if sys.argv[1] == "fixtures":
        fixtures(sys.argv[2])
    elif sys.argv[1] == "tied-states":
        tied_states(sys.argv[2:])
    else:
        for spec in json.load(open(sys.argv[2])):
            check(spec)
