//! Pruning while training: one test binary, a module per file (see CONTRIBUTING.md).

#[path = "../common/mod.rs"]
mod common;

mod gradual;
mod parity;
mod plots;
