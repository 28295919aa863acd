//! Global pruning: one ranking across many tensors (PyTorch's `global_unstructured`).

use crate::distributed::ProcessGroup;
use crate::error::{PruneError, Result};
use crate::prune::container::combine_masks;
use crate::prune::custom::CustomFromMask;
use crate::prune::method::{same_device, scores_for, PruningMethod, PruningType};
use crate::prune::pruner::Pruner;
use crate::prune::selection::{zero_smallest, zero_smallest_across, Across, Part};
use crate::prune::unstructured::fresh_copy;
use std::collections::{HashMap, HashSet};
use tch::{Kind, Tensor};

impl Pruner {
    /// Prunes the tensors `names` together with one unstructured method, as if they were one
    /// vector: `L1Unstructured::new(0.2)` prunes the 20 % smallest magnitudes of the whole set,
    /// wherever they are. Amounts are relative to the entries still unpruned in all of them,
    /// exactly as PyTorch's `prune.global_unstructured`; each tensor then carries its share of the
    /// mask as a [`CustomFromMask`] step.
    ///
    /// `importance_scores` maps some of the names to scores of the tensor's shape (moved to the
    /// tensor's device if they are elsewhere); the others are ranked by their current values.
    /// All tensors must be on one device.
    /// On error no tensor has changed.
    ///
    /// ```
    /// use tch::{nn, Device, Tensor};
    /// use tch_prune::{L1Unstructured, Pruner};
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// vs.root().var_copy("m", &Tensor::from_slice(&[1f32, 2., 3., 4., -4., -3., -2., -1.]).view([2, 4]));
    /// vs.root().var_copy("n", &Tensor::from_slice(&[0f32, 0.1, -2.]).view([1, 3]));
    /// let pruner = Pruner::new(&vs);
    /// pruner.global_unstructured(&["m", "n"], &L1Unstructured::new(4)?, &Default::default())?;
    /// let n = vs.root().get("n_mask").unwrap();
    /// assert_eq!(Vec::<f32>::try_from(&n.view([-1]))?, [0., 0., 1.]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn global_unstructured(
        &self,
        names: &[&str],
        method: &dyn PruningMethod,
        importance_scores: &HashMap<String, Tensor>,
    ) -> Result<()> {
        self.global(names, method, importance_scores, false, None)
    }

    /// [`Pruner::global_unstructured`] over the union of the tensors of every rank of `group`,
    /// for a model whose tensors are spread over the ranks (tensor or pipeline parallel,
    /// sharded parameters): each rank names its own tensors (possibly none), and the masks are
    /// bit for bit those one process pruning the union would compute, the union taken in the
    /// global order: rank order, then each rank's `names` in order (it decides which of
    /// entries tied at the threshold go first). The amount is relative to the union's live
    /// entries.
    ///
    /// Every rank of the group calls it, with the same method. Only smallest-magnitude
    /// methods ([`L1Unstructured`](crate::L1Unstructured)) select across ranks, on contiguous
    /// CPU tensors (scores included) of f32, f64, f16 or bf16. The communication does not
    /// depend on the model's size: a few all-reduces of 65,536 counts (two passes for f32 and
    /// f16, one for bf16, four for f64) and single numbers. Returns the bytes this rank handed
    /// to the group for it. An error on one rank (a refused tensor, say) is an error on every
    /// rank, and nothing has changed on any.
    ///
    /// ```no_run
    /// use tch::{nn, Device};
    /// use tch_prune::{distributed::ProcessGroup, L1Unstructured, Pruner};
    /// let group = ProcessGroup::from_env()?;
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// // Each rank holds its own layers.
    /// let name = format!("layer{}.weight", group.rank());
    /// let _w = vs.root().randn(&name, &[64, 64], 0.0, 1.0);
    /// let pruner = Pruner::new(&vs);
    /// let bytes = pruner.global_unstructured_across(
    ///     &group, &[name.as_str()], &L1Unstructured::new(0.5)?, &Default::default())?;
    /// println!("rank {} sent {bytes} bytes", group.rank());
    /// # Ok::<(), tch_prune::PruneError>(())
    /// ```
    pub fn global_unstructured_across(
        &self,
        group: &ProcessGroup,
        names: &[&str],
        method: &dyn PruningMethod,
        importance_scores: &HashMap<String, Tensor>,
    ) -> Result<u64> {
        let before = group.payload_bytes();
        let result = self.global(names, method, importance_scores, false, Some(group));
        if let Err(e) = &result {
            // Tell the others why, should they still be waiting in a collective.
            group.fail(&e.to_string());
        }
        result.map(|()| group.payload_bytes() - before)
    }

    /// [`Pruner::global_unstructured`] then [`Pruner::remove`] of every tensor, in one step: the
    /// same result, bit for bit, but tensors not pruned before are multiplied by their masks in
    /// place (an L1 selection holds them as booleans meanwhile) and never get `_orig` or
    /// `_mask`, as [`Pruner::prune_and_remove`] does. For one-shot pruning of models too large
    /// for a second copy of their weights. On error no tensor has changed.
    pub fn global_unstructured_and_remove(
        &self,
        names: &[&str],
        method: &dyn PruningMethod,
        importance_scores: &HashMap<String, Tensor>,
    ) -> Result<()> {
        self.global(names, method, importance_scores, true, None)
    }

    fn global(
        &self,
        names: &[&str],
        method: &dyn PruningMethod,
        importance_scores: &HashMap<String, Tensor>,
        permanent: bool,
        across: Option<&dyn Across>,
    ) -> Result<()> {
        let checked = check_call(names, method, importance_scores, across.is_some());
        // Across ranks, a refusal on one is known to all before any collective.
        if let Some(across) = across {
            if across.any(checked.is_err())? && checked.is_ok() {
                return Err(other_rank_failed());
            }
        }
        checked?;
        self.prune_all(permanent, |state| {
            let prepared = (|| -> Result<_> {
                let mut scores = Vec::with_capacity(names.len());
                let mut masks = Vec::with_capacity(names.len());
                let mut values_of = Vec::with_capacity(names.len());
                let mut devices = Vec::with_capacity(names.len());
                for &name in names {
                    let (values, mask) = state.current(name)?;
                    let score = scores_for(name, &values, importance_scores.get(name))?;
                    devices.push((name, values.device()));
                    masks.push(mask);
                    scores.push(score);
                    values_of.push(values);
                }
                same_device(&devices)?;
                Ok((scores, masks, values_of))
            })();
            if let Some(across) = across {
                if across.any(prepared.is_err())? && prepared.is_ok() {
                    return Err(other_rank_failed());
                }
            }
            let (scores, masks, values_of) = prepared?;
            let in_place = method.smallest_magnitudes();
            let combined = match in_place {
                Some(amount) => select_in_place(
                    amount,
                    &scores,
                    &masks,
                    &values_of,
                    state.bool_masks || permanent,
                    across,
                )?,
                None => concatenated(method, &scores, &masks, &values_of)?,
            };
            let pruned: Vec<bool> = masks.iter().map(Option::is_some).collect();
            drop((scores, masks));

            let mut plans = Vec::with_capacity(names.len());
            for ((&name, mask), was_pruned) in names.iter().zip(combined).zip(pruned) {
                let step = CustomFromMask::new(&mask);
                plans.push(match (in_place.is_some(), was_pruned) {
                    // On an unpruned tensor the selected mask is the final one.
                    (true, false) => {
                        state.plan_first(name, mask, format!("{step:?}"), permanent)?
                    }
                    _ => state.plan(name, &step, None, permanent)?,
                });
            }
            Ok(plans)
        })
    }
}

