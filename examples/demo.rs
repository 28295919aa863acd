//! The main job, end to end (`make demo`): a CNN trained in PyTorch on the 8x8 handwritten
//! digits (data/, made by scripts/make_demo_data.py) is loaded from TorchScript, pruned
//! iteratively (global L1 over every conv and linear weight, half of what remains each round)
//! with fine-tuning between rounds through the pruning hooks, made permanent, exported as
//! TorchScript, and the export reloaded and checked.

use std::error::Error;
use std::path::Path;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use tch_prune::checkpoint::read_safetensors;
use tch_prune::{L1Unstructured, Pruner, Report, ScriptModel};

const ROUNDS: usize = 4;
const EPOCHS_PER_ROUND: usize = 3;
const BATCH: i64 = 64;

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
    let n = data.train_y.size()[0];
    for round in 1..=ROUNDS {
        pruner.global_unstructured(&names, &L1Unstructured::new(0.5)?, &Default::default())?;
        let pruned_accuracy = accuracy(&mut model, Some(&pruner), &data.test_x, &data.test_y)?;
        model.set_train(true)?;
        for _ in 0..EPOCHS_PER_ROUND {
            let perm = Tensor::randperm(n, (Kind::Int64, device));
            for start in (0..n).step_by(BATCH as usize) {
                let idx = perm.narrow(0, start, BATCH.min(n - start));
                let logits =
                    pruner.forward(|| model.forward(&data.train_x.index_select(0, &idx)))??;
                opt.backward_step(
                    &logits.cross_entropy_for_logits(&data.train_y.index_select(0, &idx)),
                );
            }
        }
        let tuned = accuracy(&mut model, Some(&pruner), &data.test_x, &data.test_y)?;
        let sparsity = Report::new(&masked(&pruner, &names))?.sparsity;
        println!(
            "{round:>5}  {:>7.2}%  {:>22.2}%  {:>16.2}%",
            100.0 * sparsity,
            100.0 * pruned_accuracy,
            100.0 * tuned
        );
    }

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
    Ok(())
}

/// The pruned weights as modules compute with them.
fn masked(pruner: &Pruner, names: &[&str]) -> Vec<(String, Tensor)> {
    names
        .iter()
        .filter_map(|n| Some((n.to_string(), pruner.tensor(n)?)))
        .collect()
}
