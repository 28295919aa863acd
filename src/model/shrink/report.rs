//! What a shrink gives, whichever front end fed the analysis: the groups of a model
//! ([`ChannelAnalysis`]), and what a shrink did ([`ShrinkReport`]: each group before and after,
//! the removed stretches, parameters and MACs).

use super::groups::ChannelGroup;

/// The coupled channel groups of a model for one input shape.
#[derive(Clone, Debug)]
pub struct ChannelAnalysis {
    /// Every group: its producer, width, coupled slices, and why it cannot shrink (if so).
    pub groups: Vec<ChannelGroup>,
    /// Multiply-accumulates of the convolutions and linear layers for the input.
    pub macs: i64,
}

/// One group before and after.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GroupChange {
    /// The layer whose output channels the group holds.
    pub producer: String,
    /// Channels before.
    pub before: i64,
    /// Channels after.
    pub after: i64,
    /// Why the group kept all its channels (empty when it could shrink).
    pub blocked: Vec<String>,
}

impl GroupChange {
    /// Each group of `analysis` with the channels `kept` of it (the selection's, in order).
    pub(crate) fn of_all(
        analysis: &super::groups::Analysis,
        kept: &[Vec<i64>],
    ) -> Vec<GroupChange> {
        analysis
            .groups
            .iter()
            .zip(kept)
            .map(|(group, k)| GroupChange {
                producer: group.producer.clone(),
                before: group.channels,
                after: k.len() as i64,
                blocked: group.blocked.clone(),
            })
            .collect()
    }
}

/// A removed stretch: along `dim` of `name`, these indices of the original tensor.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Removed {
    /// The parameter or buffer, by dotted name.
    pub name: String,
    /// The dimension the channels lie along.
    pub dim: usize,
    /// The removed indices along `dim` (of the original tensor).
    pub indices: Vec<i64>,
    /// A parameter (zeroed by `zero_channels`) rather than a buffer.
    pub is_parameter: bool,
}

/// What [`ScriptModel::shrink`](crate::model::ScriptModel::shrink) or
/// [`ExportedModel::shrink`](crate::model::ExportedModel::shrink) did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ShrinkReport {
    /// Every group, in execution order.
    pub groups: Vec<GroupChange>,
    /// Parameter count before.
    pub parameters_before: i64,
    /// Parameter count after.
    pub parameters_after: i64,
    /// Multiply-accumulates for the example input, before.
    pub macs_before: i64,
    /// Multiply-accumulates for the example input, after.
    pub macs_after: i64,
    /// Every removed stretch of every tensor.
    pub removed: Vec<Removed>,
    /// What could not be kept consistent (metadata only).
    pub notes: Vec<String>,
    /// The buffers `forward` reads, by dotted name: with the parameters, the tensors whose
    /// values the runs of `shrink` checked unchanged. A caller that runs the module again
    /// before saving it checks them again ([`ScriptModel::tensor`](crate::model::ScriptModel::tensor)): a `forward` can leave them
    /// alone on its first runs and rewrite them on later ones. Empty for an exported
    /// program, which nothing runs.
    #[serde(skip)]
    pub buffers: Vec<String>,
}
