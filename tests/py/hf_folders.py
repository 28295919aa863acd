"""Hugging Face model folders for tests/cli/hf.rs, made at test time (random init, tiny configs),
and the checks of what tch-prune wrote from them.

    hf_folders.py make DIR        writes DIR/<family>-<dtype>-<layout> for every family
                                  (llama, llama-tied, qwen2, mistral, gpt2, bert), dtype (fp32,
                                  bf16) and layout (single, sharded), with the files a model
                                  folder carries besides its weights; prints their names
    hf_folders.py check FILE      runs the checks listed in FILE (JSON); prints "ok" per check

Checks: {"kind": "l1", "orig", "out", "amount"}: from_pretrained(out) loads with no warning the
original's loading gave not, reports no missing, unexpected or mismatched weights, every
non-weight file is identical, and every weight equals torch.nn.utils.prune.l1_unstructured of
the original where the default selection of a model folder takes it (two-dimensional weights
but the embedding tables and the output head), the original elsewhere (bf16 ties: any mask
that is a valid L1 mask of the same count); {"kind": "same", "out", "ref"}: the weights of two
folders are equal; {"kind": "nm", "out"}: the 2-D weights other than embeddings keep at most 2
of every 4 entries along dim 1; {"kind": "state", "out", "state"}: the reparametrized state's
<name>_orig * <name>_mask is the output's <name>; {"kind": "loads", "out"}: from_pretrained
loads with no warning.
"""
import glob
import json
import logging
import os
import sys
import warnings

import torch
import torch.nn.utils.prune as prune
import transformers
from safetensors.torch import load_file

FAMILIES = ["llama", "llama-tied", "qwen2", "mistral", "gpt2", "bert"]
CARRIED = {
    "tokenizer_config.json": '{"model_max_length": 64, "tokenizer_class": "PreTrainedTokenizerFast"}\n',
    "tokenizer.json": '{"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}}\n',
    "special_tokens_map.json": '{"eos_token": "a"}\n',
    "README.md": "---\nlicense: mit\n---\n# A tiny test model\n",
    "chat_template.jinja": "{% for m in messages %}{{ m.content }}{% endfor %}\n",
}


def config(family):
    t = transformers
    common = dict(vocab_size=128, hidden_size=96, intermediate_size=128, num_hidden_layers=2)
    if family.startswith("llama"):
        return t.LlamaConfig(**common, num_attention_heads=8, num_key_value_heads=4, head_dim=12,
                             tie_word_embeddings=family == "llama-tied")
    if family == "qwen2":
        return t.Qwen2Config(**common, num_attention_heads=8, num_key_value_heads=4,
                             tie_word_embeddings=False)
    if family == "mistral":
        return t.MistralConfig(**common, num_attention_heads=8, num_key_value_heads=4, head_dim=12,
                               tie_word_embeddings=False)
    if family == "gpt2":
        return t.GPT2Config(vocab_size=128, n_positions=64, n_embd=96, n_layer=2, n_head=8)
    if family == "bert":
        return t.BertConfig(**common, num_attention_heads=8, max_position_embeddings=64)
    raise ValueError(family)


def model_class(cfg):
    if cfg.model_type == "bert":
        return transformers.AutoModel
    return transformers.AutoModelForCausalLM


def make(root):
    for family in FAMILIES:
        for dtype in ["fp32", "bf16"]:
            for layout in ["single", "sharded"]:
                cfg = config(family)
                # The same weights for both layouts: a sharded run is compared with a single one.
                torch.manual_seed(0)
                model = model_class(cfg).from_config(cfg).eval()
                if dtype == "bf16":
                    model = model.to(torch.bfloat16)
                path = os.path.join(root, f"{family}-{dtype}-{layout}")
                shard = "60KB" if layout == "sharded" else "50GB"
                model.save_pretrained(path, max_shard_size=shard)
                for name, text in CARRIED.items():
                    with open(os.path.join(path, name), "w") as f:
                        f.write(text)
                sharded = bool(glob.glob(os.path.join(path, "*.index.json")))
                assert sharded == (layout == "sharded"), path
                print(path)


def weights(path):
    out = {}
    for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        out.update(load_file(f))
    return out


def weight_files(path):
    names = set()
    for f in glob.glob(os.path.join(path, "*.safetensors")) + glob.glob(os.path.join(path, "*.index.json")):
        names.add(os.path.basename(f))
    return names


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def load(path):
    """The model, its loading info, and what loading it logged or warned."""
    cfg = transformers.AutoConfig.from_pretrained(path)
    records = Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(records)
    transformers.logging.set_verbosity_warning()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, info = model_class(cfg).from_pretrained(path, output_loading_info=True)
    finally:
        logger.removeHandler(records)
    said = records.lines + [str(w.message) for w in caught]
    return model, {k: sorted(map(str, v)) for k, v in info.items()}, said


def is_embedding_or_head(name):
    module = name.rsplit(".", 1)[0] if "." in name else ""
    last = module.rsplit(".", 1)[-1]
    return "embed" in last or last in ("wte", "wpe", "shared", "lm_head")


