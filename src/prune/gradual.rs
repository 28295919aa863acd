//! Gradual pruning: a training loop prunes up to a [`SparsitySchedule`] step by step, each step
//! pruning the difference relative to what remains (iterative pruning's composition).

use crate::distributed::ProcessGroup;
use crate::error::{PruneError, Result};
use crate::prune::amount::Amount;
use crate::prune::method::{checked_dim, PruningMethod, PruningType};
use crate::prune::pruner::Pruner;
use crate::prune::schedule::SparsitySchedule;
use crate::prune::selection::Across;
use crate::prune::unstructured::Identity;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use tch::{Kind, Tensor};

/// Builds the method that prunes a given amount (`|a| L1Unstructured::new(a)`).
type MethodFactory = Box<dyn Fn(Amount) -> Result<Box<dyn PruningMethod>>>;

/// Prunes a set of tensors up to a schedule's sparsity as training goes: what
/// `torch.ao.pruning`'s scheduler and sparsifier, or SparseML's GMP modifier, do for a Python
/// loop.
///
/// Each [`step`](Self::step) asks the schedule for the sparsity at that step, turns it into a
/// number of units (entries for unstructured methods, channels along `dim` for structured ones)
/// with Python's rounding, `round(sparsity * units)`, and prunes the units still missing, as a
/// count relative to what remains: the same composition as pruning a pruned tensor again. So
/// the counts are exact: at the schedule's last step each tensor (or, [`global`](Self::global),
/// the whole set) has exactly `round(s_f * units)` units pruned. Pruning is never undone: a
/// schedule that goes down prunes nothing.
///
/// Any method that prunes an amount works: the built-in unstructured and structured ones, or
/// your own (`method` builds it for a count). [`NmSparsity`](crate::train::NmSparsity) has a fixed
/// sparsity and is applied once with [`Pruner::prune`] instead.
///
/// Creating it reparametrizes the tensors not pruned yet (an [`Identity`] step), so that their
/// trainable `_orig` exists from the start: build the optimizer after it, and Adam's state
/// carries on through every pruning step.
///
/// ```
/// use tch::{nn, Device};
/// use tch_prune::{L1Unstructured, Pruner};
/// use tch_prune::train::{CubicSchedule, GradualPruner};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let _fc = nn::linear(vs.root() / "fc", 100, 10, Default::default());
/// let pruner = Pruner::new(&vs);
/// let schedule = CubicSchedule::new(0.9, 0, 10, 10)?;  // 90 % at step 100
/// let gradual = GradualPruner::new(&pruner, &["fc.weight"], schedule, L1Unstructured::new)?;
/// for step in 0..=100 {
///     // ... a training step ...
///     if step % 10 == 0 {
///         gradual.step(step)?;
///     }
/// }
/// assert_eq!(gradual.sparsity()?, 0.9);                  // exactly 900 of 1000 entries
/// # Ok::<(), tch_prune::PruneError>(())
/// ```
pub struct GradualPruner {
    pruner: Pruner,
    names: Vec<String>,
    schedule: Box<dyn SparsitySchedule>,
    method: MethodFactory,
    unit: Unit,
    global: bool,
    /// The group whose ranks' tensors are ranked together ([`GradualPruner::across`]).
    group: Option<Arc<ProcessGroup>>,
}

/// What a schedule's sparsity counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Entries,
    Channels { dim: i64 },
}

/// What one [`GradualPruner::step`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScheduleStep {
    /// The step asked for.
    pub step: i64,
    /// The schedule's sparsity at that step.
    pub target: f64,
    /// Units pruned by this step (entries or channels, over all the tensors).
    pub newly_pruned: i64,
    /// Units pruned now, over all the tensors.
    pub pruned: i64,
    /// Units in all, over all the tensors.
    pub units: i64,
}

impl ScheduleStep {
    /// `pruned / units`.
    pub fn sparsity(&self) -> f64 {
        if self.units == 0 {
            0.0
        } else {
            self.pruned as f64 / self.units as f64
        }
    }
}

