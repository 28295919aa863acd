//! SparseGPT (Frantar & Alistarh, 2023, "SparseGPT: Massive Language Models Can Be Accurately
//! Pruned in One-Shot"): the mask chosen block by block from `w² / [H⁻¹]²_cc`, and the
//! remaining weights updated to compensate (the OBS update), from `H = 2/n · X Xᵀ`.
//! Reference: IST-DASLab/sparsegpt, `sparsegpt.py` `SparseGPT.fasterprune`.

use crate::error::{PruneError, Result};
use crate::prune::calibration::Calibration;
use crate::prune::method::{PruningMethod, PruningType};
use crate::prune::pruner::Pruner;
use crate::prune::sparsity::Sparsity;
use crate::prune::unstructured::{fresh_copy, fresh_copy_as};
use std::fmt;
use tch::{Kind, Tensor};

/// SparseGPT's solver, `fasterprune` operation for operation: dead inputs (`H_ii = 0`) zeroed,
/// `percdamp` (1 %) of the mean diagonal added, the upper Cholesky factor of `H⁻¹`, then
/// columns in blocks of `block_size` (128): in each block the mask (unstructured: the
/// `int(block · fraction)` smallest `w² / d²` of the block; N:M: the M - N smallest of each
/// group of M columns, chosen as the sweep reaches the group), each column quantized to its
/// mask and its error spread over the columns to its right.
///
/// It computes in f32, as the reference does (`W.float()`, and `H` is kept in f32), and gives
/// the weight back in its own dtype.
///
/// Differences from the reference, none of which changes a result it gives: a fraction of 0
/// prunes nothing (the reference's threshold prunes the smallest entry of each block); an N:M
/// pattern keeps N of each M (the references' `prunen` counts the pruned: for 2:4 it is the
/// same); a last group shorter than M prunes `min(len, M - N)` (the reference fails there);
/// entries pruned before count as pruned (they are zero, and are forced into the mask).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SparseGpt {
    sparsity: Sparsity,
    block_size: i64,
    damp: f64,
}

/// What [`SparseGpt::solve`] gives: the updated weight, the mask, and the reference's error.
#[derive(Debug)]
pub struct Solution {
    /// The new weight, in the dtype of the one given, pruned entries zero.
    pub weight: Tensor,
    /// `Kind::Bool`, true where the entry is kept.
    pub keep: Tensor,
    /// `fasterprune`'s `error`: `Σ (w - q)² / d² / 2` over the weight (the OBS estimate of the
    /// increase in the layer's squared output error, in `H`'s units).
    pub error: f64,
}

impl SparseGpt {
    /// SparseGPT at `sparsity`, with the reference's defaults (blocks of 128 columns, 1 %
    /// damping).
    pub fn new(sparsity: Sparsity) -> Self {
        Self {
            sparsity,
            block_size: 128,
            damp: 0.01,
        }
    }

    /// Columns per block (the reference's `blocksize`), at least 1.
    pub fn block_size(self, block_size: i64) -> Result<Self> {
        if block_size < 1 {
            return Err(PruneError::InvalidConfig(format!(
                "invalid SparseGPT block size {block_size}: it must be at least 1 (default 128)"
            )));
        }
        Ok(Self { block_size, ..self })
    }

    /// The damping, a fraction of the mean of `H`'s diagonal (the reference's `percdamp`).
    pub fn damp(self, damp: f64) -> Result<Self> {
        if !(damp.is_finite() && damp >= 0.0) {
            return Err(PruneError::InvalidConfig(format!(
                "invalid SparseGPT damping {damp}: it must be a non-negative fraction (default 0.01)"
            )));
        }
        Ok(Self { damp, ..self })
    }

    /// The sparsity it prunes to.
    pub fn sparsity(&self) -> Sparsity {
        self.sparsity
    }

    /// Prunes `weight` (`[rows, columns]`) given `hessian` (`[columns, columns]`, SparseGPT's
    /// `H`) and, optionally, the mask it has already (0 where pruned). Changes neither.
    pub fn solve(
        &self,
        weight: &Tensor,
        hessian: &Tensor,
        prior: Option<&Tensor>,
    ) -> Result<Solution> {
        tch::no_grad(|| self.solve_inner(weight, hessian, prior))
    }