def default_selected(name, t):
    return name.endswith("weight") and t.dim() >= 2 and not is_embedding_or_head(name)


def check_loads(out, orig=None):
    _, info, said = load(out)
    before = set(load(orig)[2]) if orig else set()
    new = [s for s in said if s not in before]
    assert not new, f"{out}: loading warned: {new}"
    assert not any(info.values()), f"{out}: loading info {info}"


def check_carried(orig, out):
    skip = weight_files(orig)
    outs = set(os.listdir(out)) - weight_files(out)
    ins = set(os.listdir(orig)) - skip
    assert ins == outs, f"{out}: carried {sorted(outs)}, expected {sorted(ins)}"
    for name in ins:
        with open(os.path.join(orig, name), "rb") as a, open(os.path.join(out, name), "rb") as b:
            assert a.read() == b.read(), f"{out}/{name} differs from the original"


def check_l1(orig, out, amount):
    check_loads(out, orig)
    check_carried(orig, out)
    before, after = weights(orig), weights(out)
    assert before.keys() == after.keys(), f"{out}: tensors {sorted(after)} vs {sorted(before)}"
    pruned = 0
    for name, w in before.items():
        got = after[name]
        if not default_selected(name, w):
            assert torch.equal(got, w), f"{out}: {name} changed but is not selected"
            continue
        pruned += 1
        holder = torch.nn.Module()
        holder.weight = torch.nn.Parameter(w.clone())
        prune.l1_unstructured(holder, "weight", amount)
        want = holder.weight.detach()
        if torch.equal(got, want):
            continue
        # Ties at the threshold (bf16 holds few distinct magnitudes): a valid L1 mask of the
        # same count, the kept values untouched.
        mag = w.abs().float()
        cut_got, cut_want = got == 0, want == 0
        assert w.dtype == torch.bfloat16, f"{out}: {name} differs from torch.nn.utils.prune"
        assert cut_got.sum() == cut_want.sum(), f"{out}: {name} prunes another count"
        assert mag[cut_got].max() <= mag[~cut_got].min(), f"{out}: {name} is no L1 mask"
        assert torch.equal(got[~cut_got], w[~cut_got]), f"{out}: {name} kept values changed"
    assert pruned > 0


def check_same(out, ref):
    a, b = weights(out), weights(ref)
    assert a.keys() == b.keys(), f"{out} vs {ref}: other tensors"
    for name in a:
        assert torch.equal(a[name], b[name]), f"{out} vs {ref}: {name} differs"


def check_nm(out):
    for name, w in weights(out).items():
        if default_selected(name, w) and w.shape[1] % 4 == 0:
            blocks = (w != 0).reshape(w.shape[0], -1, 4).sum(-1)
            assert blocks.max() <= 2, f"{out}: {name} is not 2:4"


def check_state(out, state):
    after, s = weights(out), load_file(state)
    masks = [n[: -len("_mask")] for n in s if n.endswith("_mask")]
    assert masks, f"{state}: no masks"
    for base in masks:
        got = s[base + "_orig"] * s[base + "_mask"]
        assert torch.equal(got, after[base]), f"{state}: {base}_orig * {base}_mask != the output"


def kept_rows(small, big):
    """The indices of `big`'s rows that `small` holds, in order (each row found by value)."""
    index = {tuple(r.float().tolist()): i for i, r in enumerate(big)}
    return [index[tuple(r.float().tolist())] for r in small]


