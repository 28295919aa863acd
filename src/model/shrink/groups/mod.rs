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

mod dims;
mod split;
#[cfg(test)]
mod tests;

use super::graph::{Graph, ValueKind};
use std::collections::{BTreeMap, HashMap};

/// A stretch of a dimension that belongs to one channel space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seg {
    pub space: usize,
    /// Consecutive indices per channel (1 unless a flatten/reshape merged trailing dims).
    pub inner: i64,
}

/// The layout of one dimension: its segments in order.
pub(crate) type Tag = Vec<Seg>;

/// One slice of a parameter or buffer coupled to a group: along `dim`, channel `c` of the group
/// owns the indices `offset + c*inner .. offset + (c+1)*inner`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// The parameter or buffer, by dotted name.
    pub name: String,
    /// The dimension the channels lie along.
    pub dim: usize,
    /// Where the group starts along `dim`.
    pub offset: i64,
    /// Consecutive indices per channel (more than 1 after a flatten).
    pub inner: i64,
    /// A parameter (counts for importance) or a buffer (running statistics).
    pub is_parameter: bool,
}

/// A set of channels that must be removed together everywhere it appears.
#[derive(Clone, Debug)]
pub struct ChannelGroup {
    /// Where the channels come from: the layer whose output channels they are.
    pub producer: String,
    /// The number of channels of the group.
    pub channels: i64,
    /// Every coupled slice of a parameter or buffer.
    pub slices: Vec<Slice>,
    /// Empty when the group can be shrunk; otherwise why not.
    pub blocked: Vec<String>,
}

/// A layer with channel-count attributes to update after a rewrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LayerKind {
    Conv { groups: i64, depthwise: bool },
    Linear,
    BatchNorm,
}

#[derive(Clone, Debug)]
pub(crate) struct Layer {
    /// Dotted path of the submodule that owns the weight.
    pub path: String,
    pub weight: String,
    pub kind: LayerKind,
}

#[derive(Clone, Debug)]
pub struct Analysis {
    pub groups: Vec<ChannelGroup>,
    /// (name, dim) -> (group index per segment, inner per segment), in order along the dim.
    pub(crate) layouts: BTreeMap<(String, usize), Vec<(usize, i64)>>,
    pub(crate) layers: Vec<Layer>,
    /// Group index per depthwise-conv layer (index into `layers`) whose channels are one group,
    /// laid out plainly.
    pub(crate) layer_group: HashMap<usize, usize>,
}

struct Space {
    parent: usize,
    size: i64,
    blocked: Vec<String>,
    producer: String,
    /// Set on a root whose channels are `reps` repeats of the channels of another space, each
    /// `inner` consecutive indices wide: channel `t*(n*inner) + q*inner + j` of this space is
    /// channel `q` of that one, for every `t < reps` and `j < inner`. A grouped convolution
    /// (input channel `l` of every group reads weight column `l`) or a `chunk` (piece `t` holds
    /// the same channels of every piece) makes such repeats; a channel shuffle's interleaving
    /// makes the `inner` ones. The space itself then owns no channels of its own: its slices
    /// are expanded into those of the other space.
    view: Option<View>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct View {
    space: usize,
    reps: i64,
    inner: i64,
}

#[derive(Default)]
struct State {
    spaces: Vec<Space>,
    tags: HashMap<usize, Vec<Option<Tag>>>,
    /// Values that are parameters or buffers, by dotted name.
    tensors: HashMap<usize, String>,
    /// Values that are lists or tuples, by their elements.
    containers: HashMap<usize, Vec<usize>>,
    layouts: BTreeMap<(String, usize), Tag>,
    /// Parameters read by an op the analysis does not understand: their shapes must stay.
    frozen: HashMap<String, String>,
    layers: Vec<Layer>,
    /// Values made by the analysis (the pieces of a `chunk`), counted down from the top.
    synthetic: usize,
}

impl State {
    fn synthetic_value(&mut self) -> usize {
        self.synthetic += 1;
        usize::MAX - self.synthetic
    }

