//! Methods that prune whole channels along a dimension: random and Ln structured.

use crate::error::{PruneError, Result};
use crate::prune::amount::Amount;
use crate::prune::method::{checked_dim, is_all_ones, PruningMethod, PruningType};
use crate::prune::unstructured::fresh_copy;
use std::fmt;
use std::str::FromStr;
use tch::{Device, Kind, Tensor};

/// Prunes `amount` channels along `dim` chosen at random (PyTorch's `RandomStructured`).
///
/// As in PyTorch, it draws one `torch.rand(channels)` from the CPU generator whatever the
/// tensor's device, and prunes the channels with the smallest draws.
#[derive(Clone, Copy, Debug)]
pub struct RandomStructured {
    amount: Amount,
    dim: i64,
}

impl RandomStructured {
    /// PyTorch's `RandomStructured(amount, dim)`; an invalid amount is an error.
    pub fn new(amount: impl Into<Amount>, dim: i64) -> Result<Self> {
        Ok(Self {
            amount: amount.into().validate()?,
            dim,
        })
    }
}

impl PruningMethod for RandomStructured {
    fn pruning_type(&self) -> PruningType {
        PruningType::Structured { dim: self.dim }
    }

    fn draws_random(&self) -> bool {
        true
    }

    fn compute_mask(&self, scores: &Tensor, default_mask: &Tensor) -> Result<Tensor> {
        let (dim, channels, k) = channels_to_prune(scores, self.dim, self.amount)?;
        if k == 0 {
            return fresh_copy(default_mask);
        }
        let draws = Tensor::f_rand([channels], (Kind::Float, Device::Cpu))?;
        let (threshold, _) = draws.f_kthvalue(k, -1, false)?;
        let kept = draws
            .f_gt_tensor(&threshold)?
            .f_nonzero()?
            .f_reshape([-1])?;
        channel_mask(scores, dim, &kept, default_mask)
    }
}

/// The channel dim of `scores` (checked, negative from the end), its number of channels and how
/// many of them `amount` prunes: where both structured methods start.
fn channels_to_prune(scores: &Tensor, dim: i64, amount: Amount) -> Result<(i64, i64, i64)> {
    let dim = checked_dim(scores, dim)?;
    let channels = scores.size()[dim as usize];
    let k = amount.to_count(channels)?;
    Ok((dim, channels, k))
}

/// A norm accepted by `torch.norm`, for [`LnStructured`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Norm {
    /// The vector p-norm; `0` counts non-zeros, `±inf` is the max/min magnitude, negative and
    /// fractional `p` are allowed.
    P(f64),
    /// Frobenius: the 2-norm, defined (as in PyTorch) over at most 2 reduced dims.
    Fro,
    /// Nuclear: defined only over exactly 2 reduced dims (3-D tensors).
    Nuc,
}

impl fmt::Display for Norm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Norm::P(p) => write!(f, "{p}"),
            Norm::Fro => f.write_str("fro"),
            Norm::Nuc => f.write_str("nuc"),
        }
    }
}

/// Parses `1`, `2`, `0.5`, `-1`, `inf`, `-inf`, `fro` or `nuc`.
impl FromStr for Norm {
    type Err = PruneError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fro" => Ok(Norm::Fro),
            "nuc" => Ok(Norm::Nuc),
            other => match other.parse::<f64>() {
                Ok(p) if !p.is_nan() => Ok(Norm::P(p)),
                _ => Err(PruneError::InvalidConfig(format!(
                    "invalid norm '{s}': use a number, inf, -inf, fro or nuc"
                ))),
            },
        }
    }
}

impl From<f64> for Norm {
    fn from(p: f64) -> Self {
        Norm::P(p)
    }
}

/// Prunes the `amount` channels along `dim` of smallest `n`-norm (PyTorch's `LnStructured`).
#[derive(Clone, Copy, Debug)]
pub struct LnStructured {
    amount: Amount,
    n: Norm,
    dim: i64,
}

impl LnStructured {
    /// PyTorch's `LnStructured(amount, n, dim)`; an invalid amount is an error.
    pub fn new(amount: impl Into<Amount>, n: impl Into<Norm>, dim: i64) -> Result<Self> {
        Ok(Self {
            amount: amount.into().validate()?,
            n: n.into(),
            dim,
        })
    }
}

impl PruningMethod for LnStructured {
    fn pruning_type(&self) -> PruningType {
        PruningType::Structured { dim: self.dim }
    }

    fn compute_mask(&self, scores: &Tensor, default_mask: &Tensor) -> Result<Tensor> {
        let (dim, channels, k) = channels_to_prune(scores, self.dim, self.amount)?;
        // PyTorch computes the norms before it looks at k, so an invalid norm fails even for k = 0.
        let norms = channel_norms(scores, self.n, dim)?;
        if k == 0 {
            return fresh_copy(default_mask);
        }
        let (_, kept) = norms.f_topk(channels - k, -1, true, true)?;
        channel_mask(scores, dim, &kept, default_mask)
    }
}

/// The norm of each channel along `dim` (PyTorch's `_compute_norm`).
fn channel_norms(t: &Tensor, n: Norm, dim: i64) -> Result<Tensor> {
    let reduced: Vec<i64> = (0..t.dim() as i64).filter(|&d| d != dim).collect();
    let invalid = || PruneError::InvalidNorm {
        norm: n.to_string(),
        dims: reduced.len(),
        shape: t.size(),
    };
    Ok(match n {
        Norm::P(p) => t.f_norm_scalaropt_dim(p, &reduced[..], false)?,
        Norm::Fro if reduced.len() <= 2 => t.f_norm_scalaropt_dim(2.0, &reduced[..], false)?,
        // `linalg.norm` with two dims and 'nuc' is `torch.norm`'s matrix_norm (and, unlike the
        // deprecated `nuclear_norm`, prints no warning).
        Norm::Nuc if reduced.len() == 2 => {
            t.f_linalg_norm_ord_str("nuc", &reduced[..], false, None::<Kind>)?
        }
        Norm::Fro | Norm::Nuc => return Err(invalid()),
    })
}

/// A mask that keeps the channels `kept` along `dim`, times the default mask, with the dtype of
/// `t` (PyTorch's `make_mask(t, dim, indices) * default_mask`). On a first prune (an all-ones
/// default) it is one value per channel broadcast to `t`'s shape: no memory per entry.
fn channel_mask(t: &Tensor, dim: i64, kept: &Tensor, default_mask: &Tensor) -> Result<Tensor> {
    let mut shape = vec![1; t.dim()];
    shape[dim as usize] = t.size()[dim as usize];
    let mut channels = Tensor::f_zeros(&shape[..], (t.kind(), t.device()))?;
    let _ = channels.f_index_fill_(dim, &kept.f_to_device(t.device())?, 1)?;
    let mask = channels.f_expand(t.size(), false)?;
    if is_all_ones(default_mask) {
        return Ok(mask);
    }
    Ok(mask.f_mul(&default_mask.f_to_kind(t.kind())?)?)
}
