//! Checkpoint files: the formats PyTorch users hand around, read into ordered `(name, tensor)`
//! lists, and written back without ever leaving a half-written file.
//!
//! | File | Written by | Read with |
//! |---|---|---|
//! | state-dict zip | `torch.save(model.state_dict(), "m.pt")` (PyTorch >= 1.6), [`write_torch_zip`] | [`read_torch_zip`] |
//! | safetensors | `safetensors.torch.save_file(sd, "m.safetensors")`, [`write_safetensors`] | [`read_safetensors`] |
//! | TorchScript zip | `torch.jit.save(torch.jit.script(model), "m.pt")` | its state (parameters and buffers): [`read_torchscript_state`]; the module: `tch::CModule` |
//!
//! [`read_state_dict`] picks the reader from the file's content (not its extension), and
//! [`Format::detect`] says which format a file is in. It refuses TorchScript files, whose tensors
//! belong to a module: [`read_torchscript_state`] reads them, as
//! `torch.jit.load(path).state_dict()` would.
//!
//! libtorch 2.13 itself cannot read `torch.save(model.state_dict())`: its unpickler maps
//! `collections.OrderedDict` to `None` and fails. [`read_torch_zip`] is a pure-Rust reader of the
//! small pickle subset that state dicts use, and it never runs code named by the file; in its
//! TorchScript mode it also reads the module tree of a `torch.jit.save` archive.

pub mod code_policy;
pub mod safetensors;
pub mod temp_file;
pub mod torch_zip;
pub mod torchscript;
mod zip_entries;

pub use self::code_policy::{check_torchscript_code, check_torchscript_code_from, CodePolicy};
pub use self::safetensors::{read_safetensors, write_safetensors};
pub use self::temp_file::{check_destination, remove_temporary_files};
pub use self::torch_zip::{read_torch_zip, read_torch_zip_from, write_torch_zip};
pub use self::torchscript::{read_torchscript_state, read_torchscript_state_from};

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

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

    /// A pickle that is not inside a zip: `torch.save` before PyTorch 1.6, or with
    /// `_use_new_zipfile_serialization=False`, or a plain `pickle.dump`.
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

    /// Two entries of a zip archive with the same name (ignoring ASCII case, as PyTorch's
    /// reader compares them): readers disagree on which one counts.
    #[error("{}: the zip archive holds two entries named '{entry}', and readers disagree on which one counts (PyTorch reads the first, others the last): refused; re-save the file from a copy you trust", path.display())]
    DuplicateEntry { path: PathBuf, entry: String },

    /// TorchScript code that libtorch would run while loading the file, or that reaches files,
    /// processes or the network (see [`code_policy`]).
    #[error("{}: entry {entry} line {line}: the TorchScript code {what}; libtorch would run it, so the file is refused: load it only if you trust it as a program (tch-prune --trust-code, or CodePolicy::Trusted)", path.display())]
    UntrustedCode {
        path: PathBuf,
        entry: String,
        line: usize,
        what: String,
    },

    /// A destination that is not replaced: a link, a device, a folder, a missing folder.
    #[error("{}: cannot write here: {reason}", path.display())]
    Destination { path: PathBuf, reason: String },

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
            message: crate::error::first_line(&error.to_string()),
        }
    }
}

/// The formats [`read_state_dict`] understands, told apart by content rather than extension
/// (`.pt` and `.pth` are used for all the zip kinds alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A zip written by `torch.jit.save`: a whole module (code and weights).
    TorchScript,
    /// A zip written by `torch.save(obj)`, normally of a state dict.
    TorchZip,
    /// A `.safetensors` file.
    Safetensors,
}

