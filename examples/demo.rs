//! The main job, end to end (`make demo`): a CNN trained in PyTorch on the 8x8 handwritten
//! digits (data/, made by scripts/make_demo_data.py) is loaded from TorchScript, pruned
//! iteratively (global L1 over every conv and linear weight, half of what remains each round)
//! with fine-tuning between rounds through the pruning hooks; then half of the channels of every
//! layer removed with everything coupled to them (their bias, batch norm and the next layer's
//! inputs: whole channel groups zeroed, and fine-tuned again); made permanent, exported as
//! TorchScript, the export reloaded and checked, and finally shrunk by the exact route
//! (`ScriptModel::shrink` removing the all-zero channels): the same outputs from a model that is
//! smaller and faster.

use std::error::Error;
use std::path::Path;
use std::time::Instant;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use tch_prune::checkpoint::read_safetensors;
use tch_prune::model::{Report, ScriptModel};
use tch_prune::shrink::ShrinkOptions;
use tch_prune::{L1Unstructured, LnStructured, Pruner, PruningMethod};

const ROUNDS: usize = 4;
const EPOCHS_PER_ROUND: usize = 3;
const BATCH: i64 = 64;
/// The share of each layer's channels the structured round removes.
const CHANNELS: f64 = 0.5;

struct Digits {
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
}

fn load_digits(path: &Path, device: Device) -> Result<Digits, Box<dyn Error>> {
    let mut tensors = std::collections::HashMap::new();
    for (name, t) in read_safetensors(path)? {
        tensors.insert(name, t);
    }
    let mut take = |name: &str| -> Result<Tensor, Box<dyn Error>> {
        let t = tensors
            .remove(name)
            .ok_or(format!("{}: no tensor {name}", path.display()))?;
        Ok(t.to_device(device))
    };
    // Pixels are 0..16, as the model was trained on them: scaled to [0, 1].
    Ok(Digits {
        train_x: take("train_x")?.to_kind(Kind::Float) / 16.0,
        train_y: take("train_y")?,
        test_x: take("test_x")?.to_kind(Kind::Float) / 16.0,
        test_y: take("test_y")?,
    })
}

fn accuracy(
    model: &mut ScriptModel,
    pruner: Option<&Pruner>,
    x: &Tensor,
    y: &Tensor,
) -> Result<f64, Box<dyn Error>> {
    model.set_train(false)?;
    let logits = tch::no_grad(|| match pruner {
        Some(p) => p.forward(|| model.forward(x))?,
        None => model.forward(x),
    })?;
    Ok(logits
        .argmax(-1, false)
        .eq_tensor(y)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]))
}

fn main() -> Result<(), Box<dyn Error>> {
    let device = Device::cuda_if_available();
    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/demo");
    std::fs::create_dir_all(&out_dir)?;
    let data = load_digits(&data_dir.join("digits.safetensors"), device)?;
    let mut model = ScriptModel::load(data_dir.join("digits_cnn.pt"), device)?;
    println!(
        "digits CNN from TorchScript on {device:?}: {} parameters, {} train / {} test images",
        model
            .var_store()
            .trainable_variables()
            .iter()
            .map(|t| t.numel())
            .sum::<usize>(),
        data.train_y.size()[0],
        data.test_y.size()[0]
    );
    let weights: Vec<String> = model
        .parameter_names()
        .iter()
        .filter(|n| n.ends_with("weight") && model.var_store().variables()[*n].dim() >= 2)
        .cloned()
        .collect();
    let names: Vec<&str> = weights.iter().map(String::as_str).collect();

    let pruner = Pruner::new(model.var_store());
    // Built before any pruning: it picks up the `_orig` tensors as they appear.
    let mut opt = nn::Adam::default().build(model.var_store(), 1e-3)?;
    let baseline = accuracy(&mut model, Some(&pruner), &data.test_x, &data.test_y)?;
    println!("\nround  sparsity  accuracy after pruning  after fine-tuning");
    println!(
        "{:>5}  {:>7.2}%  {:>22.2}%  {:>17}",
        0,
        0.0,
        100.0 * baseline,
        "-"
    );
    tch::manual_seed(0);
    for round in 1..=ROUNDS {
        prune_round(
            round,
            &mut model,
            &pruner,
            &mut opt,
            &data,
            &names,
            |_, p| {
                p.global_unstructured(&names, &L1Unstructured::new(0.5)?, &Default::default())?;
                Ok(String::new())
            },
        )?;
    }
    // Structured: half of every layer's channels, with everything coupled to them, so that the
    // exact route can remove them afterwards.
    let example = data.test_x.narrow(0, 0, 1);
    prune_round(
        ROUNDS + 1,
        &mut model,
        &pruner,
        &mut opt,
        &data,
        &names,
        |m, p| {
            Ok(format!(
                "   (channels: {})",
                prune_channel_groups(m, p, &example)?
            ))
        },
    )?;

    pruner.remove_all()?;
    let export = out_dir.join("digits_cnn_pruned.pt");
    model.save(&export)?;
    let mut reloaded = ScriptModel::load(&export, device)?;
    let reloaded_accuracy = accuracy(&mut reloaded, None, &data.test_x, &data.test_y)?;
    let tensors: Vec<(String, Tensor)> = weights
        .iter()
        .map(|n| {
            (
                n.clone(),
                reloaded.var_store().variables()[n].shallow_clone(),
            )
        })
        .collect();
    let report = Report::new(&tensors)?;
    // Relative to where it was run from (`make demo`: the repository), as a user would type it.
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| export.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| export.clone());
    println!(
        "\nexported {} (TorchScript, loads in Python with torch.jit.load)",
        shown.display()
    );
    println!(
        "reloaded export: accuracy {:.2}%, weight sparsity {:.2}% ({} of {} weights are zero)",
        100.0 * reloaded_accuracy,
        100.0 * report.sparsity,
        report.zeros,
        report.numel
    );
    shrink(&export, &shown, device, &data, &example)
}

