//! Whole model files: a TorchScript module as a `VarStore` ([`ScriptModel`]), any supported
//! model file opened, pruned and saved back in its own format ([`ModelFile`]), the sparsity
//! [`Report`] of a set of tensors, the training-curve [`Recorder`] (CSV), with the `plot`
//! feature their SVG charts (`plot`), and [`StreamedModel`]: safetensors checkpoints (sharded
//! too) and `torch.save` zips pruned without holding them in memory. Built on the file formats of [`checkpoint`](crate::checkpoint)
//! and the pruning core.

pub(crate) mod model_file;
#[cfg(feature = "plot")]
mod plot;
pub(crate) mod recorder;
mod report;
pub(crate) mod script_model;
mod shrink;
mod streaming;
mod text_file;

pub use model_file::ModelFile;
pub use recorder::{Record, Recorder};
pub use report::{Report, TensorReport};
pub use script_model::ScriptModel;
pub use shrink::{
    ChannelAnalysis, ChannelGroup, GroupChange, Removed, ShrinkOptions, ShrinkReport, Slice,
};
pub use streaming::{StreamReport, StreamStep, StreamedModel, WRITE_CHUNK};