impl Format {
    /// Looks at the file's first bytes and, for a zip, at its entry names.
    ///
    /// Errors: legacy (pre-1.6) `torch.save` files, zips that neither `torch.save` nor
    /// `torch.jit.save` wrote, corrupt zips, and anything else unrecognized.
    pub fn detect(path: impl AsRef<Path>) -> Result<Format, CheckpointError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| CheckpointError::io(path, "cannot open", e))?;
        let mut reader = io::BufReader::new(file);
        let (kind, _) = torch_zip::sniff_reader(&mut reader, path)?;
        match kind {
            Sniff::Zip => {
                let archive = zip_entries::open_archive(reader, path)?;
                let layout = torch_zip::ZipLayout::of(archive.file_names());
                if layout.torchscript {
                    Ok(Format::TorchScript)
                } else if layout.prefix.is_some() {
                    Ok(Format::TorchZip)
                } else {
                    Err(torch_zip::no_data_pkl(path))
                }
            }
            Sniff::Pickle => Err(CheckpointError::LegacyFormat {
                path: path.to_path_buf(),
            }),
            Sniff::Safetensors => Ok(Format::Safetensors),
            Sniff::Unknown => Err(CheckpointError::UnknownFormat {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// Reads the `name -> tensor` pairs of a `torch.save` zip or a safetensors file, in the file's
/// order, as contiguous CPU tensors that share no memory with each other.
///
/// A TorchScript file is an error: its parameters belong to a module, which should be loaded as
/// one (`tch::CModule::load`).
pub fn read_state_dict(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let path = path.as_ref();
    match Format::detect(path)? {
        Format::TorchZip => read_torch_zip(path),
        Format::Safetensors => read_safetensors(path),
        Format::TorchScript => Err(CheckpointError::TorchScript {
            path: path.to_path_buf(),
        }),
    }
}

/// A tensor's values in host memory, contiguous, in one of the dtypes both formats store: the
/// tensor itself when it already is so, a copy otherwise.
pub(crate) struct HostTensor {
    pub(crate) kind: Kind,
    pub(crate) size: Vec<i64>,
    /// Contiguous, on the CPU: the tensor itself when it already is (its bytes are written
    /// from where they are, so a model is never held twice while it is saved).
    tensor: Tensor,
}

impl HostTensor {
    pub(crate) fn of(
        path: &Path,
        name: &str,
        tensor: &Tensor,
    ) -> Result<HostTensor, CheckpointError> {
        let torch = |e: tch::TchError| CheckpointError::InvalidTensor {
            path: path.to_path_buf(),
            tensor: shown(name),
            reason: format!("libtorch: {}", crate::error::first_line(&e.to_string())),
        };
        let kind = tensor.f_kind().map_err(torch)?;
        if !SUPPORTED_KINDS.contains(&kind) {
            return Err(CheckpointError::UnsupportedDtype {
                path: path.to_path_buf(),
                tensor: shown(name),
                dtype: format!("{kind:?}"),
            });
        }
        let host = tensor
            .f_detach()
            .and_then(|t| t.f_to_device(Device::Cpu))
            .and_then(|t| t.f_contiguous())
            .map_err(torch)?;
        Ok(HostTensor {
            kind,
            size: host.size(),
            tensor: host,
        })
    }

    /// The values' bytes, in the tensor's memory.
    pub(crate) fn bytes(&self) -> &[u8] {
        let len = self.tensor.numel() * self.kind.elt_size_in_bytes();
        if len == 0 {
            return &[];
        }
        // SAFETY: a contiguous CPU tensor holds `len` bytes from `data_ptr`, and `self` keeps
        // it (and its storage) alive as long as the borrow. The writers hold the only use of
        // the tensors they are given while they write (the crate writes to no tensor from
        // another thread meanwhile).
        unsafe { std::slice::from_raw_parts(self.tensor.data_ptr() as *const u8, len) }
    }
}

/// Fills a new contiguous CPU tensor with the next bytes of `reader`, through a small buffer:
/// its memory is uninitialized, so it must not be handed to `Read` as a slice.
pub(crate) fn read_into(reader: &mut impl std::io::Read, tensor: &Tensor) -> std::io::Result<()> {
    let len = tensor.numel() * tensor.kind().elt_size_in_bytes();
    let mut buffer = vec![0u8; len.min(1 << 20)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buffer.len());
        reader.read_exact(&mut buffer[..n])?;
        // SAFETY: the tensor is contiguous on the CPU and owns `len` bytes from `data_ptr`;
        // nothing else refers to it yet, and `done + n <= len`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                buffer.as_ptr(),
                (tensor.data_ptr() as *mut u8).add(done),
                n,
            );
        }
        done += n;
    }
    Ok(())
}

