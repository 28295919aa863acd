"""`make bench`: the crate against PyTorch's own pruning, side by side.

Every measurement runs in its own process (examples/bench.rs for the crate, scripts/bench_torch.py
for PyTorch, same libtorch, same thread count), so each peak resident set size is that process's
own and an out-of-memory kill ends one measurement, not the benchmark. Both sides build
bit-identical weights from the same seed (checked first), each writes its masks as packed bits,
and the masks are compared. One line per case; everything also goes to target/bench/results.json.

  BENCH_SIZES=99M,470M   only these sizes of each case; a size outside the standard four
                         (10M, 50M) runs every case at it instead (to try the harness quickly)
  BENCH_CASES=l1,global  only these cases (out-of-core, out-of-core-bf16, out-of-core-machine: see
                         scripts/bench_out_of_core.py; BENCH_CACHE, BENCH_KEEP_CACHE;
                         shrink: tch-prune shrink beside Torch-Pruning, see
                         scripts/bench_shrink.py; BENCH_SHRINK_MODELS;
                         distributed: the CLI on 1, 2 and 4 ranks, see
                         scripts/bench_distributed.py)
  BENCH_THREADS=2, BENCH_REPEATS=5, BENCH_SEED=0
(or --sizes, --cases, --threads, --repeats, --seed).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

import bench_distributed
import bench_out_of_core
import bench_shrink

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "target", "bench")
CRATE = os.path.join(ROOT, "target", "release", "examples", "bench")
# BENCH_CLI: another build of the CLI (e.g. target/debug/tch-prune where no release build fits).
CLI = os.environ.get("BENCH_CLI") or os.path.join(ROOT, "target", "release", "tch-prune")
TORCH = [sys.executable, os.path.join(ROOT, "scripts", "bench_torch.py")]

# name: (d, blocks). A block is q, k, v, o (d×d), ff1 (4d×d), ff2 (d×4d), with biases:
# 12·d² + 9·d parameters.
SIZES = {"10M": (256, 13), "50M": (512, 16),
         "99M": (768, 14), "470M": (1280, 24), "805M": (2048, 16), "2B": (2048, 40)}
STANDARD = ["99M", "470M", "805M", "2B"]

# For the repeated forward and training steps, on both sides: glibc otherwise decides from the
# allocation history (here, what pruning allocated and freed) whether each step's activations
# come from reused heap memory or from fresh pages: at 10M parameters that moved a step's time
# by up to 40 % (crate) and 70 % (PyTorch), far more than the cost being measured.
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}

# (case, what both sides do, standard sizes)
CASES = [
    ("l1", "l1_unstructured(0.5) on every weight, then remove", ["99M"]),
    ("ln", "ln_structured(0.5, n=2, dim=0) on every weight, then remove", ["99M"]),
    ("global", "global_unstructured(L1Unstructured, 0.5) over all weights, then remove", STANDARD),
    ("forward", "no-grad forward, batch 8 × seq 128, pruned vs unpruned (median)", ["99M"]),
    ("train", "SGD step (forward, backward, update) with every weight pruned (median)", ["99M"]),
    ("cli", "tch-prune prune --method l1-unstructured --amount 0.5 --global, vs a script", ["470M"]),
    ("cli-l1", "tch-prune prune --method l1-unstructured --amount 0.5 (per tensor), vs a script", ["470M"]),
    ("cli-ln", "tch-prune prune --method ln-structured --amount 0.5 --n 2 --dim 0, vs a script", ["470M"]),
    ("cli-nm", "tch-prune prune --method nm --pattern 2:4, vs a script (topk per block, custom_from_mask)", ["470M"]),
    ("bool-global", "global, the crate with Pruner::with_bool_masks", ["99M", "2B"]),
    ("l1-at-once", "l1, the crate with Pruner::prune_and_remove (in place)", ["99M"]),
    ("ln-at-once", "ln, the crate with Pruner::prune_and_remove (in place)", ["99M"]),
    ("global-at-once", "global, the crate with global_unstructured_and_remove", ["99M", "470M", "2B"]),
]
# The CLI cases: the command's method flags, bench_torch.py's name for the same pruning, and the
# issue's goals (speed-up over PyTorch's script; peak RssAnon as a share of the file, if any).
CLI_CASES = {
    "cli": (["--method", "l1-unstructured", "--amount", "0.5", "--global"], "global", 20, 0.05),
    "cli-l1": (["--method", "l1-unstructured", "--amount", "0.5"], "l1", 20, None),
    "cli-ln": (["--method", "ln-structured", "--amount", "0.5", "--n", "2", "--dim", "0"], "ln", 20, None),
    "cli-nm": (["--method", "nm", "--pattern", "2:4"], "nm", 20, None),
}
# The disk's bound on a CLI case (issue 26): each streamed case within this many times the
# faster of `cp` + sync and `dd oflag=direct` of its input, in the same run.
DISK_GOAL = 1.3
# PyTorch's name for a case where it differs: PyTorch has no bool masks, so that case is compared
# with its plain global pruning; a CLI case with bench_torch.py's pruning. (For the at-once cases,
# PyTorch's side prunes then removes, and both sides compare final weights.)
TORCH_CASE = {"bool-global": "global", **{case: c[1] for case, c in CLI_CASES.items()}}


def params_of(size):
    d, blocks = SIZES[size]
    return blocks * (12 * d * d + 9 * d)


def oom_kills():
    """The kernel's count of OOM kills so far (None where /proc/vmstat does not say)."""
    try:
        with open("/proc/vmstat") as f:
            return next((int(l.split()[1]) for l in f if l.startswith("oom_kill ")), None)
    except OSError:
        return None


