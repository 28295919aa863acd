"""`make bench-pt2`: `tch-prune prune` on torch.export archives (.pt2), the streaming path
beside the in-memory one (--in-memory), each run's wall time and peak resident memory (the
CLI's own, from wait4), beside Python loading the same archive, pruning it with
torch.nn.utils.prune and saving it again. Models: torchvision resnet50 and vit_b_16, random
init (no download), exported once into BENCH_CACHE (default ~/.cache/tch-prune/bench-pt2).

Run alone on a quiet machine: numbers taken while other builds run are not comparable.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision

CACHE = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache/tch-prune/bench-pt2"))
# TCH_PRUNE_BIN: another build (the dev profile is optimized too).
BIN = Path(os.environ.get("TCH_PRUNE_BIN", Path(__file__).resolve().parent.parent / "target/release/tch-prune"))
FLAGS = ["--method", "l1-unstructured", "--amount", "0.5"]


def archive(name):
    path = CACHE / f"{name}.pt2"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        model = getattr(torchvision.models, name)().eval()
        ep = torch.export.export(model, (torch.randn(1, 3, 224, 224),))
        torch.export.save(ep, str(path))
    return path


def timed(args):
    """Wall seconds and peak RSS (MiB) of one command. The peak is GNU time's (`%M`): a child
    forked from this Python process would count the parent's pages it maps until its exec."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *map(str, args)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - start
    err = proc.stderr.decode().strip().splitlines()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))} failed: {err}")
    return took, int(err[-1]) / 1024


PYTHON_PRUNE = """
import sys, torch
import torch.nn.utils.prune as prune
ep = torch.export.load(sys.argv[1])
sd = ep.state_dict
for name, p in sd.items():
    if isinstance(p, torch.nn.Parameter) and name.endswith("weight") and p.dim() >= 2:
        mask = prune.L1Unstructured(0.5).compute_mask(p.detach(), torch.ones_like(p))
        with torch.no_grad():
            p.mul_(mask)
torch.export.save(ep, sys.argv[2])
"""


def main():
    out = CACHE / "out.pt2"
    for name in ["resnet50", "vit_b_16"]:
        path = archive(name)
        size = path.stat().st_size / 2**20
        rows = [
            ("tch-prune, streamed", [BIN, "prune", path, "-o", out, *FLAGS]),
            ("tch-prune, in memory", [BIN, "prune", path, "-o", out, "--in-memory", *FLAGS]),
            ("PyTorch: load, prune, save", [sys.executable, "-c", PYTHON_PRUNE, path, out]),
        ]
        for label, args in rows:
            runs = [timed(args) for _ in range(3)]
            best = min(r[0] for r in runs)
            peak = max(r[1] for r in runs)
            print(f"{name} ({size:.0f} MiB): {label}: best of 3 {best:.2f} s, peak RSS {peak:.0f} MiB")
    out.unlink(missing_ok=True)


main()