impl GradualPruner {
    /// Prunes `names` (each on its own; see [`global`](Self::global)) on `schedule` with the
    /// method `method` builds for an amount, e.g. `L1Unstructured::new`,
    /// `|a| LnStructured::new(a, 2.0, 0)`, `|a| RandomUnstructured::new(a)`.
    ///
    /// On error nothing has changed.
    pub fn new<M: PruningMethod + 'static>(
        pruner: &Pruner,
        names: &[&str],
        schedule: impl SparsitySchedule + 'static,
        method: impl Fn(Amount) -> Result<M> + 'static,
    ) -> Result<Self> {
        if names.is_empty() {
            return Err(PruneError::NothingToPrune);
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = names.iter().find(|n| !seen.insert(**n)) {
            return Err(PruneError::ListedTwice {
                name: dup.to_string(),
                what: "gradual",
            });
        }
        let unit = match method(Amount::Count(0))?.pruning_type() {
            PruningType::Unstructured => Unit::Entries,
            PruningType::Structured { dim } => Unit::Channels { dim },
            PruningType::Global => {
                return Err(PruneError::InvalidConfig(format!(
                    "{:?} does not prune an amount, so no schedule can drive it: apply it once with Pruner::prune",
                    method(Amount::Count(0))?
                )))
            }
        };
        // Every check before the first change.
        for &name in names {
            let (values, _) = pruner.current(name)?;
            if let Unit::Channels { dim } = unit {
                checked_dim(&values, dim)?;
            }
        }
        let fresh: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !pruner.is_pruned(n))
            .collect();
        pruner.prune_all(false, |state| {
            fresh
                .iter()
                .map(|name| state.plan(name, &Identity, None, false))
                .collect()
        })?;
        Ok(Self {
            pruner: pruner.clone(),
            names: names.iter().map(|n| n.to_string()).collect(),
            schedule: Box::new(schedule),
            method: Box::new(move |a| Ok(Box::new(method(a)?) as Box<dyn PruningMethod>)),
            unit,
            global: false,
            group: None,
        })
    }

    /// Ranks the tensors together (global pruning, unstructured methods only): the schedule's
    /// sparsity is that of the whole set, and each step prunes the smallest entries wherever
    /// they are.
    pub fn global(mut self) -> Result<Self> {
        if self.unit != Unit::Entries {
            return Err(PruneError::NotUnstructured(format!(
                "{:?}",
                (self.method)(Amount::Count(0))?
            )));
        }
        self.global = true;
        Ok(self)
    }

    /// Ranks the tensors of every rank of `group` together ([`global`](Self::global) over the
    /// union, through [`Pruner::global_unstructured_across`]): the schedule's sparsity is that
    /// of the union of every rank's tensors, and each step's masks are bit for bit those of one
    /// process pruning the union. Every rank then calls [`step`](Self::step) and
    /// [`sparsity`](Self::sparsity) at the same points (they are collectives); each rank names
    /// its own tensors, at least one.
    pub fn across(self, group: Arc<ProcessGroup>) -> Result<Self> {
        let mut this = self.global()?;
        this.group = Some(group);
        Ok(this)
    }

    /// Prunes up to the schedule's sparsity at `step`, with the current values (`_orig * mask`)
    /// as scores. Returns what it did; on error nothing has changed.
    pub fn step(&self, step: i64) -> Result<ScheduleStep> {
        self.step_with_scores(step, &HashMap::new())
    }

    /// [`step`](Self::step) with importance scores for some of the tensors (e.g. movement
    /// scores, or a running average of gradients times weights).
    pub fn step_with_scores(
        &self,
        step: i64,
        importance_scores: &HashMap<String, Tensor>,
    ) -> Result<ScheduleStep> {
        if let Some(extra) = importance_scores.keys().find(|k| !self.names.contains(k)) {
            return Err(PruneError::ScoresForUnselected(extra.to_string()));
        }
        let target = self.schedule.sparsity_at(step);
        if !(0.0..=1.0).contains(&target) {
            return Err(PruneError::InvalidConfig(format!(
                "the schedule {:?} gives sparsity {target} at step {step}, outside [0, 1]",
                self.schedule
            )));
        }
        let counts = self.counts()?;
        let (pruned, units) = self.totals(&counts)?;
        let mut newly_pruned = 0;
        if self.global {
            let missing = wanted(target, units) - pruned;
            if missing > 0 {
                let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
                let method = (self.method)(Amount::Count(missing))?;
                match &self.group {
                    Some(group) => {
                        self.pruner.global_unstructured_across(
                            group,
                            &names,
                            method.as_ref(),
                            importance_scores,
                        )?;
                    }
                    None => self.pruner.global_unstructured(
                        &names,
                        method.as_ref(),
                        importance_scores,
                    )?,
                }
                newly_pruned = missing;
            }
        } else {
            // Every tensor's method is built (and so checked) before any tensor is pruned.
            let mut steps = Vec::new();
            for (name, &(done, total)) in self.names.iter().zip(&counts) {
                let missing = wanted(target, total) - done;
                if missing > 0 {
                    steps.push((name.as_str(), (self.method)(Amount::Count(missing))?));
                    newly_pruned += missing;
                }
            }
            self.pruner.prune_all(false, |state| {
                steps
                    .iter()
                    .map(|(name, method)| {
                        state.plan(name, method.as_ref(), importance_scores.get(*name), false)
                    })
                    .collect()
            })?;
        }
        Ok(ScheduleStep {
            step,
            target,
            newly_pruned,
            pruned: pruned + newly_pruned,
            units,
        })
    }

    /// The sparsity the tensors have now, in the schedule's units (pruned units over all units
    /// of all the tensors).
    pub fn sparsity(&self) -> Result<f64> {
        let (pruned, units) = self.totals(&self.counts()?)?;
        Ok(if units == 0 {
            0.0
        } else {
            pruned as f64 / units as f64
        })
    }

    /// The tensors' names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The schedule.
    pub fn schedule(&self) -> &dyn SparsitySchedule {
        self.schedule.as_ref()
    }

    /// `(pruned, units)` over all the tensors: this process's, or every rank's
    /// ([`across`](Self::across)).
    fn totals(&self, counts: &[(i64, i64)]) -> Result<(i64, i64)> {
        let mut totals = [
            counts.iter().map(|c| c.0).sum::<i64>() as u64,
            counts.iter().map(|c| c.1).sum::<i64>() as u64,
        ];
        if let Some(group) = &self.group {
            Across::sum(group.as_ref(), &mut totals)?;
        }
        Ok((totals[0] as i64, totals[1] as i64))
    }

    /// `(pruned, units)` per tensor, as the composition counts them: an entry is live while its
    /// mask is exactly 1, a channel while any of its mask entries is non-zero.
    fn counts(&self) -> Result<Vec<(i64, i64)>> {
        self.names
            .iter()
            .map(|name| {
                let mask = self.pruner.mask(name).ok_or_else(|| {
                    PruneError::InvalidArgument(format!(
                        "'{name}' is no longer pruned (remove was called): the gradual pruning of it has ended"
                    ))
                })?;
                tch::no_grad(|| -> Result<(i64, i64)> {
                    Ok(match self.unit {
                        Unit::Entries => {
                            let live = mask.f_eq(1)?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
                            let total = mask.numel() as i64;
                            (total - live, total)
                        }
                        Unit::Channels { dim } => {
                            let dim = checked_dim(&mask, dim)?;
                            let others: Vec<i64> =
                                (0..mask.dim() as i64).filter(|&d| d != dim).collect();
                            let live = mask
                                .f_ne(0)?
                                .f_sum_dim_intlist(&others[..], false, Kind::Int64)?
                                .f_ne(0)?
                                .f_sum(Kind::Int64)?
                                .f_int64_value(&[])?;
                            let total = mask.size()[dim as usize];
                            (total - live, total)
                        }
                    })
                })
            })
            .collect()
    }
}

impl fmt::Debug for GradualPruner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GradualPruner")
            .field("names", &self.names)
            .field("schedule", &self.schedule)
            .field("unit", &self.unit)
            .field("global", &self.global)
            .field("across", &self.group)
            .finish()
    }
}

/// `round(sparsity * units)` as Python rounds it (half to even).
fn wanted(sparsity: f64, units: i64) -> i64 {
    (sparsity * units as f64).round_ties_even() as i64
}