/// One round: `prune` (which returns a note for the table), then fine-tuning, with the accuracy
/// after each and the weight sparsity printed.
fn prune_round(
    round: usize,
    model: &mut ScriptModel,
    pruner: &Pruner,
    opt: &mut nn::Optimizer,
    data: &Digits,
    names: &[&str],
    prune: impl FnOnce(&ScriptModel, &Pruner) -> Result<String, Box<dyn Error>>,
) -> Result<(), Box<dyn Error>> {
    let note = prune(model, pruner)?;
    let pruned_accuracy = accuracy(model, Some(pruner), &data.test_x, &data.test_y)?;
    fine_tune(model, pruner, opt, data)?;
    let tuned = accuracy(model, Some(pruner), &data.test_x, &data.test_y)?;
    let sparsity = Report::new(&masked(pruner, names))?.sparsity;
    println!(
        "{round:>5}  {:>7.2}%  {:>22.2}%  {:>16.2}%{note}",
        100.0 * sparsity,
        100.0 * pruned_accuracy,
        100.0 * tuned
    );
    Ok(())
}

/// `EPOCHS_PER_ROUND` epochs of fine-tuning through the pruning hooks (the masks stay applied).
fn fine_tune(
    model: &mut ScriptModel,
    pruner: &Pruner,
    opt: &mut nn::Optimizer,
    data: &Digits,
) -> Result<(), Box<dyn Error>> {
    let n = data.train_y.size()[0];
    model.set_train(true)?;
    for _ in 0..EPOCHS_PER_ROUND {
        let perm = Tensor::randperm(n, (Kind::Int64, data.train_x.device()));
        for start in (0..n).step_by(BATCH as usize) {
            let idx = perm.narrow(0, start, BATCH.min(n - start));
            let logits =
                pruner.forward(|| model.forward(&data.train_x.index_select(0, &idx)))??;
            opt.backward_step(
                &logits.cross_entropy_for_logits(&data.train_y.index_select(0, &idx)),
            );
        }
    }
    Ok(())
}

/// Structured pruning of whole channel groups: for each group the shrink analysis finds (a
/// layer's output channels and every slice coupled to them), the layer's `CHANNELS` weakest
/// channels by L2 norm (`ln_structured`'s choice), masked in every coupled parameter: the weight
/// rows, the bias, the batch norm's scale and shift, the next layer's input columns. A channel
/// zeroed only in its weight would still carry its bias into the next layer. Returns the
/// channel counts before and after, for printing.
fn prune_channel_groups(
    model: &ScriptModel,
    pruner: &Pruner,
    example: &Tensor,
) -> Result<String, Box<dyn Error>> {
    let vars = model.var_store().variables();
    // What modules compute with: a tensor pruned before is no longer a store variable of its
    // own name (it has `_orig` and `_mask`).
    let current = |name: &str| {
        pruner
            .tensor(name)
            .or_else(|| vars.get(name).map(Tensor::shallow_clone))
    };
    let method = LnStructured::new(CHANNELS, 2.0, 0)?;
    let mut counts = Vec::new();
    for group in model.channel_groups(example)?.groups {
        // The producing layer's weight: the first coupled weight whose rows are the channels.
        let producer = group.slices.iter().find(|s| {
            s.is_parameter && s.dim == 0 && current(&s.name).is_some_and(|t| t.dim() >= 2)
        });
        let Some(producer) = producer.filter(|_| group.blocked.is_empty()) else {
            continue;
        };
        let weight = current(&producer.name).ok_or("no producer weight")?;
        let rows = method.compute_mask(&weight, &weight.ones_like())?;
        // 1 for a kept channel, 0 for a pruned one.
        let keep = rows.flatten(1, -1).amax([1].as_slice(), false);
        for s in group.slices.iter().filter(|s| s.is_parameter) {
            let t = current(&s.name).ok_or(format!("no parameter {}", s.name))?;
            // Along `dim`, channel c owns `inner` consecutive indices from `offset`.
            let mut shape = vec![1i64; t.dim()];
            shape[s.dim] = group.channels * s.inner;
            let along = keep
                .repeat_interleave_self_int(s.inner, 0, None)
                .reshape(shape.as_slice());
            let mask = t.ones_like();
            mask.narrow(s.dim as i64, s.offset, group.channels * s.inner)
                .copy_(&along);
            pruner.custom_from_mask(&s.name, &mask)?;
        }
        let kept = keep.sum(Kind::Int64).int64_value(&[]);
        counts.push(format!("{} -> {kept}", group.channels));
    }
    Ok(counts.join(", "))
}

