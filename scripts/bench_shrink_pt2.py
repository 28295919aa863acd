"""`make bench-shrink-pt2`: `tch-prune shrink` on torch.export archives beside the same shrink
of the same weights in TorchScript form.

For each torchvision model (random init, seed 0; BENCH_SHRINK_MODELS=resnet50,mobilenet_v2 by
default), exported (torch.export.export, 1x3x224x224) and scripted with the same weights:

1. `tch-prune shrink model.pt2 -o half.pt2 --amount 0.5 --json`, the whole process timed
   (BENCH_REPEATS runs, median): read, analyse, slice, write; nothing runs.
2. `tch-prune shrink model.pt -o half.pt --amount 0.5 --input-shape 1,3,224,224 --runs 1
   --json`, timed the same way: it runs forward (the analysis, the check after the rewrite,
   the latency runs).
3. The two outputs' parameter counts (equal, as tests/cli/shrink_pt2.rs checks), file sizes,
   and the CPU latency of the original and the shrunk exported program
   (`torch.export.load(f).module()` at batch 1, 5 warm-up runs, then BENCH_REPEATS rounds
   alternating the two, median per program), in this one process.

Prints one JSON object per model and a table.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
CLI = os.path.join(TARGET, "release", "tch-prune")
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))


def timed(args):
    times = []
    out = None
    for _ in range(REPEATS):
        start = time.perf_counter()
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        times.append(time.perf_counter() - start)
    return statistics.median(times), json.loads(out)


def latency(a, b, x):
    import torch

    with torch.no_grad():
        # The first runs of an exported program's module are much slower (its graph module is
        # set up): five warm-ups each.
        for _ in range(5):
            a(x)
            b(x)
        ta, tb = [], []
        for _ in range(REPEATS):
            for m, t in ((a, ta), (b, tb)):
                start = time.perf_counter()
                m(x)
                t.append((time.perf_counter() - start) * 1e3)
    return statistics.median(ta), statistics.median(tb)


def main():
    import torch
    import torchvision

    names = os.environ.get("BENCH_SHRINK_MODELS", "resnet50,mobilenet_v2").split(",")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            torch.manual_seed(0)
            m = getattr(torchvision.models, name)(weights=None).eval()
            x = torch.randn(1, 3, 224, 224)
            pt2, pt = f"{d}/{name}.pt2", f"{d}/{name}.pt"
            torch.export.save(torch.export.export(m, (x,)), pt2)
            torch.jit.save(torch.jit.script(m), pt)
            s_pt2, r_pt2 = timed([CLI, "shrink", pt2, "-o", f"{d}/half.pt2", "--amount", "0.5", "--json"])
            s_pt, r_pt = timed([CLI, "shrink", pt, "-o", f"{d}/half.pt", "--amount", "0.5",
                                "--input-shape", "1,3,224,224", "--runs", "1", "--json"])
            before, after = latency(torch.export.load(pt2).module(),
                                    torch.export.load(f"{d}/half.pt2").module(), x)
            row = {
                "model": name,
                "shrink_s_pt2": round(s_pt2, 3),
                "shrink_s_torchscript": round(s_pt, 3),
                "parameters_before": r_pt2["parameters_before"],
                "parameters_after_pt2": r_pt2["parameters_after"],
                "parameters_after_torchscript": r_pt["parameters_after"],
                "file_mb_before": round(r_pt2["file_bytes_before"] / 1e6, 1),
                "file_mb_after": round(r_pt2["file_bytes_after"] / 1e6, 1),
                "latency_ms_before": round(before, 2),
                "latency_ms_after": round(after, 2),
                "threads": torch.get_num_threads(),
            }
            print(json.dumps(row))
            rows.append(row)
    print()
    print("| model | shrink .pt2 s | shrink .pt s | parameters | file MB | exported program ms (batch 1) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['shrink_s_pt2']} | {r['shrink_s_torchscript']} | "
              f"{r['parameters_before']:,} -> {r['parameters_after_pt2']:,} | "
              f"{r['file_mb_before']} -> {r['file_mb_after']} | "
              f"{r['latency_ms_before']} -> {r['latency_ms_after']} |")
    if any(r["parameters_after_pt2"] != r["parameters_after_torchscript"] for r in rows):
        sys.exit("the .pt2 and TorchScript shrinks disagree on parameter counts")


if __name__ == "__main__":
    main()
