//! The file formats and the streaming path: one test binary, a module per file (see
//! CONTRIBUTING.md).

#[path = "../common/mod.rs"]
mod common;
mod formats;

mod exported_program;
mod fixtures;
mod interop;
mod rejections;
mod safetensors;
mod script_export;
mod streaming;
mod streaming_nm;

mod streaming_pt2;
mod streaming_torch_save;
mod streaming_values;
mod torch_save;
mod torchscript;
