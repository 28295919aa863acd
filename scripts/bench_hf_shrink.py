"""`make bench-hf`: width pruning of a Hugging Face decoder folder, tch-prune beside Torch-Pruning.

A Llama-shaped folder is made with random weights (BENCH_HF_LAYERS=8, BENCH_HF_HIDDEN=768,
BENCH_HF_INTERMEDIATE=2048, 8 heads, 4 key/value heads, vocabulary 32000; fp32), then shrunk by
25 % of MLP neurons and of head groups (BENCH_HF_AMOUNT) two ways: `tch-prune shrink DIR` on the
checkpoint, and Torch-Pruning 1.6 on the live module (its dependency graph for the MLP groups,
its linear pruning functions for the head groups; its MetaPruner's grouping of attention does
not finish in minutes on these models). One row each for the original and both results:
parameters, weight bytes on disk, the time the pruning took, and CPU tokens per second of a
forward pass over BENCH_HF_TOKENS=128 tokens (batch 1, BENCH_THREADS=2 threads; the median of
BENCH_REPEATS=5 runs after two warm-up runs). Results also go to target/bench/hf_shrink.json.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch
import transformers

ENV = os.environ.get
LAYERS, HIDDEN = int(ENV("BENCH_HF_LAYERS", 8)), int(ENV("BENCH_HF_HIDDEN", 768))
INTER, AMOUNT = int(ENV("BENCH_HF_INTERMEDIATE", 2048)), float(ENV("BENCH_HF_AMOUNT", 0.25))
TOKENS, REPEATS = int(ENV("BENCH_HF_TOKENS", 128)), int(ENV("BENCH_REPEATS", 5))
torch.set_num_threads(int(ENV("BENCH_THREADS", 2)))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
CLI = ENV("BENCH_HF_CLI") or os.path.join(TARGET, "release", "tch-prune")


def weight_bytes(path):
    return sum(os.path.getsize(f) for f in glob.glob(os.path.join(path, "*.safetensors")))


def tokens_per_second(model):
    ids = torch.randint(0, model.config.vocab_size, (1, TOKENS))
    times = []
    with torch.no_grad():
        for i in range(2 + REPEATS):
            start = time.perf_counter()
            model(ids)
            if i >= 2:
                times.append(time.perf_counter() - start)
    times.sort()
    return TOKENS / times[len(times) // 2]


def row(name, path_or_model, seconds):
    model = path_or_model
    size = None
    if isinstance(path_or_model, str):
        size = weight_bytes(path_or_model)
        model = transformers.AutoModelForCausalLM.from_pretrained(path_or_model).eval()
    params = sum(p.numel() for p in model.parameters())
    return {"what": name, "parameters": params, "weight_bytes": size,
            "prune_seconds": seconds, "tokens_per_second": tokens_per_second(model)}


def torch_pruning(path):
    import torch_pruning as tp

    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    model.config.use_cache = False
    cfg = model.config
    d, g = cfg.head_dim, cfg.num_attention_heads // cfg.num_key_value_heads
    start = time.perf_counter()
    ids = torch.randint(0, cfg.vocab_size, (1, 8))
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=ids,
                                                  output_transform=lambda o: o.logits)
    mlp_removed = round(AMOUNT * cfg.intermediate_size)
    kv_removed = round(AMOUNT * cfg.num_key_value_heads)
    with torch.no_grad():
        for layer in model.model.layers:
            m, a = layer.mlp, layer.self_attn
            norm = (m.gate_proj.weight.pow(2).sum(1) + m.up_proj.weight.pow(2).sum(1)
                    + m.down_proj.weight.pow(2).sum(0))
            graph.get_pruning_group(m.gate_proj, tp.prune_linear_out_channels,
                                    idxs=norm.argsort()[:mlp_removed].tolist()).prune()
            heads = torch.stack([
                a.q_proj.weight[h * g * d:(h + 1) * g * d].pow(2).sum()
                + a.k_proj.weight[h * d:(h + 1) * d].pow(2).sum()
                + a.v_proj.weight[h * d:(h + 1) * d].pow(2).sum()
                + a.o_proj.weight[:, h * g * d:(h + 1) * g * d].pow(2).sum()
                for h in range(cfg.num_key_value_heads)])
            gone = heads.argsort()[:kv_removed].tolist()
            q = [r for h in gone for r in range(h * g * d, (h + 1) * g * d)]
            kv = [r for h in gone for r in range(h * d, (h + 1) * d)]
            tp.prune_linear_out_channels(a.q_proj, q)
            tp.prune_linear_out_channels(a.k_proj, kv)
            tp.prune_linear_out_channels(a.v_proj, kv)
            tp.prune_linear_in_channels(a.o_proj, q)
            a.num_key_value_groups = g
    cfg.intermediate_size -= mlp_removed
    cfg.num_key_value_heads -= kv_removed
    cfg.num_attention_heads = cfg.num_key_value_heads * g
    return model, time.perf_counter() - start


def main():
    work = tempfile.mkdtemp(prefix="bench-hf-")
    try:
        run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work):
    cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=HIDDEN, intermediate_size=INTER,
                                   num_hidden_layers=LAYERS, num_attention_heads=8,
                                   num_key_value_heads=4, head_dim=HIDDEN // 8)
    torch.manual_seed(0)
    original = os.path.join(work, "original")
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(original)
    rows = [row("original", original, None)]
    shrunk = os.path.join(work, "tch-prune")
    start = time.perf_counter()
    said = subprocess.run([CLI, "shrink", original, "-o", shrunk, "--amount", str(AMOUNT)],
                          check=True, capture_output=True, text=True).stdout
    print(said.strip())
    rows.append(row("tch-prune shrink", shrunk, time.perf_counter() - start))
    model, seconds = torch_pruning(original)
    rows.append(row("Torch-Pruning", model, seconds))
    print(f"{'':18} {'parameters':>12} {'weights MB':>11} {'prune s':>8} {'tokens/s':>9}")
    for r in rows:
        mb = "" if r["weight_bytes"] is None else f"{r['weight_bytes'] / 1e6:.1f}"
        s = "" if r["prune_seconds"] is None else f"{r['prune_seconds']:.2f}"
        print(f"{r['what']:18} {r['parameters']:>12} {mb:>11} {s:>8} {r['tokens_per_second']:>9.0f}")
    os.makedirs(os.path.join(TARGET, "bench"), exist_ok=True)
    with open(os.path.join(TARGET, "bench", "hf_shrink.json"), "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
