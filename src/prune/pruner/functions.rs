//! PyTorch's pruning functions (`prune.l1_unstructured(module, name, amount)` and the others)
//! as methods of the registry. One idea: each builds its method object and calls
//! [`Pruner::prune`].

use crate::error::Result;
use crate::prune::amount::Amount;
use crate::prune::custom::CustomFromMask;
use crate::prune::pruner::Pruner;
use crate::prune::structured::{LnStructured, Norm, RandomStructured};
use crate::prune::unstructured::{Identity, L1Unstructured, RandomUnstructured};
use tch::Tensor;

impl Pruner {
    /// Reparametrizes `name` with an all-ones mask (`prune.identity`).
    pub fn identity(&self, name: &str) -> Result<()> {
        self.prune(name, &Identity, None)
    }

    /// Prunes `amount` random entries (`prune.random_unstructured`).
    pub fn random_unstructured(&self, name: &str, amount: impl Into<Amount>) -> Result<()> {
        self.prune(name, &RandomUnstructured::new(amount)?, None)
    }

    /// Prunes the `amount` entries of smallest magnitude (`prune.l1_unstructured`).
    pub fn l1_unstructured(
        &self,
        name: &str,
        amount: impl Into<Amount>,
        importance_scores: Option<&Tensor>,
    ) -> Result<()> {
        self.prune(name, &L1Unstructured::new(amount)?, importance_scores)
    }

    /// Prunes `amount` random channels along `dim` (`prune.random_structured`).
    pub fn random_structured(&self, name: &str, amount: impl Into<Amount>, dim: i64) -> Result<()> {
        self.prune(name, &RandomStructured::new(amount, dim)?, None)
    }

    /// Prunes the `amount` channels along `dim` of smallest `n`-norm (`prune.ln_structured`).
    pub fn ln_structured(
        &self,
        name: &str,
        amount: impl Into<Amount>,
        n: impl Into<Norm>,
        dim: i64,
        importance_scores: Option<&Tensor>,
    ) -> Result<()> {
        self.prune(name, &LnStructured::new(amount, n, dim)?, importance_scores)
    }

    /// Prunes where `mask` is 0 (`prune.custom_from_mask`).
    pub fn custom_from_mask(&self, name: &str, mask: &Tensor) -> Result<()> {
        self.prune(name, &CustomFromMask::new(mask), None)
    }
}
