"""Fixtures and checks for tests/cli/shrink_pt2.rs: `tch-prune shrink` on torch.export archives.

    shrink_pt2.py models OUT
        torchvision resnet18, resnet50, mobilenet_v2 and efficientnet_b0 (random init, seeded,
        non-trivial batch-norm statistics), each saved twice with the same weights:
        OUT/<name>.pt2 (torch.export.export on a 1x3x32x32 input, torch.export.save) and
        OUT/<name>.pt (torch.jit.script, torch.jit.save); OUT/resnet18_core.pt2 (resnet18's
        program after run_decompositions); OUT/shufflenet_v2_x0_5.pt2 (its channel
        shuffle is a `view` whose sizes the shrink rewrites); OUT/tied.pt2 (two linear layers over
        one weight); and OUT/tiny.pt2, a small conv net for the hostile rows. Prints "ok".

    shrink_pt2.py check ORIGINAL.pt2 SHRUNK.pt2 SHRUNK.pt REPORT.json
        The shrunk archive loads (torch.export.load) and its module runs; its state dict is the
        shrunk TorchScript model's, name for name and bit for bit (unless SHRUNK.pt is "-");
        its output equals the
        original archive's with the removed channels (REPORT.json's "removed") zeroed, and
        differs from the unzeroed original's; every entry of the original archive but the
        program, the weights config and the storages of sliced weights is in the output,
        in the same order, byte for byte. Prints the parameter count and the relative error.

    shrink_pt2.py hostile SRC.pt2 DST.pt2 MODE
        SRC with its program changed as MODE says (see HOSTILE below), every other entry kept.

    shrink_pt2.py mutate SRC.pt2 OUT N
        N archives OUT/mutant_<i>.pt2: SRC with its program mutated at random (seeded): sizes,
        strides, targets, argument values and names, inputs and outputs dropped or repeated,
        wrong JSON types. Prints "ok".
"""
import json
import sys
import warnings
import zipfile

import torch

warnings.filterwarnings("ignore")

SHAPE = (1, 3, 32, 32)