/// The checks of a global call that need no tensor. Across ranks a rank may hold no tensor.
fn check_call(
    names: &[&str],
    method: &dyn PruningMethod,
    importance_scores: &HashMap<String, Tensor>,
    across: bool,
) -> Result<()> {
    if method.pruning_type() != PruningType::Unstructured {
        return Err(PruneError::NotUnstructured(format!("{method:?}")));
    }
    if across && method.smallest_magnitudes().is_none() {
        return Err(PruneError::InvalidArgument(format!(
            "{method:?} cannot select across ranks: only smallest-magnitude methods \
             (L1Unstructured) do, from a few histograms"
        )));
    }
    if names.is_empty() && !across {
        return Err(PruneError::NothingToPrune);
    }
    let mut seen = HashSet::new();
    if let Some(dup) = names.iter().find(|n| !seen.insert(**n)) {
        return Err(PruneError::ListedTwice {
            name: dup.to_string(),
            what: "global",
        });
    }
    if let Some(extra) = importance_scores
        .keys()
        .find(|k| !seen.contains(k.as_str()))
    {
        return Err(PruneError::ScoresForUnselected(extra.to_string()));
    }
    Ok(())
}

/// The error of a rank whose own part was fine when another rank's was refused.
fn other_rank_failed() -> PruneError {
    PruneError::Distributed(
        "another rank refused its part of the global pruning (its error says why); nothing was pruned"
            .into(),
    )
}

