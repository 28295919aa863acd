//! The streamed prune of a sharded checkpoint by the ranks of a process group: which shards a
//! rank handles, the global thresholds agreed through the group, and the output folder
//! committed for all ranks at once. Hooks around the one-process write of `write.rs`, which
//! does the rest (the same selections, the same bytes).
//!
//! The protocol of the output folder: rank 0 creates the temporary folder beside the output
//! (`atomic_write_dir`) and publishes its path in the group's store; every rank writes its
//! shards there and says whether it succeeded (one all-reduce); only when every rank did does
//! rank 0 write the index and rename the folder into place, then tell the others (a
//! broadcast). A rank that fails says why in the store, and every rank stops naming it; a rank
//! killed outright breaks the group's connections, and the others stop naming it as gone. In
//! both cases rank 0 removes the temporary folder and no output appears.

use super::{StreamReport, StreamStep, StreamedModel};
use crate::checkpoint::{atomic_write_dir, CheckpointError};
use crate::distributed::ProcessGroup;
use crate::error::{PruneError, Result};
use crate::prune::selection::{smallest_threshold_across, Across, RawScores, Threshold};
use crate::Amount;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The store key under which rank 0 publishes the temporary output folder.
const FOLDER_KEY: &str = "stream/folder";

/// Whether this rank writes file `f` of the checkpoint: shards go round-robin over the ranks in
/// the index's order.
pub(super) fn handles(group: &ProcessGroup, f: usize) -> bool {
    f % group.world_size() == group.rank()
}

