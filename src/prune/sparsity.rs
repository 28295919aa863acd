//! The sparsity a calibrated method (Wanda, SparseGPT) reaches in one shot: a fraction, or an
//! N:M pattern.

use crate::error::{PruneError, Result};
use crate::prune::nm::NmSparsity;
use std::fmt;

/// How much Wanda or SparseGPT prunes, in their references' terms: a fraction of each
/// comparison group (each output row for Wanda, each block of 128 columns for SparseGPT's
/// unstructured mode), `int(size * fraction)` entries of it (truncated, as the references do),
/// or an N:M pattern (N kept in every M consecutive input columns).
///
/// Unlike an [`Amount`](crate::Amount), the fraction is of the whole tensor, not of what
/// remains: entries pruned before count among the pruned first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sparsity {
    /// A fraction in `[0, 1)` of each comparison group.
    Fraction(f64),
    /// N kept in every M consecutive input columns.
    Pattern(NmSparsity),
}

impl Sparsity {
    /// A fraction in `[0, 1)` (the references cannot prune a whole row: their threshold
    /// would index past the sorted scores).
    pub fn fraction(fraction: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(PruneError::InvalidConfig(format!(
                "invalid sparsity {fraction}: Wanda and SparseGPT take a fraction in [0, 1) \
                 (e.g. 0.5), or an N:M pattern"
            )));
        }
        Ok(Sparsity::Fraction(fraction))
    }

    /// An N:M pattern along the input columns (dim 1 of a linear weight).
    pub fn pattern(n: i64, m: i64) -> Result<Self> {
        Ok(Sparsity::Pattern(NmSparsity::new(n, m)?))
    }
}

impl fmt::Display for Sparsity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sparsity::Fraction(x) => write!(f, "{x}"),
            Sparsity::Pattern(p) => write!(f, "{p}"),
        }
    }
}
