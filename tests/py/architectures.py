"""PyTorch's side of tests/architectures.rs: real architectures nobody here wrote (torchvision's
ResNet, MobileNetV3 and ViT, Hugging Face's GPT-2 and BERT with tied embeddings), small and
randomly initialised (no download), in the four formats the CLI reads (TorchScript, torch.save,
safetensors, and torch.export archives); and the check of the CLI's outputs against
torch.nn.utils.prune applied to the model loaded from the same file.

    architectures.py generate DIR      writes DIR/<model>.{ts.pt,sd.pt,safetensors,pt2}
    architectures.py check CASES.json  prints one "OK <case>" line per case, or fails

Seeded everything: the same script writes the same files, so the tests cache them by the
script's hash.
"""
import fnmatch
import json
import re
import sys
import warnings
import zipfile

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
from safetensors.torch import load_file, load_model, save_file, save_model

MODELS = ["resnet", "mobilenet", "vit", "gpt2", "bert"]
# Hugging Face models tie their input embeddings to the output projection.
TIED = {"gpt2", "bert"}


def build(name):
    """The model, freshly built with its seed: every call gives the same parameters."""
    torch.manual_seed(MODELS.index(name))
    if name == "resnet":
        from torchvision.models.resnet import BasicBlock, ResNet

        # resnet18's blocks, one per stage instead of two (ResNet-10): same code, a third the size.
        model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    elif name == "mobilenet":
        from torchvision.models import mobilenet_v3_small

        model = mobilenet_v3_small(weights=None, num_classes=10)
    elif name == "vit":
        from torchvision.models.vision_transformer import VisionTransformer

        model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                  hidden_dim=32, mlp_dim=64, num_classes=10)
    elif name == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(vocab_size=500, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0,
                            use_cache=False)
        model = GPT2LMHeadModel(config)
    else:
        from transformers import BertConfig, BertForMaskedLM

        config = BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64,
                            max_position_embeddings=32)
        model = BertForMaskedLM(config)
    # Trained models have neither all-one norm weights nor zero statistics: perturb them, so that
    # magnitudes do not tie (ties at the threshold follow a documented rule, checked apart).
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)) and module.weight is not None:
                module.weight.add_(torch.randn_like(module.weight) * 0.1)
                module.bias.add_(torch.randn_like(module.bias) * 0.1)
    if name in ("resnet", "mobilenet"):
        model.train()
        with torch.no_grad():
            model(example_input(name))  # non-trivial running statistics
    return model.eval()


def example_input(name):
    g = torch.Generator().manual_seed(99)
    if name in ("gpt2", "bert"):
        return torch.randint(0, 500, (2, 16), generator=g)
    return torch.randn(2, 3, 32, 32, generator=g)


def output(model, x):
    out = model(x)
    if isinstance(out, dict):  # Hugging Face's outputs (a traced module gives a plain dict)
        return out["logits"]
    return out


def generate(folder):
    for name in MODELS:
        model = build(name)
        x = example_input(name)
        if name in TIED:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                script = torch.jit.trace(model, (x,), strict=False)
        else:
            script = torch.jit.script(model)
        torch.jit.save(script, f"{folder}/{name}.ts.pt")
        torch.save(model.state_dict(), f"{folder}/{name}.sd.pt")
        # save_file refuses shared tensors: save_model writes one name per tie and records the
        # others in the metadata, which is what users of tied models have.
        save_model(model, f"{folder}/{name}.safetensors")
        torch.export.save(torch.export.export(model, (x,)), f"{folder}/{name}.pt2")


def resolve(model, name):
    *path, attr = name.split(".")
    module = model
    for part in path:
        module = getattr(module, part)
    return module, attr


def canonical_names(model):
    """Every state-dict name of a parameter -> the name named_parameters() gives it (a tied
    parameter is listed once, under its first name)."""
    first = {}
    for n, p in model.named_parameters():
        first[id(p)] = n
    names = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names[n] = first[id(p)]
    return names


def norm(n):
    return n if n in ("fro", "nuc") else float(n)


