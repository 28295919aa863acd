//! The pruning core against PyTorch: one test binary, a module per file (see CONTRIBUTING.md).

#[path = "../common/mod.rs"]
mod common;

mod calibrated;

mod distributed;
mod parity_pytorch;
mod permanent;
mod pruner;
mod pytorch_port;
mod selection;
mod store_moves;