    fn find(&mut self, mut s: usize) -> usize {
        while self.spaces[s].parent != s {
            let p = self.spaces[s].parent;
            self.spaces[s].parent = self.spaces[p].parent;
            s = p;
        }
        s
    }

    /// How many indices of its dimension a segment covers.
    fn width(&mut self, seg: &Seg) -> i64 {
        let r = self.find(seg.space);
        self.spaces[r].size * seg.inner
    }

    fn new_space(&mut self, size: i64, producer: String) -> usize {
        let id = self.spaces.len();
        self.spaces.push(Space {
            parent: id,
            size,
            blocked: vec![],
            producer,
            view: None,
        });
        id
    }

    /// A new space of `size` channels that is `view` of another (see `Space::view`).
    fn new_view(&mut self, size: i64, producer: String, view: View) -> usize {
        let id = self.new_space(size, producer);
        self.spaces[id].view = Some(view);
        id
    }

    fn block(&mut self, s: usize, reason: &str) {
        let r = self.find(s);
        if !self.spaces[r].blocked.iter().any(|b| b == reason) {
            self.spaces[r].blocked.push(reason.to_string());
        }
        // A viewed space's channels are the other space's: so is its fate.
        if let Some(v) = self.spaces[r].view {
            self.block(v.space, reason);
        }
    }

    /// The space `f` of `period` channels such that space `s` is `size / period` repeats of
    /// it: channel `c` and `c + period` of `s` are then always kept or removed together.
    /// `None` when `s` cannot be seen that way (its width is not a multiple, or it already
    /// repeats with an incompatible period).
    fn fold(&mut self, s: usize, period: i64) -> Option<usize> {
        let r = self.find(s);
        let n = self.spaces[r].size;
        if period <= 0 || n % period != 0 {
            return None;
        }
        if period == n {
            return Some(r);
        }
        let producer = self.spaces[r].producer.clone();
        match self.spaces[r].view {
            None => {
                let f = self.new_space(period, producer);
                self.spaces[r].view = Some(View {
                    space: f,
                    reps: n / period,
                    inner: 1,
                });
                let blocked = self.spaces[r].blocked.clone();
                for b in blocked {
                    self.block(f, &b);
                }
                Some(f)
            }
            Some(View { space, reps, inner }) => {
                let current = n / reps;
                if inner == 1 {
                    if current == period {
                        Some(self.find(space))
                    } else if current % period == 0 {
                        self.fold(space, period)
                    } else if period % current == 0 {
                        Some(self.new_view(
                            period,
                            producer,
                            View {
                                space,
                                reps: period / current,
                                inner: 1,
                            },
                        ))
                    } else {
                        None
                    }
                } else if reps == 1 && period % inner == 0 {
                    // `s` is `space` with each channel `inner` wide: fold `space` instead.
                    let f = self.fold(space, period / inner)?;
                    Some(self.new_view(
                        period,
                        producer,
                        View {
                            space: f,
                            reps: 1,
                            inner,
                        },
                    ))
                } else {
                    None
                }
            }
        }
    }

    /// The space `c` of `size / k` channels such that each channel of `c` is `k` consecutive
    /// channels of space `s` (kept or removed together).
    fn coarsen(&mut self, s: usize, k: i64) -> Option<usize> {
        let r = self.find(s);
        let n = self.spaces[r].size;
        if k <= 0 || n % k != 0 {
            return None;
        }
        if k == 1 {
            return Some(r);
        }
        let producer = self.spaces[r].producer.clone();
        match self.spaces[r].view {
            None => {
                let c = self.new_space(n / k, producer);
                self.spaces[r].view = Some(View {
                    space: c,
                    reps: 1,
                    inner: k,
                });
                let blocked = self.spaces[r].blocked.clone();
                for b in blocked {
                    self.block(c, &b);
                }
                Some(c)
            }
            Some(View { space, reps, inner }) => {
                if reps == 1 && inner == k {
                    Some(self.find(space))
                } else if reps == 1 && k % inner == 0 {
                    self.coarsen(space, k / inner)
                } else if inner == 1 {
                    // `s` repeats `space`: coarsen one repeat, and repeat that.
                    let c = self.coarsen(space, k)?;
                    Some(self.new_view(
                        n / k,
                        producer,
                        View {
                            space: c,
                            reps,
                            inner: 1,
                        },
                    ))
                } else {
                    None
                }
            }
        }
    }