/// The dtypes both formats are read and written in.
pub(crate) const SUPPORTED_KINDS: [Kind; 10] = [
    Kind::Float,
    Kind::Half,
    Kind::BFloat16,
    Kind::Double,
    Kind::Int64,
    Kind::Int,
    Kind::Int16,
    Kind::Int8,
    Kind::Uint8,
    Kind::Bool,
];

/// Both formats map names to tensors: a name given twice would silently lose a tensor.
pub(crate) fn check_names<'a>(
    path: &Path,
    names: impl Iterator<Item = &'a str>,
) -> Result<(), CheckpointError> {
    let mut seen = HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(CheckpointError::InvalidTensor {
                path: path.to_path_buf(),
                tensor: shown(name),
                reason: "the name is given twice".into(),
            });
        }
    }
    Ok(())
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

/// Enough for the zip magic, the pickle protocol header and safetensors' header length + `{`.
pub(crate) const SNIFF_LEN: usize = 9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniff {
    Zip,
    Pickle,
    Safetensors,
    Unknown,
}

/// Classifies a file from its first [`SNIFF_LEN`] bytes and its length.
pub(crate) fn sniff(head: &[u8], _file_len: u64) -> Sniff {
    // A local file header, or the end-of-central-directory record of an empty zip.
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Sniff::Zip;
    }
    // PROTO opcode; legacy torch.save starts with a pickled magic number at protocol 2.
    if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Sniff::Pickle;
    }
    // A header length past the end of the file (`_file_len`) is still a safetensors file (a
    // truncated or corrupt one), so that its reader says what is wrong with it.
    if head.len() >= SNIFF_LEN && head[8] == b'{' {
        let mut n = [0u8; 8];
        n.copy_from_slice(&head[..8]);
        if u64::from_le_bytes(n) >= 2 {
            return Sniff::Safetensors;
        }
    }
    Sniff::Unknown
}