def check_shrink(orig, out, tp_params):
    """The shrunk folder loads with no warning, carries every file but config.json unchanged,
    and its logits equal the original's with the removed neurons and heads zeroed; its
    parameter count equals Torch-Pruning's at the same widths (tp_params)."""
    check_loads(out, orig)
    skip = weight_files(orig) | {"config.json"}
    for name in set(os.listdir(orig)) - skip:
        with open(os.path.join(orig, name), "rb") as a, open(os.path.join(out, name), "rb") as b:
            assert a.read() == b.read(), f"{out}/{name} differs"
    big, _, _ = load(orig)
    small, _, _ = load(out)
    cfg, new = big.config, small.config
    d = cfg.head_dim if getattr(cfg, "head_dim", None) else cfg.hidden_size // cfg.num_attention_heads
    g = cfg.num_attention_heads // cfg.num_key_value_heads
    with torch.no_grad():
        for lb, ls in zip(big.model.layers, small.model.layers):
            mlp = kept_rows(ls.mlp.gate_proj.weight, lb.mlp.gate_proj.weight)
            gone = [i for i in range(cfg.intermediate_size) if i not in mlp]
            lb.mlp.gate_proj.weight[gone] = 0
            lb.mlp.up_proj.weight[gone] = 0
            lb.mlp.down_proj.weight[:, gone] = 0
            kv_rows = kept_rows(ls.self_attn.k_proj.weight, lb.self_attn.k_proj.weight)
            kv = sorted({r // d for r in kv_rows})
            assert len(kv) * d == len(kv_rows)
            gone = [h for h in range(cfg.num_key_value_heads) if h not in kv]
            for h in gone:
                q = slice(h * g * d, (h + 1) * g * d)
                k = slice(h * d, (h + 1) * d)
                a = lb.self_attn
                a.q_proj.weight[q] = 0
                a.k_proj.weight[k] = 0
                a.v_proj.weight[k] = 0
                a.o_proj.weight[:, q] = 0
                for proj, sl in ((a.q_proj, q), (a.k_proj, k), (a.v_proj, k)):
                    if proj.bias is not None:
                        proj.bias[sl] = 0
        torch.manual_seed(1)
        ids = torch.randint(0, cfg.vocab_size, (2, 16))
        want = big(ids).logits.float()
        got = small(ids).logits.float()
    tol = 1e-4 if big.dtype == torch.float32 else 2e-2
    err = (got - want).abs().max().item() / max(want.abs().max().item(), 1e-12)
    assert err <= tol, f"{out}: logits differ from the zeroed original's by {err:.3e} (relative)"
    count = sum(p.numel() for p in small.parameters())
    assert count == tp_params, f"{out}: {count} parameters, Torch-Pruning gives {tp_params}"
    print("shrunk", out, "relative logit error", f"{err:.2e}", "parameters", count)


def check_unchanged(orig, out):
    """The shrunk model's logits equal the original's, unzeroed (what it removed added nothing)."""
    big, _, _ = load(orig)
    small, _, _ = load(out)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in big.parameters())
    with torch.no_grad():
        ids = torch.randint(0, big.config.vocab_size, (2, 16))
        want, got = big(ids).logits.float(), small(ids).logits.float()
    err = (got - want).abs().max().item() / max(want.abs().max().item(), 1e-12)
    assert err <= 1e-4, f"{out}: logits changed by {err:.3e} (relative)"


def torch_pruning_params(orig, mlp_removed, kv_removed):
    """Torch-Pruning 1.6's parameter count for the same widths on the same weights, as
    prune_llm.py prunes a decoder: the MLP groups through its dependency graph (gate/up rows
    with down columns), the heads with its linear-layer pruning functions on q/k/v rows and o
    columns (its MetaPruner's grouping of attention does not finish in minutes on this model).
    The lowest-norm groups, as its default importance ranks them."""
    import torch_pruning as tp

    model, _, _ = load(orig)
    model.config.use_cache = False
    cfg = model.config
    d = cfg.head_dim if getattr(cfg, "head_dim", None) else cfg.hidden_size // cfg.num_attention_heads
    g = cfg.num_attention_heads // cfg.num_key_value_heads
    ids = torch.randint(0, cfg.vocab_size, (1, 8))
    graph = tp.DependencyGraph().build_dependency(
        model.float(), example_inputs=ids, output_transform=lambda o: o.logits)
    with torch.no_grad():
        for layer in model.model.layers:
            m = layer.mlp
            norm = (m.gate_proj.weight.pow(2).sum(1) + m.up_proj.weight.pow(2).sum(1)
                    + m.down_proj.weight.pow(2).sum(0))
            idxs = norm.argsort()[:mlp_removed].tolist()
            graph.get_pruning_group(m.gate_proj, tp.prune_linear_out_channels, idxs=idxs).prune()
            a = layer.self_attn
            heads = torch.zeros(cfg.num_key_value_heads)
            for h in range(cfg.num_key_value_heads):
                q, k = slice(h * g * d, (h + 1) * g * d), slice(h * d, (h + 1) * d)
                heads[h] = (a.q_proj.weight[q].pow(2).sum() + a.k_proj.weight[k].pow(2).sum()
                            + a.v_proj.weight[k].pow(2).sum() + a.o_proj.weight[:, q].pow(2).sum())
            gone = heads.argsort()[:kv_removed].tolist()
            q_rows = [r for h in gone for r in range(h * g * d, (h + 1) * g * d)]
            kv_rows = [r for h in gone for r in range(h * d, (h + 1) * d)]
            tp.prune_linear_out_channels(a.q_proj, q_rows)
            tp.prune_linear_out_channels(a.k_proj, kv_rows)
            tp.prune_linear_out_channels(a.v_proj, kv_rows)
            tp.prune_linear_in_channels(a.o_proj, q_rows)
    return sum(p.numel() for p in model.parameters())


def main():
    if sys.argv[1] == "make":
        make(sys.argv[2])
        return
    with open(sys.argv[2]) as f:
        checks = json.load(f)
    for c in checks:
        kind = c["kind"]
        if kind == "l1":
            check_l1(c["orig"], c["out"], c["amount"])
        elif kind == "same":
            check_same(c["out"], c["ref"])
        elif kind == "nm":
            check_nm(c["out"])
        elif kind == "state":
            check_state(c["out"], c["state"])
        elif kind == "shrink":
            tp_params = torch_pruning_params(c["orig"], c["mlp_removed"], c["kv_removed"])
            check_shrink(c["orig"], c["out"], tp_params)
        elif kind == "unchanged":
            check_unchanged(c["orig"], c["out"])
        elif kind == "loads":
            check_loads(c["out"], c.get("orig"))
        else:
            raise ValueError(kind)
        print("ok", kind, c["out"])


if __name__ == "__main__":
    main()
