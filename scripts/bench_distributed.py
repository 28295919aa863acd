"""distributed: `tch-prune prune --method l1-unstructured --amount 0.5 --global` of one sharded
f32 checkpoint by 1, 2 and 4 ranks (Gloo over localhost, started as torchrun would), and the
bytes each rank hands to the collectives, for two model sizes with the same tensor count.

The ranks share this machine's cores (and its disk): on a machine with fewer cores than ranks
the wall time shows the protocol's overhead, not a speed-up. The bytes must not grow with the
model: a few histograms of 65,536 counts and one count per tensor of the step.

Run alone: `python scripts/bench_distributed.py` (after `cargo build --release --bin tch-prune`),
or through `make bench` / `BENCH_CASES=distributed`.
BENCH_DIST_SIZES=117M,470M  BENCH_DIST_RANKS=1,2,4  BENCH_CACHE (where the checkpoints live).
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import bench_out_of_core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.environ.get("BENCH_CLI") or os.path.join(ROOT, "target", "release", "tch-prune")
# name: (shards, tensors per shard, entries per tensor): 56 tensors either way.
SIZES = {"117M": (8, 7, 1 << 21), "470M": (8, 7, 1 << 23)}
FLAGS = ["--method", "l1-unstructured", "--amount", "0.5", "--global"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(index, out, ranks, env):
    """Wall time of the whole run (start of the first rank to the end of the last) and rank 0's
    summary line."""
    port = str(free_port())
    start = time.perf_counter()
    procs = []
    for rank in range(ranks):
        rank_env = dict(env)
        if ranks > 1:
            rank_env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(ranks),
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([CLI, "prune", index, "-o", out] + FLAGS, env=rank_env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate() for p in procs]
    wall = time.perf_counter() - start
    for rank, (p, (stdout, stderr)) in enumerate(zip(procs, outs)):
        if p.returncode != 0:
            sys.exit(f"rank {rank} of {ranks} failed: {stderr.strip()}")
    return wall, outs[0][0].strip()


def same_files(a, b):
    names = sorted(os.listdir(a))
    if names != sorted(os.listdir(b)):
        return False
    return all(open(os.path.join(a, n), "rb").read() == open(os.path.join(b, n), "rb").read()
               for n in names)


def measure(env, work, sizes=None, ranks=None):
    sizes = sizes or os.environ.get("BENCH_DIST_SIZES", "117M,470M").split(",")
    ranks = ranks or [int(r) for r in os.environ.get("BENCH_DIST_RANKS", "1,2,4").split(",")]
    lines, records = [], []
    for size in sizes:
        shards, per_shard, numel = SIZES[size]
        folder = os.path.join(bench_out_of_core.cache_dir(), f"dist-{size}-f32")
        index = bench_out_of_core.generate(folder, "F32", shards, per_shard, numel, 0)
        reference = None
        for n in ranks:
            out = os.path.join(work, f"dist-{size}-{n}")
            wall, said = run_ranks(index, out, n, env)
            sent = re.search(r"(\d+) bytes to collectives per rank", said)
            sent = int(sent.group(1)) if sent else 0
            same = "reference" if reference is None else ("same bytes" if same_files(reference, out) else "DIFFERENT BYTES")
            if reference is None:
                reference = out
            else:
                shutil.rmtree(out, ignore_errors=True)
            records.append({"case": "distributed", "size": size, "ranks": n, "wall_s": wall,
                            "bytes_per_rank": sent, "output": same})
            lines.append(f"  {size:>5} {n} rank{'s' if n > 1 else ' '}: {wall:7.2f} s, "
                         f"{sent:>9} bytes to collectives per rank, output {same}")
        shutil.rmtree(reference, ignore_errors=True)
    return records, "\n".join(lines)


def main():
    if not os.path.exists(CLI):
        sys.exit(f"{CLI} is missing: cargo build --release --bin tch-prune")
    os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
    work = tempfile.mkdtemp(prefix="dist-", dir=os.path.join(ROOT, "target"))
    try:
        print(__doc__.splitlines()[0])
        print(f"  {os.cpu_count()} cores on this machine")
        _, text = measure(dict(os.environ), work)
        print(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