impl StreamedModel {
    /// [`prune`](Self::prune) of a sharded checkpoint by every rank of `group` together, each
    /// reading and writing only its shards (round-robin in the index's order): the global L1
    /// thresholds are agreed through the group (histograms of fixed size, and one count per
    /// tensor of the step), and the output folder (one that every rank sees: a shared
    /// filesystem) appears whole, with the index, only when every rank succeeded. Its bytes are
    /// those of [`prune`](Self::prune) in one process. Every rank calls it with the same steps
    /// and output (and, for the methods that draw random numbers, the same seed: each rank also
    /// draws for the shards of the others, without reading them, so that its draws are those of
    /// one process). The report is the whole checkpoint's, on every rank. On error, on any rank, no output appears and every
    /// rank returns an error naming the rank that failed.
    pub fn prune_across(
        &self,
        steps: &[StreamStep<'_>],
        output: impl AsRef<Path>,
        group: &ProcessGroup,
    ) -> Result<StreamReport> {
        let result = self.prune_ranked(steps, output.as_ref(), group);
        if let Err(e) = &result {
            group.fail(&e.to_string());
        }
        result
    }

    fn prune_ranked(
        &self,
        steps: &[StreamStep<'_>],
        output: &Path,
        group: &ProcessGroup,
    ) -> Result<StreamReport> {
        if self.index.is_none() {
            return Err(PruneError::NotStreamable(
                "several ranks prune a sharded checkpoint (a folder or index.json) only: run one \
                 process for a single file"
                    .into(),
            ));
        }
        let report = self.prune_with(steps, output, Some(group))?;
        // Every rank's counts, summed: the whole checkpoint's report on every rank.
        let mut counts = [
            report.numel as u64,
            report.zeros as u64,
            report.pruned_numel as u64,
            report.pruned_zeros as u64,
        ];
        Across::sum(group, &mut counts)?;
        Ok(StreamReport {
            numel: counts[0] as i64,
            zeros: counts[1] as i64,
            pruned_numel: counts[2] as i64,
            pruned_zeros: counts[3] as i64,
            files: report.files,
            // This rank's own writes: how its shards were written.
            writes: report.writes,
        })
    }
}

/// The thresholds of this rank's tensors in a global L1 step: the threshold over the union of
/// every rank's tensors of the step, each with the tensor's share of the tied entries, given in
/// the step's order (the one-process order) from every tensor's count of ties, summed over the
/// ranks.
pub(super) fn global_thresholds<'a>(
    model: &StreamedModel,
    step: &'a StreamStep<'_>,
    amount: Amount,
    group: &ProcessGroup,
) -> Result<Vec<(&'a str, Threshold)>> {
    let locations = model.locations();
    let mut sizes = Vec::with_capacity(step.names.len());
    let mut mine: Vec<(usize, RawScores<'_>)> = Vec::new();
    for (i, name) in step.names.iter().enumerate() {
        let (f, t) = locations[name.as_str()];
        let tensor = &model.files[f].tensors()[t];
        sizes.push(tensor.numel() as i64);
        if handles(group, f) {
            mine.push((i, model.raw(f, tensor)));
        }
    }
    // The union's size from the headers, which every rank reads: the same `k` everywhere.
    let k = amount.to_count(sizes.iter().sum())?;
    let parts: Vec<RawScores<'_>> = mine.iter().map(|(_, p)| *p).collect();
    let threshold = smallest_threshold_across(&parts, k, group)?;
    let mut ties = vec![0u64; step.names.len()];
    for (i, part) in &mine {
        ties[*i] = threshold.ties_in(part);
    }
    Across::sum(group, &mut ties)?;
    let mut left = threshold.ties();
    let mut roles = Vec::with_capacity(mine.len());
    let mut next_mine = mine.iter().map(|(i, _)| *i).peekable();
    for (i, name) in step.names.iter().enumerate() {
        let take = ties[i].min(left);
        left -= take;
        if next_mine.peek() == Some(&i) {
            next_mine.next();
            roles.push((name.as_str(), threshold.with_ties(take)));
        }
    }
    Ok(roles)
}

/// Writes this rank's shards into the output folder rank 0 prepares, and commits it with the
/// other ranks (the protocol above). Every file of the input is visited in order:
/// `visit(f, Some(path))` writes file `f`, pruned, to `path`; `visit(f, None)` is a file
/// another rank writes (for the random draws its tensors take). Returns the number of shards of
/// the whole output.
pub(super) fn write_all(
    model: &StreamedModel,
    output: &Path,
    mut visit: impl FnMut(usize, Option<&Path>) -> Result<()>,
    group: &ProcessGroup,
) -> Result<usize> {
    let Some(index) = &model.index else {
        return Err(PruneError::NotStreamable("no shard index".into()));
    };
    let shards = index.shards();
    let mut write_mine = |folder: &Path| -> Result<()> {
        for (f, shard) in shards.iter().enumerate() {
            if !handles(group, f) {
                visit(f, None)?;
            } else {
                let path = folder.join(shard);
                visit(f, Some(&path))?;
                // Rank 0 syncs the folder before the rename; each rank syncs its own files,
                // on its own machine.
                std::fs::File::open(&path)
                    .and_then(|file| file.sync_all())
                    .map_err(|e| CheckpointError::io(&path, "cannot write", e))?;
            }
        }
        // Before the commit: a shard read first may have changed since.
        model.unchanged()
    };
    if group.rank() == 0 {
        let (mut published, mut all_wrote) = (false, false);
        let result = atomic_write_dir(output, |tmp| -> Result<()> {
            let folder = std::path::absolute(tmp)
                .map_err(|e| CheckpointError::io(tmp, "cannot resolve", e))?;
            group.store_set(FOLDER_KEY, &format!("ok {}", folder.display()))?;
            published = true;
            let written = write_mine(tmp);
            let agreed = group.all_succeeded(written.as_ref().err().map(|e| e.to_string()));
            written?;
            agreed?;
            all_wrote = true;
            let index_name = index
                .path
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("model.safetensors.index.json"));
            let index_path = tmp.join(index_name);
            std::fs::write(&index_path, index.to_json())
                .map_err(|e| CheckpointError::io(&index_path, "cannot write", e))?;
            Ok(())
        });
        if let (Err(e), false) = (&result, published) {
            // The others wait for the folder's path: tell them there is none, and why.
            let _ = group.store_set(FOLDER_KEY, &format!("failed {e}"));
        }
        // Past the agreement the others wait to hear whether the folder is in place; before
        // it, they stopped with the agreement's error.
        if all_wrote {
            let committed = Tensor::from_slice(&[i64::from(result.is_ok())]);
            group.broadcast(&committed, 0)?;
        }
        result.map(|()| shards.len())
    } else {
        let said = group.store_get(FOLDER_KEY)?;
        let folder = match said.strip_prefix("ok ") {
            Some(path) => PathBuf::from(path),
            None => {
                return Err(PruneError::Distributed(format!(
                    "rank 0 could not prepare the output folder: {}",
                    said.strip_prefix("failed ").unwrap_or(&said)
                )))
            }
        };
        let written = if folder.is_dir() {
            write_mine(&folder)
        } else {
            Err(PruneError::Distributed(format!(
                "rank {} does not see rank 0's temporary output folder {}: the output must be \
                 on a filesystem every rank shares",
                group.rank(),
                folder.display()
            )))
        };
        let agreed = group.all_succeeded(written.as_ref().err().map(|e| e.to_string()));
        written?;
        agreed?;
        let committed = Tensor::from_slice(&[0i64]);
        group.broadcast(&committed, 0)?;
        if committed.int64_value(&[0]) != 1 {
            return Err(PruneError::Distributed(
                "rank 0 could not put the output folder in place (its error says why)".into(),
            ));
        }
        Ok(shards.len())
    }
}