def load(spec):
    """The model as loaded from the input file, the way its format is loaded in Python."""
    model = build(spec["model"])
    fmt, path = spec["format"], spec["input"]
    if fmt == "ts":
        state = torch.jit.load(path).state_dict()
        model.load_state_dict(state, strict=False)
    elif fmt == "sd":
        model.load_state_dict(torch.load(path, weights_only=True))
    elif fmt == "ep":
        model.load_state_dict(torch.export.load(path).state_dict)
    else:
        load_model(model, path)
    return model


def select(step, order, canon, dims):
    """The CLI's documented selection: the default, names in the order given, globs in the file's
    order; buffers never; a tied parameter once, under its named_parameters() name."""
    pats = step.get("params")
    if pats is None:
        names = [n for n in order if n.endswith("weight") and dims[n] >= 2]
    else:
        pats = pats.split(",") if isinstance(pats, str) else pats
        names = []
        for p in pats:
            if any(c in p for c in "*?"):
                names += [n for n in order if fnmatch.fnmatchcase(n, p)]
            else:
                names.append(p)
    out = []
    for n in names:
        c = canon[n]
        if c not in out:
            out.append(c)
    return out


def reference(spec, model):
    """Prunes the loaded model as the CLI was asked to, then removes the pruning."""
    if spec.get("seed") is not None:
        torch.manual_seed(spec["seed"])
    canon = canonical_names(model)
    dims = {n: p.dim() for n, p in model.named_parameters(remove_duplicate=False)}
    order = [n for n in spec["order"] if n in canon]  # the file's order, as the CLI reports it
    pruned = []
    for step in spec["steps"]:
        names = select(step, order, canon, dims)
        method, amount = step["method"], step.get("amount")
        if step.get("global"):
            cls = {"l1-unstructured": prune.L1Unstructured,
                   "random-unstructured": prune.RandomUnstructured}[method]
            prune.global_unstructured([resolve(model, n) for n in names], pruning_method=cls,
                                      amount=amount)
        else:
            for n in names:
                m, a = resolve(model, n)
                if method == "l1-unstructured":
                    prune.l1_unstructured(m, a, amount)
                elif method == "random-unstructured":
                    prune.random_unstructured(m, a, amount)
                elif method == "ln-structured":
                    prune.ln_structured(m, a, amount, norm(step["n"]), step["dim"])
                elif method == "random-structured":
                    prune.random_structured(m, a, amount, step["dim"])
        pruned += [n for n in names if n not in pruned]
    for n in pruned:
        prune.remove(*resolve(model, n))
    return model


def compare(got, expected, original, ties_allowed, what):
    """Bit for bit (-0.0 as 0.0), but for L1 steps: entries may differ only where their
    magnitude ties with the selection threshold (the documented tie rule), with as many zeros."""
    differing = []
    for k, e in expected.items():
        g = got[k]
        assert g.shape == e.shape, f"{what} {k}: shape {tuple(g.shape)} vs {tuple(e.shape)}"
        assert g.dtype == e.dtype, f"{what} {k}: dtype {g.dtype} vs {e.dtype}"
        if torch.equal(g, e):
            continue
        assert ties_allowed and e.is_floating_point(), f"{what} {k}: values differ"
        diff = g != e
        assert torch.equal((g == 0).sum(), (e == 0).sum()), f"{what} {k}: numbers of zeros differ"
        # Where they differ, one side pruned the entry and the other kept its original value.
        o = original[k]
        one_pruned = ((g == 0) & (e == o)) | ((e == 0) & (g == o))
        assert bool(one_pruned[diff].all()), f"{what} {k}: differs at entries neither side pruned"
        differing.append(o[diff].abs())
    if differing:
        tied = torch.cat(differing)
        assert bool((tied == tied[0]).all()), f"{what}: differing entries are not tied at one magnitude"
        print(f"note {what}: {tied.numel()} entries tied at |{tied[0].item()}| pruned by the tie rule",
              file=sys.stderr)