# Starts the measured command from a small, fresh process and reports its exit status, peak RSS
# and wall time. A child's ru_maxrss starts from the memory of the process it was forked from
# (and survives exec), so a command started by this driver directly could report the driver's
# peak instead of its own when its own is smaller.
LAUNCHER = """
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    # If memory runs out, the kernel should kill this measurement, not someone else's process.
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")
    os.execvp(sys.argv[2], sys.argv[2:])
# Peak anonymous memory (RssAnon: heap, not the page cache of files read or mapped), sampled.
anon = 0
while True:
    done, status, usage = os.wait4(pid, os.WNOHANG)
    if done:
        break
    try:
        with open(f"/proc/{pid}/status") as f:
            for l in f:
                if l.startswith("RssAnon:"):
                    anon = max(anon, int(l.split()[1]))
    except OSError:
        pass
    time.sleep(0.005)
with open(sys.argv[1], "w") as f:
    f.write(f"{status} {usage.ru_maxrss} {time.perf_counter() - start} {anon}")
"""


def run(cmd, env):
    """Runs one measurement process. Returns its outcome ("ok", "killed (out of memory)", ...),
    wall time, peak RSS of the whole process, and the fields of its JSON line."""
    before = oom_kills()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as report:
        launched = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, report.name] + cmd,
                                  stdout=out, stderr=err, env=env)
        out.seek(0)
        err.seek(0)
        lines = out.read().decode(errors="replace").strip().splitlines()
        stderr = err.read().decode(errors="replace").strip().splitlines()
        fields = report.read().split()
    if launched.returncode != 0 or len(fields) != 4:
        return {"outcome": f"launcher failed ({launched.returncode})", "exit": None}
    status, maxrss_kb, wall, anon_kb = int(fields[0]), int(fields[1]), float(fields[2]), int(fields[3])
    code = os.waitstatus_to_exitcode(status)
    result = {"wall_seconds": wall, "process_peak_bytes": maxrss_kb * 1024,
              "process_peak_anon_bytes": anon_kb * 1024, "exit": code}
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        after = oom_kills()
        if sig == signal.SIGKILL and before is not None and after is not None and after > before:
            result["outcome"] = "killed (out of memory)"
        else:
            result["outcome"] = f"killed ({signal.Signals(sig).name})"
    elif code != 0:
        result["outcome"] = f"failed (exit {code}): {stderr[-1] if stderr else ''}"
    else:
        result["outcome"] = "ok"
        if lines and lines[-1].startswith("{"):
            result.update(json.loads(lines[-1]))
    return result


