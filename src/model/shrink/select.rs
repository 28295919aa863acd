//! Importance and selection: which channels of each group stay.
//!
//! A channel's importance is Torch-Pruning's group magnitude: the sum of `|w|^p` over every
//! parameter slice coupled to it (conv and linear weights on both sides, batch-norm scales;
//! biases and running statistics do not count, as in Torch-Pruning's default), so ranking by
//! it ranks by the group's L_p norm. Per group, `amount` channels go (a fraction rounded as
//! Python's `round`, or a count), at least one channel stays, and the number kept is rounded up
//! to a multiple of `round_to`. Global ranking compares scores divided by their group's mean
//! (Torch-Pruning's "mean" normaliser), so wide and narrow layers compete fairly.

use super::graph::Graph;
use super::groups::Analysis;
use crate::error::{PruneError, Result};
use crate::prune::amount::Amount;
use std::collections::{HashMap, HashSet};
use tch::{Kind, Tensor};

/// What to remove.
#[derive(Clone, Debug)]
pub struct ShrinkOptions {
    /// Channels to remove per group (or over all groups with `global`). `None` with `exact`:
    /// only channels whose whole group is zero.
    pub amount: Option<Amount>,
    /// The norm of the importance: 1 or 2 (Torch-Pruning's default).
    pub norm: f64,
    /// Rank channels of all groups together instead of each group alone.
    pub global: bool,
    /// Kept channel counts are rounded up to a multiple of this (1: no rounding).
    pub round_to: i64,
    /// Only groups whose channels one of these parameters produces (holds along its dim 0:
    /// a conv's or linear layer's output channels, a batch norm's) are shrunk (`None`: all).
    pub params: Option<HashSet<String>>,
    /// Remove exactly the channels whose every coupled parameter slice (biases, batch-norm
    /// scales and shifts, and the input columns of the layers reading them included) is zero:
    /// the outputs change only by the summation order of those layers, which sum fewer terms
    /// (bit for bit where every sum is exact).
    pub exact: bool,
}

impl Default for ShrinkOptions {
    fn default() -> Self {
        Self {
            amount: None,
            norm: 2.0,
            global: false,
            round_to: 1,
            params: None,
            exact: false,
        }
    }
}

impl ShrinkOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.norm != 1.0 && self.norm != 2.0 {
            return Err(PruneError::InvalidConfig(format!(
                "shrink norm {}: use 1 or 2",
                self.norm
            )));
        }
        if self.round_to < 1 {
            return Err(PruneError::InvalidConfig(format!(
                "round-to {}: it must be at least 1",
                self.round_to
            )));
        }
        match (self.amount, self.exact) {
            (None, false) => Err(PruneError::InvalidConfig(
                "shrink needs an amount, or the exact route".into(),
            )),
            (Some(a), _) => a.validate().map(|_| ()),
            (None, true) => Ok(()),
        }
    }
}

/// Per-channel scores of a group: (importance, whether any coupled parameter value is nonzero).
pub(crate) fn scores(
    analysis: &Analysis,
    tensor: &dyn Fn(&str) -> Result<Tensor>,
    norm: f64,
) -> Result<Vec<(Vec<f64>, Vec<bool>)>> {
    let mut out = Vec::with_capacity(analysis.groups.len());
    for group in &analysis.groups {
        let n = group.channels;
        let mut score = Tensor::zeros([n], (Kind::Double, tch::Device::Cpu));
        let mut nonzero = Tensor::zeros([n], (Kind::Bool, tch::Device::Cpu));
        for s in group.slices.iter().filter(|s| s.is_parameter) {
            let t = tensor(&s.name)?;
            let rows = tch::no_grad(|| {
                t.narrow(s.dim as i64, s.offset, n * s.inner)
                    .transpose(0, s.dim as i64)
                    .to_kind(Kind::Double)
                    .to_device(tch::Device::Cpu)
                    .reshape([n, -1])
            });
            nonzero = nonzero.logical_or(&rows.ne(0.0).any_dim(1, false));
            if !s.name.ends_with("bias") {
                score += rows
                    .abs()
                    .pow_tensor_scalar(norm)
                    .sum_dim_intlist(1, false, Kind::Double);
            }
        }
        let score: Vec<f64> = Vec::<f64>::try_from(&score)?;
        let nonzero: Vec<bool> = Vec::<bool>::try_from(&nonzero)?;
        out.push((score, nonzero));
    }
    Ok(out)
}

