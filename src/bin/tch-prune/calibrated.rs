//! `tch-prune prune --method wanda|sparsegpt --calibration FILE`: calibrated pruning of a
//! TorchScript model's linear layers, from the inputs of its forward.

use crate::limits::Limits;
use crate::plan::{split_patterns, MethodName, Step};
use crate::{device, one_line, outputs, policy, quiet, PruneArgs};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::Path;
use tch_prune::checkpoint::write_all_or_nothing;
use tch_prune::model::{CalibrationInputs, ModelFile};
use tch_prune::{CalibratedMethod, Calibration, LayerReport, Order, SparseGpt, Sparsity, Wanda};

/// Whether the arguments ask for calibrated pruning.
pub(crate) fn wanted(args: &PruneArgs) -> bool {
    matches!(args.method.as_deref(), Some("wanda" | "sparsegpt")) || args.calibration.is_some()
}

#[derive(Serialize)]
struct Summary<'a> {
    method: &'a str,
    sparsity: String,
    order: &'a str,
    samples: i64,
    output: String,
    layers: Vec<Layer>,
}

#[derive(Serialize)]
struct Layer {
    name: String,
    block: usize,
    samples: i64,
    sparsity: f64,
    reconstruction_error: Option<f64>,
    seconds: f64,
}

/// The method the options ask for, checked before anything is read.
fn method(args: &PruneArgs) -> Result<(CalibratedMethod, Sparsity)> {
    let name = args.method.as_deref().unwrap_or_default();
    if !matches!(name, "wanda" | "sparsegpt") {
        bail!("--calibration is for --method wanda or sparsegpt, not '{name}'");
    }
    if args.global || args.n.is_some() || args.dim.is_some() || args.seed.is_some() {
        bail!("--method {name} takes --amount FRACTION or --pattern N:M (not --global, --n, --dim or --seed)");
    }
    let sparsity = match (&args.amount, &args.pattern) {
        (Some(_), Some(_)) => bail!("--method {name}: give --amount or --pattern, not both"),
        (None, None) => {
            bail!("--method {name} needs --amount FRACTION (e.g. 0.5) or --pattern N:M (e.g. 2:4)")
        }
        (Some(amount), None) => {
            let fraction: f64 = amount.parse().ok().filter(|_| amount.contains('.')).with_context(|| {
                format!("--amount '{amount}': --method {name} takes a fraction with a decimal point (e.g. 0.5)")
            })?;
            Sparsity::fraction(fraction)?
        }
        (None, Some(pattern)) => Sparsity::Pattern(pattern.parse()?),
    };
    let method = if name == "wanda" {
        CalibratedMethod::Wanda(Wanda::new(sparsity))
    } else {
        CalibratedMethod::SparseGpt(SparseGpt::new(sparsity))
    };
    Ok((method, sparsity))
}

