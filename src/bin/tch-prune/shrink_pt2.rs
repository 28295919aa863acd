//! `tch-prune shrink` on a `torch.export` archive (`.pt2`): ExportedModel::shrink, which runs
//! nothing (the shapes are the program's own), then the groups, parameters, MACs and file
//! sizes. With `--verify` the program runs, twice, through the crate's interpreter
//! (`ExportedModel::forward`), under the run limits: the shrunk one against the original
//! with the removed channels zeroed. No latency: a node-by-node interpreter is not the speed of
//! the program compiled.

use crate::limits::Limits;
use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;
use tch::Tensor;
use tch_prune::model::ExportedModel;
use tch_prune::shrink::{ShrinkOptions, ShrinkReport};

/// What the `.pt2` path takes of the command line.
pub(crate) struct Pt2Args {
    pub input: PathBuf,
    pub output: PathBuf,
    pub json: bool,
    pub verify: bool,
    pub limits: Limits,
}

#[derive(serde::Serialize)]
struct Summary<'a> {
    input: String,
    output: String,
    /// The shapes the analysis read: the program's own (those it was exported with).
    input_shape: Option<Vec<i64>>,
    #[serde(flatten)]
    report: &'a ShrinkReport,
    file_bytes_before: u64,
    file_bytes_after: u64,
    /// `--verify`: the largest difference of the outputs, relative to the reference's largest
    /// magnitude.
    #[serde(skip_serializing_if = "Option::is_none")]
    verify_relative_error: Option<f64>,
}

/// `--verify`: the shrunk `model` and the original with the `report`'s channels zeroed, run on
/// one random input of the program's recorded shape; the relative error of their outputs.
fn verify(args: &Pt2Args, model: &ExportedModel, report: &ShrinkReport) -> Result<f64> {
    let shape = model.input_shape().ok_or_else(|| {
        anyhow!(
            "{}: --verify runs the program on an input of the shape it was exported with, and the program records none (its first input is not a tensor of fixed sizes)",
            args.input.display()
        )
    })?;
    tch::manual_seed(0);
    let x = Tensor::randn(shape.as_slice(), tch::kind::FLOAT_CPU);
    let mut original = ExportedModel::load(&args.input)?;
    original.zero_channels(&report.removed)?;
    let outputs = |m: &ExportedModel| -> Result<Tensor> {
        args.limits.run("forward", || {
            let y = tch::no_grad(|| m.forward(&[x.shallow_clone()]))?;
            if y.is_empty() {
                bail!("the program returned no tensor: --verify compares tensor outputs");
            }
            let flat: Vec<Tensor> = y
                .iter()
                .map(|t| t.flatten(0, -1).to_kind(tch::Kind::Double))
                .collect();
            Ok(Tensor::cat(&flat, 0))
        })
    };
    let reference = outputs(&original)?;
    let y = outputs(model)?;
    let scale = f64::try_from(reference.abs().max())?.max(f64::MIN_POSITIVE);
    Ok(f64::try_from((&y - &reference).abs().max())? / scale)
}

/// Shrinks the archive, writes the output and prints the summary.
pub(crate) fn run(args: &Pt2Args, opts: &ShrinkOptions) -> Result<()> {
    let mut model = ExportedModel::load(&args.input)
        .with_context(|| format!("cannot shrink {}", args.input.display()))?;
    let report = model
        .shrink(opts)
        .with_context(|| format!("cannot shrink {}", args.input.display()))?;
    if report.groups.iter().all(|g| g.after == g.before) {
        let why = report
            .groups
            .iter()
            .find_map(|g| {
                g.blocked
                    .first()
                    .map(|b| format!(" (e.g. {}: {b})", g.producer))
            })
            .unwrap_or_default();
        bail!(
            "nothing could be shrunk: all {} channel groups keep every channel{}{why}; {} was not written",
            report.groups.len(),
            if opts.exact { ", none entirely zero" } else { "" },
            args.output.display()
        );
    }
    let verify_relative_error = match args.verify {
        true => Some(verify(args, &model, &report)?),
        false => None,
    };
    // Decided before anything is written: a failed check leaves no file.
    if let Some(err) = verify_relative_error {
        if err.is_nan() || err > 1e-4 {
            bail!(
                "verify: the shrunk program differs from the original with the removed channels zeroed (relative error {err:.3e} > 1e-4); {} was not written",
                args.output.display()
            );
        }
    }
    model.save(&args.output)?;
    let summary = Summary {
        input: args.input.display().to_string(),
        output: args.output.display().to_string(),
        input_shape: model.input_shape(),
        report: &report,
        file_bytes_before: std::fs::metadata(&args.input)?.len(),
        file_bytes_after: std::fs::metadata(&args.output)?.len(),
        verify_relative_error,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_table(&summary);
    }
    Ok(())
}

fn print_table(s: &Summary) {
    let r = s.report;
    println!("{:>8} {:>8}  group (producer)", "before", "after");
    for g in &r.groups {
        let why = if g.blocked.is_empty() {
            String::new()
        } else {
            format!("  [kept: {}]", g.blocked.join("; "))
        };
        println!("{:>8} {:>8}  {}{}", g.before, g.after, g.producer, why);
    }
    let ratio = |a: f64, b: f64| if a > 0.0 { b / a } else { f64::NAN };
    println!();
    println!("{:<12} {:>14} {:>14} {:>8}", "", "before", "after", "ratio");
    for (name, a, b) in [
        (
            "parameters",
            r.parameters_before as f64,
            r.parameters_after as f64,
        ),
        ("MACs", r.macs_before as f64, r.macs_after as f64),
        (
            "file bytes",
            s.file_bytes_before as f64,
            s.file_bytes_after as f64,
        ),
    ] {
        println!(
            "{:<12} {:>14} {:>14} {:>8.3}",
            name,
            format!("{a:.0}"),
            format!("{b:.0}"),
            ratio(a, b)
        );
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    if let Some(e) = s.verify_relative_error {
        println!(
            "verify: relative error {e:.3e} against the original with the removed channels zeroed (both programs run by tch-prune's interpreter)"
        );
    }
    let ran = match s.verify_relative_error {
        Some(_) => "run only by --verify",
        None => "nothing was run",
    };
    match &s.input_shape {
        Some(shape) => println!(
            "wrote {} (the program's shapes: input {shape:?}, as exported; {ran})",
            s.output
        ),
        None => println!("wrote {} ({ran})", s.output),
    }
}
