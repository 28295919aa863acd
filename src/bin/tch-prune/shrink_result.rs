//! What both `shrink` paths (TorchScript, `.pt2`) do with a result: the checks before anything
//! is written (that something shrank, `--verify`'s comparison), and the table of its groups
//! and sizes.

use anyhow::{bail, Result};
use std::path::Path;
use tch::Tensor;
use tch_prune::shrink::ShrinkReport;

/// Fails, naming the groups' first reason, when the analysis left every channel in place.
pub(crate) fn check_shrank(report: &ShrinkReport, exact: bool, output: &Path) -> Result<()> {
    if report.groups.iter().any(|g| g.after != g.before) {
        return Ok(());
    }
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
        if exact { ", none entirely zero" } else { "" },
        output.display()
    )
}

/// The largest difference of `y` from `reference`, relative to the reference's largest
/// magnitude: what `--verify` holds to 1e-4.
pub(crate) fn relative_error(y: &Tensor, reference: &Tensor) -> Result<f64> {
    let scale = f64::try_from(reference.abs().max())?.max(f64::MIN_POSITIVE);
    Ok(f64::try_from((y - reference).abs().max())? / scale)
}

/// Fails when `--verify` measured more than 1e-4 (or nothing comparable): before anything is
/// written, so a failed check leaves no file.
pub(crate) fn check_verified(error: Option<f64>, output: &Path) -> Result<()> {
    match error {
        Some(err) if err.is_nan() || err > 1e-4 => bail!(
            "verify: the shrunk model differs from the original with the removed channels zeroed (relative error {err:.3e} > 1e-4); {} was not written",
            output.display()
        ),
        _ => Ok(()),
    }
}

/// `after / before`, NaN for nothing before.
pub(crate) fn ratio(before: f64, after: f64) -> f64 {
    if before > 0.0 {
        after / before
    } else {
        f64::NAN
    }
}

/// Each group's widths, then the parameters, MACs and file bytes before and after.
pub(crate) fn print_sizes(r: &ShrinkReport, file_bytes_before: u64, file_bytes_after: u64) {
    println!("{:>8} {:>8}  group (producer)", "before", "after");
    for g in &r.groups {
        let why = if g.blocked.is_empty() {
            String::new()
        } else {
            format!("  [kept: {}]", g.blocked.join("; "))
        };
        println!("{:>8} {:>8}  {}{}", g.before, g.after, g.producer, why);
    }
    println!();
    println!("{:<12} {:>14} {:>14} {:>8}", "", "before", "after", "ratio");
    for (name, a, b) in [
        ("parameters", r.parameters_before, r.parameters_after),
        ("MACs", r.macs_before, r.macs_after),
        (
            "file bytes",
            file_bytes_before as i64,
            file_bytes_after as i64,
        ),
    ] {
        println!(
            "{:<12} {:>14} {:>14} {:>8.3}",
            name,
            a,
            b,
            ratio(a as f64, b as f64)
        );
    }
}
