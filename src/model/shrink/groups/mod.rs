//! The dependency analysis: which slices of which parameters and buffers must lose the same
//! channels (a "group"), found by walking the graph of `forward` once.
//!
//! Every dimension of every tensor value carries a *tag*: the channel spaces laid out along it,
//! in order (one space for a conv's output channels; several after a `cat`), each repeated
//! `inner` times per channel (a `flatten` of `[N, C, H, W]` lays channel `c` over
//! `c*H*W .. (c+1)*H*W`). A convolution or linear layer creates the space of its output
//! channels and ties the space of its input to its weight's dim 1; element-wise ops merge the
//! spaces they line up (union-find); batch norm ties its four vectors to the space of its
//! channels. Anything the analysis does not understand *blocks* every space it touches, with the
//! reason: such a group keeps all its channels, so a wrong model is never written. The network's
//! inputs carry no space (their channels are fixed) and the spaces reaching its outputs are
//! blocked (output shapes stay).
//!
//! The code is never changed, so a layer whose channel structure is code (a grouped conv's
//! `groups`, a `chunk(k)`, a channel shuffle's `view(b, k, c / k, ...)`) can only follow a
//! shrink that keeps that structure: such a space is seen as repeats of a smaller one (*folded*:
//! channel `j` of every group or piece goes together), or its channels are taken several at a
//! time (*coarsened*, where a shuffle interleaves them with another space's); `Space::view`
//! records it and the final layouts are written in the smaller spaces. `split` with sizes fixed
//! in the code blocks. Every layout is checked against the measured width of its value.
//!
//! This file holds the walk: which rule each node of the graph goes to, and the checks made
//! after each node and at the end. The rest, one idea a file, each using only those before it:
//! `analysis` (the types of the result), `spaces` (the union-find of channel spaces and their
//! views), `dims` (permutes, transposes, reductions, padding, slices), `split` (`chunk`,
//! `split` and the lists they make), `shapes` (element-wise ops, pooling, reshapes, `cat`),
//! `layers` (convolutions, linear layers, batch norm: where spaces are made) and `finish` (the
//! groups read off the spaces).

mod analysis;
mod dims;
mod finish;
mod layers;
mod shapes;
mod spaces;
mod split;
#[cfg(test)]
mod tests;

pub use self::analysis::{Analysis, ChannelGroup, Slice};
pub(crate) use self::analysis::{LayerKind, ValueSeg};
use self::finish::finish;
use self::layers::{batch_norm, conv, linear, matmul};
use self::shapes::{cat, elementwise, pass_through, pool, reshape};
use self::spaces::{State, Tag};
use super::graph::{Graph, ValueKind};

/// Ops that act on each element alone (or along no channel dim): tags pass through unchanged.
const UNARY: &[&str] = &[
    "relu",
    "relu_",
    "relu6",
    "relu6_",
    "hardtanh",
    "hardtanh_",
    "sigmoid",
    "sigmoid_",
    "hardsigmoid",
    "hardsigmoid_",
    "hardswish",
    "hardswish_",
    "silu",
    "silu_",
    "gelu",
    "gelu_",
    "tanh",
    "tanh_",
    "elu",
    "elu_",
    "selu",
    "selu_",
    "leaky_relu",
    "leaky_relu_",
    "mish",
    "mish_",
    "softplus",
    "dropout",
    "dropout_",
    "feature_dropout",
    "feature_dropout_",
    "alpha_dropout",
    "alpha_dropout_",
    "feature_alpha_dropout",
    "contiguous",
    "clone",
    "detach",
    "neg",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_min_",
    "clamp_max",
    "clamp_max_",
    "exp",
    "log",
    "sqrt",
    "abs",
    "square",
    "pow",
    "erf",
];

/// Element-wise ops of two tensors (or a tensor and a number), with broadcasting.
const BINARY: &[&str] = &[
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum", "rsub",
];

