//! Sparsity schedules: how sparse a model should be at each training step, for gradual pruning
//! (Zhu & Gupta 2017; `torch.ao.pruning.scheduler`, tfmot's `PolynomialDecay`, SparseML's GMP).

use crate::error::{PruneError, Result};
use std::fmt::Debug;

/// Answers the training loop's question "what sparsity at step `t`?", as a fraction in
/// `[0, 1]`. [`GradualPruner`](crate::train::GradualPruner) prunes up to it; implement it for a
/// schedule of your own. Schedules should never decrease: pruning is never undone, so a lower
/// value than an earlier one just prunes nothing.
pub trait SparsitySchedule: Debug {
    /// The target sparsity at step `t` (steps count from 0, as `torch.ao.pruning`'s
    /// `last_epoch` does after the scheduler's construction).
    fn sparsity_at(&self, t: i64) -> f64;
}

/// Zhu & Gupta's cubic schedule, with the parameters and values of PyTorch's
/// `torch.ao.pruning.scheduler.CubicSL` (bit for bit, checked against PyTorch 2.13):
///
/// `s(t) = s_f + (s_0 - s_f) * (1 - (t - t_0) / (Δt * n))³`, clamped to `[s_0, s_f]`,
///
/// so the sparsity rises fast at first, while the network has many redundant weights, and
/// levels off as it reaches `s_f` at step `t_0 + Δt·n`. Before `t_0` it is `s_0`, or 0 with
/// [`initially_zero`](Self::initially_zero). Like `CubicSL`, `t` is not rounded down to a
/// multiple of `Δt`: call [`GradualPruner::step`](crate::train::GradualPruner::step) every `Δt` steps
/// to prune in `n` rounds as in the paper.
///
/// ```
/// use tch_prune::train::{CubicSchedule, SparsitySchedule};
/// // CubicSL(sparsifier with sparsity_level=0.9, init_t=0, delta_t=10, total_t=10)
/// let s = CubicSchedule::new(0.9, 0, 10, 10)?;
/// assert_eq!(s.sparsity_at(0), 0.0);
/// assert_eq!(s.sparsity_at(50), 0.7875);
/// assert_eq!(s.sparsity_at(100), 0.9);
/// assert_eq!(s.sparsity_at(1000), 0.9);
/// # Ok::<(), tch_prune::PruneError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CubicSchedule {
    /// `s_f`: the sparsity reached at the end (`CubicSL`'s group `sparsity_level`).
    pub final_sparsity: f64,
    /// `s_0` (`init_sl`).
    pub initial_sparsity: f64,
    /// `t_0` (`init_t`): the step pruning starts at.
    pub initial_step: i64,
    /// `Δt` (`delta_t`): the pruning frequency.
    pub delta_t: i64,
    /// `n` (`total_t`): the number of pruning rounds.
    pub total_t: i64,
    /// `CubicSL`'s `initially_zero`: 0 before `t_0` instead of `s_0`.
    pub initially_zero: bool,
}

impl CubicSchedule {
    /// From 0 at step `initial_step` to `final_sparsity` at step `initial_step + delta_t *
    /// total_t` (`CubicSL`'s `init_sl=0.0`, `initially_zero=False`).
    pub fn new(final_sparsity: f64, initial_step: i64, delta_t: i64, total_t: i64) -> Result<Self> {
        Self {
            final_sparsity,
            initial_sparsity: 0.0,
            initial_step,
            delta_t,
            total_t,
            initially_zero: false,
        }
        .validate()
    }

    /// Starts at `s_0` instead of 0 (`init_sl`).
    pub fn initial(self, initial_sparsity: f64) -> Result<Self> {
        Self {
            initial_sparsity,
            ..self
        }
        .validate()
    }

    /// 0 before `t_0` instead of `s_0` (`initially_zero`).
    pub fn initially_zero(self, initially_zero: bool) -> Self {
        Self {
            initially_zero,
            ..self
        }
    }

