//! Checkpoint files: the formats PyTorch users hand around, read into ordered `(name, tensor)`
//! lists, and written back without ever leaving a half-written file.
//!
//! | File | Written by | Read with |
//! |---|---|---|
//! | state-dict zip | `torch.save(model.state_dict(), "m.pt")` (PyTorch >= 1.6), [`write_torch_zip`] | [`read_torch_zip`] |
//! | safetensors | `safetensors.torch.save_file(sd, "m.safetensors")`, [`write_safetensors`] | [`read_safetensors`] |
//! | TorchScript zip | `torch.jit.save(torch.jit.script(model), "m.pt")` | its state (parameters and buffers): [`read_torchscript_state`]; the module: `tch::CModule` |
//! | `torch.export` archive (`.pt2`) | `torch.export.save(ep, "m.pt2")`, [`Pt2Archive::write`] | [`Pt2Archive::read`], [`MappedPt2`] |
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
//!
//! Tied weights: [`read_torch_zip`] gives every name its own memory; [`read_torch_zip_tied`]
//! gives names over the same view of one storage the same tensor, and [`write_torch_zip`] writes
//! names given the same tensor as one storage. In safetensors a tie is one name plus
//! `safetensors.torch.save_model`'s metadata entry for each other name
//! ([`read_safetensors_metadata`], [`write_safetensors_with_metadata`]).
//!
//! This module is the crate's file-format layer: it uses nothing from the pruning core (it could
//! be a crate of its own). One job per file: `sniff` (what a file is), `archive` (opening the
//! zip archives of `torch.save` and `torch.jit.save`, for every reader), `unpickler` (the pickle
//! virtual machine and its allow-list of globals), `state_dict` (tensors built from storages),
//! `pickle_writer`, `torch_save` (reading and writing `torch.save` files), `safetensors`,
//! `script_archive` and `script_classes` (TorchScript archives), `pt2` (`torch.export` archives), `dtype` (the one dtype table),
//! `host_tensor` (tensor bytes in and out), `mapped` (safetensors read through a memory map and
//! written tensor by tensor), `mapped_torch_save` (`torch.save` zips read through a memory map), `shard_index` (sharded checkpoints' `index.json`), `hf_folder` (Hugging Face model folders: the weights and the files carried beside them), `atomic`
//! ([`atomic_write`]: all-or-nothing writes), `atomic_dir` (the same for a folder of shards)
//! and `error` ([`CheckpointError`]).

mod archive;
mod atomic;
mod atomic_dir;
pub mod code_policy;
mod dtype;
pub(crate) use self::dtype::c10_of_export;
mod error;
mod guarded_map;
mod hf_folder;
mod host_tensor;
mod input_file;
mod mapped;
mod mapped_torch_save;
mod output_file;
mod pickle_writer;
mod pt2;
mod safetensors;
mod script_archive;
mod script_classes;
mod shard_index;
mod sniff;
mod state_dict;
mod temp_file;
mod text;
mod torch_save;
mod unpickler;
mod zip_entries;

pub use self::atomic::{atomic_write, write_all_or_nothing};
pub use self::atomic_dir::{atomic_write_dir, check_folder_destination};
pub use self::code_policy::{check_torchscript_code, check_torchscript_code_from, CodePolicy};
pub use self::error::CheckpointError;
pub use self::hf_folder::{Carried, HfFolder, HfWeights};
pub use self::input_file::{open_input, read_input, MAX_SMALL_FILE};
pub use self::mapped::{
    safetensors_dtype, safetensors_order, write_safetensors_streamed, write_safetensors_to_sink,
    MappedSafetensors, MappedTensor, TensorHeader,
};
pub use self::mapped_torch_save::MappedTorchSave;
pub use self::output_file::{InputRange, OutputFile, TensorSink, WritePath, WriteStats};

pub use self::pt2::mapped::MappedPt2;
pub use self::pt2::Pt2Archive;
pub use self::safetensors::{
    read_safetensors, read_safetensors_metadata, write_safetensors, write_safetensors_as,
    write_safetensors_with_metadata,
};
pub use self::script_archive::{
    check_torchscript_pickles, read_torchscript_state, read_torchscript_state_from,
};
pub use self::shard_index::ShardIndex;
pub use self::temp_file::{check_destination, remove_temporary_files, with_permissions_of};
pub(crate) use self::temp_file::{check_room, write_new};
pub(crate) use self::text::{escaped_and_cut, first_line, torchscript_whole};
pub use self::torch_save::{
    read_torch_zip, read_torch_zip_from, read_torch_zip_tied, write_torch_zip,
    write_torch_zip_streamed, write_torch_zip_to_sink,
};

use self::archive::{no_data_pkl, Opened, TorchArchive};
use self::sniff::Sniff;
use std::io;
use std::path::Path;
use tch::Tensor;

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
    /// A `torch.export.save` archive (`.pt2`): an exported program and its weights
    /// ([`Pt2Archive`]).
    Pt2,
}

impl Format {
    /// Looks at the file's first bytes and, for a zip, at its entry names.
    ///
    /// Errors: legacy (pre-1.6) `torch.save` files, zips that neither `torch.save` nor
    /// `torch.jit.save` wrote, corrupt zips, and anything else unrecognized.
    pub fn detect(path: impl AsRef<Path>) -> Result<Format, CheckpointError> {
        let path = path.as_ref();
        let file = open_input(path)?;
        match TorchArchive::open(io::BufReader::new(file), path)? {
            Opened::Archive(archive) if archive.layout.torchscript => Ok(Format::TorchScript),
            Opened::Archive(archive) if archive.layout.prefix.is_some() => Ok(Format::TorchZip),
            // Told from other zips by its entry's name; its content is the reader's to check.
            Opened::Archive(archive) if archive.layout.archive_format => Ok(Format::Pt2),
            Opened::Archive(_) => Err(no_data_pkl(path)),
            Opened::NotZip(Sniff::Pickle) => Err(CheckpointError::LegacyFormat {
                path: path.to_path_buf(),
            }),
            Opened::NotZip(Sniff::Safetensors) => Ok(Format::Safetensors),
            Opened::NotZip(_) => Err(CheckpointError::UnknownFormat {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// Reads the `name -> tensor` pairs of a `torch.save` zip, a safetensors file or a `.pt2`
/// archive's parameters and buffers, in the file's order, as contiguous CPU tensors that share
/// no memory with each other.
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
        // Tied names are one tensor in the archive; here each gets its own memory.
        Format::Pt2 => {
            let (_, tensors) = Pt2Archive::read(path)?;
            let mut seen = std::collections::HashSet::new();
            tensors
                .into_iter()
                .map(|(name, t)| {
                    if t.numel() == 0 || seen.insert(t.data_ptr() as usize) {
                        return Ok((name, t));
                    }
                    let copy = t
                        .f_empty_like()
                        .and_then(|mut c| c.f_copy_(&t).map(|()| c))
                        .map_err(|e| CheckpointError::InvalidTensor {
                            path: path.to_path_buf(),
                            tensor: error::shown(&name),
                            reason: first_line(&e.to_string()),
                        })?;
                    Ok((name, copy))
                })
                .collect()
        }
    }
}
