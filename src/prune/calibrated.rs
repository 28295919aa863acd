//! Calibrated pruning of many layers at once, in one of the two orders: one-shot (every layer
//! calibrated on the dense model, then all pruned) or block by block (each block calibrated on
//! the outputs of the blocks already pruned, as the Wanda and SparseGPT reference scripts do).

use crate::error::{PruneError, Result};
use crate::prune::calibration::{Calibration, LayerStats};
use crate::prune::pruner::Pruner;
use crate::prune::sparsegpt::SparseGpt;
use crate::prune::unstructured::fresh_copy;
use crate::prune::wanda::Wanda;
use std::time::Instant;
use tch::{Kind, Tensor};

/// Wanda or SparseGPT, for [`Pruner::prune_calibrated`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CalibratedMethod {
    /// Masks from `|W| · sqrt(scaler_row)`, per output row.
    Wanda(Wanda),
    /// Masks and updated weights from `H` (the calibration needs
    /// [`Calibration::with_hessian`]).
    SparseGpt(SparseGpt),
}

/// The order layers are calibrated and pruned in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// One calibration pass over the dense model, then every layer pruned: the cheap default.
    #[default]
    OneShot,
    /// Block by block: a calibration pass for each block, the blocks before it already pruned,
    /// so that each block is calibrated on what the pruned model feeds it. The order of the
    /// Wanda and SparseGPT reference scripts (`prune_wanda`, `opt_sequential`): one pass per
    /// block, where the references run only the block on its cached inputs.
    Sequential,
}

/// What pruning one layer did, for progress and summaries.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerReport {
    /// The weight's name.
    pub name: String,
    /// The index of its block.
    pub block: usize,
    /// The calibration samples its statistics hold.
    pub samples: i64,
    /// The fraction of the weight's entries pruned.
    pub sparsity: f64,
    /// The relative reconstruction error of the layer's output on the calibration inputs,
    /// `‖(W - W') X‖² / ‖W X‖²`, computed from `H` (`None` when the calibration has none).
    pub error: Option<f64>,
    /// Seconds spent choosing the mask (and, for SparseGPT, updating the weights).
    pub seconds: f64,
}