def check_same_weights(env, seed):
    """Both sides must build bit-identical weights, or comparing their masks means nothing."""
    d, blocks = SIZES["10M"]
    args = ["checksum", str(d), str(blocks), str(seed)]
    crate, torch = run([CRATE] + args, env), run(TORCH + args, env)
    if crate.get("checksums") is None or crate.get("checksums") != torch.get("checksums"):
        sys.exit(f"the crate and PyTorch build different weights from seed {seed}: "
                 f"{crate['outcome']}, {torch['outcome']}")
    print(f"PyTorch {torch['torch_version']}; weights: bit-identical on both sides "
          f"(checksums of all {len(crate['checksums'])} "
          f"tensors, {crate['params']:,} parameters, seed {seed})")


def bits_differing(a, b):
    """Number of differing bits of two packed-bit files, read in chunks."""
    differ = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 24), fb.read(1 << 24)
            if len(x) != len(y):
                raise ValueError(f"{a} and {b} differ in length")
            if not x:
                return differ
            differ += int(np.bitwise_count(np.frombuffer(x, np.uint8) ^ np.frombuffer(y, np.uint8)).sum())


def zero_bits(model_file, bits_file):
    """The mask of a pruned model file (1 where the weight is not zero), in packed bits, for the
    CLI case where the outputs are plain pruned weights. Sorted names are the layer order."""
    from safetensors import safe_open
    with safe_open(model_file, framework="np") as f, open(bits_file, "wb") as out:
        for name in sorted(n for n in f.keys() if n.endswith("weight")):
            out.write(np.packbits(f.get_tensor(name).reshape(-1) != 0).tobytes())


def compare_masks(case, size, seed, crate_bits, torch_bits, env):
    """"identical", or how many entries differ and whether they all tie with the threshold
    (the crate's documented tie rule may break ties unlike topk)."""
    differ = bits_differing(crate_bits, torch_bits)
    if differ == 0:
        return {"identical": True, "text": "identical"}
    d, blocks = SIZES[size]
    check = run(TORCH + ["ties", TORCH_CASE.get(case, case), str(d), str(blocks), str(seed), crate_bits, torch_bits], env)
    if check["outcome"] != "ok":
        return {"identical": False, "differing": differ,
                "text": f"{differ} differ (tie check {check['outcome']})"}
    tied = check["not_at_threshold"] == 0 and check["pruned_counts_equal"]
    text = f"{differ} differ, " + ("all tied at the threshold" if tied else
                                   f"{check['not_at_threshold']} NOT tied"
                                   + ("" if check["pruned_counts_equal"] else ", counts differ"))
    return {"identical": False, "differing": differ, "all_tied": tied, "text": text}


def cli_masks(side, result, output, work):
    """A CLI-case side's time and peak are its whole process's, its mask the nonzeros of its
    output, which is then deleted."""
    result["seconds"], result["peak_bytes"] = result.get("wall_seconds"), result.get("process_peak_bytes")
    if result["outcome"] == "ok":
        result["mask_file"] = os.path.join(work, f"{side}-cli.bits")
        zero_bits(output, result["mask_file"])
    if os.path.exists(output):
        os.remove(output)


def copy_times(src, dst):
    """The disk's bounds on a CLI case, for the same file in the same run: copying its input
    with `cp`, then syncing the copy (as tch-prune syncs its output; PyTorch's script does
    not); and writing it with `dd bs=16M oflag=direct conv=fsync` (direct I/O, None where the
    filesystem refuses it)."""
    start = time.perf_counter()
    subprocess.run(["cp", src, dst], check=True)
    copied = time.perf_counter()
    subprocess.run(["sync", dst], check=True)
    synced = time.perf_counter()
    os.remove(dst)
    start_dd = time.perf_counter()
    dd = subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=16M", "oflag=direct", "conv=fsync"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dd_seconds = time.perf_counter() - start_dd if dd.returncode == 0 else None
    if os.path.exists(dst):
        os.remove(dst)
    return {"cp_seconds": copied - start, "cp_sync_seconds": synced - start,
            "dd_direct_seconds": dd_seconds}


