//! Data-parallel training with pruning (`make data-parallel`): the digits CNN of
//! `examples/gradual.rs` trained on 2 ranks, each a replica taking half of every batch, the
//! gradients averaged through the process group (`ProcessGroup::all_reduce_gradients`), pruned
//! gradually to 80 % (global L1, cubic schedule) while it trains, the masks proved identical on
//! every rank at every pruning step (`Pruner::check_consistent`).
//!
//! Run plainly, it trains the one-process baseline, then starts itself again as 2 ranks over
//! localhost (the variables `torchrun` sets) and compares: the final accuracy of the 2 ranks
//! must be within a point of the one-process run. Under a launcher it is one rank:
//! `torchrun --nproc-per-node 2 --no-python target/debug/examples/data_parallel`.

#[path = "shared/digits.rs"]
mod digits;

use digits::{accuracy, cnn, Digits, Res, BATCH, WEIGHTS};
use std::process::{Command, Stdio};
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use tch_prune::distributed::ProcessGroup;
use tch_prune::train::{CubicSchedule, GradualPruner};
use tch_prune::{L1Unstructured, Pruner};

const EPOCHS: i64 = 12;
const SEED: i64 = 0;
const LR: f64 = 1e-3;
const TARGET: f64 = 0.8;
const PRUNE_FROM_EPOCH: i64 = 2;
const DELTA_T: i64 = 10;
const ROUNDS: i64 = 15;

/// Trains and prunes; `group` is `None` for the one-process run. Returns the final test
/// accuracy and sparsity.
fn train(group: Option<&ProcessGroup>) -> Res<(f64, f64)> {
    tch::set_num_threads(1);
    let device = Device::Cpu;
    let data = Digits::load(device)?;
    let spe = data.steps_per_epoch();
    // The same initialization on every rank: same seed, same order of draws.
    tch::manual_seed(SEED);
    let vs = nn::VarStore::new(device);
    let model = cnn(&vs.root());
    let pruner = Pruner::new(&vs);
    let start = PRUNE_FROM_EPOCH * spe;
    let schedule = CubicSchedule::new(TARGET, start, DELTA_T, ROUNDS)?;
    let gradual = GradualPruner::new(&pruner, &WEIGHTS, schedule, L1Unstructured::new)?.global()?;
    let mut opt = nn::Adam::default().build(&vs, LR)?;
    let (rank, world) = group.map_or((0, 1), |g| (g.rank() as i64, g.world_size() as i64));

    let n = data.train_y.size()[0];
    let mut step = 0;
    let mut checks = 0;
    for epoch in 0..EPOCHS {
        // The same permutation on every rank (the same draws); each takes its part of every
        // batch, so the averaged gradient is that of the whole batch.
        let perm = Tensor::randperm(n, (Kind::Int64, device));
        let mut total = 0.0;
        for begin in (0..n).step_by(BATCH as usize) {
            let batch = perm.narrow(0, begin, BATCH.min(n - begin));
            let mine = batch.slice(0, rank, batch.size()[0], world);
            let x = data.train_x.index_select(0, &mine);
            let y = data.train_y.index_select(0, &mine);
            let loss = pruner
                .forward(|| model.forward_t(&x, true))?
                .cross_entropy_for_logits(&y);
            opt.zero_grad();
            loss.backward();
            if let Some(group) = group {
                group.all_reduce_gradients(&vs)?;
            }
            opt.step();
            total += loss.double_value(&[]);
            step += 1;
            if step >= start && (step - start) % DELTA_T == 0 {
                gradual.step(step)?;
                if let Some(group) = group {
                    pruner.check_consistent(group)?;
                    checks += 1;
                }
            }
        }
        if rank == 0 {
            let acc = accuracy(&model, &pruner, &data)?;
            println!(
                "  [{}] epoch {:2}: loss {:.4}, sparsity {:.3}, test accuracy {:.2}%",
                if group.is_some() {
                    "2 ranks"
                } else {
                    "1 process"
                },
                epoch + 1,
                total / spe as f64,
                gradual.sparsity()?,
                100.0 * acc
            );
        }
    }
    if let Some(group) = group {
        println!("rank {rank}: masks identical on every rank at all {checks} pruning steps");
        group.barrier()?;
    }
    Ok((accuracy(&model, &pruner, &data)?, gradual.sparsity()?))
}

fn main() -> Res<()> {
    if std::env::var_os("WORLD_SIZE").is_some() {
        // One rank of the group.
        let group = ProcessGroup::from_env()?;
        let (acc, sparsity) = train(Some(&group))?;
        println!(
            "rank {}: final accuracy {acc:.6} sparsity {sparsity:.4}",
            group.rank()
        );
        return Ok(());
    }
    println!("one process:");
    let (single, sparsity) = train(None)?;
    println!(
        "one process: final accuracy {:.2}% at sparsity {sparsity:.3}\n",
        100.0 * single
    );

    println!("2 ranks (this program again, as torchrun would start it):");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = std::env::current_exe()?;
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(&exe)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut accuracies = Vec::new();
    for (rank, child) in ranks.into_iter().enumerate() {
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        print!("{text}");
        if !out.status.success() {
            return Err(format!("rank {rank} failed ({})", out.status).into());
        }
        let acc = text
            .lines()
            .find_map(|l| l.split("final accuracy ").nth(1))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|a| a.parse::<f64>().ok())
            .ok_or(format!("rank {rank} reported no accuracy"))?;
        accuracies.push(acc);
    }
    // Replicas: the same weights, so the same accuracy on every rank.
    if accuracies.iter().any(|&a| a != accuracies[0]) {
        return Err(format!("the ranks disagree: {accuracies:?}").into());
    }
    let gap = 100.0 * (accuracies[0] - single).abs();
    println!(
        "\n2 ranks: {:.2}%, one process: {:.2}% ({gap:.2} points apart)",
        100.0 * accuracies[0],
        100.0 * single
    );
    if gap > 1.0 {
        return Err(format!("the 2-rank accuracy is {gap:.2} points from one process's").into());
    }
    Ok(())
}