def randomise(m):
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.b = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.a(x)))
        x = torch.relu(self.b(x))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Tied(torch.nn.Module):
    """Two linear layers over one weight (tied): its storage is shared, so it keeps its shape."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.c = torch.nn.Linear(8, 8)
        self.out = torch.nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.b(torch.relu(self.a(x))))
        return self.out(torch.relu(self.c(h)))


def models(out):
    import torchvision

    torch.manual_seed(0)
    x = torch.randn(*SHAPE)
    for name in ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0"]:
        m = randomise(getattr(torchvision.models, name)(weights=None))
        ep = torch.export.export(m, (x,))
        torch.export.save(ep, f"{out}/{name}.pt2")
        torch.jit.save(torch.jit.script(m), f"{out}/{name}.pt")
        if name == "resnet18":
            # The core ATen opset (`convolution`, `_native_batch_norm_legit_no_training`,
            # `addmm` of a permuted weight): what `run_decompositions` makes of it.
            torch.export.save(ep.run_decompositions(), f"{out}/resnet18_core.pt2")
    # The channel shuffle: `view(b, 2, c / 2, h, w)` with its sizes written in the program.
    m = randomise(torchvision.models.shufflenet_v2_x0_5(weights=None))
    torch.export.save(torch.export.export(m, (x,)), f"{out}/shufflenet_v2_x0_5.pt2")
    torch.export.save(torch.export.export(Tied().eval(), (torch.randn(2, 8),)), f"{out}/tied.pt2")
    tiny = randomise(Tiny())
    torch.export.save(torch.export.export(tiny, (torch.randn(1, 3, 8, 8),)), f"{out}/tiny.pt2")
    print("ok")


def entries(path):
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i.filename)) for i in z.infolist()]


def check(original, shrunk, scripted, report):
    report = json.load(open(report))
    ep = torch.export.load(shrunk)
    torch.manual_seed(1)
    x = torch.randn(*ep.example_inputs[0][0].shape)
    with torch.no_grad():
        y = ep.module()(x)

    # The same weights as the TorchScript shrink of the same model ("-": none to compare).
    count = sum(p.numel() for p in ep.parameters())
    if scripted != "-":
        ts = torch.jit.load(scripted)
        ts_state = dict(ts.state_dict())
        state = ep.state_dict
        assert set(state) <= set(ts_state), sorted(set(state) - set(ts_state))
        for name, t in state.items():
            assert t.shape == ts_state[name].shape, (name, t.shape, ts_state[name].shape)
            assert torch.equal(t, ts_state[name]), name
        assert count == sum(p.numel() for p in ts.parameters()), "parameter counts differ"
    assert count == report["parameters_after"], (count, report["parameters_after"])

    # The group-zeroed original's output.
    reference = torch.export.load(original).module()
    with torch.no_grad():
        unzeroed = reference(x)
        for r in report["removed"]:
            if r["is_parameter"]:
                p = reference.get_parameter(r["name"])
                p.index_fill_(r["dim"], torch.tensor(r["indices"]), 0.0)
        expected = reference(x)
    scale = expected.abs().max().clamp_min(1e-30)
    err = ((y - expected).abs().max() / scale).item()
    assert err <= 1e-4, f"relative error {err} against the group-zeroed original"
    assert ((y - unzeroed).abs().max() / scale).item() > 1e-4, "shrinking changed nothing"

    # Every other entry carried over unchanged, in order.
    before, after = entries(original), entries(shrunk)
    assert [n for n, _ in before] == [n for n, _ in after], "entries differ"
    with zipfile.ZipFile(original) as z:
        root = z.infolist()[0].filename.split("/")[0]
        config = json.loads(z.read(f"{root}/data/weights/model_weights_config.json"))["config"]
    sliced = {r["name"] for r in report["removed"]}
    rewritten = {f"{root}/models/model.json", f"{root}/data/weights/model_weights_config.json"}
    rewritten |= {f"{root}/data/weights/{config[n]['path_name']}" for n in sliced}
    same = 0
    for (name, a), (_, b) in zip(before, after):
        if name not in rewritten:
            assert a == b, f"{name} changed"
            same += 1
    assert same > 0
    print(count, f"{err:.3e}")


HOSTILE = {
    # A conv's output recorded with one channel more than its weight makes.
    "lying_sizes": "conv2d",
    # A relu replaced by an op the analysis does not know.
    "unknown_op": "relu",
    # The first conv's weight recorded with another shape than the weights config's.
    "lying_placeholder": "p_a_weight",
    # A node whose target spells a TorchScript kind, to pass for a conv.
    "spoofed_kind": "conv2d",
    # A node reading a value nothing defines, and one with no inputs field.
    "dangling": "relu",
    # Sizes whose product overflows 64 bits.
    "huge_sizes": "relu_1",
}


def hostile(src, dst, mode):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("models/model.json"):
                p = json.loads(data)
                g = p["graph_module"]["graph"]
                nodes = g["nodes"]
                if mode == "lying_sizes":
                    meta = g["tensor_values"]["conv2d"]
                    meta["sizes"][1]["as_int"] += 1
                elif mode == "unknown_op":
                    n = next(n for n in nodes if "relu" in n["target"])
                    n["target"] = "torch.ops.aten.fancy_op.default"
                elif mode == "lying_placeholder":
                    meta = g["tensor_values"]["p_a_weight"]
                    meta["sizes"][0]["as_int"] = 16
                elif mode == "spoofed_kind":
                    n = next(n for n in nodes if n["target"] == "torch.ops.aten.conv2d.default")
                    n["target"] = "aten::conv2d"
                elif mode == "huge_sizes":
                    meta = g["tensor_values"]["relu_1"]
                    meta["sizes"] = [{"as_int": n} for n in (1, 8, 1 << 40, 1 << 40)]
                elif mode == "dangling":
                    n = next(n for n in nodes if "relu" in n["target"])
                    n["inputs"][0]["arg"] = {"as_tensor": {"name": "nothing_defines_this"}}
                    del nodes[-1]["inputs"]
                elif mode == "not_json":
                    zout.writestr(info, b"{ not json")
                    continue
                else:
                    raise SystemExit(f"unknown mode {mode}")
                data = json.dumps(p).encode()
            zout.writestr(info, data)
    print("ok")


def mutate_program(p, rng):
    """One to four random changes anywhere in the program's JSON tree."""
    import random

    def walk(v, path=()):
        yield path, v
        if isinstance(v, dict):
            for k, c in v.items():
                yield from walk(c, path + (k,))
        elif isinstance(v, list):
            for i, c in enumerate(v):
                yield from walk(c, path + (i,))

    spots = [s for s in walk(p) if s[0]]
    for _ in range(rng.randint(1, 4)):
        path, value = rng.choice(spots)
        parent = p
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        choice = rng.random()
        if isinstance(value, bool) or choice < 0.1:
            new = rng.choice([None, True, "x", [], {}, -1, 0, 1 << 62, 1.5])
        elif isinstance(value, int):
            new = rng.choice([value + 1, value - 1, 0, -1, -(1 << 63), (1 << 63) - 1, value * 1000])
        elif isinstance(value, str):
            new = rng.choice([value + "_", "", "torch.ops.aten.view.default",
                              "torch.ops.aten.conv2d.default", "aten::cat", "p_a_weight", "x"])
        elif isinstance(value, list) and value:
            new = list(value)
            if rng.random() < 0.5:
                new.pop(rng.randrange(len(new)))
            else:
                new.insert(rng.randrange(len(new) + 1), rng.choice(new))
        elif isinstance(value, dict) and value:
            new = dict(value)
            new.pop(rng.choice(list(new)))
        else:
            new = None
        try:
            parent[key] = new
        except (TypeError, IndexError):
            pass


def mutate(src, out, n):
    import random

    rng = random.Random(0)
    with zipfile.ZipFile(src) as zin:
        infos = zin.infolist()
        blobs = {i.filename: zin.read(i.filename) for i in infos}
    program = next(n for n in blobs if n.endswith("models/model.json"))
    for k in range(int(n)):
        p = json.loads(blobs[program])
        mutate_program(p, rng)
        with zipfile.ZipFile(f"{out}/mutant_{k}.pt2", "w", zipfile.ZIP_STORED) as zout:
            for info in infos:
                data = json.dumps(p).encode() if info.filename == program else blobs[info.filename]
                zout.writestr(info, data)
    print("ok")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "models":
        models(sys.argv[2])
    elif cmd == "check":
        check(*sys.argv[2:6])
    elif cmd == "hostile":
        hostile(*sys.argv[2:5])
    elif cmd == "mutate":
        mutate(*sys.argv[2:5])
    else:
        raise SystemExit(f"unknown command {cmd}")
