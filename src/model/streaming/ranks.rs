//! The streamed prune of a sharded checkpoint by the ranks of a process group: which shards a
//! rank handles, the global thresholds agreed through the group, and the output folder
//! committed for all ranks at once. Hooks around the one-process write of `write.rs`, which
//! does the rest (the same selections, the same bytes).
//!
//! The protocol of the output folders. In rank order, each rank says in the group's store which
//! folder it writes into: the temporary folder of a rank before it that writes the same output
//! and whose folder it sees (a marker file there holds the word that rank published: same path
//! is not enough, another machine may have one too), or, when there is none, a temporary folder
//! of its own beside its output (`atomic_write_dir`), which it leads. Rank 0 always leads. Every
//! rank writes its shards into its folder and says whether it succeeded (one all-reduce); only
//! when every rank did does rank 0 write the index and each leader rename its folder into
//! place, and a second all-reduce says whether every rename did (a leader whose rename succeeded
//! removes its folder when another's failed). A rank that fails says why in the store, and every
//! rank stops naming it; a rank killed outright breaks the group's connections, and the others
//! stop naming it as gone. In both cases the leaders remove their temporary folders and no
//! output appears.

use super::{StreamReport, StreamStep, StreamedModel};
use crate::checkpoint::{atomic_write_dir, CheckpointError};
use crate::distributed::ProcessGroup;
use crate::error::{PruneError, Result};
use crate::prune::selection::{smallest_threshold_across, Across, RawScores, Threshold};
use crate::Amount;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};

/// Whether this rank writes file `f` of the checkpoint: shards go round-robin over the ranks in
/// the index's order.
pub(super) fn handles(group: &ProcessGroup, f: usize) -> bool {
    f % group.world_size() == group.rank()
}

