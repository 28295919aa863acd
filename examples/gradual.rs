//! Pruning while training (`make gradual`): the digits CNN of the demo trained from scratch in
//! Rust four ways, same initialization and data order:
//!
//! 1. dense, as the baseline;
//! 2. gradual magnitude pruning (global L1 over both convolutions and both linear layers) on
//!    `CubicSL`'s cubic schedule to 90 % sparsity, then fine-tuning;
//! 3. lottery-ticket rewinding: run 2's masks, its surviving weights rewound to their values
//!    after the first epoch, retrained with a fresh optimizer;
//! 4. 2:4 semi-structured sparsity (the pattern of sparse tensor cores) on every layer whose
//!    input dimension holds whole blocks of 4 (not the first convolution, which has one input
//!    channel), applied after a few dense epochs.
//!
//! Writes the curves (sparsity, loss, accuracy per step) to target/gradual/curves.csv and
//! target/gradual/curves.svg, and prints the final accuracies.

#[path = "shared/digits.rs"]
mod digits;

use digits::{accuracy, cnn, train_epoch, Digits, Res, WEIGHTS};
use std::cell::RefCell;
use std::path::Path;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Tensor};
use tch_prune::model::Report;
use tch_prune::train::{CubicSchedule, GradualPruner, NmSparsity, Recorder, RewindPoint};
use tch_prune::{L1Unstructured, Pruner};

const EPOCHS: i64 = 20;
const SEED: i64 = 0;
const LR: f64 = 1e-3;
const TARGET: f64 = 0.9;
/// Pruning starts after this many epochs of dense training...
const PRUNE_FROM_EPOCH: i64 = 2;
/// ...and prunes every `DELTA_T` steps, `ROUNDS` times.
const DELTA_T: i64 = 10;
const ROUNDS: i64 = 20;
/// The rewind point: the end of the first epoch.
const REWIND_EPOCH: i64 = 1;
/// 2:4 is applied after this many dense epochs.
const NM_FROM_EPOCH: i64 = 5;
/// The layers 2:4 applies to (conv1 has a single input channel: no block of 4 along it).
const NM_WEIGHTS: [&str; 3] = ["conv2.weight", "fc1.weight", "fc2.weight"];

/// The sparsity of the four weights, as the model computes with them.
fn weight_sparsity(pruner: &Pruner, vs: &nn::VarStore) -> Res<f64> {
    let vars = vs.variables();
    let tensors: Vec<(String, Tensor)> = WEIGHTS
        .iter()
        .map(|&n| {
            let t = pruner.tensor(n).unwrap_or_else(|| vars[n].shallow_clone());
            (n.to_string(), t.detach())
        })
        .collect();
    Ok(Report::new(&tensors)?.sparsity)
}

/// A fresh model with the run-independent initialization.
fn fresh(device: Device) -> (nn::VarStore, nn::SequentialT, Pruner) {
    tch::manual_seed(SEED);
    let vs = nn::VarStore::new(device);
    let model = cnn(&vs.root());
    let pruner = Pruner::new(&vs);
    (vs, model, pruner)
}

