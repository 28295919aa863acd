//! Ops that move or remove whole dimensions: `permute`, `transpose` (channels-last layouts, as
//! ConvNeXt's blocks use around their layer norm and linear layers) and reductions over dims
//! (`mean`, `sum`, `amax`, `amin`). Moving a dim moves its layout; a reduction over a dim that
//! holds channels would change with their number, so it keeps them.

use super::{State, Tag};
use crate::model::shrink::graph::{Const, Graph, Node, ValueKind};

fn normalised(d: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let d = if d < 0 { d + r } else { d };
    (0..r).contains(&d).then_some(d as usize)
}

/// Output dim `d` is input dim `order[d]`.
fn reorder(st: &mut State, x: usize, o: usize, order: &[usize]) {
    for (d, &from) in order.iter().enumerate() {
        if let Some(t) = st.tag(x, from) {
            st.set_tag(o, order.len(), d, t);
        }
    }
}

pub(super) fn permute(st: &mut State, g: &Graph, n: &Node) -> bool {
    let (x, o) = (n.inputs[0], n.outputs[0]);
    let (Some(rank), Some(dims)) = (g.shape(x).map(<[i64]>::len), g.ints(n.inputs[1])) else {
        return false;
    };
    let Some(order) = dims
        .iter()
        .map(|&d| normalised(d, rank))
        .collect::<Option<Vec<usize>>>()
    else {
        return false;
    };
    if order.len() != rank {
        return false;
    }
    reorder(st, x, o, &order);
    true
}

pub(super) fn transpose(st: &mut State, g: &Graph, n: &Node, op: &str) -> bool {
    let (x, o) = (n.inputs[0], n.outputs[0]);
    let Some(rank) = g.shape(x).map(<[i64]>::len) else {
        return false;
    };
    let (a, b) = if op == "t" {
        if rank < 2 {
            return rank <= 1 && {
                reorder(st, x, o, &(0..rank).collect::<Vec<_>>());
                true
            };
        }
        (0, 1)
    } else {
        match (
            n.inputs
                .get(1)
                .and_then(|&v| g.int(v))
                .and_then(|d| normalised(d, rank)),
            n.inputs
                .get(2)
                .and_then(|&v| g.int(v))
                .and_then(|d| normalised(d, rank)),
        ) {
            (Some(a), Some(b)) => (a, b),
            _ => return false,
        }
    };
    let mut order: Vec<usize> = (0..rank).collect();
    order.swap(a, b);
    reorder(st, x, o, &order);
    if op.ends_with('_') {
        if let Some(t) = st.tags.get(&o).cloned() {
            st.tags.insert(x, t);
        }
    }
    true
}

/// `mean` / `sum` / `amax` / `amin` over a list of dims (or all of them), with `keepdim`.
pub(super) fn reduce(st: &mut State, g: &Graph, n: &Node) -> bool {
    let (x, o) = (n.inputs[0], n.outputs[0]);
    let Some(rank) = g.shape(x).map(<[i64]>::len) else {
        return false;
    };
    let all: Vec<usize> = (0..rank).collect();
    // `x.mean(dtype=...)` has no dim list: every dim. Otherwise a list (empty: every dim) or None.
    let dims: Vec<usize> = if n.inputs.len() <= 2 || g.is_none(n.inputs[1]) {
        all
    } else if let Some(list) = g.ints(n.inputs[1]) {
        if list.is_empty() {
            all
        } else {
            match list.iter().map(|&d| normalised(d, rank)).collect() {
                Some(d) => d,
                None => return false,
            }
        }
    } else {
        return false;
    };
    let keepdim = match g.kind(n.inputs.get(2).copied().unwrap_or(usize::MAX)) {
        ValueKind::Const(Const::Bool(b)) => *b,
        _ if n.inputs.len() <= 2 => false,
        _ => return false,
    };
    let reason = format!(
        "reduced over by {} (its value depends on how many channels there are)",
        n.kind
    );
    let mut kept = 0;
    for d in 0..rank {
        let t: Option<Tag> = st.tag(x, d);
        if dims.contains(&d) {
            if let Some(t) = t {
                st.block_tag(&t, &reason);
            }
            if keepdim {
                kept += 1;
            }
            continue;
        }
        if let Some(t) = t {
            let out_rank = g.shape(o).map_or(0, <[i64]>::len);
            if kept < out_rank {
                st.set_tag(o, out_rank, kept, t);
            } else {
                st.block_tag(&t, &reason);
            }
        }
        kept += 1;
    }
    true
}
