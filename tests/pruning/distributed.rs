//! Pruning on several processes (`tch_prune::distributed`): real Gloo process groups of 2, 3 and
//! 4 ranks over localhost, one of them launched by PyTorch's own `torchrun --no-python`.
//!
//! The ranks are this test binary run again: a test starts N copies of itself with
//! `--exact distributed::worker` and `TCH_PRUNE_DIST_WORKER=<scenario>`, the variables of
//! `torch.distributed`'s `env://` set as a launcher sets them. Each worker checks its own
//! result (against the one-process computation it also makes, bit for bit) and prints one
//! line `rank R: ok <what>`; the test checks every rank's exit and line. `worker` does nothing
//! when run as an ordinary test.

use crate::common::ranks;
use std::collections::HashMap;
use std::process::{Child, Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};
use tch_prune::distributed::{ProcessGroup, ReduceOp};
use tch_prune::train::{GradualPruner, LinearSchedule, NmSparsity};
use tch_prune::*;

/// The scenario a worker runs: what the test passes in `TCH_PRUNE_DIST_WORKER`.
const SCENARIO: &str = "TCH_PRUNE_DIST_WORKER";

/// Starts `world` workers running `scenario`, with `extra` variables; returns them in rank order.
fn spawn(scenario: &str, world: usize, extra: &[(&str, &str)]) -> Vec<Child> {
    let exe = std::env::current_exe().expect("the test binary");
    let worker = || {
        let mut command = Command::new(&exe);
        command
            .args([
                "--exact",
                "distributed::worker",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SCENARIO, scenario);
        command
    };
    ranks::spawn(worker, world, extra)
}

/// Waits for every rank, at most `limit`; kills those still running after it.
fn wait_all(children: Vec<Child>, limit: Duration) -> Vec<Output> {
    let start = Instant::now();
    let mut children: Vec<Option<Child>> = children.into_iter().map(Some).collect();
    loop {
        let running = children
            .iter_mut()
            .flatten()
            .filter_map(|c| c.try_wait().ok())
            .filter(Option::is_none)
            .count();
        if running == 0 || start.elapsed() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    children
        .iter_mut()
        .map(|c| {
            let mut c = c.take().expect("a child");
            let _ = c.kill();
            c.wait_with_output().expect("its output")
        })
        .collect()
}

/// Runs `scenario` on `world` ranks and checks that each says `rank R: ok`.
fn run_ok(scenario: &str, world: usize) -> Vec<String> {
    run_ok_with(scenario, world, &[])
}

/// The same with `extra` variables.
fn run_ok_with(scenario: &str, world: usize, extra: &[(&str, &str)]) -> Vec<String> {
    let outputs = wait_all(spawn(scenario, world, extra), Duration::from_secs(240));
    outputs
        .iter()
        .enumerate()
        .map(|(rank, out)| {
            let stdout = String::from_utf8_lossy(&out.stdout);
            // libtest prints its own words before the worker's on the same line.
            let marker = format!("rank {rank}: ok");
            let line = stdout
                .lines()
                .find_map(|l| l.find(&marker).map(|at| l[at..].to_string()));
            assert!(
                out.status.success() && line.is_some(),
                "{scenario}: rank {rank} of {world} failed ({:?})\nstdout: {stdout}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            line.unwrap_or_default()
        })
        .collect()
}

#[test]
fn collectives_on_2_3_and_4_ranks() {
    for world in [2, 3, 4] {
        run_ok("collectives", world);
    }
}

#[test]
fn data_parallel_masks_are_identical_and_equal_to_one_process() {
    let lines = run_ok("data_parallel", 3);
    // Every rank computed the same digests, which are those of the one-process run.
    let digests: Vec<&str> = lines
        .iter()
        .map(|l| l.split(" digests ").nth(1).unwrap_or(""))
        .collect();
    assert!(
        digests.iter().all(|d| *d == digests[0] && !d.is_empty()),
        "{lines:?}"
    );
}

#[test]
fn inconsistent_masks_are_named() {
    run_ok("inconsistent", 2);
}

#[test]
fn sharded_global_is_bit_identical_to_one_process() {
    for world in [2, 4] {
        let lines = run_ok("sharded", world);
        // The bytes sent do not depend on the model's size: the same line for the small and
        // the large model (see the worker).
        assert!(lines.iter().all(|l| l.contains("bytes")), "{lines:?}");
    }
    run_ok("sharded", 3);
}

#[test]
fn gradual_across_ranks_is_the_one_process_schedule() {
    run_ok("gradual", 2);
}

#[test]
fn a_killed_rank_is_named_by_the_others() {
    let outputs = wait_all(
        spawn("killed", 3, &[("TCH_PRUNE_DIST_TIMEOUT", "30")]),
        Duration::from_secs(120),
    );
    // Rank 2 kills itself before the second collective, while rank 1 is still busy.
    assert!(!outputs[2].status.success());
    for out in &outputs[..2] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a survivor succeeded: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains("error:"))
            .unwrap_or_else(|| panic!("no error line: {stderr}"));
        assert!(
            line.contains("rank 2 left the group"),
            "the error does not name rank 2: {line}"
        );
    }
    // Rank 1 was busy, not gone: its heartbeat went on, and rank 0 does not blame it.
    let rank0 = String::from_utf8_lossy(&outputs[0].stderr);
    assert!(
        !rank0.contains("rank 1") && !rank0.contains("ranks 1"),
        "{rank0}"
    );
}

#[test]
fn a_rank_that_does_not_join_times_out_with_one_line() {
    // Rank 1 of 2 never starts.
    let mut children = spawn("join", 2, &[("TCH_PRUNE_DIST_TIMEOUT", "3")]);
    let mut late = children.pop().expect("rank 1");
    let _ = late.kill();
    let _ = late.wait();
    let start = Instant::now();
    let outputs = wait_all(children, Duration::from_secs(60));
    assert!(start.elapsed() < Duration::from_secs(45), "no timeout");
    let stderr = String::from_utf8_lossy(&outputs[0].stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("error:"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        line.contains("rank 0 of 2 could not join the group at 127.0.0.1:") && line.contains("3 s"),
        "{line}"
    );
}

#[test]
fn gloo_socket_ifname_chooses_the_interface_as_for_torch_distributed() {
    run_ok_with("collectives", 2, &[("GLOO_SOCKET_IFNAME", "lo")]);
    let outputs = wait_all(
        spawn(
            "join",
            2,
            &[
                ("GLOO_SOCKET_IFNAME", "no-such-if0"),
                ("TCH_PRUNE_DIST_TIMEOUT", "10"),
            ],
        ),
        Duration::from_secs(60),
    );
    for out in &outputs {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr
            .lines()
            .find(|l| l.contains("error:"))
            .unwrap_or_else(|| panic!("no error line: {stderr}"));
        assert!(
            line.contains("GLOO_SOCKET_IFNAME names 'no-such-if0', which is no network interface"),
            "{line}"
        );
    }
}

/// NCCL asked for where there is no GPU: every rank fails at once, with one line saying why. The
/// reason is the missing GPU, which only the NCCL library itself reports: so it was built and
/// loaded. With a GPU, tests/cuda.rs runs the collectives on NCCL.
#[test]
fn nccl_without_a_gpu_fails_every_rank_with_one_line() {
    if tch::Cuda::is_available() {
        eprintln!("skipped nccl_without_a_gpu: a GPU is here (tests/cuda.rs runs NCCL on it)");
        return;
    }
    let outputs = wait_all(
        spawn(
            "join",
            2,
            &[
                ("TCH_PRUNE_DIST_BACKEND", "nccl"),
                ("TCH_PRUNE_DIST_TIMEOUT", "30"),
            ],
        ),
        Duration::from_secs(60),
    );
    for out in &outputs {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error:")).collect();
        assert!(
            errors.len() == 1
                && errors[0].contains(
                    "cannot use NCCL: NCCL needs CUDA devices and this process sees none"
                ),
            "{stderr}"
        );
    }
}

#[test]
fn torchrun_launches_the_ranks() {
    let Some(python) = crate::common::python() else {
        return;
    };
    let exe = std::env::current_exe().expect("the test binary");
    let out = crate::common::output_within(
        ranks::torchrun(&python, &exe)
            .args([
                "--exact",
                "distributed::worker",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SCENARIO, "collectives"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "torchrun failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for rank in 0..2 {
        assert!(
            stdout.contains(&format!("rank {rank}: ok collectives (launcher store)")),
            "{stdout}"
        );
    }
}

/// The worker: does nothing unless a test started this binary as a rank.
#[test]
fn worker() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    if scenario == "join" {
        match ProcessGroup::from_env() {
            Ok(_) => println!("rank 0: joined alone?"),
            Err(e) => eprintln!("error: {e}"),
        }
        std::process::exit(1);
    }
    let group = match ProcessGroup::from_env() {
        Ok(group) => group,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let result = match scenario.as_str() {
        "collectives" => collectives(&group),
        "data_parallel" => data_parallel(&group),
        "inconsistent" => inconsistent(&group),
        "sharded" => sharded(&group),
        "gradual" => gradual(Arc::new(group)),
        "killed" => killed(&group),
        other => Err(format!("unknown scenario {other}")),
    };
    match result {
        Ok(what) => {
            println!(
                "rank {}: ok {what}",
                std::env::var("RANK").unwrap_or_default()
            );
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

type Check = std::result::Result<String, String>;

fn ensure(ok: bool, what: impl FnOnce() -> String) -> std::result::Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

fn collectives(group: &ProcessGroup) -> Check {
    let (r, w) = (group.rank() as f64, group.world_size() as f64);
    let e = |e: PruneError| e.to_string();
    let t = Tensor::from_slice(&[r + 1.0, -r]);
    group.all_reduce(&t, ReduceOp::Sum).map_err(e)?;
    let sum: Vec<f64> = Vec::try_from(&t).map_err(|e: tch::TchError| e.to_string())?;
    ensure(sum == [w * (w + 1.0) / 2.0, -(w - 1.0) * w / 2.0], || {
        format!("sum {sum:?}")
    })?;

    let t = Tensor::from_slice(&[r as i64, 10 - r as i64]);
    group.all_reduce(&t, ReduceOp::Max).map_err(e)?;
    let max: Vec<i64> = Vec::try_from(&t).map_err(|e: tch::TchError| e.to_string())?;
    ensure(max == [w as i64 - 1, 10], || format!("max {max:?}"))?;

    // f16 and bf16 sums, and a strided view (staged through a contiguous copy).
    for kind in [Kind::Half, Kind::BFloat16] {
        let t = Tensor::ones([3], (kind, Device::Cpu));
        group.all_reduce(&t, ReduceOp::Sum).map_err(e)?;
        ensure(
            t.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]) == 3.0 * w,
            || format!("{kind:?} sum {t}"),
        )?;
    }
    let base = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]);
    let view = base.tr();
    group.all_reduce(&view, ReduceOp::Sum).map_err(e)?;
    ensure(base.double_value(&[1, 2]) == 5.0 * w, || {
        format!("strided {base}")
    })?;

    let t = Tensor::from_slice(&[r * 7.0]);
    let root = group.world_size() - 1;
    group.broadcast(&t, root).map_err(e)?;
    ensure(t.double_value(&[0]) == (w - 1.0) * 7.0, || {
        format!("broadcast {t}")
    })?;

    let gathered = group
        .all_gather(&Tensor::from_slice(&[r, r * r]))
        .map_err(e)?;
    let expected = Tensor::stack(
        &(0..group.world_size())
            .map(|i| Tensor::from_slice(&[i as f64, (i * i) as f64]))
            .collect::<Vec<_>>(),
        0,
    );
    ensure(gathered.equal(&expected), || {
        format!("all_gather {gathered}")
    })?;
    group.barrier().map_err(e)?;
    // The launcher's timeout: TCH_PRUNE_DIST_TIMEOUT where the test sets it, 300 s under torchrun.
    let timeout = std::env::var("TCH_PRUNE_DIST_TIMEOUT").map_or(300, |s| s.parse().unwrap());
    ensure(
        group.payload_bytes() > 0 && group.timeout() == Duration::from_secs(timeout),
        || {
            format!(
                "payload {} bytes, timeout {:?}",
                group.payload_bytes(),
                group.timeout()
            )
        },
    )?;
    let store = if std::env::var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Ok("True") {
        " (launcher store)"
    } else {
        ""
    };
    Ok(format!("collectives{store}"))
}

/// The data-parallel model every rank (and the one-process reference) builds.
fn replica(seed: i64) -> (nn::VarStore, nn::Sequential) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let net = nn::seq()
        .add(nn::linear(&root / "fc1", 12, 32, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(&root / "fc2", 32, 16, Default::default()))
        .add(nn::linear(&root / "fc3", 16, 4, Default::default()));
    (vs, net)
}

/// Every kind of pruning call, in one order: what a data-parallel job does on every rank.
fn prune_everything(vs: &nn::VarStore, net: &nn::Sequential) -> Result<Pruner> {
    let pruner = Pruner::new(vs);
    tch::manual_seed(7);
    pruner.l1_unstructured("fc1.weight", 0.3, None)?;
    pruner.random_unstructured("fc1.bias", 0.25)?;
    pruner.ln_structured("fc2.weight", 0.25, 2.0, 0, None)?;
    pruner.random_structured("fc3.weight", 1, 0)?;
    pruner.global_unstructured(
        &["fc1.weight", "fc2.weight", "fc3.weight"],
        &L1Unstructured::new(0.2)?,
        &HashMap::new(),
    )?;
    pruner.prune("fc2.weight", &NmSparsity::new(2, 4)?, None)?;
    let gradual = GradualPruner::new(
        &pruner,
        &["fc3.bias"],
        LinearSchedule::new(0.0, 0.5, 0, 4)?,
        L1Unstructured::new,
    )?;
    for step in [0, 2, 4] {
        gradual.step(step)?;
    }
    let _ = net.forward(&Tensor::ones([1, 12], (Kind::Float, Device::Cpu)));
    Ok(pruner)
}

fn digests(pruner: &Pruner) -> String {
    let mut names = pruner.pruned_names();
    names.sort();
    names
        .iter()
        .map(|n| {
            let mask = pruner.mask(n).expect("a mask");
            format!(
                "{:016x}",
                tch_prune::distributed::mask_digest(&mask).expect("digest")
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn data_parallel(group: &ProcessGroup) -> Check {
    let (vs, net) = replica(3);
    let pruner = prune_everything(&vs, &net).map_err(|e| e.to_string())?;
    pruner.check_consistent(group).map_err(|e| e.to_string())?;
    // The one-process run of the same calls.
    let (vs1, net1) = replica(3);
    let reference = prune_everything(&vs1, &net1).map_err(|e| e.to_string())?;
    let (mine, theirs) = (digests(&pruner), digests(&reference));
    ensure(mine == theirs, || {
        format!("rank's masks {mine} != one process's {theirs}")
    })?;
    ensure(pruner.pruned_names().len() == 5, || {
        "5 pruned tensors".into()
    })?;
    Ok(format!("data_parallel digests {mine}"))
}

fn inconsistent(group: &ProcessGroup) -> Check {
    let (vs, net) = replica(3);
    let pruner = prune_everything(&vs, &net).map_err(|e| e.to_string())?;
    if group.rank() == 1 {
        pruner
            .l1_unstructured("fc2.weight", 1, None)
            .map_err(|e| e.to_string())?;
    }
    let error = match pruner.check_consistent(group) {
        Ok(()) => return Err("different masks were not noticed".into()),
        Err(e) => e.to_string(),
    };
    ensure(
        error.contains("'fc2.weight' (ranks 1 differ from rank 0)") && !error.contains("fc1"),
        || error.clone(),
    )?;
    // Different tensor lists are named too.
    if group.rank() == 0 {
        let _extra = vs.root().zeros("extra", &[2]);
        pruner.identity("extra").map_err(|e| e.to_string())?;
    }
    let error = match pruner.check_consistent(group) {
        Ok(()) => return Err("different tensor lists were not noticed".into()),
        Err(e) => e.to_string(),
    };
    ensure(error.contains("only on rank 0: extra"), || error.clone())?;
    Ok("inconsistent".into())
}

/// The union a sharded job prunes: `count` tensors, the same on every rank for a seed; values
/// drawn from few levels when `ties`, so that many tie at the threshold, across ranks too.
fn union(kind: Kind, count: usize, numel: i64, ties: bool) -> Vec<(String, Tensor)> {
    tch::manual_seed(11);
    (0..count)
        .map(|i| {
            let t = if ties {
                (Tensor::randint(7, [numel], (Kind::Int64, Device::Cpu)) - 3).to_kind(kind)
            } else {
                Tensor::randn([numel], (Kind::Float, Device::Cpu)).to_kind(kind)
            };
            (format!("layer{i}.weight"), t.view([numel / 8, 8]))
        })
        .collect()
}

/// Adds `name` (`layer.weight`) to the store, a copy of `value`.
fn add(vs: &nn::VarStore, name: &str, value: &Tensor) {
    let (path, leaf) = name.split_once('.').expect("a dotted name");
    let _ = (vs.root() / path).var_copy(leaf, value);
}

/// Which tensors of the union rank `rank` holds: an uneven split (rank 0 none when there are
/// enough ranks), in the union's order.
fn held(rank: usize, world: usize, count: usize) -> Vec<usize> {
    (0..count).filter(|i| (i * 7 + 3) % world == rank).collect()
}

fn sharded(group: &ProcessGroup) -> Check {
    let (rank, world) = (group.rank(), group.world_size());
    let mut bytes_seen = Vec::new();
    for kind in [Kind::Float, Kind::Half, Kind::BFloat16] {
        for (ties, count, numel) in [(false, 5, 4096), (true, 6, 1024), (false, 9, 65536)] {
            let tensors = union(kind, count, numel, ties);
            // The global order: rank order, then each rank's order.
            let order: Vec<usize> = (0..world).flat_map(|r| held(r, world, count)).collect();
            let vs1 = nn::VarStore::new(Device::Cpu);
            for &i in &order {
                add(&vs1, &tensors[i].0, &tensors[i].1);
            }
            let one = Pruner::new(&vs1);
            let names1: Vec<&str> = order.iter().map(|&i| tensors[i].0.as_str()).collect();
            one.global_unstructured(
                &names1,
                &L1Unstructured::new(0.37).unwrap(),
                &HashMap::new(),
            )
            .map_err(|e| e.to_string())?;

            let vs = nn::VarStore::new(Device::Cpu);
            let mine = held(rank, world, count);
            for &i in &mine {
                add(&vs, &tensors[i].0, &tensors[i].1);
            }
            let pruner = Pruner::new(&vs);
            let names: Vec<&str> = mine.iter().map(|&i| tensors[i].0.as_str()).collect();
            let bytes = pruner
                .global_unstructured_across(
                    group,
                    &names,
                    &L1Unstructured::new(0.37).unwrap(),
                    &HashMap::new(),
                )
                .map_err(|e| e.to_string())?;
            for name in &names {
                let (a, b) = (pruner.mask(name).unwrap(), one.mask(name).unwrap());
                let same = a.kind() == b.kind() && a.equal(&b);
                ensure(same, || {
                    format!("{kind:?} ties={ties}: mask of {name} differs")
                })?;
            }
            if !ties {
                bytes_seen.push((kind, numel, bytes));
            }
        }
    }
    // The bytes do not grow with the model: the same for 5 x 4096 and 9 x 65536 entries.
    for pair in bytes_seen.chunks(2) {
        ensure(pair[0].2 == pair[1].2, || {
            format!("bytes grow with the model: {bytes_seen:?}")
        })?;
    }
    let f32_bytes = bytes_seen[0].2;
    ensure(f32_bytes < 2 * 65536 * 8 + 4096, || {
        format!("{f32_bytes} bytes")
    })?;
    Ok(format!(
        "sharded f32/f16/bf16 bit-identical, {f32_bytes} bytes per f32 selection"
    ))
}

fn gradual(group: Arc<ProcessGroup>) -> Check {
    let (rank, world) = (group.rank(), group.world_size());
    let e = |e: PruneError| e.to_string();
    let tensors = union(Kind::Float, 4, 512, false);
    let order: Vec<usize> = (0..world).flat_map(|r| held(r, world, 4)).collect();
    let schedule = || LinearSchedule::new(0.0, 0.8, 0, 4).unwrap();

    let vs1 = nn::VarStore::new(Device::Cpu);
    for &i in &order {
        add(&vs1, &tensors[i].0, &tensors[i].1);
    }
    let one = Pruner::new(&vs1);
    let names1: Vec<&str> = order.iter().map(|&i| tensors[i].0.as_str()).collect();
    let g1 = GradualPruner::new(&one, &names1, schedule(), L1Unstructured::new)
        .and_then(GradualPruner::global)
        .map_err(e)?;

    let vs = nn::VarStore::new(Device::Cpu);
    let mine = held(rank, world, 4);
    for &i in &mine {
        add(&vs, &tensors[i].0, &tensors[i].1);
    }
    let pruner = Pruner::new(&vs);
    let names: Vec<&str> = mine.iter().map(|&i| tensors[i].0.as_str()).collect();
    let g = GradualPruner::new(&pruner, &names, schedule(), L1Unstructured::new)
        .and_then(|g| g.across(group.clone()))
        .map_err(e)?;
    for step in [0, 2, 4, 6] {
        let (a, b) = (g.step(step).map_err(e)?, g1.step(step).map_err(e)?);
        ensure(a == b, || format!("step {step}: {a:?} != {b:?}"))?;
        for name in &names {
            let same = pruner.mask(name).unwrap().equal(&one.mask(name).unwrap());
            ensure(same, || format!("step {step}: mask of {name} differs"))?;
        }
    }
    let (sparsity, expected) = (g.sparsity().map_err(e)?, g1.sparsity().map_err(e)?);
    // round(0.8 * 2048) = 1638 entries of the union.
    ensure(sparsity == expected && sparsity == 1638.0 / 2048.0, || {
        format!("sparsity {sparsity}, one process {expected}")
    })?;
    Ok("gradual".into())
}

fn killed(group: &ProcessGroup) -> Check {
    let t = Tensor::from_slice(&[1f32]);
    group
        .all_reduce(&t, ReduceOp::Sum)
        .map_err(|e| e.to_string())?;
    if group.rank() == 2 {
        // SIGKILL: no destructor, no word to the others.
        // SAFETY: a plain system call on this process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    // Rank 1 is busy meanwhile: alive, silent, and not to be blamed.
    let busy = if group.rank() == 1 { 6000 } else { 500 };
    std::thread::sleep(Duration::from_millis(busy));
    group
        .all_reduce(&t, ReduceOp::Sum)
        .map_err(|e| e.to_string())?;
    group.barrier().map_err(|e| e.to_string())?;
    Err("the collectives went on without rank 2".into())
}
