//! Text files written all or nothing: the recorder's CSV, the SVG charts.

use crate::checkpoint::{atomic_write, CheckpointError};
use crate::error::{PruneError, Result};
use std::path::Path;

/// Writes `text` to `path` all or nothing (a temporary file renamed into place), so a reader
/// never sees half a plot.
pub(crate) fn write_text(path: &Path, text: &str) -> Result<()> {
    atomic_write(path, |tmp| {
        std::fs::write(tmp, text)
            .map_err(|e| PruneError::from(CheckpointError::io(path, "cannot write", e)))
    })
}
