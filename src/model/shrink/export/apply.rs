//! The program rewritten for the kept channels: every size that the removed channels change
//! in `tensor_values` (with strides that keep each value's memory layout), the placeholders of
//! the sliced weights, the `groups` of depthwise convolutions and the size literals of `view`
//! and `reshape`. What the rewrite cannot follow is found before the selection
//! ([`unfollowable`]): those groups keep their channels, with the reason.

use super::front::{sizes, Described};
use crate::error::{PruneError, Result};
use crate::model::shrink::groups::{Analysis, ValueSeg};
use crate::model::shrink::rewrite::new_width;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};

fn ints(v: &Value) -> Option<Vec<i64>> {
    v.as_array()?
        .iter()
        .map(|s| s.get("as_int")?.as_i64())
        .collect()
}

/// The order of `sizes`' dims from outermost to innermost for which `strides` are dense (each
/// the product of the sizes inside it; dims of size 1 may have any stride), if there is one.
fn dense_order(sizes: &[i64], strides: &[i64]) -> Option<Vec<usize>> {
    if sizes.len() != strides.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| strides[b].cmp(&strides[a]).then(a.cmp(&b)));
    let mut inner = 1i64;
    for &d in order.iter().rev() {
        if sizes[d] != 1 && strides[d] != inner {
            return None;
        }
        inner = inner.saturating_mul(sizes[d]);
    }
    Some(order)
}

/// Dense strides for `sizes` in `order` (outermost first).
fn strides_in(order: &[usize], sizes: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; sizes.len()];
    let mut inner = 1i64;
    for &d in order.iter().rev() {
        strides[d] = inner;
        inner = inner.saturating_mul(sizes[d].max(1));
    }
    strides
}

fn groups_of(dims: &[Option<Vec<ValueSeg>>]) -> impl Iterator<Item = usize> + '_ {
    dims.iter().flatten().flatten().filter_map(|s| s.group)
}

/// The groups whose channels run through something the rewrite cannot follow, with why: a
/// value whose strides are not dense in any order (a view of part of another), a `view` or
/// `reshape` whose sizes are not a literal list.
pub(super) fn unfollowable(
    program: &Value,
    described: &Described,
    analysis: &Analysis,
) -> Result<Vec<(usize, String)>> {
    let (graph, tensor_values, _) = super::front::parts(program)?;
    let mut out = Vec::new();
    for (name, id) in &described.ids {
        let Some(dims) = analysis.values.get(id) else {
            continue;
        };
        let meta = tensor_values.get(name);
        let (s, st) = (
            meta.and_then(sizes),
            meta.and_then(|m| m.get("strides")).and_then(ints),
        );
        let dense = matches!((&s, &st), (Some(s), Some(st)) if dense_order(s, st).is_some());
        if !dense {
            for g in groups_of(dims) {
                out.push((
                    g,
                    format!(
                        "the program gives {name} strides the rewrite cannot follow (not dense)"
                    ),
                ));
            }
        }
    }
    for node in graph
        .get("nodes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some((size_arg, output)) = view_parts(node) else {
            continue;
        };
        let Some(&id) = described.ids.get(output) else {
            continue;
        };
        let Some(dims) = analysis.values.get(&id) else {
            continue;
        };
        if size_arg.get("as_ints").is_none() {
            for g in groups_of(dims) {
                out.push((
                    g,
                    format!("{output} is a view whose sizes are not written in the program"),
                ));
            }
        }
    }
    Ok(out)
}

/// A `view`/`reshape` node's size argument and the name of its output.
fn view_parts(node: &Value) -> Option<(&Value, &str)> {
    let target = node.get("target")?.as_str()?;
    let arg_name = match target {
        "torch.ops.aten.view.default" | "torch.ops.aten._unsafe_view.default" => "size",
        "torch.ops.aten.reshape.default" => "shape",
        _ => return None,
    };
    let arg = node
        .get("inputs")?
        .as_array()?
        .iter()
        .find(|i| i.get("name").and_then(Value::as_str) == Some(arg_name))?
        .get("arg")?;
    let output = node
        .get("outputs")?
        .as_array()?
        .first()?
        .get("as_tensor")?
        .get("name")?
        .as_str()?;
    Some((arg, output))
}

