//! The checks both `shrink` paths (TorchScript, `.pt2`) make of a result before anything is
//! written: that something shrank, and `--verify`'s comparison.

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