/// The combined mask of each tensor (PyTorch's slices of the `global_unstructured` vector), for
/// a smallest-magnitude method, selected in place by streaming passes over the tensors: no
/// concatenation, the only memory is the masks themselves. Across ranks, `k` is counted over the
/// live entries of every rank's tensors and the selection is the union's.
fn select_in_place(
    amount: crate::Amount,
    scores: &[Tensor],
    masks: &[Option<Tensor>],
    values: &[Tensor],
    bool_masks: bool,
    across: Option<&dyn Across>,
) -> Result<Vec<Tensor>> {
    // Entries of tensors not pruned before all take part; the others' live counts are summed
    // where the masks are and read once (one device sync, not one per tensor).
    let mut live_total = 0;
    let mut live_counts = Vec::new();
    let mut outs = Vec::with_capacity(scores.len());
    for (mask, values) in masks.iter().zip(values) {
        outs.push(match mask {
            Some(m) => {
                live_counts.push(m.f_eq(1)?.f_sum(Kind::Int64)?);
                fresh_copy(m)?
            }
            None => {
                live_total += values.numel() as i64;
                let kind = if bool_masks {
                    Kind::Bool
                } else {
                    values.kind()
                };
                Tensor::f_ones(values.size(), (kind, values.device()))?
            }
        });
    }
    if !live_counts.is_empty() {
        live_total += Tensor::f_stack(&live_counts, 0)?
            .f_sum(Kind::Int64)?
            .f_int64_value(&[])?;
    }
    if let Some(across) = across {
        let mut total = [live_total as u64];
        across.sum(&mut total)?;
        live_total = total[0] as i64;
    }
    let k = amount.to_count(live_total)?;
    let parts: Vec<Part<'_>> = scores
        .iter()
        .zip(masks)
        .zip(&outs)
        .map(|((scores, live), out)| Part {
            scores,
            live: live.as_ref(),
            out,
        })
        .collect();
    match across {
        Some(across) => zero_smallest_across(&parts, k, across)?,
        None => zero_smallest(&parts, k)?,
    }
    Ok(outs)
}

/// PyTorch's way: one vector of all scores and one of all masks, the method applied to the live
/// entries of the whole, then cut back into per-tensor masks.
fn concatenated(
    method: &dyn PruningMethod,
    scores: &[Tensor],
    masks: &[Option<Tensor>],
    values: &[Tensor],
) -> Result<Vec<Tensor>> {
    let flat_scores = scores
        .iter()
        .map(|s| s.f_reshape([-1]))
        .collect::<Result<Vec<_>, _>>()?;
    let flat_masks = masks
        .iter()
        .zip(values)
        .map(|(m, v)| match m {
            Some(m) => m.f_reshape([-1]),
            None => v.f_ones_like()?.f_reshape([-1]),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let all_scores = Tensor::f_cat(&flat_scores, 0)?;
    let all_masks = Tensor::f_cat(&flat_masks, 0)?;
    drop((flat_scores, flat_masks));
    let combined = tch::no_grad(|| combine_masks(method, &all_scores, &all_masks))?;
    drop((all_scores, all_masks));
    let mut offset = 0;
    values
        .iter()
        .map(|v| {
            let numel = v.numel() as i64;
            // A view: each tensor's plan makes its own mask from it, so unlike PyTorch
            // (pytorch#49332) nothing keeps the whole vector alive after this round.
            let slice = combined.f_narrow(0, offset, numel)?.f_reshape(v.size())?;
            offset += numel;
            Ok(slice)
        })
        .collect()
}
