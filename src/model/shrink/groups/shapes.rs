//! Ops that carry channels through without making any: element-wise ops of one tensor (the
//! layout passes through), pooling (over the spatial dims), element-wise ops with broadcasting
//! (which merge the spaces they line up), reshapes that only regroup dims (flatten, view,
//! squeeze, unsqueeze) and `cat` (the inputs' layouts in order).

use super::dims::normalised;
use super::spaces::{param, Seg, State, Tag};
use super::split;
use crate::model::shrink::graph::{Graph, Node, ValueKind};

pub(super) fn pass_through(st: &mut State, g: &Graph, x: usize, out: Option<usize>) {
    if let (Some(o), Some(t)) = (out, st.tags.get(&x).cloned()) {
        let rank = g.shape(o).map_or(t.len(), |s| s.len());
        if rank == t.len() {
            st.tags.insert(o, t);
        } else {
            let t2: Vec<Tag> = t.into_iter().flatten().collect();
            for tag in t2 {
                st.block_tag(&tag, "an op changed the rank of a tensor unexpectedly");
            }
        }
    }
}

pub(super) fn pool(st: &mut State, g: &Graph, n: &Node, spatial: usize) -> bool {
    let x = n.inputs[0];
    let Some(xs) = g.shape(x) else { return false };
    if xs.len() <= spatial {
        return false;
    }
    let keep = xs.len() - spatial;
    for d in keep..xs.len() {
        if let Some(t) = st.tag(x, d) {
            st.block_tag(&t, "pooled over a dim that holds channels");
        }
    }
    for &o in &n.outputs {
        let Some(os) = g.shape(o) else { continue };
        if os.len() != xs.len() {
            return false;
        }
        for d in 0..keep {
            if let Some(t) = st.tag(x, d) {
                st.set_tag(o, os.len(), d, t);
            }
        }
    }
    true
}

/// Element-wise ops with broadcasting: dims line up from the right; a dim of size 1 against a
/// larger one is broadcast and ties nothing.
pub(super) fn elementwise(st: &mut State, g: &Graph, n: &Node) -> bool {
    let Some(o) = n.outputs.first().copied() else {
        return false;
    };
    let Some(os) = g.shape(o).map(<[i64]>::to_vec) else {
        return false;
    };
    let operands: Vec<usize> = n
        .inputs
        .iter()
        .take(2)
        .copied()
        .filter(|&v| matches!(g.kind(v), ValueKind::Tensor(_)))
        .collect();
    for d in 0..os.len() {
        let mut merged: Option<Tag> = None;
        let mut fixed: Vec<String> = Vec::new();
        let mut params: Vec<(String, usize)> = Vec::new();
        for &v in &operands {
            let Some(vs) = g.shape(v) else { return false };
            let Some(vd) = (d + vs.len()).checked_sub(os.len()) else {
                continue;
            };
            if vs[vd] == 1 && os[d] != 1 {
                if let Some(t) = st.tag(v, vd) {
                    st.block_tag(&t, "a one-channel group broadcast");
                }
                continue;
            }
            match st.tag(v, vd) {
                Some(t) => {
                    merged = match merged {
                        None => Some(t),
                        Some(m) => {
                            st.unify(
                                &m,
                                &t,
                                &format!("{} of two tensors whose channels do not line up", n.kind),
                            );
                            Some(m)
                        }
                    };
                }
                None => match param(st, v) {
                    Some(p) => params.push((p, vd)),
                    None => fixed.push(if matches!(g.kind(v), ValueKind::Const(_)) {
                        "a constant".into()
                    } else {
                        "a tensor of fixed width".into()
                    }),
                },
            }
        }
        if let Some(m) = merged {
            for (p, vd) in params {
                st.couple(&p, vd, &m);
            }
            if let Some(f) = fixed.first() {
                st.block_tag(&m, &format!("combined by {} with {f} (a network input or a value the analysis cannot shrink)", n.kind));
            }
            st.set_tag(o, os.len(), d, m);
        }
    }
    // In-place ops alias their first input: later readers of it see the merged layout too.
    if n.kind.ends_with('_') {
        if let Some(t) = st.tags.get(&o).cloned() {
            st.tags.insert(n.inputs[0], t);
        }
    }
    true
}