/// The highest-scoring `keep` channels, in index order (ties keep the lower index).
fn top(score: &[f64], keep: usize) -> Vec<i64> {
    let mut order: Vec<usize> = (0..score.len()).collect();
    order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    let mut kept: Vec<i64> = order[..keep.min(score.len())]
        .iter()
        .map(|&i| i as i64)
        .collect();
    kept.sort_unstable();
    kept
}

fn round_up(keep: i64, n: i64, k: i64) -> i64 {
    ((keep.max(1) + k - 1) / k * k).min(n)
}

/// The kept channel indices of every group (all of them for blocked or unselected groups).
pub(crate) fn select(
    analysis: &Analysis,
    graph: &Graph,
    scores: &[(Vec<f64>, Vec<bool>)],
    opts: &ShrinkOptions,
) -> Result<Vec<Vec<i64>>> {
    let eligible: Vec<bool> = analysis
        .groups
        .iter()
        .map(|g| {
            g.blocked.is_empty()
                && opts
                    .params
                    .as_ref()
                    .is_none_or(|p| g.slices.iter().any(|s| s.dim == 0 && p.contains(&s.name)))
        })
        .collect();
    let mut keep: Vec<i64> = analysis.groups.iter().map(|g| g.channels).collect();
    let mut kept: Vec<Vec<i64>> = analysis
        .groups
        .iter()
        .map(|g| (0..g.channels).collect())
        .collect();
    if opts.exact {
        for (i, g) in analysis.groups.iter().enumerate() {
            if !eligible[i] {
                continue;
            }
            let mut k: Vec<i64> = (0..g.channels)
                .filter(|&c| scores[i].1[c as usize])
                .collect();
            if k.is_empty() {
                k.push(0);
            }
            keep[i] = k.len() as i64;
            kept[i] = k;
        }
        // The exact route removes only zero channels: no rounding, no ties to apply.
        return Ok(kept);
    }
    let amount = opts
        .amount
        .ok_or_else(|| PruneError::InvalidConfig("shrink needs an amount".into()))?;
    if opts.global {
        let mut all: Vec<(f64, usize, usize)> = Vec::new();
        let mut total = 0;
        for (i, g) in analysis.groups.iter().enumerate() {
            if !eligible[i] {
                continue;
            }
            total += g.channels;
            let s = &scores[i].0;
            let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
            for (c, v) in s.iter().enumerate() {
                all.push((if mean > 0.0 { v / mean } else { 0.0 }, i, c));
            }
        }
        let mut remove = amount.to_count(total)?;
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        for (_, i, _) in all {
            if remove == 0 {
                break;
            }
            if keep[i] > 1 {
                keep[i] -= 1;
                remove -= 1;
            }
        }
        for i in 0..keep.len() {
            if eligible[i] {
                keep[i] = round_up(keep[i], analysis.groups[i].channels, opts.round_to);
            }
        }
    } else {
        for (i, g) in analysis.groups.iter().enumerate() {
            if !eligible[i] {
                continue;
            }
            let remove = match amount {
                Amount::Count(c) => c.min(g.channels),
                Amount::Fraction(_) => amount.to_count(g.channels)?,
            };
            keep[i] = round_up(g.channels - remove, g.channels, opts.round_to);
        }
    }
    // A depthwise convolution's `groups` is a constant of its class, shared by every instance
    // of the class: the groups of those instances keep the same number of channels (the most).
    loop {
        let mut by_class: HashMap<&str, Vec<usize>> = HashMap::new();
        for (li, &gi) in &analysis.layer_group {
            let layer = &analysis.layers[*li];
            if layer.is_depthwise() {
                if let Some(m) = graph.modules.get(&layer.path) {
                    by_class.entry(m.class.as_str()).or_default().push(gi);
                }
            }
        }
        let mut changed = false;
        for gis in by_class.values() {
            let max = gis.iter().map(|&g| keep[g]).max().unwrap_or(0);
            for &g in gis {
                if keep[g] != max {
                    keep[g] = max;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    for (i, k) in keep.iter().enumerate() {
        if eligible[i] || *k != analysis.groups[i].channels {
            kept[i] = top(&scores[i].0, *k as usize);
        }
    }
    Ok(kept)
}
