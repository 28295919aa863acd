//! `tch-prune shrink` on a `torch.export` archive (`.pt2`): ExportedModel::shrink, which runs
//! nothing (the shapes are the program's own), then the groups, parameters, MACs and file
//! sizes. No latency and no `--verify`: running an exported program needs PyTorch's Python
//! runtime (libtorch's C++ one, nativert, is not in the libtorch this crate links).

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use tch_prune::model::ExportedModel;
use tch_prune::shrink::{ShrinkOptions, ShrinkReport};

/// What the `.pt2` path takes of the command line.
pub(crate) struct Pt2Args {
    pub input: PathBuf,
    pub output: PathBuf,
    pub json: bool,
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
}

/// The reason `--verify` is refused on a `.pt2`, in one line.
pub(crate) const NO_VERIFY: &str = "--verify runs the shrunk program, and tch-prune cannot run a .pt2 (an exported program needs PyTorch's Python runtime; libtorch's C++ runner, nativert, is not in the libtorch tch-prune links): drop --verify and check the output in Python (torch.export.load(OUT).module()(x) against the original with the removed channels zeroed: --json lists them under \"removed\")";

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
    model.save(&args.output)?;
    let summary = Summary {
        input: args.input.display().to_string(),
        output: args.output.display().to_string(),
        input_shape: model.input_shape(),
        report: &report,
        file_bytes_before: std::fs::metadata(&args.input)?.len(),
        file_bytes_after: std::fs::metadata(&args.output)?.len(),
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
    match &s.input_shape {
        Some(shape) => println!(
            "wrote {} (the program's shapes: input {shape:?}, as exported; nothing was run)",
            s.output
        ),
        None => println!("wrote {} (nothing was run)", s.output),
    }
}