fn as_ints(v: &[i64]) -> Value {
    Value::Array(v.iter().map(|&n| json!({ "as_int": n })).collect())
}

/// Rewrites `program` for the groups keeping `kept`; `shapes` are the new shapes of the sliced
/// parameters and buffers, by dotted name.
pub(super) fn rewrite(
    program: &mut Value,
    described: &Described,
    analysis: &Analysis,
    kept: &[Vec<i64>],
    shapes: &HashMap<String, Vec<i64>>,
) -> Result<()> {
    let bug = |what: String| {
        PruneError::Shrink(format!(
            "cannot rewrite the program: {what} (a bug of the .pt2 shrink: please report it)"
        ))
    };
    // New sizes of every value, by name.
    let mut new_sizes: HashMap<String, Vec<i64>> = HashMap::new();
    {
        let (_, tensor_values, _) = super::front::parts(program)?;
        for (name, id) in &described.ids {
            let Some(old) = tensor_values.get(name).and_then(sizes) else {
                continue;
            };
            let new = if let Some(dotted) = described.placeholders.get(name) {
                match shapes.get(dotted) {
                    Some(s) => s.clone(),
                    None => continue,
                }
            } else if let Some(dims) = analysis.values.get(id) {
                old.iter()
                    .enumerate()
                    .map(|(d, &w)| match dims.get(d).and_then(Option::as_ref) {
                        Some(segs) => new_width(segs, kept),
                        None => w,
                    })
                    .collect()
            } else {
                continue;
            };
            if new != old {
                if new.len() != old.len() {
                    return Err(bug(format!("{name} would change rank")));
                }
                new_sizes.insert(name.clone(), new);
            }
        }
    }
    // A weight's transpose read as a linear layer's weight: its sizes swap the weight's, its
    // strides are the weight's row-major ones swapped.
    for (value, placeholder) in &described.transposed {
        let new = described
            .placeholders
            .get(placeholder)
            .and_then(|dotted| shapes.get(dotted));
        if let Some([out, inp]) = new.map(Vec::as_slice) {
            new_sizes.insert(value.clone(), vec![*inp, *out]);
        }
    }
    let module = program
        .get_mut("graph_module")
        .ok_or_else(|| bug("no graph_module".into()))?;
    let graph = module
        .get_mut("graph")
        .ok_or_else(|| bug("no graph".into()))?;
    if let Some(values) = graph
        .get_mut("tensor_values")
        .and_then(Value::as_object_mut)
    {
        for (name, new) in &new_sizes {
            let Some(meta) = values.get_mut(name).and_then(Value::as_object_mut) else {
                continue;
            };
            let order = if described.placeholders.contains_key(name) {
                // A sliced weight is written row-major, whatever the program recorded.
                (0..new.len()).collect()
            } else if described.transposed.contains_key(name) {
                // The transpose of a row-major weight: its dim 1 outermost.
                vec![1, 0]
            } else {
                let old = meta.get("sizes").and_then(ints).unwrap_or_default();
                let old_strides = meta.get("strides").and_then(ints).unwrap_or_default();
                dense_order(&old, &old_strides)
                    .ok_or_else(|| bug(format!("{name} has strides that are not dense")))?
            };
            meta.insert("sizes".into(), as_ints(new));
            meta.insert("strides".into(), as_ints(&strides_in(&order, new)));
        }
    }
    // Depthwise convolutions: one group per channel, as many as their weight now has.
    let depthwise: BTreeSet<&str> = analysis
        .layers
        .iter()
        .filter(|l| l.is_depthwise())
        .map(|l| l.weight.as_str())
        .collect();
    let by_placeholder: HashMap<&str, &str> = described
        .placeholders
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_str()))
        .collect();
    let nodes = graph
        .get_mut("nodes")
        .and_then(Value::as_array_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    let mut rewritten = Vec::with_capacity(nodes.len());
    for mut node in nodes {
        let target = node
            .get("target")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if target.starts_with("torch.ops.aten.conv") {
            depthwise_groups(&mut node, &by_placeholder, &depthwise, shapes);
        }
        if let Some((arg, output)) = view_parts(&node) {
            if let Some(new) = new_sizes.get(output).cloned() {
                let Some(literal) = arg
                    .get("as_ints")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(Value::as_i64).collect::<Option<Vec<i64>>>())
                else {
                    return Err(bug(format!("the sizes of view {output} are not a literal")));
                };
                let literal = literal.ok_or_else(|| bug(format!("view {output}'s sizes")))?;
                if literal.len() != new.len() {
                    return Err(bug(format!("view {output} has sizes of another rank")));
                }
                let sized: Vec<i64> = literal
                    .iter()
                    .zip(&new)
                    .map(|(&l, &n)| if l == -1 { -1 } else { n })
                    .collect();
                set_view_sizes(&mut node, &sized);
            }
        }
        rewritten.push(node);
    }
    if let Some(slot) = graph.get_mut("nodes") {
        *slot = Value::Array(rewritten);
    }
    Ok(())
}

