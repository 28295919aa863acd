//! The rewrite: every coupled parameter and buffer replaced by its kept slices, the channel
//! counts of the layers (`out_channels`, `num_features`, ...) set to the new widths, and the
//! `groups` of depthwise convolutions changed in their class's code. Nothing else of the code
//! changes: conv, linear and batch norm take their shapes from their tensors.

use super::graph::Graph;
use super::groups::{Analysis, LayerKind, ValueSeg};
use crate::error::{PruneError, Result};
use crate::ffi::{self, IntSlot};
use std::collections::{BTreeMap, HashMap};
use tch::{CModule, Kind, Tensor};

/// The indices kept along dimension `dim` of `name`, from its layout and the groups' kept
/// channels; `None` when nothing along that dim is removed.
pub(crate) fn kept_indices(
    layout: &[(usize, i64)],
    kept: &[Vec<i64>],
    analysis: &Analysis,
) -> Option<Vec<i64>> {
    if layout
        .iter()
        .all(|&(g, _)| kept[g].len() as i64 == analysis.groups[g].channels)
    {
        return None;
    }
    let mut out = Vec::new();
    let mut offset = 0;
    for &(g, inner) in layout {
        for &c in &kept[g] {
            out.extend((0..inner).map(|j| offset + c * inner + j));
        }
        offset += analysis.groups[g].channels * inner;
    }
    Some(out)
}

/// Indices removed along a dim (the complement of `kept_indices`).
pub(crate) fn removed_indices(
    layout: &[(usize, i64)],
    kept: &[Vec<i64>],
    analysis: &Analysis,
) -> Vec<i64> {
    let Some(k) = kept_indices(layout, kept, analysis) else {
        return vec![];
    };
    let total: i64 = layout
        .iter()
        .map(|&(g, inner)| analysis.groups[g].channels * inner)
        .sum();
    let mut keep = vec![false; total as usize];
    for i in k {
        keep[i as usize] = true;
    }
    (0..total).filter(|&i| !keep[i as usize]).collect()
}

/// Per parameter or buffer that loses channels, the kept indices along each dim that does.
pub(crate) fn kept_per_tensor<'a>(
    analysis: &'a Analysis,
    kept: &[Vec<i64>],
) -> BTreeMap<&'a str, Vec<(usize, Vec<i64>)>> {
    let mut per_tensor: BTreeMap<&str, Vec<(usize, Vec<i64>)>> = BTreeMap::new();
    for ((name, dim), layout) in &analysis.layouts {
        if let Some(idx) = kept_indices(layout, kept, analysis) {
            per_tensor
                .entry(name.as_str())
                .or_default()
                .push((*dim, idx));
        }
    }
    per_tensor
}

/// `t` with only the kept indices along each of `dims` ([`kept_per_tensor`]), contiguous.
pub(crate) fn sliced(t: &Tensor, dims: &[(usize, Vec<i64>)]) -> Tensor {
    let mut new = tch::no_grad(|| t.detach());
    for (dim, idx) in dims {
        let index = Tensor::from_slice(idx)
            .to_kind(Kind::Int64)
            .to_device(new.device());
        new = tch::no_grad(|| new.index_select(*dim as i64, &index));
    }
    new.contiguous()
}

/// The width of a value's dim laid out as `segs` once the groups keep `kept`.
pub(crate) fn new_width(segs: &[ValueSeg], kept: &[Vec<i64>]) -> i64 {
    segs.iter()
        .map(|s| match s.group {
            Some(g) => kept[g].len() as i64 * s.inner,
            None => s.channels * s.inner,
        })
        .sum()
}

/// Applies `kept` to the module in place. Returns notes on what could not be made consistent
/// (class constants shared by instances that now differ: metadata only, the code does not read
/// them).
pub(crate) fn rewrite(
    module: &CModule,
    graph: &Graph,
    analysis: &Analysis,
    kept: &[Vec<i64>],
) -> Result<Vec<String>> {
    for (name, dims) in kept_per_tensor(analysis, kept) {
        let t = ffi::get_tensor(module, name)?;
        ffi::set_tensor(module, name, &sliced(&t, &dims))?;
    }
    // New widths per layer, from the new tensors.
    let mut wanted: Vec<(String, &'static str, i64)> = Vec::new();
    let mut groups_change: Vec<(String, i64, i64)> = Vec::new();
    for layer in &analysis.layers {
        let w = ffi::get_tensor(module, &layer.weight)?;
        let shape = w.size();
        match &layer.kind {
            LayerKind::Conv { groups, depthwise } => {
                let g = if *depthwise {
                    // One group per channel: as many as the weight now has.
                    let new = shape[0];
                    if new != *groups {
                        groups_change.push((layer.path.clone(), *groups, new));
                    }
                    new
                } else {
                    *groups
                };
                wanted.push((layer.path.clone(), "out_channels", shape[0]));
                wanted.push((layer.path.clone(), "in_channels", shape[1] * g));
                wanted.push((layer.path.clone(), "groups", g));
            }
            LayerKind::Linear => {
                wanted.push((layer.path.clone(), "out_features", shape[0]));
                wanted.push((layer.path.clone(), "in_features", shape[1]));
            }
            LayerKind::Transposed => {
                // Hugging Face's `Conv1D` reads `nf` for its output's shape (scripted code).
                wanted.push((layer.path.clone(), "nf", shape[1]));
                wanted.push((layer.path.clone(), "nx", shape[0]));
            }
            LayerKind::BatchNorm => wanted.push((layer.path.clone(), "num_features", shape[0])),
        }
    }
    // The groups constant is code: every instance of the class must agree (selection ties them).
    let mut done_classes: HashMap<String, (i64, i64)> = HashMap::new();
    for (path, old, new) in &groups_change {
        let class = graph
            .modules
            .get(path)
            .map(|m| m.class.clone())
            .unwrap_or_default();
        match done_classes.get(&class) {
            Some(&(o, n)) if o == *old && n == *new => continue,
            Some(_) => {
                return Err(PruneError::Shrink(format!(
                    "depthwise convolutions of class {class} would need two different `groups` ({path}); shrink them alike or leave them"
                )))
            }
            None => {}
        }
        let changed = ffi::set_groups(module, path, *old, *new)?;
        if changed == 0 {
            // Not baked into the code: an attribute of the instance, set with the other ints.
            continue;
        }
        done_classes.insert(class, (*old, *new));
    }
    // Ints: instance attributes are set one by one; class constants only where all instances of
    // the class agree.
    let mut notes = Vec::new();
    let mut by_class: BTreeMap<(String, &str), Vec<(String, i64)>> = BTreeMap::new();
    for (path, name, value) in wanted {
        let Some(m) = graph.modules.get(&path) else {
            continue;
        };
        if m.int_constants.contains_key(name) {
            by_class
                .entry((m.class.clone(), name))
                .or_default()
                .push((path, value));
        } else if ffi::set_int(module, &path, name, value)? == IntSlot::Absent {
            // A custom layer without that attribute: nothing to update.
        }
    }
    for ((class, name), instances) in by_class {
        let first = instances[0].1;
        let old = graph.modules[&instances[0].0].int_constants[name];
        if instances.iter().all(|(_, v)| *v == first) {
            if first != old {
                ffi::set_int(module, &instances[0].0, name, first)?;
            }
        } else {
            notes.push(format!(
                "class constant {name} of {class} left at {old}: its instances ({}) now have different widths (metadata only: the code does not read it)",
                instances.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    ffi::reset_plans(module)?;
    Ok(notes)
}
