//! `tch-prune shrink` on a `torch.export` archive (`.pt2`): ExportedModel::shrink, which runs
//! nothing (the shapes are the program's own), then the groups, parameters, MACs and file
//! sizes. With `--verify` the program runs, twice, through the crate's interpreter
//! (`ExportedModel::forward`), under the run limits: the shrunk one against the original
//! with the removed channels zeroed. No latency: a node-by-node interpreter is not the speed of
//! the program compiled.

use crate::limits::Limits;
use crate::shrink_result::{check_shrank, check_verified, print_sizes, relative_error};
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
    relative_error(&outputs(model)?, &outputs(&original)?)
}

/// Shrinks the archive with the options `options` makes of its parameters' names, writes the
/// output and prints the summary.
pub(crate) fn run(
    args: &Pt2Args,
    options: impl FnOnce(&[String]) -> Result<ShrinkOptions>,
) -> Result<()> {
    let mut model = ExportedModel::load(&args.input)
        .with_context(|| format!("cannot shrink {}", args.input.display()))?;
    let parameters: Vec<String> = model
        .tensors()
        .iter()
        .map(|(name, _)| name.clone())
        .filter(|name| model.is_parameter(name))
        .collect();
    let opts = options(&parameters)?;
    let report = model
        .shrink(&opts)
        .with_context(|| format!("cannot shrink {}", args.input.display()))?;
    check_shrank(&report, opts.exact, &args.output)?;
    let verify_relative_error = match args.verify {
        true => Some(verify(args, &model, &report)?),
        false => None,
    };
    check_verified(verify_relative_error, &args.output)?;
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
    print_sizes(r, s.file_bytes_before, s.file_bytes_after);
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