/// Views that only regroup dims (flatten, view, reshape, squeeze, unsqueeze): the dims of input
/// and output are matched into runs of equal product; a channel dim merged with the dims after
/// it becomes a layout with `inner` > 1, and splits back the same way.
pub(super) fn reshape(st: &mut State, g: &Graph, n: &Node) -> bool {
    let x = n.inputs[0];
    let (Some(xs), Some(o)) = (g.shape(x).map(<[i64]>::to_vec), n.outputs.first().copied()) else {
        return false;
    };
    let Some(os) = g.shape(o).map(<[i64]>::to_vec) else {
        return false;
    };
    let (mut i, mut j) = (0usize, 0usize);
    while i < xs.len() || j < os.len() {
        // Skip size-1 dims on either side when the other does not need them.
        let (i0, j0) = (i, j);
        let (mut pi, mut pj) = (1i64, 1i64);
        if i < xs.len() {
            pi = xs[i];
            i += 1;
        }
        if j < os.len() {
            pj = os[j];
            j += 1;
        }
        while pi != pj {
            if pi < pj && i < xs.len() {
                pi *= xs[i];
                i += 1;
            } else if pj < pi && j < os.len() {
                pj *= os[j];
                j += 1;
            } else {
                return false;
            }
        }
        // Runs xs[i0..i] and os[j0..j] hold the same elements.
        let tagged: Vec<(usize, Tag)> = (i0..i)
            .filter_map(|d| st.tag(x, d).map(|t| (d, t)))
            .collect();
        if tagged.is_empty() {
            continue;
        }
        if tagged.len() > 1 {
            for (_, t) in &tagged {
                st.block_tag(t, "two channel dims merged by a reshape");
            }
            continue;
        }
        let (d, tag) = tagged[0].clone();
        // Elements after the tagged dim within the run, and before it (must be 1).
        let after: i64 = xs[d + 1..i].iter().product();
        let before: i64 = xs[i0..d].iter().product();
        let out_dims: Vec<usize> = (j0..j).filter(|&k| os[k] != 1).collect();
        if before != 1 {
            st.block_tag(&tag, "a reshape puts channels after another dim");
            continue;
        }
        if out_dims.len() <= 1 {
            let k = out_dims.first().copied().unwrap_or(j0);
            let t: Tag = tag
                .iter()
                .map(|s| Seg {
                    space: s.space,
                    inner: s.inner * after,
                })
                .collect();
            st.set_tag(o, os.len(), k, t);
        } else {
            // A split: the channels must be exactly the first output dim.
            let first = out_dims[0];
            let rest: i64 = os[first + 1..j].iter().product();
            if tag.len() == 1 && after == 1 && tag[0].inner == rest {
                st.set_tag(
                    o,
                    os.len(),
                    first,
                    vec![Seg {
                        space: tag[0].space,
                        inner: 1,
                    }],
                );
            } else if after == 1 && out_dims.len() == 2 {
                // `view(b, k, c / k, ...)`, as a channel shuffle does: k equal pieces, the
                // second dim indexing within each. The code computes `c / k` from the width at
                // run time, so it follows a shrink when every piece keeps the same channels.
                match split::equal_pieces(st, &tag, xs[d], os[first]) {
                    Some(pieces) => st.set_tag(o, os.len(), out_dims[1], pieces[0].clone()),
                    None => st.block_tag(
                        &tag,
                        "a reshape splits channels into pieces that do not line up",
                    ),
                }
            } else {
                st.block_tag(&tag, "a reshape splits channels");
            }
        }
    }
    fixed_sizes(st, g, n, o, os.len());
    true
}

/// A `view`/`reshape` whose size names a channel dim's width as a constant (what tracing makes
/// of `x.size()[:-1] + (self.nf,)`): the code would ask for the old width after a shrink, so
/// those channels stay.
fn fixed_sizes(st: &mut State, g: &Graph, n: &Node, o: usize, rank: usize) {
    let Some(&sizes) = n.inputs.get(1) else {
        return;
    };
    let constant: Vec<Option<i64>> = match (g.ints(sizes), st.containers.get(&sizes)) {
        (Some(list), _) => list.iter().map(|&v| Some(v)).collect(),
        (None, Some(elements)) => elements.iter().map(|&e| g.int(e)).collect(),
        _ => return,
    };
    if constant.len() != rank {
        return;
    }
    for (d, c) in constant.iter().enumerate() {
        let (Some(c), Some(t)) = (c, st.tag(o, d)) else {
            continue;
        };
        if *c >= 0 {
            st.block_tag(
                &t,
                &format!("{} sizes a channel dim with a constant of the code ({c}: a traced model; script it to shrink these channels)", n.kind),
            );
            if let Some(tags) = st.tags.get_mut(&o) {
                tags[d] = None;
            }
        }
    }
}

/// `cat` along a dim: the output layout along it is the inputs' layouts in order (an input
/// without channels there makes that whole stretch fixed: then the others cannot be shrunk
/// either, since nothing records where the fixed part sits after they shrink).
pub(super) fn cat(st: &mut State, g: &Graph, n: &Node) -> bool {
    let Some(parts) = st.containers.get(&n.inputs[0]).cloned() else {
        return false;
    };
    let Some(o) = n.outputs.first().copied() else {
        return false;
    };
    let Some(os) = g.shape(o).map(<[i64]>::to_vec) else {
        return false;
    };
    let Some(dim) = n
        .inputs
        .get(1)
        .and_then(|&v| g.int(v))
        .and_then(|d| normalised(d, os.len()))
    else {
        return false;
    };
    let mut out_tag: Tag = Vec::new();
    let mut fixed = false;
    for &p in &parts {
        let Some(ps) = g.shape(p) else { return false };
        if ps.len() != os.len() {
            return false;
        }
        match st.tag(p, dim) {
            Some(t) => out_tag.extend(t),
            None => fixed = true,
        }
    }
    if fixed {
        for &p in &parts {
            if let Some(t) = st.tag(p, dim) {
                st.block_tag(&t, "concatenated with a tensor of fixed width");
            }
        }
    } else if !out_tag.is_empty() {
        st.set_tag(o, os.len(), dim, out_tag);
    }
    // The other dims must agree across the parts.
    for d in 0..os.len() {
        if d == dim {
            continue;
        }
        let tags: Vec<Tag> = parts.iter().filter_map(|&p| st.tag(p, d)).collect();
        if let Some(first) = tags.first().cloned() {
            if tags.len() != parts.len() {
                for t in &tags {
                    st.block_tag(t, "concatenated with a tensor of fixed width");
                }
                continue;
            }
            for t in &tags[1..] {
                st.unify(
                    &first,
                    t,
                    "concatenated tensors whose channels do not line up",
                );
            }
            st.set_tag(o, os.len(), d, first);
        }
    }
    true
}
