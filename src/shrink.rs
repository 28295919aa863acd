//! Removing channels from a TorchScript model
//! ([`ScriptModel::shrink`](crate::model::ScriptModel::shrink)): the coupled
//! [groups](ChannelGroup) the analysis finds, the [options](ShrinkOptions) of a shrink and
//! what it [reports](ShrinkReport).
pub use crate::model::shrink::{
    ChannelAnalysis, ChannelGroup, GroupChange, Removed, ShrinkOptions, ShrinkReport, Slice,
    TensorSnapshot,
};