fn set_view_sizes(node: &mut Value, sizes: &[i64]) {
    let Some(inputs) = node.get_mut("inputs").and_then(Value::as_array_mut) else {
        return;
    };
    for input in inputs {
        let name = input.get("name").and_then(Value::as_str);
        if matches!(name, Some("size") | Some("shape")) {
            if let Some(arg) = input.get_mut("arg") {
                *arg = json!({ "as_ints": sizes });
            }
        }
    }
}

/// A depthwise convolution's `groups` set to its weight's new output channels.
fn depthwise_groups(
    node: &mut Value,
    by_placeholder: &HashMap<&str, &str>,
    depthwise: &BTreeSet<&str>,
    shapes: &HashMap<String, Vec<i64>>,
) {
    let Some(inputs) = node.get_mut("inputs").and_then(Value::as_array_mut) else {
        return;
    };
    let weight = inputs
        .iter()
        .find(|i| i.get("name").and_then(Value::as_str) == Some("weight"))
        .and_then(|i| i.get("arg")?.get("as_tensor")?.get("name")?.as_str())
        .and_then(|p| by_placeholder.get(p).copied());
    let Some(weight) = weight.filter(|w| depthwise.contains(w)) else {
        return;
    };
    let Some(&channels) = shapes.get(weight).and_then(|s| s.first()) else {
        return;
    };
    for input in inputs {
        if input.get("name").and_then(Value::as_str) == Some("groups") {
            if let Some(arg) = input.get_mut("arg") {
                *arg = json!({ "as_int": channels });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_keep_the_memory_layout() {
        // Row-major [1, 64, 8, 8] -> [1, 32, 8, 8].
        let order = dense_order(&[1, 64, 8, 8], &[4096, 64, 8, 1]).unwrap();
        assert_eq!(strides_in(&order, &[1, 32, 8, 8]), [2048, 64, 8, 1]);
        // Channels last stays channels last.
        let order = dense_order(&[1, 64, 8, 8], &[4096, 1, 512, 64]).unwrap();
        assert_eq!(strides_in(&order, &[1, 32, 8, 8]), [2048, 1, 256, 32]);
        // [1, C, 1, 1] as PyTorch writes it.
        let order = dense_order(&[1, 64, 1, 1], &[64, 1, 1, 1]).unwrap();
        assert_eq!(strides_in(&order, &[1, 32, 1, 1]), [32, 1, 1, 1]);
        // A slice of a wider tensor, a broadcast: not dense.
        assert!(dense_order(&[4, 8], &[16, 1]).is_none());
        assert!(dense_order(&[4, 8], &[0, 1]).is_none());
    }
}