def disk_ratio(seconds, disk):
    """`seconds` against the faster of cp + sync and dd oflag=direct: (ratio, text)."""
    bounds = [(disk["cp_sync_seconds"], "cp + sync")]
    if disk.get("dd_direct_seconds"):
        bounds.append((disk["dd_direct_seconds"], "dd oflag=direct"))
    best, name = min(bounds)
    dd = f"{seconds_text(disk['dd_direct_seconds'])}" if disk.get("dd_direct_seconds") else "refused"
    ratio = seconds / best
    return ratio, (f"cp + sync {seconds_text(disk['cp_sync_seconds'])}, dd oflag=direct {dd}: "
                   f"{ratio:.2f}x the faster ({name}; goal <= {DISK_GOAL}x: "
                   f"{'met' if ratio <= DISK_GOAL else 'NOT met'})")


def seconds_text(s):
    return f"{s:.3f} s" if s < 100 else f"{s:.0f} s"


def measure(case, size, seed, env, work):
    """Both sides of one case; returns the record that results.json keeps."""
    d, blocks = SIZES[size]
    record = {"case": case, "size": size, "d": d, "blocks": blocks, "params": params_of(size)}
    if case in CLI_CASES:
        flags, torch_method, _, _ = CLI_CASES[case]
        # Both sides are whole processes here (load, prune, save): wall time and the peak RSS
        # of the process are what a user of either tool waits for and needs.
        model = os.path.join(work, "model.safetensors")
        outs = {side: os.path.join(work, f"{side}-out.safetensors") for side in ("crate", "torch")}
        made = run(TORCH + ["write-model", str(d), str(blocks), str(seed), model], env)
        if made["outcome"] != "ok":
            raise RuntimeError(f"writing the model failed: {made['outcome']}")
        record["file_bytes"] = os.path.getsize(model)
        # The CLI takes its streaming path here; the in-memory path is timed beside it.
        prune = [CLI, "prune", model, "-o", outs["crate"]] + flags
        in_memory = run(prune + ["--in-memory"], env)
        record["crate_in_memory"] = {k: in_memory.get(k) for k in
                                     ("outcome", "wall_seconds", "process_peak_bytes", "process_peak_anon_bytes")}
        os.remove(outs["crate"])
        # The disk's bounds just before the streamed run, on the same file: the ratio compares
        # runs as close in time as the machine allows.
        # libtorch's libraries paged in first, untimed: PyTorch's runs (20 GiB for --global) can
        # push them out of the page cache, and `cp` has no such cost to pay.
        subprocess.run([CLI, "--version"], stdout=subprocess.DEVNULL, env=env, check=False)
        record["disk"] = copy_times(model, os.path.join(work, "copy"))
        crate = run(prune, env)
        cli_masks("crate", crate, outs["crate"], work)  # frees the disk before PyTorch's turn
        torch = run(TORCH + ["cli", str(d), str(blocks), model, outs["torch"], torch_method], env)
        cli_masks("torch", torch, outs["torch"], work)
        os.remove(model)
    else:
        args = [str(d), str(blocks), str(seed), work]
        if case in ("forward", "train"):
            env = dict(env, **STEADY_MALLOC)
        crate = run([CRATE, case] + args, env)
        torch = run(TORCH + [TORCH_CASE.get(case, case)] + args, env)
    record["crate"], record["torch"] = crate, torch
    for side in (crate, torch):
        if side.get("params", record["params"]) != record["params"]:
            raise RuntimeError(f"{case} {size}: {side['params']} parameters, not {record['params']}")
    if crate.get("mask_file") and torch.get("mask_file"):
        record["masks"] = compare_masks(case, size, seed, crate["mask_file"], torch["mask_file"], env)
    elif case in ("forward", "train"):
        record["masks"] = {"text": "-"}  # the masks of case l1
    else:
        record["masks"] = {"text": "not compared (a side failed)"}
    for side in (crate, torch):
        if side.get("mask_file") and os.path.exists(side["mask_file"]):
            os.remove(side["mask_file"])
    return record