/// Writes `path` all or nothing: `write` gets the path of a temporary file in the same folder
/// (already created, empty; see [`temp_file`] for where it lives and when it has a name) and
/// must write the file there; once it returns `Ok` the file is fsynced and renamed over `path`.
/// If `write` fails (or panics), or the sync or the rename does, the temporary file is removed
/// and `path` is left as it was, so readers never see a truncated file. A writer that writes
/// nothing is an error (no model file is empty).
///
/// `path` must be a regular file or not exist, in an existing folder ([`check_destination`]):
/// links, devices, pipes and folders are never replaced. The check is made before writing and
/// again before the rename.
///
/// The error type is the closure's, so callers whose errors wrap [`CheckpointError`] (like
/// [`PruneError`](crate::PruneError)) can use it directly.
pub fn atomic_write<T, E, F>(path: impl AsRef<Path>, write: F) -> Result<T, E>
where
    F: FnOnce(&Path) -> Result<T, E>,
    E: From<CheckpointError>,
{
    let path = path.as_ref();
    check_destination(path)?;
    // Same folder, so the rename stays within one filesystem and is atomic.
    let dir = temp_file::folder(path);
    let tmp = temp_file::TempFile::create(dir)
        .map_err(|e| CheckpointError::io(path, "cannot create a temporary file beside", e))?;
    let value = write(tmp.path())?;
    if std::fs::metadata(tmp.path()).map(|m| m.len()).unwrap_or(0) == 0 {
        return Err(CheckpointError::io(
            path,
            "cannot write",
            io::Error::other("the writer wrote nothing"),
        )
        .into());
    }
    check_destination(path)?;
    tmp.persist(path)
        .map_err(|e| CheckpointError::io(path, "cannot write", e))?;
    // Makes the rename itself durable. Best effort: some filesystems refuse to fsync folders,
    // and the data is already in place either way.
    if let Ok(folder) = File::open(dir) {
        let _ = folder.sync_all();
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read folder")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn atomic_write_leaves_nothing_when_the_writer_fails() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let target = dir.path().join("out.safetensors");
        let result: Result<(), CheckpointError> = atomic_write(&target, |tmp| {
            let mut file = File::create(tmp).map_err(|e| CheckpointError::io(tmp, "x", e))?;
            file.write_all(b"half of a file")
                .map_err(|e| CheckpointError::io(tmp, "x", e))?;
            Err(CheckpointError::UnknownFormat {
                path: tmp.to_path_buf(),
            })
        });
        assert!(result.is_err());
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

    #[test]
    fn atomic_write_keeps_the_old_file_when_the_writer_fails() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let target = dir.path().join("out.bin");
        std::fs::write(&target, b"old").expect("write");
        let result: Result<(), CheckpointError> = atomic_write(&target, |tmp| {
            std::fs::write(tmp, b"new but broken").map_err(|e| CheckpointError::io(tmp, "x", e))?;
            Err(CheckpointError::UnknownFormat {
                path: tmp.to_path_buf(),
            })
        });
        assert!(result.is_err());
        assert_eq!(entries(dir.path()), vec!["out.bin".to_string()]);
        assert_eq!(std::fs::read(&target).expect("read"), b"old");
    }

    #[test]
    fn atomic_write_removes_the_temporary_file_when_the_writer_panics() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let target = dir.path().join("out.bin");
        let outcome = std::panic::catch_unwind(|| {
            let _: Result<(), CheckpointError> = atomic_write(&target, |tmp| {
                std::fs::write(tmp, b"partial").expect("write");
                panic!("writer bug");
            });
        });
        assert!(outcome.is_err());
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

    #[test]
    fn atomic_write_replaces_the_file_on_success() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let target = dir.path().join("out.bin");
        std::fs::write(&target, b"old").expect("write");
        let n: Result<usize, CheckpointError> = atomic_write(&target, |tmp| {
            std::fs::write(tmp, b"new").map_err(|e| CheckpointError::io(tmp, "x", e))?;
            Ok(3)
        });
        assert_eq!(n.expect("write succeeds"), 3);
        assert_eq!(entries(dir.path()), vec!["out.bin".to_string()]);
        assert_eq!(std::fs::read(&target).expect("read"), b"new");
    }

    #[test]
    fn atomic_write_fails_cleanly_when_the_writer_creates_nothing() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let target = dir.path().join("out.bin");
        let result: Result<(), CheckpointError> = atomic_write(&target, |_| Ok(()));
        let err = result.expect_err("nothing was written");
        assert!(err.to_string().contains("out.bin"), "{err}");
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn sniffing_tells_formats_apart() {
        assert_eq!(sniff(b"PK\x03\x04rest", 100), Sniff::Zip);
        assert_eq!(sniff(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9", 100), Sniff::Pickle);
        assert_eq!(sniff(b"\x02\0\0\0\0\0\0\0{", 10), Sniff::Safetensors);
        // A header longer than the file: a truncated safetensors file, for its reader to say so.
        assert_eq!(sniff(b"\x20\0\0\0\0\0\0\0{", 10), Sniff::Safetensors);
        assert_eq!(sniff(b"\x01\0\0\0\0\0\0\0{", 10), Sniff::Unknown);
        assert_eq!(sniff(b"", 0), Sniff::Unknown);
    }

    #[test]
    fn names_from_files_are_shown_on_one_line() {
        assert_eq!(shown("fc1.weight"), "fc1.weight");
        assert_eq!(shown("a\nb\r\u{0}"), "a\\nb\\r\\u{0}");
        let long = "x".repeat(500);
        assert_eq!(shown(&long).chars().count(), 201);
    }
}