pub(crate) fn run(args: PruneArgs, output: &Path, show: bool) -> Result<()> {
    let (method, sparsity) = method(&args)?;
    let Some(calibration_path) = &args.calibration else {
        bail!("--method {} needs --calibration FILE: a safetensors file of the forward's inputs (a tensor named 'input', samples first)", args.method.as_deref().unwrap_or_default());
    };
    let batch_size = args.batch_size;
    if batch_size < 1 {
        bail!("--batch-size {batch_size}: it must be at least 1");
    }
    // Everything the user gave is checked before the model is loaded, and nothing is written
    // before the pruning succeeded.
    let inputs = CalibrationInputs::read(calibration_path)?;
    let device = device(&args.device)?;
    let model = quiet::quietly(show, || {
        ModelFile::open_with(&args.input, device, policy(args.trust_code))
    })?;
    let Some(script) = model.script() else {
        bail!(
            "{}: calibrated pruning runs the model's forward on the calibration inputs, so it needs a TorchScript model (this is a state dict)",
            args.input.display()
        );
    };
    let step = Step {
        params: args.params.as_deref().map(split_patterns),
        method: MethodName::Identity,
        amount: None,
        n: None,
        dim: None,
        global: false,
        pattern: None,
        exclude: args.exclude.as_deref().map(split_patterns),
        transformer: false,
    };
    let selected = step.select(&model.parameters(), &model.buffers())?;
    let calibrator = script.calibrator(&selected)?;
    let layers = calibrator.layers();
    if args.params.is_some() {
        if let Some(missing) = selected.iter().find(|n| !layers.contains(n)) {
            bail!(
                "'{}' is not the weight of a linear layer that forward calls at its top level: Wanda and SparseGPT prune linear layers whose inputs they see",
                one_line(missing)
            );
        }
    }
    if layers.is_empty() {
        bail!("nothing to prune: forward calls no linear layer (aten::linear) at its top level whose weight is selected");
    }
    let order = if args.sequential {
        Order::Sequential
    } else {
        Order::OneShot
    };

    let pruner = model.pruner()?;
    let bar = ProgressBar::new(layers.len() as u64).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] {bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    bar.set_message("calibrating");
    // Each forward pass runs the model's code: under the time and memory limits, as shrink's
    // runs (a failure inside is kept whole, to be reported as the run's error).
    let limits = Limits::from_flags(&args.time_limit, args.memory_limit.as_deref(), &args.input)?;
    let batches = inputs.batches(batch_size, device)?;
    let calibration = Calibration::with_hessian();
    let mut failure: Option<anyhow::Error> = None;
    let reports = pruner.prune_calibrated(
        &calibration,
        &calibrator.blocks(),
        &method,
        order,
        || {
            pruner.apply_masks()?;
            for batch in &batches {
                if let Err(e) = limits.run("forward", || Ok(calibrator.run(&calibration, batch)?)) {
                    let line = e.to_string();
                    failure = Some(e);
                    return Err(tch_prune::PruneError::Calibration(line));
                }
            }
            Ok(())
        },
        |report| {
            bar.inc(1);
            bar.set_message(report.name.clone());
        },
    );
    bar.finish_and_clear();
    let reports = match (reports, failure) {
        (Ok(reports), _) => reports,
        (Err(_), Some(e)) => return Err(e),
        (Err(e), None) => return Err(e.into()),
    };

    let state = args
        .state_out
        .as_ref()
        .map(|path| (path, model.reparametrized_entries(&pruner)));
    pruner.remove_all()?;
    write_all_or_nothing(|| -> Result<()> {
        quiet::quietly(show, || model.save(output, &pruner))?;
        if let Some((path, state)) = &state {
            outputs::write_state(path, state)?;
        }
        Ok(())
    })?;

    let method_name = args.method.as_deref().unwrap_or_default();
    let order_name = if args.sequential {
        "sequential"
    } else {
        "one-shot"
    };
    if args.json {
        let summary = Summary {
            method: method_name,
            sparsity: sparsity.to_string(),
            order: order_name,
            samples: inputs.samples(),
            output: output.display().to_string(),
            layers: reports.iter().map(layer).collect(),
        };
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{:<48} {:>5} {:>9} {:>14}",
            "layer", "block", "sparsity", "rel. error"
        );
        for r in &reports {
            let error = r.error.map_or("-".to_string(), |e| format!("{e:.3e}"));
            println!(
                "{:<48} {:>5} {:>8.2}% {:>14}",
                one_line(&r.name),
                r.block,
                100.0 * r.sparsity,
                error
            );
        }
        println!(
            "pruned {} linear layers with {method_name} ({sparsity}, {order_name}, {} calibration samples); wrote {}",
            reports.len(),
            inputs.samples(),
            output.display()
        );
    }
    Ok(())
}

fn layer(r: &LayerReport) -> Layer {
    Layer {
        name: r.name.clone(),
        block: r.block,
        samples: r.samples,
        sparsity: r.sparsity,
        reconstruction_error: r.error,
        seconds: r.seconds,
    }
}