def gib(n):
    return f"{n / 2**30:.2f} GiB"


def seconds(s):
    return f"{s:.3f} s" if s < 100 else f"{s:.0f} s"


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b and b > 0 else "-"


COLUMNS = [("case", 12), ("size", 5), ("params", 14), ("crate", 22), ("PyTorch", 22),
           ("speed-up", 9), ("crate peak", 12), ("PyTorch peak", 12), ("mem ratio", 9), ("masks", 0)]


def line(values):
    return "  ".join(f"{v:<{w}}" if w else v for v, (_, w) in zip(values, COLUMNS)).rstrip()


def row(r):
    crate, torch = r["crate"], r["torch"]
    ok = lambda side: side["outcome"] == "ok"
    values = [r["case"], r["size"], f"{r['params']:,}"]
    values.append(seconds(crate["seconds"]) if ok(crate) else crate["outcome"])
    values.append(seconds(torch["seconds"]) if ok(torch) else torch["outcome"])
    values.append(ratio(torch.get("seconds"), crate.get("seconds")) if ok(crate) and ok(torch) else "-")
    values.append(gib(crate["peak_bytes"]) if ok(crate) else "-")
    values.append(gib(torch["peak_bytes"]) if ok(torch) else "-")
    values.append(ratio(torch.get("peak_bytes"), crate.get("peak_bytes")) if ok(crate) and ok(torch) else "-")
    masks = r["masks"]["text"]
    if r["case"] == "forward" and ok(crate) and ok(torch):
        masks = (f"pruned/unpruned: crate {crate['ratio']:.3f}, PyTorch {torch['ratio']:.3f} "
                 f"(unpruned {seconds(crate['unpruned_seconds'])} / {seconds(torch['unpruned_seconds'])})")
    return line(values + [masks])


def cli_memory(r):
    """A CLI case's anonymous memory, the in-memory path beside the streaming one, and the
    issue's goals next to what was measured."""
    crate, torch, mem = r["crate"], r["torch"], r["crate_in_memory"]
    _, _, speed_goal, anon_goal = CLI_CASES[r["case"]]
    anon = lambda side: gib(side["process_peak_anon_bytes"]) if side.get("process_peak_anon_bytes") else "-"
    share = (f" ({100 * crate['process_peak_anon_bytes'] / r['file_bytes']:.1f}% of the "
             f"{gib(r['file_bytes'])} file)" if crate.get("process_peak_anon_bytes") else "")
    text = (f"  {r['case']} peak RssAnon: crate (streamed) {anon(crate)}{share}, PyTorch {anon(torch)}; "
            f"crate --in-memory: {mem['outcome']}")
    if mem["outcome"] == "ok":
        text += (f", {seconds(mem['wall_seconds'])}, peak RSS {gib(mem['process_peak_bytes'])}, "
                 f"RssAnon {gib(mem['process_peak_anon_bytes'])}")
    if crate["outcome"] == "ok" and torch["outcome"] == "ok":
        speed = torch["seconds"] / crate["seconds"]
        goals = [f"{speed:.1f}x PyTorch's wall time (goal >= {speed_goal}x: "
                 f"{'met' if speed >= speed_goal else 'NOT met'})"]
        if anon_goal is not None and crate.get("process_peak_anon_bytes"):
            share = crate["process_peak_anon_bytes"] / r["file_bytes"]
            goals.append(f"peak RssAnon {100 * share:.1f}% of the file (goal <= {100 * anon_goal:.0f}%: "
                         f"{'met' if share <= anon_goal else 'NOT met'})")
        disk = r["disk"]
        _, against_disk = disk_ratio(crate["seconds"], disk)
        goals.append(f"the disk, same file, same run: crate {seconds(crate['seconds'])}; {against_disk}")
        goals.append(f"the disk's bound: cp of the file {seconds(disk['cp_seconds'])}, cp + sync "
                     f"{seconds(disk['cp_sync_seconds'])}, so a tool writing this output through the page cache "
                     f"as cp does beats PyTorch's script by at most {torch['seconds'] / disk['cp_seconds']:.1f}x "
                     f"({torch['seconds'] / disk['cp_sync_seconds']:.1f}x syncing it, as tch-prune does)")
        text += "\n  goals: " + "; ".join(goals)
    return text