    /// The step at which the final sparsity is reached: `t_0 + Δt·n`.
    pub fn end_step(&self) -> i64 {
        self.initial_step + self.delta_t * self.total_t
    }

    fn validate(self) -> Result<Self> {
        check_levels("cubic", self.initial_sparsity, self.final_sparsity)?;
        if self.delta_t <= 0 || self.total_t <= 0 {
            return Err(PruneError::InvalidConfig(format!(
                "cubic schedule: delta_t ({}) and total_t ({}) must be positive (CubicSL divides by their product)",
                self.delta_t, self.total_t
            )));
        }
        Ok(self)
    }
}

impl SparsitySchedule for CubicSchedule {
    fn sparsity_at(&self, t: i64) -> f64 {
        let (s_0, s_f, t_0) = (
            self.initial_sparsity,
            self.final_sparsity,
            self.initial_step,
        );
        if self.initially_zero && t < t_0 {
            return 0.0;
        }
        // Python's `(1.0 - (t - t_0) / (dt * n)) ** 3`: an exact integer numerator and
        // denominator converted to doubles, a true division, and C's pow (what `float ** int`
        // calls), which `powf` is too; `powi` would round differently.
        let x = 1.0 - (t - t_0) as f64 / (self.delta_t * self.total_t) as f64;
        let s_t = s_f + (s_0 - s_f) * x.powf(3.0);
        // `_clamp(s_t, s_0, s_f)`: max(lo, min(hi, x)).
        s_0.max(s_f.min(s_t))
    }
}

/// Rises linearly from `initial` at step `begin` to `final_sparsity` at step `end`, and stays
/// there (tfmot's `PolynomialDecay` with `power=1`).
///
/// ```
/// use tch_prune::train::{LinearSchedule, SparsitySchedule};
/// let s = LinearSchedule::new(0.0, 0.8, 100, 200)?;
/// assert_eq!((s.sparsity_at(0), s.sparsity_at(150), s.sparsity_at(300)), (0.0, 0.4, 0.8));
/// # Ok::<(), tch_prune::PruneError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearSchedule {
    /// The sparsity up to `begin`.
    pub initial: f64,
    /// The sparsity from `end` on.
    pub final_sparsity: f64,
    /// The step the ramp starts at.
    pub begin: i64,
    /// The step the ramp reaches `final_sparsity` at.
    pub end: i64,
}

impl LinearSchedule {
    /// A linear ramp from `initial` at `begin` to `final_sparsity` at `end`; levels outside
    /// `[0, 1]` or `end <= begin` are errors.
    pub fn new(initial: f64, final_sparsity: f64, begin: i64, end: i64) -> Result<Self> {
        check_levels("linear", initial, final_sparsity)?;
        if end <= begin {
            return Err(PruneError::InvalidConfig(format!(
                "linear schedule: the end step ({end}) must come after the begin step ({begin})"
            )));
        }
        Ok(Self {
            initial,
            final_sparsity,
            begin,
            end,
        })
    }
}

impl SparsitySchedule for LinearSchedule {
    fn sparsity_at(&self, t: i64) -> f64 {
        let progress = ((t - self.begin) as f64 / (self.end - self.begin) as f64).clamp(0.0, 1.0);
        self.initial + (self.final_sparsity - self.initial) * progress
    }
}

/// Piecewise constant: from each milestone's step on, its sparsity; 0 before the first
/// (SparseML's and the lottery-ticket papers' "prune x % every k epochs", written out).
///
/// ```
/// use tch_prune::train::{StepSchedule, SparsitySchedule};
/// let s = StepSchedule::new(&[(10, 0.5), (20, 0.75), (30, 0.875)])?;
/// assert_eq!((s.sparsity_at(9), s.sparsity_at(10), s.sparsity_at(25), s.sparsity_at(99)), (0.0, 0.5, 0.75, 0.875));
/// # Ok::<(), tch_prune::PruneError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct StepSchedule {
    milestones: Vec<(i64, f64)>,
}

