//! Removing channels from a TorchScript model
//! ([`ScriptModel::shrink`](crate::model::ScriptModel::shrink)): the coupled
//! [groups](ChannelGroup) the analysis finds, the [options](ShrinkOptions) of a shrink and
//! what it [reports](ShrinkReport). `torch.export` archives (`.pt2`) shrink by the same analysis
//! and selection, without running anything ([`ExportedModel`](crate::model::ExportedModel)).
//! Hugging Face decoder folders (llama, mistral, qwen2) shrink
//! on the checkpoint alone, MLP neurons and attention heads, by [`shrink_transformer`].
pub use crate::model::shrink::{
    ChannelAnalysis, ChannelGroup, GroupChange, Removed, ShrinkOptions, ShrinkReport, Slice,
    TensorSnapshot,
};
pub use crate::model::transformer_shrink::{
    shrink_transformer, KeptIndices, TransformerShrinkOptions, TransformerShrinkReport,
};