def main():
    env_list = lambda name, default: os.environ.get(name) or default
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=env_list("BENCH_SIZES", ",".join(STANDARD)))
    p.add_argument("--cases", default=env_list("BENCH_CASES", ",".join([c for c, _, _ in CASES] + ["distributed"])))
    p.add_argument("--threads", type=int, default=int(env_list("BENCH_THREADS", "2")))
    p.add_argument("--repeats", type=int, default=int(env_list("BENCH_REPEATS", "5")))
    p.add_argument("--seed", type=int, default=int(env_list("BENCH_SEED", "0")))
    a = p.parse_args()
    sizes, cases = a.sizes.split(","), a.cases.split(",")
    known = [c for c, _, _ in CASES] + list(bench_out_of_core.CASES) + ["shrink", "distributed"]
    for bad in [s for s in sizes if s not in SIZES] + [c for c in cases if c not in known]:
        sys.exit(f"unknown size or case '{bad}' (sizes: {', '.join(SIZES)}; cases: {', '.join(known)})")
    needed = [CLI] if set(cases) <= set(bench_out_of_core.CASES) | set(CLI_CASES) | {"shrink", "distributed"} else [CRATE, CLI]
    for binary in needed:
        if not os.path.exists(binary):
            sys.exit(f"{binary} is missing: run `make bench`, or build with "
                     "`cargo build --release --example bench --bin tch-prune`")

    # Same thread count on both sides: each sets it itself, OpenMP/MKL are told too.
    env = dict(os.environ, BENCH_THREADS=str(a.threads), BENCH_REPEATS=str(a.repeats),
               OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix="run-", dir=OUT)
    extra = [s for s in sizes if s not in STANDARD]
    out_of_core = [c for c in bench_out_of_core.CASES if c in cases]
    plan = [(c, s) for c, _, standard in CASES if c in cases
            for s in [s for s in standard if s in sizes] + extra]

    print(f"tch-prune vs torch.nn.utils.prune, CPU, {a.threads} threads, seed {a.seed}; forward: "
          f"median of {a.repeats} runs, train: of {min(a.repeats, 3)} steps, after a warm-up")
    for c, what, _ in CASES:
        if c in cases:
            print(f"  {c:<12} {what}")
    print("times: the pruning calls and remove (cli: the whole process); peaks: rise of peak RSS "
          "over the RSS after building the model (cli: peak RSS of the whole process); forward and "
          "train run with " + " ".join(f"{k}={v}" for k, v in STEADY_MALLOC.items()))
    results = []
    try:
        if os.path.exists(CRATE):
            check_same_weights(env, a.seed)
        print(line([name for name, _ in COLUMNS]))
        for case, size in plan:
            record = measure(case, size, a.seed, env, work)
            results.append(record)
            print(row(record), flush=True)
            if case in CLI_CASES:
                print(cli_memory(record), flush=True)
        for case in out_of_core:
            print(f"{case}: {bench_out_of_core.__doc__.splitlines()[0]}")
            record, text = bench_out_of_core.measure(case, CLI, env, a.seed, work)
            results.append(record)
            print(text, flush=True)
        if "distributed" in cases:
            print(f"distributed: {bench_distributed.__doc__.splitlines()[0]}")
            records, text = bench_distributed.measure(env, work)
            results.extend(records)
            print(text, flush=True)
        if "shrink" in cases:
            print(f"shrink: {bench_shrink.__doc__.splitlines()[0]} (batch {bench_shrink.BATCH}, "
                  f"{a.threads} threads, median of {a.repeats}; ratios to the model before)")
            for record, text in bench_shrink.measure(CLI, env, a.seed, work, a.threads, a.repeats):
                results.append(record)
                print(text, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with open(os.path.join(OUT, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    print(f"results: {os.path.relpath(os.path.join(OUT, 'results.json'), ROOT)}")


if __name__ == "__main__":
    main()