impl StepSchedule {
    /// `milestones`: `(step, sparsity)` pairs, steps strictly increasing, sparsities in `[0, 1]`
    /// and non-decreasing.
    pub fn new(milestones: &[(i64, f64)]) -> Result<Self> {
        if milestones.is_empty() {
            return Err(PruneError::InvalidConfig(
                "step schedule: give at least one (step, sparsity) milestone".into(),
            ));
        }
        let mut previous: Option<(i64, f64)> = None;
        for &(step, s) in milestones {
            check_levels("step", previous.map_or(0.0, |p| p.1), s)?;
            if let Some((p, _)) = previous.filter(|(p, _)| *p >= step) {
                return Err(PruneError::InvalidConfig(format!(
                    "step schedule: milestone steps must increase, but {step} follows {p}"
                )));
            }
            previous = Some((step, s));
        }
        Ok(Self {
            milestones: milestones.to_vec(),
        })
    }

    /// The milestones, as given.
    pub fn milestones(&self) -> &[(i64, f64)] {
        &self.milestones
    }
}

impl SparsitySchedule for StepSchedule {
    fn sparsity_at(&self, t: i64) -> f64 {
        self.milestones
            .iter()
            .take_while(|(step, _)| *step <= t)
            .last()
            .map_or(0.0, |(_, s)| *s)
    }
}

/// The same sparsity at every step (one-shot pruning at the first step, kept through training).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConstantSchedule(f64);

impl ConstantSchedule {
    /// `sparsity` at every step; a level outside `[0, 1]` is an error.
    pub fn new(sparsity: f64) -> Result<Self> {
        check_levels("constant", 0.0, sparsity)?;
        Ok(Self(sparsity))
    }
}

impl SparsitySchedule for ConstantSchedule {
    fn sparsity_at(&self, _t: i64) -> f64 {
        self.0
    }
}

/// Both levels in `[0, 1]`, the first not above the second.
fn check_levels(kind: &str, initial: f64, last: f64) -> Result<()> {
    let in_range = |s: f64| (0.0..=1.0).contains(&s);
    if !in_range(initial) || !in_range(last) || initial > last {
        return Err(PruneError::InvalidConfig(format!(
            "{kind} schedule: sparsities must lie in [0, 1] and never decrease (got {initial} then {last})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubic_reaches_its_target_at_the_end_step_exactly() {
        for &(s_f, t_0, dt, n) in &[(0.9, 0, 10, 10), (0.5, 3, 7, 13), (0.95, 100, 1, 977)] {
            let s = CubicSchedule::new(s_f, t_0, dt, n).unwrap();
            assert_eq!(s.sparsity_at(s.end_step()), s_f);
            assert_eq!(s.sparsity_at(t_0), 0.0);
            let values: Vec<f64> = (t_0..=s.end_step()).map(|t| s.sparsity_at(t)).collect();
            assert!(values.windows(2).all(|w| w[0] <= w[1]), "monotone");
        }
    }

    #[test]
    fn invalid_schedules_are_refused() {
        assert!(CubicSchedule::new(1.5, 0, 1, 1).is_err());
        assert!(CubicSchedule::new(0.5, 0, 0, 10).is_err());
        assert!(CubicSchedule::new(0.5, 0, 1, 10)
            .unwrap()
            .initial(0.7)
            .is_err());
        assert!(LinearSchedule::new(0.0, 0.5, 10, 10).is_err());
        assert!(StepSchedule::new(&[(1, 0.5), (1, 0.6)]).is_err());
        assert!(StepSchedule::new(&[(1, 0.5), (2, 0.4)]).is_err());
        assert!(StepSchedule::new(&[]).is_err());
        assert!(ConstantSchedule::new(f64::NAN).is_err());
    }
}
