//! Lottery-ticket rewinding (Frankle & Carbin 2019; Frankle et al. 2020): the trainable values
//! as they were at an early step, put back later under the masks found since.

use crate::error::{PruneError, Result};
use crate::prune::pruner::{orig_name, Pruner};
use tch::nn::{Optimizer, OptimizerConfig, VarStore};
use tch::Tensor;

/// A copy of every trainable value of a store at one step of training, to rewind to.
///
/// [`capture`](Self::capture) copies each trainable variable (for a pruned tensor, its
/// trainable `_orig`, the values before masking); [`rewind`](Self::rewind) writes them back,
/// into `_orig` for tensors pruned by then, keeping every mask: the surviving weights restart
/// from their step-`k` values, the pruned ones stay zero. That is weight rewinding as in
/// "Linear Mode Connectivity and the Lottery Ticket Hypothesis" (`k` = 0 is the original
/// lottery ticket, a reset to initialization). Buffers (batch-norm statistics) are not part
/// of it, as in the papers.
///
/// ```
/// use tch::{nn, nn::OptimizerConfig, Device};
/// use tch_prune::Pruner;
/// use tch_prune::train::RewindPoint;
/// let vs = nn::VarStore::new(Device::Cpu);
/// let mut fc = nn::linear(vs.root() / "fc", 4, 2, Default::default());
/// let pruner = Pruner::new(&vs);
/// let early = RewindPoint::capture(&pruner)?;                 // at step k
/// // ... train, prune ...
/// let _ = tch::no_grad(|| fc.ws.fill_(1.0));
/// pruner.l1_unstructured("fc.weight", 0.5, None)?;
/// let mut opt = early.rewind_with_optimizer(&pruner, &vs, nn::Adam::default(), 1e-3)?;
/// let w = pruner.orig("fc.weight").unwrap();
/// assert!(w.equal(early.value("fc.weight").unwrap()));      // back at step k, mask kept
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct RewindPoint {
    /// Base names (`fc.weight`, never `fc.weight_orig`) and copies of their trainable values.
    values: Vec<(String, Tensor)>,
}

impl RewindPoint {
    /// Copies the store's trainable values now (for pruned tensors, their `_orig`).
    pub fn capture(pruner: &Pruner) -> Result<Self> {
        let pruned = pruner.pruned_names();
        let mut values = Vec::new();
        for (name, tensor) in pruner.variables() {
            if !tensor.requires_grad() || !tensor.is_floating_point() {
                continue;
            }
            let base = pruned
                .iter()
                .find(|p| orig_name(p) == name)
                .cloned()
                .unwrap_or(name);
            values.push((base, tch::no_grad(|| tensor.f_detach_copy())?));
        }
        values.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { values })
    }

    /// The captured value of `name` (a base name: `fc.weight`, pruned or not).
    pub fn value(&self, name: &str) -> Option<&Tensor> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The names captured, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.values.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Writes the captured values back: into `_orig` for the tensors pruned now (their masks
    /// stay, and the masked values are written at once), into the variable itself for the
    /// others. Every variable must still be there with its shape, dtype-compatible; on error
    /// nothing has changed.
    ///
    /// An optimizer keeps its state (Adam's moments, momentum) across this call: use
    /// [`rewind_with_optimizer`](Self::rewind_with_optimizer) to start it afresh too, as the
    /// papers do.
    pub fn rewind(&self, pruner: &Pruner) -> Result<()> {
        let variables = pruner.variables();
        let mut targets = Vec::with_capacity(self.values.len());
        for (name, value) in &self.values {
            let target = match pruner.orig(name) {
                Some(orig) => orig,
                None => variables.get(name).map(Tensor::shallow_clone).ok_or_else(|| {
                    PruneError::InvalidConfig(format!(
                        "cannot rewind '{name}': the store no longer has it (captured at the rewind point)"
                    ))
                })?,
            };
            if target.size() != value.size() {
                return Err(PruneError::ShapeMismatch {
                    what: "values captured at the rewind point",
                    name: name.clone(),
                    expected: target.size(),
                    got: value.size(),
                });
            }
            targets.push(target);
        }
        tch::no_grad(|| -> Result<()> {
            for (mut target, (_, value)) in targets.into_iter().zip(&self.values) {
                target.f_copy_(value)?;
            }
            Ok(())
        })?;
        pruner.apply_masks()
    }

    /// [`rewind`](Self::rewind), then a new optimizer built from `config` on `vs` (fresh state,
    /// every current trainable variable, `_orig` tensors included), learning rate `lr`.
    pub fn rewind_with_optimizer(
        &self,
        pruner: &Pruner,
        vs: &VarStore,
        config: impl OptimizerConfig,
        lr: f64,
    ) -> Result<Optimizer> {
        self.rewind(pruner)?;
        Ok(config.build(vs, lr)?)
    }
}
