"""`make bench`'s shrink case: channel removal by `tch-prune shrink` beside Torch-Pruning.

For each torchvision model (random init from the seed; BENCH_SHRINK_MODELS=resnet50,mobilenet_v2
by default, any torchvision classifier name works, e.g. resnet18 to try the harness quickly):

1. `make`: the model, scripted and saved (what our CLI reads), and its state dict.
2. ours: `tch-prune shrink model.pt -o ours.pt --amount 0.5 --input-shape 1,3,224,224 --verify
   --json` (per group, L2 group magnitude), the whole process timed.
3. `compare` (one Python process): the same model rebuilt with the same weights (checked equal to
   the scripted file's), pruned by Torch-Pruning 1.6.1's MetaPruner with
   GroupMagnitudeImportance(p=2) (its defaults: mean group reduction, mean normaliser), per-group
   pruning_ratio=0.5, the final classifier ignored, no round_to; then scripted and saved like ours.
   Then, with one harness for all three: parameters, MACs of convolutions and linear layers at
   1x3x224x224 (forward hooks on the nn.Module; ours is loaded into the model's Python class by
   shape, which also checks that both pruned models run the same code), TorchScript file size,
   and CPU latency at batch 8: the three TorchScript files loaded by torch.jit.load in this one
   process, same thread count, 3 warm-up runs each, then BENCH_REPEATS rounds alternating the
   models, median per model.
"""
import json
import os
import subprocess
import sys
import time

MODELS = ["resnet50", "mobilenet_v2"]
SHAPE = (1, 3, 224, 224)
BATCH = 8


def classifier(model):
    """The final classifier layer (kept by both sides: the outputs keep their width)."""
    import torch.nn as nn
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return last


def build(name, seed):
    import torch
    import torchvision
    torch.manual_seed(seed)
    return getattr(torchvision.models, name)(weights=None).eval()


def make(name, seed, work):
    import torch
    model = build(name, seed)
    torch.jit.save(torch.jit.script(model), os.path.join(work, "model.pt"))
    print(json.dumps({"ok": True}))


def macs(model):
    """Multiply-accumulates of convolutions and linear layers for one 1x3x224x224 input (the
    definition `tch-prune shrink` uses)."""
    import torch
    import torch.nn as nn
    total = [0]

    def conv(m, inp, out):
        total[0] += out.numel() * (m.in_channels // m.groups) * m.weight[0, 0].numel()

    def linear(m, inp, out):
        total[0] += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear) for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(torch.zeros(SHAPE))
    for h in hooks:
        h.remove()
    return total[0]


def params(model):
    return sum(p.numel() for p in model.parameters())


def as_module(name, seed, scripted):
    """The model's Python class holding a shrunk TorchScript model's tensors (shapes and channel
    counts set from them; a depthwise conv's groups follow its channels)."""
    import torch
    import torch.nn as nn
    model = build(name, seed)
    state = scripted.state_dict()
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key, t in state.items():
            path, attr = key.rsplit(".", 1)
            getattr(modules[path], attr).data = t.clone()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            depthwise = m.groups > 1 and m.groups == m.in_channels
            m.out_channels = m.weight.shape[0]
            m.in_channels = m.weight.shape[1] * (m.weight.shape[0] if depthwise else m.groups)
            if depthwise:
                m.groups = m.out_channels
        elif isinstance(m, nn.BatchNorm2d):
            m.num_features = m.weight.shape[0]
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
    return model


