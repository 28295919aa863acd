//! Pruning on several processes: the selection's collectives over a
//! [`ProcessGroup`](crate::distributed::ProcessGroup), and [`Pruner::check_consistent`], the
//! proof that the replicas of a data-parallel job hold the same masks.

use crate::distributed::{mask_digest, ProcessGroup, ReduceOp};
use crate::error::{PruneError, Result};
use crate::prune::pruner::Pruner;
use crate::prune::selection::Across;
use tch::Tensor;

impl Across for ProcessGroup {
    fn sum(&self, counts: &mut [u64]) -> Result<()> {
        // Counts fit in i64 (they count tensor entries); Gloo reduces i64.
        let t = Tensor::from_slice(&counts.iter().map(|&c| c as i64).collect::<Vec<_>>());
        self.all_reduce(&t, ReduceOp::Sum)?;
        let summed = Vec::<i64>::try_from(&t)?;
        counts
            .iter_mut()
            .zip(summed)
            .for_each(|(c, s)| *c = s as u64);
        Ok(())
    }

    fn any(&self, flag: bool) -> Result<bool> {
        let t = Tensor::from_slice(&[i64::from(flag)]);
        self.all_reduce(&t, ReduceOp::Max)?;
        Ok(t.int64_value(&[0]) != 0)
    }

    fn exclusive_prefix_sum(&self, n: u64) -> Result<u64> {
        let all = self.all_gather(&Tensor::from_slice(&[n as i64]))?;
        let all = Vec::<i64>::try_from(&all.f_reshape([-1])?)?;
        Ok(all[..self.rank()].iter().map(|&x| x as u64).sum())
    }
}

impl Pruner {
    /// Proves that every rank of `group` holds the same masks: the same pruned tensors, and
    /// masks equal bit for bit (dtype, shape and values). Each rank sends the names of its
    /// pruned tensors and one 64-bit digest per mask, whatever their size. Every rank calls it;
    /// every rank gets the same answer. The error names the tensors that differ and the ranks
    /// where they differ from rank 0.
    ///
    /// In a data-parallel job, every pruning call gives identical masks on every rank when the
    /// ranks make the same calls in the same order on the same values (and, for random methods,
    /// after seeding libtorch alike): `docs/distributed.md`. This is the cheap check of it,
    /// after each pruning step.
    ///
    /// ```no_run
    /// use tch::{nn, Device};
    /// use tch_prune::{distributed::ProcessGroup, L1Unstructured, Pruner};
    /// let group = ProcessGroup::from_env()?;
    /// tch::manual_seed(0); // the same weights on every rank
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let _fc = nn::linear(vs.root() / "fc", 8, 4, Default::default());
    /// let pruner = Pruner::new(&vs);
    /// pruner.l1_unstructured("fc.weight", 0.5, None)?;
    /// pruner.check_consistent(&group)?;
    /// # Ok::<(), tch_prune::PruneError>(())
    /// ```
    pub fn check_consistent(&self, group: &ProcessGroup) -> Result<()> {
        let mut names = self.pruned_names();
        names.sort();
        let digests: Vec<i64> = names
            .iter()
            .map(|n| match self.mask(n) {
                Some(mask) => mask_digest(&mask).map(|d| d as i64),
                None => Ok(0),
            })
            .collect::<Result<_>>()?;

        // The names first: every rank learns every rank's list.
        let lists = gather_text(group, &names.join("\n"))?;
        let mine: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut differences = Vec::new();
        for (rank, list) in lists.iter().enumerate() {
            let theirs: Vec<&str> = list.split('\n').filter(|s| !s.is_empty()).collect();
            if rank != group.rank() && theirs != mine {
                let only_here: Vec<&str> = mine
                    .iter()
                    .copied()
                    .filter(|n| !theirs.contains(n))
                    .collect();
                let only_there: Vec<&str> = theirs
                    .iter()
                    .copied()
                    .filter(|n| !mine.contains(n))
                    .collect();
                differences.push(format!(
                    "rank {rank} prunes {} tensors, rank {} prunes {} (only on rank {}: {}; only on rank {rank}: {})",
                    theirs.len(),
                    group.rank(),
                    mine.len(),
                    group.rank(),
                    listed(&only_here),
                    listed(&only_there)
                ));
            }
        }
        // Agreed by all: a mismatch of names anywhere stops every rank here.
        if group.any_of(!differences.is_empty())? {
            return Err(PruneError::Inconsistent(if differences.is_empty() {
                "the ranks prune different tensors (the other ranks' errors list them)".into()
            } else {
                differences.join("; ")
            }));
        }

        if names.is_empty() {
            return Ok(());
        }
        let all = group.all_gather(&Tensor::from_slice(&digests))?;
        let all = all.f_view([group.world_size() as i64, digests.len() as i64])?;
        let mut differ = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let column = all.f_select(1, i as i64)?;
            let ranks: Vec<i64> = Vec::<i64>::try_from(&column)?;
            let off: Vec<String> = ranks
                .iter()
                .enumerate()
                .filter(|(_, d)| **d != ranks[0])
                .map(|(r, _)| r.to_string())
                .collect();
            if !off.is_empty() {
                differ.push(format!(
                    "'{name}' (ranks {} differ from rank 0)",
                    off.join(", ")
                ));
            }
        }
        if differ.is_empty() {
            Ok(())
        } else {
            Err(PruneError::Inconsistent(format!(
                "the masks differ across ranks: {}",
                differ.join(", ")
            )))
        }
    }
}

impl ProcessGroup {
    /// Whether `flag` holds on any rank (every rank calls it).
    pub(crate) fn any_of(&self, flag: bool) -> Result<bool> {
        Across::any(self, flag)
    }
}

/// Every rank's `text`, in rank order (one all-reduce of the longest length, one all-gather).
fn gather_text(group: &ProcessGroup, text: &str) -> Result<Vec<String>> {
    let len = Tensor::from_slice(&[text.len() as i64]);
    group.all_reduce(&len, ReduceOp::Max)?;
    let longest = len.int64_value(&[0]) as usize;
    let mut bytes = text.as_bytes().to_vec();
    // At least one byte: no rank sends an empty tensor.
    bytes.resize(longest.max(1), 0);
    let all = group.all_gather(&Tensor::from_slice(&bytes))?;
    (0..group.world_size())
        .map(|r| {
            let row = Vec::<u8>::try_from(&all.f_get(r as i64)?)?;
            let end = row.iter().position(|&b| b == 0).unwrap_or(row.len());
            Ok(String::from_utf8_lossy(&row[..end]).into_owned())
        })
        .collect()
}

fn listed(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
