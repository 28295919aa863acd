//! `chunk` and `split` along a dimension, and the list they make (`prim::ListUnpack`,
//! `list[i]`). The code is never changed, so what the pieces are after a shrink depends on how
//! their sizes are given: `chunk(k)` divides the *current* width by `k`, so it stays right when
//! every piece loses the same channels (channel `j` of every piece goes together: the layout is
//! folded, see `State::fold`); `split` with sizes that are constants of the graph cuts at the
//! old places, so the channels along that dimension keep their width.

use super::dims::normalised;
use super::spaces::{Seg, State, Tag};
use crate::model::shrink::graph::{Graph, Node};

/// The layouts of the `k` pieces of `tag` (a dimension of width `width`) cut into equal
/// pieces (by `chunk`, or a reshape into `[k, width / k]`), each piece's channels the same as
/// every other's; `None` when the cut does not
/// follow channel boundaries that way.
pub(super) fn equal_pieces(st: &mut State, tag: &Tag, width: i64, k: i64) -> Option<Vec<Tag>> {
    if k < 1 || width % k != 0 {
        return None;
    }
    let w = width / k;
    let mut pieces: Vec<Tag> = vec![Vec::new(); k as usize];
    let mut pos = 0i64;
    for seg in tag {
        let seg_width = st.width(seg);
        if pos % w == 0 && seg_width % w == 0 && seg_width >= w {
            // The segment spans whole pieces: each holds the same share of its channels.
            if w % seg.inner != 0 {
                return None;
            }
            let f = st.fold(seg.space, w / seg.inner)?;
            for t in 0..seg_width / w {
                pieces[(pos / w + t) as usize].push(Seg {
                    space: f,
                    inner: seg.inner,
                });
            }
        } else if pos / w == (pos + seg_width - 1) / w {
            pieces[(pos / w) as usize].push(*seg);
        } else {
            return None;
        }
        pos += seg_width;
    }
    // Every piece must shrink alike: the same channels in each.
    let first = pieces[0].clone();
    for p in &pieces[1..] {
        if !st.unify(
            &first,
            p,
            "cut into equal pieces (aten::chunk, a channel shuffle) whose channels do not line up",
        ) {
            return None;
        }
    }
    Some(pieces)
}

/// `aten::chunk` / `aten::split` and their variants: the pieces become elements of the list
/// value the node returns (values of their own, outside the graph's numbering).
pub(super) fn split(st: &mut State, g: &Graph, n: &Node, op: &str) -> bool {
    let x = n.inputs[0];
    let (Some(xs), Some(list)) = (g.shape(x).map(<[i64]>::to_vec), n.outputs.first().copied())
    else {
        return false;
    };
    let rank = xs.len();
    let Some(dim) = n
        .inputs
        .get(2)
        .and_then(|&v| g.int(v))
        .and_then(|d| normalised(d, rank))
    else {
        return false;
    };
    let width = xs[dim];
    let size_arg = n.inputs[1];
    // Sizes of the pieces, and whether they follow the current width (chunk) or are fixed.
    let (count, follows) = if op.ends_with("chunk") {
        match g.int(size_arg) {
            Some(k) if k >= 1 => ((k.min(width.max(1))) as usize, true),
            _ => return false,
        }
    } else if let Some(s) = g.int(size_arg) {
        if s < 1 {
            return false;
        }
        // Pieces of `s` (the last one shorter): never fewer than one, whatever `s` is.
        (((width.max(1) - 1) / s + 1) as usize, false)
    } else if let Some(sizes) = g.ints(size_arg) {
        (sizes.len(), false)
    } else {
        // Sizes computed at run time: nothing says how they would follow a shrink.
        match st.tag(x, dim) {
            Some(t) => {
                st.block_tag(
                    &t,
                    &format!("cut by {} into sizes computed at run time", n.kind),
                );
                return false;
            }
            None => return false,
        }
    };
    let mut piece_tags: Vec<Vec<Option<Tag>>> = vec![vec![None; rank]; count];
    for d in 0..rank {
        let Some(t) = st.tag(x, d) else { continue };
        if d != dim {
            for p in piece_tags.iter_mut() {
                p[d] = Some(t.clone());
            }
            continue;
        }
        let pieces = if follows {
            let cut = equal_pieces(st, &t, width, count as i64);
            if cut.is_none() {
                st.block_tag(
                    &t,
                    &format!(
                        "cut by {} into {count} pieces that do not split its channel groups evenly",
                        n.kind
                    ),
                );
            }
            cut
        } else {
            st.block_tag(
                &t,
                &format!(
                    "cut by {} into sizes fixed in the code (they cannot follow a shrink)",
                    n.kind
                ),
            );
            None
        };
        if let Some(pieces) = pieces {
            for (p, tag) in piece_tags.iter_mut().zip(pieces) {
                p[d] = Some(tag);
            }
        }
    }
    let elements: Vec<usize> = piece_tags
        .into_iter()
        .map(|tags| {
            let id = st.synthetic_value();
            st.tags.insert(id, tags);
            id
        })
        .collect();
    st.containers.insert(list, elements);
    true
}

/// `list[i]` with a constant `i`, on a list whose elements the analysis knows.
pub(super) fn get_item(st: &mut State, g: &Graph, n: &Node) -> bool {
    let (Some(elements), Some(i), Some(o)) = (
        st.containers.get(&n.inputs[0]).cloned(),
        n.inputs.get(1).and_then(|&v| g.int(v)),
        n.outputs.first().copied(),
    ) else {
        return false;
    };
    let len = elements.len() as i64;
    let i = if i < 0 { i + len } else { i };
    if !(0..len).contains(&i) {
        return false;
    }
    let e = elements[i as usize];
    if let Some(t) = st.tags.get(&e).cloned() {
        st.tags.insert(o, t);
    }
    if let Some(name) = st.tensors.get(&e).cloned() {
        st.tensors.insert(o, name);
    }
    true
}

/// `list.append(x)` on a list the analysis knows (DenseNet gathers its features that way): the
/// list value holds one element more from here on, and so does the alias the op returns.
pub(super) fn append(st: &mut State, n: &Node) -> bool {
    let (list, x) = (n.inputs[0], n.inputs[1]);
    let Some(mut elements) = st.containers.get(&list).cloned() else {
        return false;
    };
    elements.push(x);
    for &o in &n.outputs {
        st.containers.insert(o, elements.clone());
    }
    st.containers.insert(list, elements);
    true
}