impl StreamedModel {
    /// [`prune`](Self::prune) of a sharded checkpoint by every rank of `group` together, each
    /// reading and writing only its shards (round-robin in the index's order): the global L1
    /// thresholds are agreed through the group (histograms of fixed size, and one count per
    /// tensor of the step), and the output appears, with the index, only when every rank
    /// succeeded. Its bytes are those of [`prune`](Self::prune) in one process. Every rank
    /// calls it with the same steps (and, for the methods that draw random numbers, the same
    /// seed: each rank also draws for the shards of the others, without reading them, so that
    /// its draws are those of one process). The report is the whole checkpoint's, on every
    /// rank. On error, on any rank, no output appears and every rank returns an error naming
    /// the rank that failed.
    ///
    /// The output is one folder when every rank sees the same `output` (a shared filesystem,
    /// or one machine). Ranks that do not see it (other machines with their own disks), or
    /// that name another `output`, write their shards into a folder of their own, one per
    /// machine and output; rank 0's holds the index, and the union of the folders is the
    /// checkpoint ([`StreamReport::folders`] counts them).
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
            folders: report.folders,
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

/// Writes this rank's shards and commits the output with the other ranks (the protocol
/// above). Every file of the input is visited in order: `visit(f, Some(path))` writes file `f`,
/// pruned, to `path`; `visit(f, None)` is a file another rank writes (for the random draws its
/// tensors take). Returns the number of shards of the whole output, and the number of output
/// folders (1, or one per machine when the ranks do not share a filesystem).
pub(super) fn write_all(
    model: &StreamedModel,
    output: &Path,
    mut visit: impl FnMut(usize, Option<&Path>) -> Result<()>,
    group: &ProcessGroup,
) -> Result<(usize, usize)> {
    let Some(index) = &model.index else {
        return Err(PruneError::NotStreamable("no shard index".into()));
    };
    let shards = index.shards();
    let keys = group.fresh_keys("stream/folder");
    let output = std::path::absolute(output)
        .map_err(|e| CheckpointError::io(output, "cannot resolve", e))?;
    let mut write_mine = |folder: &Path| -> Result<()> {
        for (f, shard) in shards.iter().enumerate() {
            if !handles(group, f) {
                visit(f, None)?;
            } else {
                let path = folder.join(shard);
                visit(f, Some(&path))?;
                // The folder's leader syncs the folder before the rename; each rank syncs its
                // own files, on its own machine.
                std::fs::File::open(&path)
                    .and_then(|file| file.sync_all())
                    .map_err(|e| CheckpointError::io(&path, "cannot write", e))?;
            }
        }
        // Before the commit: a shard read first may have changed since.
        model.unchanged()
    };
    let said = |rank: usize| -> Result<Folder> {
        let text = group.store_get(&format!("{keys}{rank}"), rank)?;
        serde_json::from_str(&text).map_err(|e| {
            PruneError::Distributed(format!("rank {rank} said {text:?} of its folder: {e}"))
        })
    };
    let say = |folder: &Folder| {
        let text = serde_json::to_string(folder).unwrap_or_default();
        group.store_set(&format!("{keys}{}", group.rank()), &text)
    };

    // Join the folder of a rank before this one that writes the same output and whose folder
    // this rank sees (its marker holds the word it published), else lead a folder of its own.
    let mut joined = None;
    for rank in 0..group.rank() {
        match said(rank) {
            Ok(Folder::Leads {
                output: theirs,
                folder,
                word,
            }) => {
                let seen = std::fs::read_to_string(Path::new(&folder).join(MARKER))
                    .is_ok_and(|w| w == word);
                if joined.is_none() && theirs == output.to_string_lossy() && seen {
                    joined = Some(PathBuf::from(folder));
                }
            }
            Ok(Folder::Joins | Folder::Failed) => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(folder) = joined {
        say(&Folder::Joins)?;
        let written = write_mine(&folder);
        let agreed = group.all_succeeded(written.as_ref().err().map(|e| e.to_string()));
        written?;
        agreed?;
        group.all_succeeded(None)?;
        return Ok((shards.len(), count_folders(group, &said, false)?));
    }

    let (mut published, mut wrote) = (false, None);
    let result = atomic_write_dir(&output, |tmp| -> Result<()> {
        let folder =
            std::path::absolute(tmp).map_err(|e| CheckpointError::io(tmp, "cannot resolve", e))?;
        let word = format!("{:016x}", RandomState::new().hash_one(&folder));
        let marker = tmp.join(MARKER);
        std::fs::write(&marker, &word)
            .map_err(|e| CheckpointError::io(&marker, "cannot write", e))?;
        say(&Folder::Leads {
            output: output.to_string_lossy().into_owned(),
            folder: folder.to_string_lossy().into_owned(),
            word,
        })?;
        published = true;
        let written = write_mine(tmp);
        let agreed = group.all_succeeded(written.as_ref().err().map(|e| e.to_string()));
        wrote = Some(agreed.is_ok());
        written?;
        agreed?;
        std::fs::remove_file(&marker)
            .map_err(|e| CheckpointError::io(&marker, "cannot remove", e))?;
        if group.rank() == 0 {
            let index_name = index
                .path
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("model.safetensors.index.json"));
            let index_path = tmp.join(index_name);
            crate::checkpoint::write_new(&index_path, index.to_json())
                .map_err(|e| CheckpointError::io(&index_path, "cannot write", e))?;
        }
        Ok(())
    });
    if !published {
        // The ranks after this one wait for its word: tell them it has no folder.
        let _ = say(&Folder::Failed);
    }
    let Some(true) = wrote else {
        // Failed before the agreement on the writes: this rank still takes part, with its
        // error (past the agreement, every rank stopped at it).
        if wrote.is_none() {
            let _ = group.all_succeeded(result.as_ref().err().map(|e| e.to_string()));
        }
        return Err(result.err().unwrap_or_else(|| {
            PruneError::Distributed("the ranks did not agree on the writes".into())
        }));
    };
    // Every leader renamed its folder into place, or failed to: all commit or none does.
    let committed = group.all_succeeded(result.as_ref().err().map(|e| e.to_string()));
    if result.is_ok() && committed.is_err() {
        let _ = std::fs::remove_dir_all(&output);
    }
    result?;
    committed?;
    Ok((shards.len(), count_folders(group, &said, true)?))
}

/// The marker a folder's leader leaves in its temporary folder until the writes are agreed on:
/// a rank that reads the leader's word in it sees the same folder.
const MARKER: &str = ".tch-prune-leader";

/// What a rank said, in the store, of the folder it writes into.
#[derive(serde::Serialize, serde::Deserialize)]
enum Folder {
    /// It leads the temporary `folder` of `output` (absolute paths); its marker holds `word`.
    Leads {
        output: String,
        folder: String,
        word: String,
    },
    /// It writes into the folder of a rank before it.
    Joins,
    /// It could not prepare a folder (its error comes with the agreement).
    Failed,
}

/// The number of output folders: the leaders among every rank, this one (which `leads` or
/// not) and the others (whose words are all in the store by the agreement on the writes).
fn count_folders(
    group: &ProcessGroup,
    said: &impl Fn(usize) -> Result<Folder>,
    leads: bool,
) -> Result<usize> {
    let mut count = usize::from(leads);
    for rank in (0..group.world_size()).filter(|&r| r != group.rank()) {
        count += usize::from(matches!(said(rank)?, Folder::Leads { .. }));
    }
    Ok(count)
}
