//! The file-format layer's error type, and how text from files and from libtorch is put on
//! the one line of an error message.

use std::io;
use std::path::{Path, PathBuf};

/// What can go wrong reading or writing a checkpoint. Every message is one line that starts with
/// the file's path and says what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The file could not be opened, read or written. `error` is kept for its `kind()`, and is
    /// not a `source` because its text is already part of this message.
    #[error("{}: {action}: {error}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        error: io::Error,
    },

    /// A pickle that is not inside a zip and starts with `torch.save`'s magic number: PyTorch
    /// before 1.6, or `_use_new_zipfile_serialization=False`. (Any other pickle, e.g. a plain
    /// `pickle.dump`, is an [`CheckpointError::UnknownFormat`].)
    #[error("{}: not a PyTorch zip checkpoint (legacy torch.save format?) — re-save it with torch.save(..., _use_new_zipfile_serialization=True)", path.display())]
    LegacyFormat { path: PathBuf },

    #[error("{}: unrecognized file format: neither a zip archive written by torch.save / torch.jit.save nor a safetensors file", path.display())]
    UnknownFormat { path: PathBuf },

    /// A file in one known format handed to the reader of another.
    #[error("{}: expected {expected}, but this is {found}", path.display())]
    WrongFormat {
        path: PathBuf,
        expected: &'static str,
        found: &'static str,
    },

    /// A valid checkpoint using a feature this reader does not implement (e.g. big-endian data).
    #[error("{}: unsupported checkpoint: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },

    #[error("{}: corrupt or truncated zip archive: {reason}", path.display())]
    CorruptArchive { path: PathBuf, reason: String },

    /// A readable zip that `torch.save` did not write (no `data.pkl`).
    #[error("{}: not a PyTorch checkpoint: {reason}", path.display())]
    NotACheckpoint { path: PathBuf, reason: String },

    #[error("{}: this is a TorchScript module saved by torch.jit.save, not a state dict: load it as a module (tch::CModule::load) instead, or save model.state_dict() from Python", path.display())]
    TorchScript { path: PathBuf },

    #[error("{}: malformed data.pkl at byte {offset}: {reason}", path.display())]
    MalformedPickle {
        path: PathBuf,
        offset: usize,
        reason: String,
    },

    /// The pickle names a Python global outside the allow-list. Unpickling it in Python could run
    /// arbitrary code, so it is refused rather than skipped.
    #[error("{}: data.pkl refers to the Python global `{global}`, which is not loaded (unpickling it could run arbitrary code); only tensors, their storages and dicts are read: save model.state_dict() rather than a model or other Python objects", path.display())]
    ForbiddenGlobal { path: PathBuf, global: String },

    /// The file is well formed but does not hold a flat `name -> tensor` dict.
    #[error("{}: not a state dict: {reason}", path.display())]
    NotAStateDict { path: PathBuf, reason: String },

    #[error("{}: tensor '{tensor}' has dtype {dtype}, which is not supported (supported: float32, float16, bfloat16, float64, int64, int32, int16, int8, uint8, bool)", path.display())]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },

    /// A tensor whose shape, strides or offset do not fit its storage, or similar.
    #[error("{}: tensor '{tensor}': {reason}", path.display())]
    InvalidTensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },

    /// A sharded checkpoint's `*.safetensors.index.json` that cannot be used.
    #[error("{}: invalid shard index: {reason}", path.display())]
    InvalidIndex { path: PathBuf, reason: String },

    #[error("{}: invalid safetensors file: {reason}", path.display())]
    Safetensors { path: PathBuf, reason: String },

    /// An error from libtorch, trimmed to its first line.
    #[error("{}: libtorch: {message}", path.display())]
    Torch { path: PathBuf, message: String },
}

impl CheckpointError {
    pub(crate) fn io(path: &Path, action: &'static str, error: io::Error) -> Self {
        CheckpointError::Io {
            path: path.to_path_buf(),
            action,
            error,
        }
    }

    pub(crate) fn torch(path: &Path, error: tch::TchError) -> Self {
        CheckpointError::Torch {
            path: path.to_path_buf(),
            message: first_line(&error.to_string()),
        }
    }
}

/// The first meaningful line of a libtorch message, without tch's "Internal torch error:" prefix.
pub fn first_line(message: &str) -> String {
    let line = message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown error");
    line.trim_start_matches("Internal torch error:")
        .trim()
        .to_string()
}

/// A name taken from a file, made safe to show in a one-line message: control characters
/// (a pickle's strings may hold newlines) are escaped, and very long names are cut.
pub(crate) fn shown(name: &str) -> String {
    const MAX_CHARS: usize = 200;
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if i == MAX_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_errors_keep_only_their_first_line() {
        let raw = "Internal torch error: shape '[3]' is invalid for input of size 4\nException raised from foo at bar.cpp:12\nframe #0: ...";
        assert_eq!(
            first_line(raw),
            "shape '[3]' is invalid for input of size 4"
        );
    }

    #[test]
    fn names_from_files_are_shown_on_one_line() {
        assert_eq!(shown("fc1.weight"), "fc1.weight");
        assert_eq!(shown("a\nb\r\u{0}"), "a\\nb\\r\\u{0}");
        let long = "x".repeat(500);
        assert_eq!(shown(&long).chars().count(), 201);
    }
}