    /// `seg` as segments of spaces that are not views, in order.
    fn expand(&mut self, seg: Seg) -> Vec<Seg> {
        let r = self.find(seg.space);
        match self.spaces[r].view {
            None => vec![Seg {
                space: r,
                inner: seg.inner,
            }],
            Some(v) => {
                let one = self.expand(Seg {
                    space: v.space,
                    inner: seg.inner * v.inner,
                });
                (0..v.reps).flat_map(|_| one.clone()).collect()
            }
        }
    }

    fn block_tag(&mut self, tag: &[Seg], reason: &str) {
        for seg in tag {
            self.block(seg.space, reason);
        }
    }

    fn block_value(&mut self, v: usize, reason: &str) {
        if let Some(elements) = self.containers.get(&v).cloned() {
            for e in elements {
                self.block_value(e, reason);
            }
        }
        if let Some(name) = self.tensors.get(&v).cloned() {
            self.frozen
                .entry(name)
                .or_insert_with(|| reason.to_string());
        }
        for tag in self
            .tags
            .get(&v)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .flatten()
        {
            self.block_tag(&tag, reason);
        }
    }

    fn union(&mut self, a: usize, b: usize) -> bool {
        // The older space stays the root: its producer (the first layer of the group in
        // execution order) names the group.
        let (x, y) = (self.find(a), self.find(b));
        let (ra, rb) = (x.min(y), x.max(y));
        if ra == rb {
            return true;
        }
        if self.spaces[ra].size != self.spaces[rb].size {
            return false;
        }
        let (va, vb) = (self.spaces[ra].view, self.spaces[rb].view);
        let view = match (va, vb) {
            (Some(p), Some(q)) if p.reps != q.reps || p.inner != q.inner => return false,
            (Some(p), _) => Some(p),
            (None, q) => q,
        };
        let blocked = std::mem::take(&mut self.spaces[rb].blocked);
        self.spaces[rb].parent = ra;
        self.spaces[ra].view = view;
        if let (Some(p), Some(q)) = (va, vb) {
            if !self.union(p.space, q.space) {
                self.block(ra, "its channels repeat in two layouts that do not line up");
            }
        }
        let mut all = blocked;
        all.extend(self.spaces[ra].blocked.clone());
        for b in all {
            self.block(ra, &b);
        }
        true
    }

    /// Makes two layouts of one dimension the same channels; blocks both where they cannot be.
    /// Segments of two layouts that cover the same indices with a different `inner` (a
    /// channel shuffle's pieces) line up when the narrower one's channels are taken `k` at a
    /// time.
    fn unify(&mut self, a: &Tag, b: &Tag, reason: &str) -> bool {
        let mut aligned = a.len() == b.len();
        if aligned {
            for (x, y) in a.iter().zip(b) {
                aligned = aligned && self.width(x) == self.width(y);
            }
        }
        if aligned {
            for (x, y) in a.iter().zip(b) {
                let pair = if x.inner == y.inner {
                    Some((x.space, y.space))
                } else if x.inner > y.inner && x.inner % y.inner == 0 {
                    self.coarsen(y.space, x.inner / y.inner)
                        .map(|c| (x.space, c))
                } else if y.inner % x.inner == 0 {
                    self.coarsen(x.space, y.inner / x.inner)
                        .map(|c| (c, y.space))
                } else {
                    None
                };
                if !pair.is_some_and(|(p, q)| self.union(p, q)) {
                    self.block(x.space, reason);
                    self.block(y.space, reason);
                }
            }
            true
        } else {
            self.block_tag(a, reason);
            self.block_tag(b, reason);
            false
        }
    }