const POOL: &[(&str, usize)] = &[
    ("max_pool1d", 1),
    ("max_pool2d", 2),
    ("max_pool3d", 3),
    ("avg_pool1d", 1),
    ("avg_pool2d", 2),
    ("avg_pool3d", 3),
    ("adaptive_avg_pool1d", 1),
    ("adaptive_avg_pool2d", 2),
    ("adaptive_avg_pool3d", 3),
    ("adaptive_max_pool1d", 1),
    ("adaptive_max_pool2d", 2),
    ("max_pool2d_with_indices", 2),
];

/// Ops that only read sizes or produce non-tensors from tensors: they constrain nothing
/// (the code reads the new sizes at run time).
const SHAPE_READERS: &[&str] = &[
    "size",
    "dim",
    "len",
    "numel",
    "__getitem__",
    "Int",
    "Float",
    "is_floating_point",
];

pub(crate) fn analyse(g: &Graph) -> Analysis {
    let mut st = State::default();
    for n in &g.nodes {
        let op = n.kind.strip_prefix("aten::").unwrap_or("");
        let out = n.outputs.first().copied();
        let reason_unknown = format!(
            "used by {}, which the channel analysis does not understand",
            n.kind
        );
        if n.has_blocks {
            for &v in &n.inputs {
                st.block_value(
                    v,
                    &format!("used inside a {} that stays in the graph", n.kind),
                );
            }
            continue;
        }
        match n.kind.as_str() {
            "prim::Constant" => continue,
            "prim::GetAttr" => {
                if let (Some(name), Some(o)) = (&n.attr, out) {
                    if g.tensors.contains_key(name) {
                        st.tensors.insert(o, name.clone());
                    }
                }
                continue;
            }
            "prim::ListConstruct" | "prim::TupleConstruct" => {
                if let Some(o) = out {
                    st.containers.insert(o, n.inputs.clone());
                }
                continue;
            }
            "prim::ListUnpack" | "prim::TupleUnpack" => {
                if let Some(elements) = n.inputs.first().and_then(|l| st.containers.get(l)).cloned()
                {
                    if elements.len() == n.outputs.len() {
                        for (&o, &e) in n.outputs.iter().zip(&elements) {
                            if let Some(t) = st.tags.get(&e).cloned() {
                                st.tags.insert(o, t);
                            }
                            if let Some(name) = st.tensors.get(&e).cloned() {
                                st.tensors.insert(o, name);
                            }
                        }
                        continue;
                    }
                }
            }
            _ => {}
        }
        let tensor_inputs: Vec<usize> = n
            .inputs
            .iter()
            .copied()
            .filter(|&v| matches!(g.kind(v), ValueKind::Tensor(_)))
            .collect();
        if !n.inputs.iter().any(|&v| {
            st.tagged(v)
                || st.tensors.contains_key(&v)
                || st
                    .containers
                    .get(&v)
                    .is_some_and(|e| e.iter().any(|x| st.tensors.contains_key(x)))
        }) {
            // Nothing channel-bearing flows in: whatever this computes has fixed channels.
            continue;
        }
        if SHAPE_READERS.contains(&op)
            && n.outputs
                .iter()
                .all(|&o| !matches!(g.kind(o), ValueKind::Tensor(_)))
        {
            continue;
        }
        let handled = match op {
            "conv1d" | "conv2d" | "conv3d" => conv(&mut st, g, n, op),
            "linear" => linear(&mut st, g, n),
            "addmm" | "mm" | "matmul" => matmul(&mut st, g, n, op),
            "batch_norm" | "instance_norm" if op == "batch_norm" => batch_norm(&mut st, g, n),
            "layer_norm" => {
                let x = n.inputs[0];
                let k = g.ints(n.inputs[1]).map_or(0, |s| s.len());
                let rank = g.shape(x).map_or(0, |s| s.len());
                for d in rank.saturating_sub(k)..rank {
                    if let Some(t) = st.tag(x, d) {
                        st.block_tag(&t, "normalised by aten::layer_norm (removing channels changes its mean and variance)");
                    }
                }
                for &p in &n.inputs[2..4] {
                    st.block_value(p, "a layer_norm vector");
                }
                pass_through(&mut st, g, x, out);
                true
            }
            "group_norm" => {
                let x = n.inputs[0];
                if let Some(t) = st.tag(x, 1) {
                    st.block_tag(
                        &t,
                        "normalised by aten::group_norm (removing channels changes its groups)",
                    );
                }
                for &p in &n.inputs[2..4] {
                    st.block_value(p, "a group_norm vector");
                }
                pass_through(&mut st, g, x, out);
                true
            }
            _ if UNARY.contains(&op)
                && !tensor_inputs.is_empty()
                && tensor_inputs[0] == n.inputs[0]
                && tensor_inputs.len() == 1 =>
            {
                pass_through(&mut st, g, n.inputs[0], out);
                true
            }
            _ if BINARY.contains(&op) => elementwise(&mut st, g, n),
            "flatten" | "view" | "reshape" | "squeeze" | "unsqueeze" | "squeeze_"
            | "unsqueeze_" => reshape(&mut st, g, n),
            "cat" | "concat" => cat(&mut st, g, n),
            "chunk"
            | "unsafe_chunk"
            | "split"
            | "unsafe_split"
            | "split_with_sizes"
            | "unsafe_split_with_sizes" => split::split(&mut st, g, n, op),
            "__getitem__" => split::get_item(&mut st, g, n),
            "append" => split::append(&mut st, n),
            "permute" => dims::permute(&mut st, g, n),
            "transpose" | "transpose_" | "t" | "t_" | "swapaxes" | "swapdims" => {
                dims::transpose(&mut st, g, n, op)
            }
            "mean" | "sum" | "amax" | "amin" => dims::reduce(&mut st, g, n),
            "pad" | "constant_pad_nd" => dims::pad(&mut st, g, n),
            "slice" => dims::slice(&mut st, g, n),
            _ => {
                if let Some(&(_, spatial)) = POOL.iter().find(|(name, _)| *name == op) {
                    pool(&mut st, g, n, spatial)
                } else {
                    false
                }
            }
        };
        if !handled {
            for &v in &n.inputs {
                st.block_value(v, &reason_unknown);
                // The op may change the list: what it holds afterwards is unknown.
                st.containers.remove(&v);
            }
        }
        check_widths(&mut st, g, n);
    }
    for &o in &g.outputs {
        st.block_value(o, "reaches the network's output (its shape stays)");
    }
    // A parameter read by an op the analysis does not understand keeps its shape, and so does
    // every group that has a slice of it.
    let frozen: Vec<(String, String)> = st
        .frozen
        .iter()
        .map(|(a, b)| (a.clone(), b.clone()))
        .collect();
    for (name, why) in frozen {
        let tags: Vec<Tag> = st
            .layouts
            .iter()
            .filter(|((n, _), _)| *n == name)
            .map(|(_, t)| t.clone())
            .collect();
        for t in tags {
            st.block_tag(&t, &format!("{name} is {why}"));
        }
    }
    finish(st, g)
}

/// A safety net: every layout given to an output must cover exactly the width measured along
/// its dim. One that does not (an op whose semantics the analysis got wrong) blocks its groups
/// rather than let a rewrite cut the wrong indices.
fn check_widths(st: &mut State, g: &Graph, n: &super::graph::Node) {
    for &o in &n.outputs {
        let (Some(shape), Some(tags)) = (g.shape(o), st.tags.get(&o).cloned()) else {
            continue;
        };
        for (d, tag) in tags.iter().enumerate() {
            let Some(tag) = tag else { continue };
            let width: i64 = tag.iter().map(|seg| st.width(seg)).sum();
            if shape.get(d) != Some(&width) {
                st.block_tag(
                    tag,
                    &format!("{} gives a layout the analysis cannot follow", n.kind),
                );
                if let Some(t) = st.tags.get_mut(&o) {
                    t[d] = None;
                }
            }
        }
    }
}
