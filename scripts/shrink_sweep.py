"""Channel removal over torchvision's classification models: every one that `torch.jit.script`s
(random init, eval mode, randomised batch-norm statistics) is saved, shrunk by `tch-prune shrink
--amount 0.5 --verify`, and the result loaded and run by PyTorch. Prints one row per model
(parameters before -> after, groups shrunk / blocked, time, or the one-line error) and writes
them as JSON.

    python scripts/shrink_sweep.py --bin target/release/tch-prune --out /tmp/sweep \
        [--models resnet18,shufflenet_v2_x0_5] [--max-params 100e6] [--size 96]

A model whose shrink fails, whose output differs from the group-zeroed original, or that
PyTorch cannot load afterwards is a failure (exit status 1). Models above --max-params are
skipped (listed as such): the sweep is about graphs, not size.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torchvision


def classification_models():
    names = torchvision.models.list_models(module=torchvision.models)
    return sorted(names)


def size_of(name, size):
    # ViT and MaxViT fix their input size (224) in their code.
    return 224 if name.startswith(("vit_", "maxvit")) else size


def make(name, path, size, max_params):
    torch.manual_seed(0)
    kwargs = {}
    if name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = False
    m = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            if mod.bias is not None:
                mod.bias.data.uniform_(-0.2, 0.2)
    # Zero-initialised heads (ViT, ...) would make every output equal: random weights instead.
    for p in m.parameters():
        if p.dim() >= 2 and p.abs().max() == 0:
            torch.nn.init.normal_(p, std=0.02)
    params = sum(p.numel() for p in m.parameters())
    if params > max_params:
        return params
    scripted = torch.jit.script(m)
    scripted(torch.randn(1, 3, size, size))
    torch.jit.save(scripted, path)
    return params


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default="")
    ap.add_argument("--max-params", type=float, default=100e6)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--timeout", type=int, default=900)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    names = args.models.split(",") if args.models else classification_models()
    rows = []
    failed = False
    for name in names:
        row = {"model": name}
        src = os.path.join(args.out, f"{name}.pt")
        dst = os.path.join(args.out, f"{name}-shrunk.pt")
        try:
            params = make(name, src, size_of(name, args.size), args.max_params)
        except Exception as e:  # noqa: BLE001 - a model that does not script is a row too
            row["status"] = "not scripted"
            row["error"] = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            rows.append(row)
            print(f"{name:28} not scripted: {row['error']}", flush=True)
            continue
        row["params_before"] = params
        if params > args.max_params:
            row["status"] = "skipped (size)"
            rows.append(row)
            print(f"{name:28} skipped: {params} parameters", flush=True)
            continue
        size = size_of(name, args.size)
        shape = f"1,3,{size},{size}"
        start = time.time()
        try:
            p = subprocess.run(
                [args.bin, "shrink", src, "-o", dst, "--amount", "0.5", "--verify", "--json",
                 "--runs", "1", "--input-shape", shape],
                capture_output=True, text=True, timeout=args.timeout)
            code, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired:
            code, out, err = -1, "", "timed out"
        row["seconds"] = round(time.time() - start, 1)
        if code != 0:
            failed = True
            row["status"] = "error"
            lines = [l for l in err.strip().splitlines() if l.strip()]
            row["error"] = lines[-1] if lines else f"exit status {code}"
            row["error_lines"] = len(lines)
        else:
            rep = json.loads(out)
            shrunk = [g for g in rep["groups"] if g["after"] < g["before"]]
            blocked = [g for g in rep["groups"] if g["blocked"]]
            row.update(status="ok", params_after=rep["parameters_after"],
                       macs_before=rep["macs_before"], macs_after=rep["macs_after"],
                       groups=len(rep["groups"]), shrunk=len(shrunk), blocked=len(blocked),
                       error_vs_zeroed=rep["verify_relative_error"],
                       reasons=sorted({b for g in blocked for b in g["blocked"]}))
            try:
                y = torch.jit.load(dst)(torch.randn(2, 3, size, size))
                n = sum(p.numel() for p in torch.jit.load(dst).parameters())
                if n != rep["parameters_after"]:
                    raise ValueError(f"PyTorch counts {n} parameters, shrink said {rep['parameters_after']}")
                row["pytorch_output"] = list(y.shape) if torch.is_tensor(y) else type(y).__name__
            except Exception as e:  # noqa: BLE001
                failed = True
                row["status"] = "pytorch cannot run the output"
                row["error"] = str(e).splitlines()[0][:300]
        for f in (src, dst):
            if os.path.exists(f):
                os.remove(f)
        rows.append(row)
        if row["status"] == "ok":
            print(f"{name:28} {row['params_before']:>10} -> {row['params_after']:>10}  "
                  f"groups {row['shrunk']:>3} shrunk / {row['blocked']:>3} blocked of {row['groups']:>3}  "
                  f"err {row['error_vs_zeroed']:.1e}  {row['seconds']:>6}s", flush=True)
        else:
            print(f"{name:28} {row['status']}: {row.get('error')}", flush=True)
    with open(os.path.join(args.out, "sweep.json"), "w") as f:
        json.dump(rows, f, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
