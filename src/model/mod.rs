//! Whole model files: a TorchScript module as a `VarStore` ([`ScriptModel`], which can also
//! [`shrink`](ScriptModel::shrink)), any supported model file opened, pruned and saved back in
//! its own format ([`ModelFile`]), the sparsity [`Report`] of a set of tensors, and
//! [`StreamedModel`]: safetensors checkpoints (sharded too) and `torch.save` zips pruned without
//! holding them in memory. A TorchScript model's linear layers can be calibrated for Wanda and
//! SparseGPT ([`ScriptCalibrator`], inputs from [`CalibrationInputs`]). TorchScript files are checked before libtorch loads them
//! ([`CodePolicy`]). A `torch.export` archive shrinks as an [`ExportedModel`].
//!
//! Built on the file formats of [`checkpoint`](crate::checkpoint) and the pruning core. The
//! training-curve recorder (with the `plot` feature, its SVG charts) lives here too and is
//! public as [`train::Recorder`](crate::train::Recorder).

mod calibrate;
mod interpreter;
pub(crate) mod model_file;
#[cfg(feature = "plot")]
mod plot;
pub(crate) mod recorder;
mod report;
pub(crate) mod script_model;
mod sharded_file;
pub(crate) mod shrink;
mod streaming;
mod text_file;
pub(crate) mod transformer_shrink;

pub use crate::checkpoint::CodePolicy;
pub use calibrate::{CalibrationInputs, ScriptCalibrator};
pub use interpreter::run_program;
pub use model_file::ModelFile;
pub use report::{GroupReport, Report, TensorReport};
pub use script_model::ScriptModel;
pub use shrink::ExportedModel;
pub use streaming::{StreamReport, StreamStep, StreamedModel};