    fn solve_inner(
        &self,
        weight: &Tensor,
        hessian: &Tensor,
        prior: Option<&Tensor>,
    ) -> Result<Solution> {
        let size = weight.size();
        let [rows, columns] = size[..] else {
            return Err(PruneError::Calibration(format!(
                "SparseGPT prunes the [out, in] weight of a linear layer, not a tensor of shape {size:?}"
            )));
        };
        if hessian.size() != [columns, columns] {
            return Err(PruneError::Calibration(format!(
                "SparseGPT's H has shape {:?}, but the weight has {columns} columns",
                hessian.size()
            )));
        }
        if let Sparsity::Pattern(p) = self.sparsity {
            if p.dim() != 1 {
                return Err(PruneError::InvalidConfig(format!(
                    "SparseGPT's N:M groups run along the input columns (dim 1), not dim {}",
                    p.dim()
                )));
            }
        }
        let device = weight.device();
        let mut w = fresh_copy_as(weight, Kind::Float)?;
        let h = fresh_copy_as(&hessian.f_to_device(device)?, Kind::Float)?;
        let pruned_before = match prior {
            Some(m) => Some(m.f_to_device(device)?.f_eq(0)?),
            None => None,
        };

        // `dead = diag(H) == 0; H[dead, dead] = 1; W[:, dead] = 0`.
        let dead = h.f_diagonal(0, 0, 1)?.f_eq(0)?;
        let _ = h.f_diagonal(0, 0, 1)?.f_masked_fill_(&dead, 1.0)?;
        let _ = w.f_masked_fill_(&dead.f_unsqueeze(0)?, 0.0)?;
        // `damp = percdamp * mean(diag(H)); H[diag, diag] += damp`.
        let damp = h
            .f_diagonal(0, 0, 1)?
            .f_mean(None::<Kind>)?
            .f_mul_scalar(self.damp)?;
        let mut diagonal = h.f_diagonal(0, 0, 1)?;
        diagonal.f_copy_(&diagonal.f_add(&damp)?)?;
        let not_positive = |e: tch::TchError| {
            PruneError::Calibration(format!(
                "SparseGPT cannot invert the layer's H (not positive definite even damped: {}); \
                 give more calibration samples or a larger damping",
                crate::error::first_line(&e.to_string())
            ))
        };
        let h = h.f_linalg_cholesky(false).map_err(not_positive)?;
        let h = h.f_cholesky_inverse(false)?;
        let hinv = h.f_linalg_cholesky(true).map_err(not_positive)?;

        let mut losses = Tensor::f_zeros([rows], (Kind::Float, device))?;
        let keep = Tensor::f_ones([rows, columns], (Kind::Bool, device))?;
        for i1 in (0..columns).step_by(self.block_size as usize) {
            let i2 = (i1 + self.block_size).min(columns);
            let count = i2 - i1;
            let w1 = fresh_copy(&w.f_narrow(1, i1, count)?)?;
            let q1 = w1.f_zeros_like()?;
            let err1 = w1.f_zeros_like()?;
            let losses1 = w1.f_zeros_like()?;
            let hinv1 = hinv.f_narrow(0, i1, count)?.f_narrow(1, i1, count)?;
            let hinv1_diag = hinv1.f_diagonal(0, 0, 1)?;
            let prior1 = match &pruned_before {
                Some(p) => Some(p.f_narrow(1, i1, count)?),
                None => None,
            };

            let mut mask1 = match self.sparsity {
                Sparsity::Fraction(fraction) if fraction > 0.0 => {
                    let tmp = w1
                        .f_pow_tensor_scalar(2)?
                        .f_div(&hinv1_diag.f_reshape([1, -1])?.f_pow_tensor_scalar(2)?)?;
                    let index = (tmp.numel() as f64 * fraction) as i64;
                    let (sorted, _) = tmp.f_flatten(0, -1)?.f_sort(0, false)?;
                    tmp.f_le_tensor(&sorted.f_get(index)?)?
                }
                _ => Tensor::f_zeros([rows, count], (Kind::Bool, device))?,
            };
            if let Some(p) = &prior1 {
                mask1 = mask1.f_logical_or(p)?;
            }

            for i in 0..count {
                let w_col = w1.f_select(1, i)?;
                let d = hinv1.f_get(i)?.f_get(i)?;
                if let Sparsity::Pattern(pattern) = self.sparsity {
                    let (n, m) = pattern.pattern();
                    if i % m == 0 {
                        let len = m.min(count - i);
                        let tmp = w1.f_narrow(1, i, len)?.f_pow_tensor_scalar(2)?.f_div(
                            &hinv1_diag
                                .f_narrow(0, i, len)?
                                .f_reshape([1, -1])?
                                .f_pow_tensor_scalar(2)?,
                        )?;
                        let k = (m - n).min(len);
                        if k > 0 {
                            let (_, smallest) = tmp.f_topk(k, 1, false, true)?;
                            let _ = mask1.f_scatter_value_(1, &smallest.f_add_scalar(i)?, 1)?;
                        }
                        if let Some(p) = &prior1 {
                            let both = mask1
                                .f_narrow(1, i, len)?
                                .f_logical_or(&p.f_narrow(1, i, len)?)?;
                            mask1.f_narrow(1, i, len)?.f_copy_(&both)?;
                        }
                    }
                }
                let mut q = fresh_copy(&w_col)?;
                let _ = q.f_masked_fill_(&mask1.f_select(1, i)?, 0.0)?;
                q1.f_select(1, i)?.f_copy_(&q)?;
                let diff = w_col.f_sub(&q)?;
                losses1.f_select(1, i)?.f_copy_(
                    &diff
                        .f_pow_tensor_scalar(2)?
                        .f_div(&d.f_pow_tensor_scalar(2)?)?,
                )?;
                let e = diff.f_div(&d)?;
                let update = e
                    .f_unsqueeze(1)?
                    .f_matmul(&hinv1.f_get(i)?.f_narrow(0, i, count - i)?.f_unsqueeze(0)?)?;
                let _ = w1.f_narrow(1, i, count - i)?.f_sub_(&update)?;
                err1.f_select(1, i)?.f_copy_(&e)?;
            }
            w.f_narrow(1, i1, count)?.f_copy_(&q1)?;
            let _ = losses.f_add_(
                &losses1
                    .f_sum_dim_intlist(1, false, None::<Kind>)?
                    .f_div_scalar(2)?,
            )?;
            if i2 < columns {
                let rest = hinv.f_narrow(0, i1, count)?.f_narrow(1, i2, columns - i2)?;
                let _ = w
                    .f_narrow(1, i2, columns - i2)?
                    .f_sub_(&err1.f_matmul(&rest)?)?;
            }
            keep.f_narrow(1, i1, count)?
                .f_copy_(&mask1.f_logical_not()?)?;
        }
        Ok(Solution {
            weight: w.f_to_kind(weight.kind())?,
            keep,
            error: losses.f_sum(Kind::Float)?.f_double_value(&[])?,
        })
    }
}

