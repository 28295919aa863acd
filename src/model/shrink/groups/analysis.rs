//! What the analysis gives: the groups of channels, each with the slices of parameters and
//! buffers it owns and why it is blocked, if it is; every parameter's layout in groups; the
//! layers whose channel counts a rewrite updates.

use std::collections::{BTreeMap, HashMap};

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
    Conv {
        groups: i64,
        depthwise: bool,
    },
    Linear,
    /// A weight laid out `[in, out]` (`addmm`/`mm`/`matmul`, Hugging Face's `Conv1D`).
    Transposed,
    BatchNorm,
}

#[derive(Clone, Debug)]
pub(crate) struct Layer {
    /// Dotted path of the submodule that owns the weight.
    pub path: String,
    pub weight: String,
    pub kind: LayerKind,
}

impl Layer {
    /// A depthwise convolution: one group per channel, so its `groups` follows its width.
    pub(crate) fn is_depthwise(&self) -> bool {
        matches!(
            self.kind,
            LayerKind::Conv {
                depthwise: true,
                ..
            }
        )
    }
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
    /// The layout of every dim of every value of the graph that holds channels: per value id,
    /// per dim, its segments in order. What a rewrite of the program's own record of its
    /// shapes (a `torch.export` graph's `tensor_values`) reads the new widths from.
    pub(crate) values: HashMap<usize, Vec<Option<Vec<ValueSeg>>>>,
}

/// One segment of a value's dim: the group its channels belong to (`None`: channels no
/// parameter holds, which never change), `inner` indices per channel, and the channel count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ValueSeg {
    pub group: Option<usize>,
    pub inner: i64,
    pub channels: i64,
}