def latencies(files, threads, repeats):
    """Median ms per batch-8 forward pass of each TorchScript file, measured alternately."""
    import torch
    torch.set_num_threads(threads)
    models = [torch.jit.load(f).eval() for f in files]
    torch.manual_seed(1)
    x = torch.randn(BATCH, *SHAPE[1:])
    times = [[] for _ in models]
    with torch.no_grad():
        for m in models:
            for _ in range(3):
                m(x)
        for _ in range(repeats):
            for m, t in zip(models, times):
                start = time.perf_counter()
                m(x)
                t.append(1e3 * (time.perf_counter() - start))
    return [sorted(t)[len(t) // 2] for t in times]


def compare(name, seed, work, threads, repeats):
    import torch
    import torch_pruning as tp
    from importlib.metadata import version
    torch.set_num_threads(threads)
    files = {side: os.path.join(work, f"{side}.pt") for side in ("model", "ours", "tp")}
    model = build(name, seed)
    scripted = torch.jit.load(files["model"])
    same = all(torch.equal(v, scripted.state_dict()[k]) for k, v in model.state_dict().items())
    if not same:
        sys.exit(f"{name}: the rebuilt model's weights differ from {files['model']}")
    original = {"params": params(model), "macs": macs(model)}

    example = torch.randn(SHAPE)
    started = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5, global_pruning=False, ignored_layers=[classifier(model)])
    pruner.step()
    tp_seconds = time.perf_counter() - started
    torch.jit.save(torch.jit.script(model.eval()), files["tp"])

    ours_scripted = torch.jit.load(files["ours"]).eval()
    ours = as_module(name, seed, ours_scripted).eval()
    x = torch.randn(2, *SHAPE[1:])
    with torch.no_grad():
        ours_error = (ours(x) - ours_scripted(x)).abs().max().item()
        tp_out = torch.jit.load(files["tp"])(x)
    if ours_error > 1e-4 or tuple(tp_out.shape) != (2, 1000):
        sys.exit(f"{name}: a pruned model does not run as expected (ours in its Python class "
                 f"differs by {ours_error:.2e}, Torch-Pruning's output shape {tuple(tp_out.shape)})")
    # Which channels each side kept: tensors equal on both sides (same shape and values).
    theirs = model.state_dict()
    equal = sum(1 for k, v in ours.state_dict().items()
                if v.shape == theirs[k].shape and torch.equal(v, theirs[k]))
    ms = latencies([files["model"], files["ours"], files["tp"]], threads, repeats)
    sides = {"before": original, "ours": {"params": params(ours), "macs": macs(ours)},
             "tp": {"params": params(model), "macs": macs(model)}}
    for (side, rec), latency in zip(sides.items(), ms):
        rec["file_bytes"] = os.path.getsize(files["model" if side == "before" else side])
        rec["latency_ms"] = latency
    sides["tp"]["prune_seconds"] = tp_seconds
    sides["torch_pruning_version"] = version("torch-pruning")
    sides["tensors_equal"] = [equal, len(theirs)]
    print(json.dumps(sides))


def measure(cli, env, seed, work, threads, repeats):
    """Every model of the shrink case: a list of (record, text line)."""
    python = sys.executable
    me = os.path.abspath(__file__)
    names = (os.environ.get("BENCH_SHRINK_MODELS") or ",".join(MODELS)).split(",")
    out = []
    for name in names:
        folder = os.path.join(work, f"shrink-{name}")
        os.makedirs(folder, exist_ok=True)
        record = {"case": "shrink", "model": name, "seed": seed, "threads": threads}
        step = subprocess.run([python, me, "make", name, str(seed), folder], env=env,
                              capture_output=True, text=True)
        if step.returncode != 0:
            record["outcome"] = f"making the model failed: {last_line(step.stderr)}"
            out.append((record, f"shrink {name}: {record['outcome']}"))
            continue
        started = time.perf_counter()
        ours = subprocess.run([cli, "shrink", os.path.join(folder, "model.pt"), "-o",
                               os.path.join(folder, "ours.pt"), "--amount", "0.5",
                               "--input-shape", ",".join(map(str, SHAPE)), "--verify",
                               "--json", "--runs", "1"],
                              env=env, capture_output=True, text=True)
        ours_seconds = time.perf_counter() - started
        if ours.returncode != 0:
            record["outcome"] = f"tch-prune shrink failed: {last_line(ours.stderr)}"
            out.append((record, f"shrink {name}: {record['outcome']}"))
            continue
        cli_report = json.loads(ours.stdout)
        both = subprocess.run([python, me, "compare", name, str(seed), folder, str(threads),
                               str(repeats)], env=env, capture_output=True, text=True)
        if both.returncode != 0:
            record["outcome"] = f"the comparison failed: {last_line(both.stderr)}"
            out.append((record, f"shrink {name}: {record['outcome']}"))
            continue
        record.update(json.loads(both.stdout.strip().splitlines()[-1]))
        record["ours"]["shrink_seconds"] = ours_seconds
        record["ours"]["verify_relative_error"] = cli_report["verify_relative_error"]
        # Our CLI's own counts must be the harness's: the same model, counted twice.
        for key, mine in (("params", "parameters"), ("macs", "macs")):
            for side, when in (("before", "before"), ("ours", "after")):
                if cli_report[f"{mine}_{when}"] != record[side][key]:
                    record["outcome"] = (f"the CLI counts {cli_report[f'{mine}_{when}']} {key} "
                                         f"{when}, the harness {record[side][key]}")
        record.setdefault("outcome", "ok")
        for f in os.listdir(folder):
            os.remove(os.path.join(folder, f))
        os.rmdir(folder)
        out.append((record, text(record)))
    return out


def last_line(s):
    lines = s.strip().splitlines()
    return lines[-1] if lines else ""


def text(r):
    if r["outcome"] != "ok":
        return f"shrink {r['model']}: {r['outcome']}"
    b = r["before"]
    cell = lambda side: (f"params {r[side]['params'] / 1e6:.2f}M ({r[side]['params'] / b['params']:.3f}), "
                         f"MACs {r[side]['macs'] / 1e9:.3f}G ({r[side]['macs'] / b['macs']:.3f}), "
                         f"file {r[side]['file_bytes'] / 2**20:.1f} MiB ({r[side]['file_bytes'] / b['file_bytes']:.3f}), "
                         f"latency {r[side]['latency_ms']:.1f} ms ({r[side]['latency_ms'] / b['latency_ms']:.3f})")
    return (f"shrink {r['model']}: before params {b['params'] / 1e6:.2f}M, MACs {b['macs'] / 1e9:.3f}G, "
            f"file {b['file_bytes'] / 2**20:.1f} MiB, latency {b['latency_ms']:.1f} ms\n"
            f"  tch-prune shrink   {cell('ours')}; {r['ours']['shrink_seconds']:.1f} s (whole CLI, "
            f"--verify included), verify error {r['ours']['verify_relative_error']:.1e}\n"
            f"  Torch-Pruning {r['torch_pruning_version']}  {cell('tp')}; "
            f"{r['tp']['prune_seconds']:.1f} s (MetaPruner built and stepped)\n"
            f"  same channels kept: {r['tensors_equal'][0]} of {r['tensors_equal'][1]} tensors equal on both sides")


if __name__ == "__main__":
    # Subcommands run by measure() in their own processes.
    if sys.argv[1] == "make":
        make(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1] == "compare":
        compare(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    else:
        sys.exit(f"unknown subcommand {sys.argv[1]}: make, compare")
