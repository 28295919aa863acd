//! The CUDA tests' gate: a test that needs a GPU asks [`device`] for one. Without one it
//! skips, saying so on a line that `cargo test` shows (written to the process's stderr
//! directly, past the test harness's capture), unless `TCH_PRUNE_REQUIRE_CUDA=1` (what
//! `make test-cuda` sets): then the absence of a GPU, or of Python's torch, is a failure, so
//! that a GPU machine where CUDA fails to load cannot stay green.

use std::io::Write;
use tch::Device;

/// Whether `TCH_PRUNE_REQUIRE_CUDA=1`.
pub fn required() -> bool {
    std::env::var("TCH_PRUNE_REQUIRE_CUDA").is_ok_and(|v| v == "1")
}

/// `Device::Cuda(0)`, or None after the visible skip line (a panic under
/// `TCH_PRUNE_REQUIRE_CUDA=1`).
pub fn device(test: &str) -> Option<Device> {
    if tch::Cuda::is_available() {
        return Some(Device::Cuda(0));
    }
    assert!(
        !required(),
        "{test}: TCH_PRUNE_REQUIRE_CUDA=1 but libtorch sees no CUDA device (tch::Cuda::is_available() is false: no GPU, no driver, or libtorch_cuda not loaded)"
    );
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: no CUDA device (TCH_PRUNE_REQUIRE_CUDA=1 makes this a failure)"
    );
    None
}

/// For a CUDA test's comparison with PyTorch: the run's output, or None when Python's torch is
/// not configured (a failure under `TCH_PRUNE_REQUIRE_CUDA=1`).
pub fn python_ran(test: &str, output: Option<String>) -> Option<String> {
    assert!(
        output.is_some() || !required(),
        "{test}: TCH_PRUNE_REQUIRE_CUDA=1 but TCH_PRUNE_PYTHON names no Python with torch"
    );
    output
}
