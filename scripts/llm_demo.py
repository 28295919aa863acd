"""`make llm-demo`: Wanda and SparseGPT against magnitude on a small causal language model.

A byte-level GPT-2-shaped model (1.7 M parameters: 8 blocks, width 128) is trained for about ten
minutes on Python's standard-library sources (on every machine that has Python), files held out
for evaluation.
It is cached per user (~/.cache/tch-prune/llm-demo-<hash of this script>/), like libtorch, so
that a second run only prunes and measures. Then, with `tch-prune prune` on its TorchScript
file, its linear layers are pruned to 50 % and 2:4 by magnitude (l1-unstructured, nm), Wanda and
SparseGPT (block by block, as the references do), and the held-out perplexity of each model is
printed; the same calibration and pruning are timed with the references' Python code
(tests/py/calibrated.py) on the same model, in the same run.

    llm_demo.py TCH_PRUNE_BINARY [--json OUT.json]

Environment: LLM_DEMO_STEPS (training steps, default 3000), LLM_DEMO_THREADS (torch threads for
training and the references, default: what torch picks).
"""
import hashlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("reference", HERE.parent / "tests" / "py" / "calibrated.py")
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)

CTX, HIDDEN, HEADS, LAYERS, VOCAB = 128, 128, 4, 8, 256
BOS = 0  # the byte every window starts with
BATCH, LR, GAIN_LR = 16, 3e-3, 30.0
CALIBRATION_SAMPLES, EVAL_SAMPLES = 64, 256
PRUNED = "blocks.*.attn.*.weight,blocks.*.mlp.*.weight"


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, HIDDEN)
        self.wpe = nn.Embedding(CTX, HIDDEN)
        self.blocks = nn.ModuleList([ref.Gpt2Block(HIDDEN, HEADS) for _ in range(LAYERS)])
        self.ln_f = nn.LayerNorm(HIDDEN)
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)
        # GPT-2's embedding initialisation (nn.Embedding's default is N(0, 1)).
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.01)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def corpus():
    """The standard library's .py files as bytes: every 10th file (sorted by path) held out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    train, held_out = bytearray(), bytearray()
    for i, p in enumerate(files):
        data = p.read_bytes()
        (held_out if i % 10 == 0 else train).extend(data)
    return torch.frombuffer(train, dtype=torch.uint8).long(), torch.frombuffer(held_out, dtype=torch.uint8).long()


def windows(data, count, seed):
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - CTX - 1, (count,), generator=g)
    return with_bos(torch.stack([data[s:s + CTX + 1] for s in starts.tolist()]))


def with_bos(batch):
    """Every window starts with the same byte, as LLMs' sequences start with a BOS token: the
    position where large models grow their "attention sink" activations."""
    batch[:, 0] = BOS
    return batch


def train(cache, steps):
    train_data, held_out = corpus()
    torch.manual_seed(0)
    model = TinyLM()
    # The LayerNorm gains learn at GAIN_LR times the rate, without weight decay: in a model this
    # small and this briefly trained they otherwise stay near 1, and so do the input features'
    # norms, which is where Wanda's score and magnitude differ (BENCHMARKS.md).
    gains = {id(m.weight) for m in model.modules() if isinstance(m, nn.LayerNorm)}
    opt = torch.optim.AdamW([
        {"params": [p for p in model.parameters() if id(p) not in gains], "weight_decay": 0.01, "mult": 1.0},
        {"params": [p for p in model.parameters() if id(p) in gains], "weight_decay": 0.0, "mult": GAIN_LR},
    ], lr=LR)
    g = torch.Generator().manual_seed(1)
    start = time.time()
    for step in range(steps):
        lr = LR * min(1.0, (step + 1) / 50) * (0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr * group["mult"]
        starts = torch.randint(0, len(train_data) - CTX - 1, (BATCH,), generator=g)
        batch = with_bos(torch.stack([train_data[s:s + CTX + 1] for s in starts.tolist()]))
        logits = model(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  step {step}/{steps}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    model.eval()
    torch.jit.script(model).save(str(cache / "model.pt"))
    calibration = windows(train_data, CALIBRATION_SAMPLES, 2)[:, :-1].contiguous()
    save_file({"input": calibration}, str(cache / "calibration.safetensors"))
    save_file({"eval": windows(held_out, EVAL_SAMPLES, 3).contiguous()}, str(cache / "eval.safetensors"))
    (cache / "trained.json").write_text(json.dumps({"steps": steps, "seconds": time.time() - start,
                                                    "parameters": sum(p.numel() for p in model.parameters())}))


@torch.no_grad()
def perplexity(model, eval_windows):
    losses = []
    for chunk in eval_windows.split(32):
        logits = model(chunk[:, :-1])
        losses.append(nn.functional.cross_entropy(logits.reshape(-1, VOCAB), chunk[:, 1:].reshape(-1), reduction="sum"))
    return math.exp(torch.stack(losses).sum().item() / (eval_windows.shape[0] * CTX))


@torch.no_grad()
def reference_prune(model, calibration, method, sparsity, n, m):
    """The references' block-by-block loop (prune_wanda / opt_sequential) on the model's
    blocks, the embeddings computed first as their Catcher does. Returns (total seconds,
    seconds in the per-layer selection/solve)."""
    start = time.time()
    inps = torch.stack([model.wte(c.unsqueeze(0))[0] + model.wpe(torch.arange(CTX)) for c in calibration])
    outs = torch.zeros_like(inps)
    solve = 0.0
    for layer in model.blocks:
        subset = ref.find_layers(layer)
        wrapped = {name: (ref.WrappedGPT if method == "wanda" else ref.SparseGPT)(subset[name]) for name in subset}

        def add_batch(name):
            def tmp(_, inp, out):
                wrapped[name].add_batch(inp[0].data, out.data)
            return tmp
        handles = [subset[name].register_forward_hook(add_batch(name)) for name in wrapped]
        for j in range(inps.shape[0]):
            outs[j] = layer(inps[j].unsqueeze(0))[0]
        for h in handles:
            h.remove()
        for name in subset:
            tick = time.time()
            if method == "wanda":
                ref.wanda_select(subset, wrapped, name, sparsity, n, m)
            else:
                wrapped[name].fasterprune(sparsity, prunen=n, prunem=m, percdamp=.01, blocksize=128)
                wrapped[name].free()
            solve += time.time() - tick
        for j in range(inps.shape[0]):
            outs[j] = layer(inps[j].unsqueeze(0))[0]
        inps, outs = outs, inps
    return time.time() - start, solve


def main():
    binary = sys.argv[1]
    out_json = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    threads = os.environ.get("LLM_DEMO_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    steps = int(os.environ.get("LLM_DEMO_STEPS", "3000"))
    digest = hashlib.sha256(Path(__file__).read_bytes() + str(steps).encode()).hexdigest()[:12]
    cache = Path.home() / ".cache" / "tch-prune" / f"llm-demo-{digest}"
    if not (cache / "trained.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"training the model ({steps} steps; cached in {cache})", flush=True)
        train(cache, steps)
    trained = json.loads((cache / "trained.json").read_text())
    print(f"model: {trained['parameters']:,} parameters, {trained['steps']} steps ({trained['seconds']:.0f} s of training); cache {cache}")

    from safetensors.torch import load_file
    eval_windows = load_file(str(cache / "eval.safetensors"))["eval"]
    calibration = load_file(str(cache / "calibration.safetensors"))["input"]
    dense = torch.jit.load(str(cache / "model.pt"))
    results = {"dense": {"ppl": perplexity(dense, eval_windows)}}
    print(f"dense: perplexity {results['dense']['ppl']:.3f}", flush=True)

    runs = [
        ("magnitude", "0.5", ["--method", "l1-unstructured", "--amount", "0.5"]),
        ("magnitude", "2:4", ["--method", "nm", "--pattern", "2:4"]),
    ]
    for method in ("wanda", "sparsegpt"):
        for label, flag in (("0.5", ["--amount", "0.5"]), ("2:4", ["--pattern", "2:4"])):
            runs.append((method, label, ["--method", method, *flag, "--calibration", str(cache / "calibration.safetensors"),
                                         "--sequential", "--batch-size", "1", "--json"]))
    for method, label, flags in runs:
        out = cache / f"{method}-{label.replace(':', '-')}.pt"
        tick = time.time()
        run = subprocess.run([binary, "prune", str(cache / "model.pt"), "-o", str(out), "--params", PRUNED, *flags],
                             capture_output=True, text=True)
        seconds = time.time() - tick
        if run.returncode != 0:
            sys.exit(f"tch-prune failed: {run.stderr}")
        entry = {"ppl": perplexity(torch.jit.load(str(out)), eval_windows), "tch_prune_seconds": seconds}
        if "--json" in flags:
            layers = json.loads(run.stdout)["layers"]
            entry["tch_prune_solve_seconds"] = sum(layer["seconds"] for layer in layers)
            # The references' code, same model, same calibration, same order, in this run.
            reference_model = torch.jit.load(str(cache / "model.pt"))
            model = TinyLM()
            model.load_state_dict(reference_model.state_dict())
            model.eval()
            n, m = (2, 4) if label == "2:4" else (0, 0)
            sparsity = 0.5 if label == "0.5" else 0.0
            total, solve = reference_prune(model, calibration, method, sparsity, n, m)
            entry.update({"reference_seconds": total, "reference_solve_seconds": solve,
                          "reference_ppl": perplexity(model, eval_windows)})
        results[f"{method} {label}"] = entry
        line = f"{method} {label}: perplexity {entry['ppl']:.3f}, tch-prune {seconds:.1f} s"
        if "reference_seconds" in entry:
            line += (f" (selection/solve {entry['tch_prune_solve_seconds']:.2f} s); reference Python "
                     f"{entry['reference_seconds']:.1f} s (selection/solve {entry['reference_solve_seconds']:.2f} s), "
                     f"its perplexity {entry['reference_ppl']:.3f}")
        print(line, flush=True)

    dense_ppl = results["dense"]["ppl"]
    print("\n| method | 50 % | 2:4 |\n|---|---|---|")
    print(f"| dense | {dense_ppl:.3f} | {dense_ppl:.3f} |")
    for method in ("magnitude", "wanda", "sparsegpt"):
        print(f"| {method} | {results[f'{method} 0.5']['ppl']:.3f} | {results[f'{method} 2:4']['ppl']:.3f} |")
    if out_json:
        Path(out_json).write_text(json.dumps({"trained": trained, "results": results}, indent=2))


if __name__ == "__main__":
    main()
