//! Channel removal (`ScriptModel::shrink`) on real architectures: one test binary, a module per
//! file (see CONTRIBUTING.md).

#[path = "../common/mod.rs"]
mod common;

mod architectures;
mod exact;
mod torchvision;
