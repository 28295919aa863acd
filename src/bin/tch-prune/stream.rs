//! The CLI's streaming path: safetensors checkpoints (one file or sharded) and `torch.save`
//! zips pruned through a memory map, written tensor by tensor ([`StreamedModel`]). Taken whenever it gives the
//! in-memory path's answer; the summary says which path ran.

use crate::folder::Io;
use crate::plan::Step;
use crate::PruneArgs;
use anyhow::{Context, Result};
use std::collections::HashSet;
use tch_prune::checkpoint::Format;
use tch_prune::model::{StreamStep, StreamedModel};
use tch_prune::PruningMethod;

/// What [`prune`] did.
pub enum Outcome {
    /// Pruned and written; the summary line.
    Streamed(String),
    /// Left to the in-memory path, for this reason.
    InMemory(String),
}

/// Prunes the input on the streaming path if it gives the same answer as the in-memory one.
pub fn prune(args: &PruneArgs, steps: &[Step], io: &Io) -> Result<Outcome> {
    let sharded = io.is_sharded();
    let in_memory = |reason: &str| -> Result<Outcome> { Ok(Outcome::InMemory(reason.to_string())) };
    if args.in_memory {
        return in_memory("--in-memory asks for it");
    }
    if args.state_out.is_some() {
        return in_memory("--state-out writes the reparametrized state");
    }
    if !args.device.eq_ignore_ascii_case("cpu") {
        return in_memory("the streaming path runs on the CPU");
    }
    if !sharded
        && !matches!(
            Format::detect(&io.weights)?,
            Format::Safetensors | Format::TorchZip
        )
    {
        return Ok(Outcome::InMemory(
            "only safetensors files and torch.save zips are streamed".to_string(),
        ));
    }
    let model = StreamedModel::open(&io.weights)?;
    // What the file itself rules out (a checkpoint saved pruned, ties, a torch.save layout that
    // is not a plain slice of the file), before the steps pick names the in-memory path reads
    // otherwise (`<name>` for `<name>_orig` and `<name>_mask`).
    if let Some(reason) = model.unsupported(&[]) {
        return in_memory(&reason);
    }
    let parameters = model.parameters();
    let buffers = model.buffers();
    let selections = steps
        .iter()
        .map(|s| s.select(&parameters, &buffers))
        .collect::<Result<Vec<_>, _>>()?;
    let methods = steps
        .iter()
        .map(Step::method)
        .collect::<Result<Vec<Box<dyn PruningMethod>>, _>>()?;
    let stream_steps: Vec<StreamStep<'_>> = steps
        .iter()
        .zip(selections)
        .zip(&methods)
        .map(|((step, names), method)| StreamStep {
            names,
            method: method.as_ref(),
            global: step.global,
        })
        .collect();
    if let Some(reason) = model.unsupported(&stream_steps) {
        return in_memory(&reason);
    }
    let selected: Vec<Vec<String>> = stream_steps.iter().map(|s| s.names.clone()).collect();
    crate::plan::print_warnings(&selected, &parameters);
    if let Some(seed) = args.seed {
        tch::manual_seed(seed);
    }
    let report = stream_steps
        .iter()
        .position(|s| s.names.is_empty())
        .map_or(Ok(()), |i| {
            Err(tch_prune::PruneError::NothingToPrune).with_context(|| format!("step {}", i + 1))
        })
        .and_then(|()| io.write(|dest| Ok(model.prune(&stream_steps, dest)?)))?;
    let pruned: HashSet<&str> = stream_steps
        .iter()
        .flat_map(|s| s.names.iter().map(String::as_str))
        .collect();
    let ratio = |z: i64, n: i64| {
        if n == 0 {
            0.0
        } else {
            100.0 * z as f64 / n as f64
        }
    };
    let files = if model.is_sharded() {
        format!("{} shards and their index", report.files)
    } else {
        "one file".to_string()
    };
    Ok(Outcome::Streamed(format!(
        "pruned {} tensors to {:.2}% sparsity ({:.2}% of all {} elements are zero); wrote {} (streamed from a memory map: {files}){}",
        pruned.len(),
        ratio(report.pruned_zeros, report.pruned_numel),
        ratio(report.zeros, report.numel),
        report.numel,
        io.output.display(),
        io.carried_summary(),
    )))
}
