//! The `tch-prune` command line end to end, and what its binaries link: one test binary, a
//! module per file (see CONTRIBUTING.md).

#[path = "../common/mod.rs"]
mod common;

mod architectures;
mod backend;
mod calibrated;
mod distributed;
mod hf;
mod hostile;
mod prune;
mod same_answer;
mod shrink;
mod shrink_pt2;