    /// Ties dim `dim` of parameter/buffer `name` to the layout `tag`.
    fn couple(&mut self, name: &str, dim: usize, tag: &Tag) {
        let key = (name.to_string(), dim);
        match self.layouts.get(&key).cloned() {
            Some(existing) => {
                self.unify(
                    &existing,
                    tag,
                    &format!("{name} dim {dim} is read with two different channel layouts"),
                );
            }
            None => {
                self.layouts.insert(key, tag.clone());
            }
        }
    }

    fn tag(&self, v: usize, dim: usize) -> Option<Tag> {
        self.tags
            .get(&v)
            .and_then(|t| t.get(dim).cloned())
            .flatten()
    }

    fn set_tag(&mut self, v: usize, rank: usize, dim: usize, tag: Tag) {
        let t = self.tags.entry(v).or_insert_with(|| vec![None; rank]);
        if t.len() < rank {
            t.resize(rank, None);
        }
        t[dim] = Some(tag);
    }

    fn tagged(&self, v: usize) -> bool {
        self.tags
            .get(&v)
            .is_some_and(|t| t.iter().any(Option::is_some))
            || self
                .containers
                .get(&v)
                .is_some_and(|e| e.iter().any(|&x| self.tagged(x)))
    }
}

fn module_of(name: &str) -> String {
    name.rsplit_once('.')
        .map(|(p, _)| p.to_string())
        .unwrap_or_default()
}

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

/// A depthwise convolution's `groups` is a constant of its TorchScript class, shared by every
/// instance of the class: `select` gives the groups of such instances the same width. It can
/// only do that for a depthwise layer whose channels are one group laid out plainly; one that
/// reads pieces of several (or interleaved channels) keeps them unless its class is its own.
fn check_depthwise(st: &mut State, g: &Graph, expanded: &BTreeMap<(String, usize), Tag>) {
    let depthwise: Vec<(String, String)> = st
        .layers
        .iter()
        .filter(|l| {
            matches!(
                l.kind,
                LayerKind::Conv {
                    depthwise: true,
                    ..
                }
            )
        })
        .map(|l| (l.path.clone(), l.weight.clone()))
        .collect();
    let class = |path: &str| g.modules.get(path).map(|m| m.class.clone());
    let mut layouts: Vec<(Option<String>, String, Tag)> = Vec::new();
    for (path, weight) in &depthwise {
        if let Some(tag) = expanded.get(&(weight.clone(), 0)) {
            layouts.push((class(path), path.clone(), tag.clone()));
        }
    }
    for (c, path, tag) in &layouts {
        if c.is_none() || matches!(tag.as_slice(), [seg] if seg.inner == 1) {
            continue;
        }
        let same_class: Vec<&(Option<String>, String, Tag)> =
            layouts.iter().filter(|(c2, _, _)| c2 == c).collect();
        if same_class.len() < 2 {
            continue;
        }
        // Every instance of the class keeps its width: they share one `groups`.
        let reason = format!(
            "depthwise {path} reads pieces of several channel groups and shares its `groups` constant with {}",
            same_class
                .iter()
                .filter(|(_, p, _)| p != path)
                .map(|(_, p, _)| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (_, _, t) in same_class {
            st.block_tag(t, &reason);
        }
    }
}

fn finish(mut st: State, g: &Graph) -> Analysis {
    // Group indices for the roots that own at least one slice.
    // Groups in execution order: by their oldest space (the first producer that runs).
    let keys: Vec<(String, usize)> = st.layouts.keys().cloned().collect();
    let mut expanded: BTreeMap<(String, usize), Tag> = BTreeMap::new();
    for key in keys {
        let tag: Tag = st.layouts[&key]
            .clone()
            .into_iter()
            .flat_map(|seg| st.expand(seg))
            .collect();
        expanded.insert(key, tag);
    }
    check_depthwise(&mut st, g, &expanded);
    let mut roots: Vec<usize> = Vec::new();
    for tag in expanded.values() {
        for seg in tag {
            roots.push(st.find(seg.space));
        }
    }
    roots.sort_unstable();
    roots.dedup();
    let mut index: HashMap<usize, usize> = HashMap::new();
    let mut groups: Vec<ChannelGroup> = Vec::new();
    for root in roots {
        index.insert(root, groups.len());
        groups.push(ChannelGroup {
            producer: st.spaces[root].producer.clone(),
            channels: st.spaces[root].size,
            slices: vec![],
            blocked: st.spaces[root].blocked.clone(),
        });
    }
    let mut layouts = BTreeMap::new();
    for (key, tag) in expanded {
        let mut offset = 0;
        let mut segs = Vec::new();
        for seg in tag {
            let root = st.find(seg.space);
            let gi = index[&root];
            groups[gi].slices.push(Slice {
                name: key.0.clone(),
                dim: key.1,
                offset,
                inner: seg.inner,
                is_parameter: g.tensors.get(&key.0).copied().unwrap_or(false),
            });
            offset += st.spaces[root].size * seg.inner;
            segs.push((gi, seg.inner));
        }
        layouts.insert(key, segs);
    }
    let mut layer_group = HashMap::new();
    for (i, l) in st.layers.iter().enumerate() {
        if matches!(
            l.kind,
            LayerKind::Conv {
                depthwise: true,
                ..
            }
        ) {
            if let Some([(gi, 1)]) = layouts.get(&(l.weight.clone(), 0)).map(Vec::as_slice) {
                layer_group.insert(i, *gi);
            }
        }
    }
    Analysis {
        groups,
        layouts,
        layers: st.layers,
        layer_group,
    }
}

fn pass_through(st: &mut State, g: &Graph, x: usize, out: Option<usize>) {
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

fn param(st: &State, v: usize) -> Option<String> {
    st.tensors.get(&v).cloned()
}

/// What a convolution or linear layer reads and writes: its input `x` and output `o` with their
/// shapes, its weight's shape, and the names of its weight and bias. `None` when any of it is
/// unknown (the layer is then not understood).
struct LayerIo<'g> {
    x: usize,
    o: usize,
    xs: &'g [i64],
    ws: &'g [i64],
    os: &'g [i64],
    weight: String,
    bias: Option<String>,
}

fn layer_io<'g>(st: &State, g: &'g Graph, n: &super::graph::Node) -> Option<LayerIo<'g>> {
    let (x, w, b) = (n.inputs[0], n.inputs[1], n.inputs[2]);
    let weight = param(st, w)?;
    let bias = if g.is_none(b) {
        None
    } else {
        Some(param(st, b)?)
    };
    let o = n.outputs.first().copied()?;
    Some(LayerIo {
        x,
        o,
        xs: g.shape(x)?,
        ws: g.shape(w)?,
        os: g.shape(o)?,
        weight,
        bias,
    })
}

fn conv(st: &mut State, g: &Graph, n: &super::graph::Node, op: &str) -> bool {
    let spatial = match op {
        "conv1d" => 1,
        "conv2d" => 2,
        _ => 3,
    };
    let Some(LayerIo {
        x,
        o,
        xs,
        ws,
        os,
        weight,
        bias,
    }) = layer_io(st, g, n)
    else {
        return false;
    };
    let groups = n.inputs.get(6).and_then(|&v| g.int(v)).unwrap_or(1);
    let rank = xs.len();
    if rank < spatial + 1 {
        return false;
    }
    let cdim = rank - spatial - 1;
    let path = module_of(&weight);
    // Tags on the batch or spatial dims: not a layout this analysis follows.
    for d in 0..rank {
        if d != cdim {
            if let Some(t) = st.tag(x, d) {
                st.block_tag(&t, &format!("reaches a non-channel dim of {path}"));
            }
        }
    }
    let in_tag = st.tag(x, cdim);
    let c_in = xs[cdim];
    let c_out = ws[0];
    let depthwise = groups > 1 && groups == c_in && c_out == c_in && ws[1] == 1;
    let producer = format!("{path} ({op} output channels)");
    if groups == 1 {
        if let Some(t) = &in_tag {
            st.couple(&weight, 1, t);
        }
        let s = st.new_space(c_out, producer);
        let tag = vec![Seg { space: s, inner: 1 }];
        st.couple(&weight, 0, &tag);
        if let Some(bn) = &bias {
            st.couple(bn, 0, &tag);
        }
        st.set_tag(o, os.len(), cdim, tag);
        st.layers.push(Layer {
            path,
            weight,
            kind: LayerKind::Conv {
                groups,
                depthwise: false,
            },
        });
    } else if depthwise {
        let tag = match in_tag {
            Some(t) => t,
            None => {
                let s = st.new_space(c_out, producer);
                st.block(
                    s,
                    &format!("depthwise {path} reads channels of fixed width (a network input, or channels an earlier op keeps)"),
                );
                vec![Seg { space: s, inner: 1 }]
            }
        };
        st.couple(&weight, 0, &tag);
        if let Some(bn) = &bias {
            st.couple(bn, 0, &tag);
        }
        st.set_tag(o, os.len(), cdim, tag.clone());
        st.layers.push(Layer {
            path,
            weight,
            kind: LayerKind::Conv {
                groups,
                depthwise: true,
            },
        });
    } else {
        return grouped(
            st,
            GroupedConv {
                path: &path,
                weight: &weight,
                bias: bias.as_deref(),
                groups,
                c_in,
                c_out,
                producer,
            },
            in_tag,
            o,
            os.len(),
            cdim,
        );
    }
    true
}

struct GroupedConv<'a> {
    path: &'a str,
    weight: &'a str,
    bias: Option<&'a str>,
    groups: i64,
    c_in: i64,
    c_out: i64,
    producer: String,
}

