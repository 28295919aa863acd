//! The file-format layer's error type, and how text from files and from libtorch is put on
//! the one line of an error message.

pub(crate) use super::text::{escaped_and_cut, first_line};
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
        /// The file.
        path: PathBuf,
        /// What was being done: "cannot open", "cannot read", ...
        action: &'static str,
        /// The operating system's error.
        error: io::Error,
    },

    /// A pickle that is not inside a zip and starts with `torch.save`'s magic number: PyTorch
    /// before 1.6, or `_use_new_zipfile_serialization=False`. (Any other pickle, e.g. a plain
    /// `pickle.dump`, is an [`CheckpointError::UnknownFormat`].)
    #[error("{}: not a PyTorch zip checkpoint (legacy torch.save format?) — re-save it with torch.save(..., _use_new_zipfile_serialization=True)", path.display())]
    LegacyFormat {
        /// The file.
        path: PathBuf,
    },

    /// Neither a zip archive of PyTorch's nor a safetensors file.
    #[error("{}: unrecognized file format: neither a zip archive written by torch.save / torch.jit.save nor a safetensors file", path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },

    /// A file in one known format handed to the reader of another.
    #[error("{}: expected {expected}, but this is {found}", path.display())]
    WrongFormat {
        /// The file.
        path: PathBuf,
        /// The format the reader reads.
        expected: &'static str,
        /// The format the file has.
        found: &'static str,
    },

    /// A valid checkpoint using a feature this reader does not implement (e.g. big-endian data).
    #[error("{}: unsupported checkpoint: {reason}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The feature not implemented.
        reason: String,
    },

    /// A zip archive that cannot be read: cut short, or its directory or entries broken.
    #[error("{}: corrupt or truncated zip archive: {reason}", path.display())]
    CorruptArchive {
        /// The file.
        path: PathBuf,
        /// What is broken.
        reason: String,
    },

    /// A readable zip that `torch.save` did not write (no `data.pkl`).
    #[error("{}: not a PyTorch checkpoint: {reason}", path.display())]
    NotACheckpoint {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },

    /// A TorchScript module handed to a reader of state dicts.
    #[error("{}: this is a TorchScript module saved by torch.jit.save, not a state dict: load it as a module (tch::CModule::load) instead, or save model.state_dict() from Python", path.display())]
    TorchScript {
        /// The file.
        path: PathBuf,
    },

    /// Two entries of a zip archive with the same name (ignoring ASCII case, as PyTorch's
    /// reader compares them): readers disagree on which one counts.
    #[error("{}: the zip archive holds two entries named '{entry}', and readers disagree on which one counts (PyTorch reads the first, others the last): refused; re-save the file from a copy you trust", path.display())]
    DuplicateEntry {
        /// The file.
        path: PathBuf,
        /// The repeated entry name.
        entry: String,
    },

    /// A zip archive whose directory two readers would read differently: an entry renamed by an
    /// extra field, a name not in its raw bytes, sizes or offsets that PyTorch's reader (miniz)
    /// takes from elsewhere than this crate's (see SECURITY.md, "Every reader sees the same
    /// entries").
    #[error("{}: the zip archive {reason}, so PyTorch and other readers would read different entries: refused; re-save the file from a copy you trust", path.display())]
    AmbiguousArchive {
        /// The file.
        path: PathBuf,
        /// What the readers disagree on.
        reason: String,
    },

    /// TorchScript code that libtorch would run while loading the file, or that reaches files,
    /// processes or the network (see [`code_policy`](super::code_policy)).
    #[error("{}: entry {entry} line {line}: the TorchScript code {what}; libtorch would run it, so the file is refused: load it only if you trust it as a program (tch-prune --trust-code, or CodePolicy::Trusted)", path.display())]
    UntrustedCode {
        /// The file.
        path: PathBuf,
        /// The archive entry holding the code.
        entry: String,
        /// The line of that entry.
        line: usize,
        /// What the code does that is refused.
        what: String,
    },

    /// A destination that is not replaced: a link, a device, a folder, a missing folder.
    #[error("{}: cannot write here: {reason}", path.display())]
    Destination {
        /// The destination.
        path: PathBuf,
        /// Why it is not replaced.
        reason: String,
    },

    /// A `data.pkl` that is not a valid pickle (or uses opcodes a state dict never needs).
    #[error("{}: malformed data.pkl at byte {offset}: {reason}", path.display())]
    MalformedPickle {
        /// The file.
        path: PathBuf,
        /// The byte of `data.pkl` where reading stopped.
        offset: usize,
        /// What is wrong there.
        reason: String,
    },

    /// The pickle names a Python global outside the allow-list. Unpickling it in Python could run
    /// arbitrary code, so it is refused rather than skipped.
    #[error("{}: data.pkl refers to the Python global `{global}`, which is not loaded (unpickling it could run arbitrary code); only tensors, their storages and dicts are read: save model.state_dict() rather than a model or other Python objects", path.display())]
    ForbiddenGlobal {
        /// The file.
        path: PathBuf,
        /// The global's `module.name`.
        global: String,
    },

    /// The file is well formed but does not hold a flat `name -> tensor` dict.
    #[error("{}: not a state dict: {reason}", path.display())]
    NotAStateDict {
        /// The file.
        path: PathBuf,
        /// What it holds instead.
        reason: String,
    },

    /// A tensor of a dtype the crate does not read or write.
    #[error("{}: tensor '{tensor}' has dtype {dtype}, which is not supported (supported: float32, float16, bfloat16, float64, int64, int32, int16, int8, uint8, bool)", path.display())]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The dtype, as the file names it.
        dtype: String,
    },

    /// A tensor whose shape, strides or offset do not fit its storage, or similar.
    #[error("{}: tensor '{tensor}': {reason}", path.display())]
    InvalidTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What does not fit.
        reason: String,
    },

    /// A sharded checkpoint's `*.safetensors.index.json` that cannot be used.
    #[error("{}: invalid shard index: {reason}", path.display())]
    InvalidIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A safetensors file that its format's rules reject (header, offsets, dtypes).
    #[error("{}: invalid safetensors file: {reason}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A folder given as a model that is not a Hugging Face model folder tch-prune can read.
    #[error("{}: not a model folder: {reason}", path.display())]
    ModelFolder {
        /// The folder.
        path: PathBuf,
        /// What it lacks.
        reason: String,
    },

    /// An error from libtorch, trimmed to its first line.
    #[error("{}: libtorch: {message}", path.display())]
    Torch {
        /// The file.
        path: PathBuf,
        /// libtorch's message, first line.
        message: String,
    },
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

/// A name taken from a file, made safe to show in a one-line message: control characters
/// (a pickle's strings may hold newlines) are escaped, and very long names are cut.
pub(crate) fn shown(name: &str) -> String {
    escaped_and_cut(name, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_files_are_shown_on_one_line() {
        assert_eq!(shown("fc1.weight"), "fc1.weight");
        assert_eq!(shown("a\nb\r\u{0}"), "a\\nb\\r\\u{0}");
        let long = "x".repeat(500);
        assert_eq!(shown(&long).chars().count(), 201);
    }
}