impl Pruner {
    /// Prunes every weight of `blocks` (names of linear weights, grouped by the model's blocks,
    /// in the order the model runs them) with Wanda or SparseGPT, calibrating with `calibrate`:
    /// a closure that runs the calibration inputs through the model (whose layers report to
    /// `calibration`, see [`Calibration::wrap`]). `progress` is called after each layer.
    ///
    /// [`Order::OneShot`] calls `calibrate` once; [`Order::Sequential`] once per block, only
    /// that block's layers recording. The statistics of the named layers are reset first.
    ///
    /// On error the layers pruned before it stay pruned (each one is pruned all or nothing).
    ///
    /// ```
    /// use tch::{nn, nn::Module, Device, Kind, Tensor};
    /// use tch_prune::{CalibratedMethod, Calibration, Order, Pruner, SparseGpt, Sparsity};
    ///
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let calibration = Calibration::with_hessian();
    /// let model = nn::seq()
    ///     .add(calibration.linear(&(vs.root() / "fc1"), 16, 32, Default::default()))
    ///     .add_fn(|x| x.relu())
    ///     .add(calibration.linear(&(vs.root() / "fc2"), 32, 4, Default::default()));
    /// let inputs = Tensor::randn([8, 20, 16], (Kind::Float, Device::Cpu));
    ///
    /// let pruner = Pruner::new(&vs);
    /// let model = pruner.wrap(model);
    /// let blocks = vec![vec!["fc1.weight".to_string()], vec!["fc2.weight".to_string()]];
    /// let method = CalibratedMethod::SparseGpt(SparseGpt::new(Sparsity::fraction(0.5)?));
    /// let reports = pruner.prune_calibrated(&calibration, &blocks, &method, Order::Sequential,
    ///     || { tch::no_grad(|| model.forward(&inputs)); Ok(()) },
    ///     |report| println!("{} pruned, error {:?}", report.name, report.error))?;
    /// assert_eq!(reports.len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn prune_calibrated(
        &self,
        calibration: &Calibration,
        blocks: &[Vec<String>],
        method: &CalibratedMethod,
        order: Order,
        mut calibrate: impl FnMut() -> Result<()>,
        mut progress: impl FnMut(&LayerReport),
    ) -> Result<Vec<LayerReport>> {
        if blocks.iter().all(Vec::is_empty) {
            return Err(PruneError::NothingToPrune);
        }
        if matches!(method, CalibratedMethod::SparseGpt(_)) && !calibration.has_hessian() {
            return Err(PruneError::Calibration(
                "SparseGPT needs H: make the calibration with Calibration::with_hessian()".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for name in blocks.iter().flatten() {
            if !seen.insert(name) {
                return Err(PruneError::ListedTwice {
                    name: name.clone(),
                    what: "calibrated",
                });
            }
        }
        let all: Vec<String> = blocks.iter().flatten().cloned().collect();
        let mut reports = Vec::with_capacity(all.len());
        let result = (|| -> Result<()> {
            let passes: Vec<(usize, &[Vec<String>])> = match order {
                Order::OneShot => vec![(0, blocks)],
                Order::Sequential => (0..blocks.len()).map(|b| (b, &blocks[b..=b])).collect(),
            };
            for (first_block, pass) in passes {
                let names: Vec<String> = pass.iter().flatten().cloned().collect();
                if names.is_empty() {
                    continue;
                }
                calibration.reset(Some(&names));
                calibration.record_only(Some(&names));
                calibrate()?;
                calibration.record_only(Some(&[]));
                for (offset, block) in pass.iter().enumerate() {
                    for name in block {
                        let report =
                            self.prune_one(calibration, name, method, first_block + offset)?;
                        progress(&report);
                        reports.push(report);
                    }
                }
            }
            Ok(())
        })();
        calibration.record_only(None);
        result.map(|()| reports)
    }

    fn prune_one(
        &self,
        calibration: &Calibration,
        name: &str,
        method: &CalibratedMethod,
        block: usize,
    ) -> Result<LayerReport> {
        let stats = calibration.stats(name)?;
        // A copy: the current values share memory with what becomes `_orig`, which SparseGPT
        // rewrites. Only needed for the error, which needs `H`.
        let before = match stats.hessian() {
            Some(_) => Some(fresh_copy(&self.current(name)?.0)?),
            None => None,
        };
        let start = Instant::now();
        match method {
            CalibratedMethod::Wanda(wanda) => self.wanda(name, calibration, wanda)?,
            CalibratedMethod::SparseGpt(sparsegpt) => {
                let _ = self.sparsegpt(name, calibration, sparsegpt)?;
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let (after, mask) = self.current(name)?;
        let mask = mask.expect("just pruned");
        let pruned = mask.f_eq(0)?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
        Ok(LayerReport {
            name: name.to_string(),
            block,
            samples: stats.samples(),
            sparsity: pruned as f64 / mask.numel().max(1) as f64,
            error: match &before {
                Some(before) => relative_error(before, &after, &stats)?,
                None => None,
            },
            seconds,
        })
    }
}

/// `‖(W - W') X‖² / ‖W X‖²` from `H ∝ X Xᵀ`: `tr(Δ H Δᵀ) / tr(W H Wᵀ)`, in f64.
fn relative_error(before: &Tensor, after: &Tensor, stats: &LayerStats) -> Result<Option<f64>> {
    let Some(h) = stats.hessian() else {
        return Ok(None);
    };
    tch::no_grad(|| {
        let h = h.f_to_kind(Kind::Double)?;
        let w = before.f_to_kind(Kind::Double)?.f_to_device(h.device())?;
        let delta = w.f_sub(&after.f_to_kind(Kind::Double)?.f_to_device(h.device())?)?;
        let quadratic = |m: &Tensor| -> Result<f64> {
            Ok(m.f_matmul(&h)?
                .f_mul(m)?
                .f_sum(Kind::Double)?
                .f_double_value(&[])?)
        };
        let (num, den) = (quadratic(&delta)?, quadratic(&w)?);
        Ok(Some(if den > 0.0 { num / den } else { 0.0 }))
    })
}