/// A grouped convolution whose `groups` stays (it is code): every group must keep the same
/// number of input and output channels. As Torch-Pruning's group-conv pruner does, channel `j`
/// of every group goes together: its output channels are `groups` repeats of a space of
/// `c_out / groups` channels, its input channels must be `groups` repeats of one of `c_in /
/// groups` (weight column `l` reads channel `l` of each input group).
fn grouped(
    st: &mut State,
    c: GroupedConv,
    in_tag: Option<Tag>,
    o: usize,
    rank: usize,
    cdim: usize,
) -> bool {
    let GroupedConv {
        path,
        weight,
        bias,
        groups,
        c_in,
        c_out,
        producer,
    } = c;
    let why = |what: &str| format!("grouped convolution {path} (groups={groups}) {what}");
    if groups < 1 || c_in % groups != 0 || c_out % groups != 0 {
        return false;
    }
    let (per_in, per_out) = (c_in / groups, c_out / groups);
    let columns = match in_tag.as_deref() {
        None => None,
        Some([seg]) if per_in > 1 && per_in % seg.inner == 0 => {
            match st.fold(seg.space, per_in / seg.inner) {
                Some(f) => Some(vec![Seg {
                    space: f,
                    inner: seg.inner,
                }]),
                None => {
                    st.block(
                        seg.space,
                        &why("reads channels that cannot be split into equal groups"),
                    );
                    None
                }
            }
        }
        Some(t) => {
            st.block_tag(t, &why("reads channels that cannot be split into equal groups (one per group, or a concatenation)"));
            None
        }
    };
    if let Some(cols) = &columns {
        st.couple(weight, 1, cols);
    }
    let s = st.new_space(c_out, producer);
    let tag = vec![Seg { space: s, inner: 1 }];
    if per_out == 1 {
        st.block(s, &why("has one output channel per group"));
    } else if st.fold(s, per_out).is_none() {
        st.block(
            s,
            &why("has output channels that cannot be split into equal groups"),
        );
    }
    st.couple(weight, 0, &tag);
    if let Some(b) = bias {
        st.couple(b, 0, &tag);
    }
    st.set_tag(o, rank, cdim, tag);
    st.layers.push(Layer {
        path: path.to_string(),
        weight: weight.to_string(),
        kind: LayerKind::Conv {
            groups,
            depthwise: false,
        },
    });
    true
}