fn main() -> Res<()> {
    let device = Device::cuda_if_available();
    // A model this small runs faster on one CPU thread than on several that contend.
    tch::set_num_threads(1);
    let data = Digits::load(device)?;
    let spe = data.steps_per_epoch();
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/gradual");
    std::fs::create_dir_all(&out_dir)?;
    let rec = RefCell::new(Recorder::new(
        "digits CNN trained from scratch in Rust (tch-prune examples/gradual.rs)",
    ));
    println!(
        "digits CNN on {device:?}: {EPOCHS} epochs of {spe} steps, Adam lr {LR}, seed {SEED}\n"
    );

    // 1. Dense.
    let (vs, model, pruner) = fresh(device);
    let mut opt = nn::Adam::default().build(&vs, LR)?;
    let mut step = 0;
    rec.borrow_mut().record("dense", 0, 0.0, None, None);
    for _ in 0..EPOCHS {
        let loss = train_epoch(&model, &pruner, &mut opt, &data, &mut step, |_| Ok(()))?;
        let acc = accuracy(&model, &pruner, &data)?;
        rec.borrow_mut().record("dense", step, 0.0, loss, acc);
    }
    let dense = accuracy(&model, &pruner, &data)?;

    // 2. Gradual, global L1, cubic schedule.
    let (vs, model, pruner) = fresh(device);
    let start = PRUNE_FROM_EPOCH * spe;
    let schedule = CubicSchedule::new(TARGET, start, DELTA_T, ROUNDS)?;
    let label = format!(
        "gradual to 90% (cubic, steps {start}-{})",
        schedule.end_step()
    );
    let gradual = GradualPruner::new(&pruner, &WEIGHTS, schedule, L1Unstructured::new)?.global()?;
    // Built after the GradualPruner, which creates the trainable `_orig` tensors.
    let mut opt = nn::Adam::default().build(&vs, LR)?;
    let mut rewind_point = None;
    let mut step = 0;
    rec.borrow_mut().record(&label, 0, 0.0, None, None);
    for _ in 0..EPOCHS {
        let loss = train_epoch(&model, &pruner, &mut opt, &data, &mut step, |t| {
            if t == REWIND_EPOCH * spe {
                rewind_point = Some(RewindPoint::capture(&pruner)?);
            }
            if t >= start && (t - start) % DELTA_T == 0 {
                let done = gradual.step(t)?;
                rec.borrow_mut()
                    .record(&label, t, done.sparsity(), None, None);
            }
            Ok(())
        })?;
        let acc = accuracy(&model, &pruner, &data)?;
        rec.borrow_mut()
            .record(&label, step, gradual.sparsity()?, loss, acc);
    }
    let gradual_accuracy = accuracy(&model, &pruner, &data)?;
    let gradual_sparsity = weight_sparsity(&pruner, &vs)?;

    // 3. Rewind run 2's survivors to the end of epoch 1 and retrain them, masks kept.
    let rewind_step = REWIND_EPOCH * spe;
    let rewind_label = format!("rewound to step {rewind_step}, 90% masks kept");
    let point = rewind_point.ok_or("the rewind point was never reached")?;
    let mut opt = point.rewind_with_optimizer(&pruner, &vs, nn::Adam::default(), LR)?;
    let mut step = rewind_step;
    rec.borrow_mut().record(
        &rewind_label,
        step,
        weight_sparsity(&pruner, &vs)?,
        None,
        accuracy(&model, &pruner, &data)?,
    );
    for _ in REWIND_EPOCH..EPOCHS {
        let loss = train_epoch(&model, &pruner, &mut opt, &data, &mut step, |_| Ok(()))?;
        let acc = accuracy(&model, &pruner, &data)?;
        rec.borrow_mut().record(
            &rewind_label,
            step,
            weight_sparsity(&pruner, &vs)?,
            loss,
            acc,
        );
    }
    let rewound_accuracy = accuracy(&model, &pruner, &data)?;

    // 4. 2:4 after a few dense epochs.
    let (vs, model, pruner) = fresh(device);
    let mut opt = nn::Adam::default().build(&vs, LR)?;
    let nm_label = format!("2:4 from step {} (conv2, fc1, fc2)", NM_FROM_EPOCH * spe);
    let mut step = 0;
    rec.borrow_mut().record(&nm_label, 0, 0.0, None, None);
    for epoch in 0..EPOCHS {
        if epoch == NM_FROM_EPOCH {
            for name in NM_WEIGHTS {
                pruner.prune(name, &NmSparsity::new(2, 4)?, None)?;
            }
            rec.borrow_mut()
                .record(&nm_label, step, weight_sparsity(&pruner, &vs)?, None, None);
        }
        let loss = train_epoch(&model, &pruner, &mut opt, &data, &mut step, |_| Ok(()))?;
        let acc = accuracy(&model, &pruner, &data)?;
        rec.borrow_mut()
            .record(&nm_label, step, weight_sparsity(&pruner, &vs)?, loss, acc);
    }
    let nm_accuracy = accuracy(&model, &pruner, &data)?;
    let nm_sparsity = weight_sparsity(&pruner, &vs)?;

    let rec = rec.into_inner();
    let (csv, svg) = (out_dir.join("curves.csv"), out_dir.join("curves.svg"));
    rec.write_csv(&csv)?;
    rec.write_svg(&svg)?;
    println!("run                                        weight sparsity  test accuracy");
    for (run, sparsity, acc) in [
        ("dense", 0.0, dense),
        (label.as_str(), gradual_sparsity, gradual_accuracy),
        (rewind_label.as_str(), gradual_sparsity, rewound_accuracy),
        (nm_label.as_str(), nm_sparsity, nm_accuracy),
    ] {
        println!(
            "{run:<44} {:>13.2}%  {:>12.2}%",
            100.0 * sparsity,
            100.0 * acc
        );
    }
    println!("\nwrote {} and {}", csv.display(), svg.display());
    Ok(())
}