def check(spec):
    model = load(spec)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    reference(spec, model)
    expected = model.state_dict()
    out, fmt, what = spec["output"], spec["format"], spec["case"]
    ties = any(s["method"] == "l1-unstructured" for s in spec["steps"])
    if fmt == "ts":
        got_model = torch.jit.load(out)
        original_script = torch.jit.load(spec["input"])
        got = got_model.state_dict()
        assert list(got.keys()) == list(original_script.state_dict().keys()), \
            f"{what}: TorchScript structure changed"
        assert got_model.code == original_script.code, f"{what}: TorchScript code changed"
        if not ties:
            x = example_input(spec["model"])
            assert torch.equal(output(got_model, x), output(model, x)), f"{what}: outputs differ"
        # A TorchScript module's state also holds the buffers an eager model does not save
        # (non-persistent ones, e.g. BERT's position_ids): those are kept as they were.
        before = original_script.state_dict()
        for k in set(got) - set(expected):
            assert torch.equal(got[k], before[k]), f"{what} {k}: a buffer changed"
        got = {k: v for k, v in got.items() if k in expected}
    elif fmt == "sd":
        got = torch.load(out, weights_only=True)
        assert list(got.keys()) == list(torch.load(spec["input"], weights_only=True).keys()), \
            f"{what}: keys or their order changed"
    elif fmt == "ep":
        got = check_exported(spec, model, ties)
    else:
        got = load_file(out)
        # The file holds one name per tie: load it as safetensors' load_model does.
        fresh = build(spec["model"])
        load_model(fresh, out)
        got = fresh.state_dict()
    assert set(got) == set(expected), f"{what}: extra or missing keys: {set(got) ^ set(expected)}"
    compare(got, expected, original, ties, what)
    if fmt == "sd" and spec["model"] in TIED:
        # Ties kept: the names PyTorch ties share one storage in the output, as in the input.
        got_raw = torch.load(out, weights_only=True)
        inp = torch.load(spec["input"], weights_only=True)
        shared = lambda sd: sorted(
            sorted(ns) for ns in _groups(sd) if len(ns) > 1)
        assert shared(got_raw) == shared(inp), f"{what}: ties {shared(got_raw)} vs {shared(inp)}"
    print(f"OK {what}")


def check_exported(spec, model, ties):
    """A pruned torch.export archive: the same entries in the same order, every one but the
    weight storages byte for byte the input's; torch.export.load reads it and its program runs,
    giving what the eager model with the same weights gives (and, without ties at the L1
    threshold, what the PyTorch-pruned model gives); ties kept; the CLI's report of it right."""
    out, what = spec["output"], spec["case"]
    zin, zout = zipfile.ZipFile(spec["input"]), zipfile.ZipFile(out)
    assert zin.namelist() == zout.namelist(), f"{what}: entries or their order changed"
    for name in zin.namelist():
        if zin.read(name) != zout.read(name):
            assert re.fullmatch(r"[^/]+/data/weights/weight_[0-9]+", name), \
                f"{what}: entry {name} changed"
    loaded, before = torch.export.load(out), torch.export.load(spec["input"])
    got = dict(loaded.state_dict)
    assert list(got) == list(before.state_dict), f"{what}: names or their order changed"
    x = example_input(spec["model"])
    ran = output(loaded.module(), x)
    fresh = build(spec["model"])
    fresh.load_state_dict(got)
    assert torch.equal(ran, output(fresh, x)), f"{what}: the exported program and the eager model differ"
    if not ties:
        assert torch.equal(ran, output(model, x)), f"{what}: outputs differ from PyTorch's pruning"
    shared = lambda sd: sorted(sorted(ns) for ns in _groups(sd) if len(ns) > 1)
    assert shared(got) == shared(before.state_dict), f"{what}: ties {shared(got)} vs {shared(before.state_dict)}"
    report = json.load(open(spec["report"]))
    listed = {t["name"]: t for t in report["tensors"]}
    for k, v in got.items():
        t = listed[k]
        assert t["shape"] == list(v.shape), f"{what} {k}: report shape {t['shape']}"
        assert t["zeros"] == int((v == 0).sum()), f"{what} {k}: report says {t['zeros']} zeros"
    return got


def _groups(sd):
    groups = {}
    for k, v in sd.items():
        groups.setdefault((v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)), []).append(k)
    return groups.values()


if __name__ == "__main__":
    if sys.argv[1] == "generate":
        generate(sys.argv[2])
    else:
        for spec in json.load(open(sys.argv[2])):
            check(spec)