/// A mask SparseGPT has solved for, handed to the registry as a method (so that the history
/// names SparseGPT).
struct Solved<'a> {
    method: &'a SparseGpt,
    keep: Tensor,
}

impl fmt::Debug for Solved<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.method)
    }
}

impl PruningMethod for Solved<'_> {
    fn pruning_type(&self) -> PruningType {
        PruningType::Global
    }

    fn compute_mask(&self, _scores: &Tensor, default_mask: &Tensor) -> Result<Tensor> {
        let keep = self.keep.f_to_kind(default_mask.kind())?;
        Ok(default_mask.f_mul(&keep)?)
    }
}

impl Pruner {
    /// Prunes the linear weight `name` (`[out, in]`) with SparseGPT, from the `H` its layer
    /// gathered in `calibration` (made by [`Calibration::with_hessian`]): a `_mask`, and
    /// `_orig` rewritten with the updated weights (zero where pruned). Returns the reference's
    /// error ([`Solution::error`]). On error nothing changes.
    ///
    /// ```
    /// use tch::{nn, nn::Module, Device, Kind, Tensor};
    /// use tch_prune::{Calibration, Pruner, SparseGpt, Sparsity};
    ///
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let calibration = Calibration::with_hessian();
    /// let fc = calibration.linear(&(vs.root() / "fc"), 16, 8, Default::default());
    /// tch::no_grad(|| fc.forward(&Tensor::randn([4, 32, 16], (Kind::Float, Device::Cpu))));
    ///
    /// let pruner = Pruner::new(&vs);
    /// pruner.sparsegpt("fc.weight", &calibration, &SparseGpt::new(Sparsity::pattern(2, 4)?))?;
    /// let kept = pruner.mask("fc.weight").unwrap().sum(Kind::Float).double_value(&[]);
    /// assert_eq!(kept, 64.0); // 2 of every 4
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sparsegpt(
        &self,
        name: &str,
        calibration: &Calibration,
        method: &SparseGpt,
    ) -> Result<f64> {
        let stats = calibration.stats(name)?;
        let (values, mask) = self.current(name)?;
        stats.check_for(name, &values.size())?;
        let hessian = stats.hessian().ok_or_else(|| {
            PruneError::Calibration(format!(
                "'{name}' has no H: SparseGPT needs a Calibration::with_hessian()"
            ))
        })?;
        let solution = method.solve(&values, hessian, mask.as_ref())?;
        self.prune(
            name,
            &Solved {
                method,
                keep: solution.keep,
            },
            None,
        )?;
        let orig = self.orig(name).expect("just pruned");
        tch::no_grad(|| orig.f_detach()?.f_copy_(&solution.weight))?;
        self.apply_masks()?;
        Ok(solution.error)
    }
}
