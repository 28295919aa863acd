//! The CLI's streaming path: safetensors checkpoints (one file or sharded), `torch.save` zips
//! and `.pt2` archives pruned through a memory map, written tensor by tensor ([`StreamedModel`]). Taken whenever it gives the
//! in-memory path's answer; the summary says which path ran.

use crate::folder::Io;
use crate::plan::Step;
use crate::PruneArgs;
use anyhow::{bail, Context, Result};
use std::cell::Cell;
use std::collections::HashSet;
use tch_prune::checkpoint::Format;
use tch_prune::distributed::ProcessGroup;
use tch_prune::model::{StreamStep, StreamedModel};
use tch_prune::PruningMethod;

/// The process group of a run launched as several ranks (`torchrun --nproc-per-node N
/// --no-python tch-prune prune ...`, or `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT` set
/// by hand), joined before anything else, so that a rank whose arguments, input or output fail
/// its checks tells the others instead of leaving them to wait: every rank takes part in one
/// agreement before the ranks write, with its error if it failed before it.
pub struct Ranks {
    pub group: ProcessGroup,
    agreed: Cell<bool>,
}

impl Ranks {
    /// Joins the group; `None` when `WORLD_SIZE` is unset or 1.
    pub fn join() -> Result<Option<Ranks>> {
        match std::env::var("WORLD_SIZE") {
            Ok(w) if !w.trim().is_empty() && w.trim() != "1" => Ok(Some(Ranks {
                group: ProcessGroup::from_env()?,
                agreed: Cell::new(false),
            })),
            _ => Ok(None),
        }
    }

    /// The agreement: `Ok` when every rank is ready to write, else an error naming those that
    /// are not and why.
    fn agree(&self, error: Option<String>) -> Result<()> {
        self.agreed.set(true);
        Ok(self.group.all_succeeded(error)?)
    }

    /// Takes part in the agreement with `error`, when this rank failed before it.
    pub fn failed(&self, error: &anyhow::Error) {
        if !self.agreed.get() {
            let _ = self.agree(Some(format!("{error:#}")));
        }
    }
}

/// What [`prune`] did.
pub enum Outcome {
    /// Pruned and written; the summary line.
    Streamed(String),
    /// Left to the in-memory path, for this reason.
    InMemory(String),
}

/// Prunes the input on the streaming path if it gives the same answer as the in-memory one.
pub fn prune(args: &PruneArgs, steps: &[Step], io: &Io, ranks: Option<&Ranks>) -> Result<Outcome> {
    let sharded = io.is_sharded();
    let group = ranks.map(|r| &r.group);
    if let Some(group) = group {
        if !sharded {
            bail!(
                "{}: several ranks prune a sharded checkpoint (a folder or its index.json) only; run one process for a single file",
                args.input.display()
            );
        }
        if let Some(other) = io.carried.carried.first() {
            bail!(
                "{}: several ranks write the shards and their index only, and this folder also holds {other}: run one process (which carries every file), or prune a folder of the shards and index alone and copy the other files yourself (rank {} of {})",
                args.input.display(),
                group.rank(),
                group.world_size()
            );
        }
    }
    let in_memory = |reason: &str| -> Result<Outcome> {
        if group.is_some() {
            bail!(
                "{}: several ranks prune by streaming only, and {reason}",
                args.input.display()
            );
        }
        Ok(Outcome::InMemory(reason.to_string()))
    };
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
            Format::Safetensors | Format::TorchZip | Format::Pt2
        )
    {
        return Ok(Outcome::InMemory(
            "only safetensors files, torch.save zips and .pt2 archives are streamed".to_string(),
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
        .and_then(|()| match ranks {
            // The ranks commit the output folder together (no carried files: checked above).
            Some(ranks) => {
                ranks.agree(None)?;
                Ok(model.prune_across(&stream_steps, &io.output, &ranks.group)?)
            }
            None => io.write(|dest| Ok(model.prune(&stream_steps, dest)?)),
        })?;
    if let Some(group) = group.filter(|g| g.rank() != 0) {
        // Rank 0 says what the group did.
        return Ok(Outcome::Streamed(format!(
            "rank {} of {}: wrote its shards into {} (rank 0 reports the run)",
            group.rank(),
            group.world_size(),
            io.output.display()
        )));
    }
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
    let files = if let Some(group) = group {
        let folders = match report.folders {
            1 => String::new(),
            n => format!(
                " into {n} folders, one per machine (the ranks do not all see this one): this \
                 one holds the index and its machine's shards"
            ),
        };
        format!(
            "{} shards and their index, by {} ranks{folders}; {} bytes to collectives per rank",
            report.files,
            group.world_size(),
            group.payload_bytes()
        )
    } else if model.is_sharded() {
        format!("{} shards and their index", report.files)
    } else {
        "one file".to_string()
    };
    Ok(Outcome::Streamed(format!(
        "pruned {} tensors to {:.2}% sparsity ({:.2}% of all {} elements are zero); wrote {} (streamed from a memory map: {files}, {}){}",
        pruned.len(),
        ratio(report.pruned_zeros, report.pruned_numel),
        ratio(report.zeros, report.numel),
        report.numel,
        io.output.display(),
        report.writes.describe(),
        io.carried_summary(),
    )))
}