/// The exact route: the export's all-zero channels removed. Prints the size and speed of both
/// models and checks that their outputs agree.
fn shrink(
    export: &Path,
    shown: &Path,
    device: Device,
    data: &Digits,
    example: &Tensor,
) -> Result<(), Box<dyn Error>> {
    let mut original = ScriptModel::load(export, device)?;
    original.set_train(false)?;
    let mut shrunk = ScriptModel::load(export, device)?;
    shrunk.set_train(false)?;
    let opts = ShrinkOptions {
        exact: true,
        ..Default::default()
    };
    let report = shrunk.shrink(example, &opts)?;
    let path = export.with_file_name("digits_cnn_shrunk.pt");
    shrunk.save(&path)?;
    let shrunk_shown = shown.with_file_name("digits_cnn_shrunk.pt");

    let before = tch::no_grad(|| original.forward(&data.test_x))?;
    let after = tch::no_grad(|| shrunk.forward(&data.test_x))?;
    let difference = (&after - &before).abs().max().double_value(&[]);
    let scale = before.abs().max().double_value(&[]);
    let (ms_before, ms_after) = latencies(&original, &shrunk, &data.test_x)?;
    let channels: Vec<String> = report
        .groups
        .iter()
        .filter(|g| g.after < g.before)
        .map(|g| format!("{} -> {}", g.before, g.after))
        .collect();
    println!(
        "\nshrunk {} -> {} (exact route: the all-zero channels removed, {})",
        shown.display(),
        shrunk_shown.display(),
        channels.join(", ")
    );
    for g in report.groups.iter().filter(|g| !g.blocked.is_empty()) {
        println!(
            "  kept {} channels of {}: {}",
            g.before,
            g.producer,
            g.blocked.join("; ")
        );
    }
    println!(
        "{:<10} {:>10} {:>11} {:>9} {:>24}",
        "", "parameters", "file bytes", "MACs", "latency (360 images)"
    );
    let row = |name: &str, params: i64, bytes: u64, macs: i64, ms: f64| {
        println!(
            "{name:<10} {params:>10} {bytes:>11} {macs:>9} {:>21.3} ms",
            ms
        );
    };
    row(
        "exported",
        report.parameters_before,
        std::fs::metadata(export)?.len(),
        report.macs_before,
        ms_before,
    );
    row(
        "shrunk",
        report.parameters_after,
        std::fs::metadata(&path)?.len(),
        report.macs_after,
        ms_after,
    );
    let agree = |y: &Tensor| {
        y.argmax(-1, false)
            .eq_tensor(&data.test_y)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[])
    };
    println!(
        "outputs on the 360 test images: largest difference {difference:.1e} ({:.1e} relative), accuracy {:.2}% -> {:.2}%",
        difference / scale.max(f64::MIN_POSITIVE),
        100.0 * agree(&before),
        100.0 * agree(&after)
    );
    if difference > 1e-5 * scale {
        return Err(format!("the exact route changed the outputs by {difference:e}").into());
    }
    Ok(())
}

/// Median milliseconds of 9 forward passes of each model after 2 warm-up passes, alternating.
fn latencies(a: &ScriptModel, b: &ScriptModel, x: &Tensor) -> Result<(f64, f64), Box<dyn Error>> {
    let mut times = [Vec::new(), Vec::new()];
    for run in 0..11 {
        for (m, t) in [a, b].into_iter().zip(times.iter_mut()) {
            let start = Instant::now();
            let y = tch::no_grad(|| m.forward(x))?;
            if let Device::Cuda(i) = y.device() {
                tch::Cuda::synchronize(i as i64);
            }
            if run >= 2 {
                t.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((median(&mut times[0]), median(&mut times[1])))
}

/// The pruned weights as modules compute with them.
fn masked(pruner: &Pruner, names: &[&str]) -> Vec<(String, Tensor)> {
    names
        .iter()
        .filter_map(|n| Some((n.to_string(), pruner.tensor(n)?)))
        .collect()
}
