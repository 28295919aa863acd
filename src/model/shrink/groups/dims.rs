//! Ops that move or remove whole dimensions: `permute`, `transpose` (channels-last layouts, as
//! ConvNeXt's blocks use around their layer norm and linear layers) and reductions over dims
//! (`mean`, `sum`, `amax`, `amin`), and padding. Moving a dim moves its layout; a reduction over
//! a dim that holds channels would change with their number, so it keeps them.

use super::spaces::{State, Tag};
use crate::model::shrink::graph::{Const, Graph, Node, ValueKind};

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
            reorder(st, x, o, &(0..rank).collect::<Vec<_>>());
            return true;
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
    let keepdim = match n.inputs.get(2).map(|&v| g.kind(v)) {
        Some(ValueKind::Const(Const::Bool(b))) => *b,
        None => false,
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

/// `pad` / `constant_pad_nd`: the pad list gives (before, after) for the last dims, the last
/// dim first. A dim padded by nothing keeps its layout (Swin pads its spatial dims in
/// channels-last layout); padding a dim that holds channels would add fixed ones.
pub(super) fn pad(st: &mut State, g: &Graph, n: &Node) -> bool {
    let (x, o) = (n.inputs[0], n.outputs[0]);
    let Some(rank) = g.shape(x).map(<[i64]>::len) else {
        return false;
    };
    // The widths: a constant list, or one built in the graph from constants and values
    // computed at run time (`None`: not known to be 0).
    let p: Vec<Option<i64>> = match (g.ints(n.inputs[1]), st.containers.get(&n.inputs[1])) {
        (Some(p), _) => p.iter().map(|&w| Some(w)).collect(),
        (None, Some(elements)) => elements.iter().map(|&v| g.int(v)).collect(),
        _ => return false,
    };
    if !p.len().is_multiple_of(2) || p.len() / 2 > rank {
        return false;
    }
    for d in 0..rank {
        let Some(t) = st.tag(x, d) else { continue };
        let from_last = rank - 1 - d;
        let padded = p.get(2 * from_last..2 * from_last + 2);
        if padded.is_some_and(|w| w != [Some(0), Some(0)]) {
            st.block_tag(&t, &format!("padded by {}", n.kind));
        } else {
            st.set_tag(o, rank, d, t);
        }
    }
    true
}

/// `slice(x, dim, start, end, step)` (`x[:, :h]`): the other dims keep their layouts; the
/// sliced dim keeps its own only when the slice takes all of it (`x[..., :]`), since a slice
/// with constant bounds cannot follow a shrink.
pub(super) fn slice(st: &mut State, g: &Graph, n: &Node) -> bool {
    let (x, o) = (n.inputs[0], n.outputs[0]);
    let (Some(xs), Some(dim)) = (g.shape(x), n.inputs.get(1).and_then(|&v| g.int(v))) else {
        return false;
    };
    let rank = xs.len();
    let Some(dim) = normalised(dim, rank) else {
        return false;
    };
    let bound = |i: usize| n.inputs.get(i).map(|&v| (g.int(v), g.is_none(v)));
    let from_start = matches!(bound(2), Some((Some(0), _)) | Some((None, true)));
    let to_end = match bound(3) {
        Some((Some(e), _)) => e >= xs[dim],
        Some((None, none)) => none,
        None => false,
    };
    let whole = from_start && to_end && matches!(bound(4), Some((Some(1), _)));
    for d in 0..rank {
        let Some(t) = st.tag(x, d) else { continue };
        if d == dim && !whole {
            st.block_tag(&t, "sliced by aten::slice with bounds fixed in the code");
        } else {
            st.set_tag(o, rank, d, t);
        }
    }
    true
}

/// Dim `d` of a tensor of `rank` dims (negative from the end), if there is one.
pub(super) fn normalised(d: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let d = if d < 0 { d + r } else { d };
    (0..r).contains(&d).then_some(d as usize)
}