fn linear(st: &mut State, g: &Graph, n: &super::graph::Node) -> bool {
    let Some(LayerIo {
        x,
        o,
        xs,
        ws,
        os,
        weight,
        bias,
    }) = layer_io(st, g, n)
    else {
        return false;
    };
    if ws.len() != 2 || xs.is_empty() {
        return false;
    }
    let last = xs.len() - 1;
    let path = module_of(&weight);
    if let Some(t) = st.tag(x, last) {
        st.couple(&weight, 1, &t);
    }
    // The other dims pass through (a sequence's length, the batch).
    for d in 0..last {
        if let Some(t) = st.tag(x, d) {
            st.set_tag(o, os.len(), d, t);
        }
    }
    let s = st.new_space(ws[0], format!("{path} (linear output features)"));
    let tag = vec![Seg { space: s, inner: 1 }];
    st.couple(&weight, 0, &tag);
    if let Some(bn) = &bias {
        st.couple(bn, 0, &tag);
    }
    st.set_tag(o, os.len(), os.len() - 1, tag);
    st.layers.push(Layer {
        path,
        weight,
        kind: LayerKind::Linear,
    });
    true
}

fn batch_norm(st: &mut State, g: &Graph, n: &super::graph::Node) -> bool {
    let x = n.inputs[0];
    let Some(xs) = g.shape(x) else { return false };
    if xs.len() < 2 {
        return false;
    }
    let mut names = Vec::new();
    for &v in &n.inputs[1..5] {
        if g.is_none(v) {
            continue;
        }
        match param(st, v) {
            Some(p) => names.push(p),
            None => return false,
        }
    }
    for d in 0..xs.len() {
        if d != 1 {
            if let Some(t) = st.tag(x, d) {
                st.block_tag(&t, "reaches a non-channel dim of a batch norm");
            }
        }
    }
    if let Some(t) = st.tag(x, 1) {
        for p in &names {
            st.couple(p, 0, &t);
        }
    } else {
        for p in &names {
            st.frozen
                .entry(p.clone())
                .or_insert_with(|| "a batch norm over fixed channels".into());
        }
    }
    if let Some(first) = names.first() {
        st.layers.push(Layer {
            path: module_of(first),
            weight: first.clone(),
            kind: LayerKind::BatchNorm,
        });
    }
    pass_through(st, g, x, n.outputs.first().copied());
    true
}

fn pool(st: &mut State, g: &Graph, n: &super::graph::Node, spatial: usize) -> bool {
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
fn elementwise(st: &mut State, g: &Graph, n: &super::graph::Node) -> bool {
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
fn reshape(st: &mut State, g: &Graph, n: &super::graph::Node) -> bool {
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
    true
}

/// `cat` along a dim: the output layout along it is the inputs' layouts in order (an input
/// without channels there makes that whole stretch fixed: then the others cannot be shrunk
/// either, since nothing records where the fixed part sits after they shrink).
/// Dim `d` of a tensor of `rank` dims (negative from the end), if there is one.
fn normalised(d: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let d = if d < 0 { d + r } else { d };
    (0..r).contains(&d).then_some(d as usize)
}

fn cat(st: &mut State, g: &Graph, n: &super::graph::Node) -> bool {
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
