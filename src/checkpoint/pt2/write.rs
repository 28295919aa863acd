//! [`Pt2Archive::write`]: the input archive copied entry by entry, in its order and under its
//! names, each storage entry rebuilt from the tensors over it and every other entry's bytes
//! copied as they are read (checked against its CRC), so that the program, constants, sample
//! inputs and extra files of the output are the input's, byte for byte.

use super::Pt2Archive;
use crate::checkpoint::archive::{EntryStamp, Opened, TorchArchive};
use crate::checkpoint::atomic::atomic_write;
use crate::checkpoint::error::{first_line, shown, CheckpointError};
use crate::checkpoint::input_file::open_input;
use crate::checkpoint::output_file::{OutputFile, WriteStats};
use std::collections::HashMap;
use std::io::{BufReader, Read, Seek, Write};
use std::path::Path;
use tch::{Device, Kind, Tensor};

impl Pt2Archive {
    /// Writes the archive to `path` with `tensors` (every parameter and buffer by name, each of
    /// the shape and dtype it was read with, on any device) in place of the values read: a
    /// storage entry is rewritten from the tensors over it (the bytes of a view no tensor covers
    /// are the input's), every other entry is copied from the input file, which must not have
    /// changed since [`Pt2Archive::read`] (its entries' names, sizes and CRCs are checked, and
    /// each entry's bytes against its CRC as it is copied). Entries are stored, 64-byte aligned,
    /// as `torch.export.save` writes them. Atomic (see [`atomic_write`]); `path` may be the
    /// input.
    ///
    /// Errors: a tensor missing, or of another shape or dtype than the archive's program has
    /// (shapes are the graph's), a nonzero value for a tensor whose storage the archive holds
    /// empty (zeros), and an input that changed.
    pub fn write(
        &self,
        path: impl AsRef<Path>,
        tensors: &[(String, Tensor)],
    ) -> Result<(), CheckpointError> {
        let path = path.as_ref();
        let given: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut over: HashMap<&str, Vec<(usize, &Tensor)>> = HashMap::new();
        for (i, w) in self.weights.iter().enumerate() {
            let t = given
                .get(w.name.as_str())
                .ok_or_else(|| CheckpointError::InvalidTensor {
                    path: path.to_path_buf(),
                    tensor: shown(&w.name),
                    reason: "the archive's program has it, the tensors to write do not".into(),
                })?;
            let kind = self.storages[w.storage].kind;
            if t.size() != w.view.size || t.kind() != kind {
                return Err(CheckpointError::InvalidTensor {
                    path: path.to_path_buf(),
                    tensor: shown(&w.name),
                    reason: format!(
                        "it is {:?} of {:?}, where the archive's program has {:?} of {kind:?}: a .pt2 is written back with the shapes its graph was exported with",
                        t.size(),
                        t.kind(),
                        w.view.size
                    ),
                });
            }
            // An empty storage stands for zeros (what torch.export.load makes of it): other
            // values cannot be written there without rewriting the config, so they are refused
            // rather than lost.
            if self.storages[w.storage].nbytes == 0
                && t.f_count_nonzero(None).ok().map(|n| n.int64_value(&[])) != Some(0)
            {
                return Err(CheckpointError::InvalidTensor {
                    path: path.to_path_buf(),
                    tensor: shown(&w.name),
                    reason: "its storage in the archive is empty (zeros of its size), so it cannot hold other values".into(),
                });
            }
            over.entry(self.storages[w.storage].entry.as_str())
                .or_default()
                .push((i, t));
        }
        atomic_write(path, |tmp| self.write_to(tmp, path, &over))
    }

    /// The copy itself, to `file`; messages name `shown` (the destination).
    fn write_to(
        &self,
        file: &Path,
        shown_path: &Path,
        over: &HashMap<&str, Vec<(usize, &Tensor)>>,
    ) -> Result<(), CheckpointError> {
        let reader = BufReader::new(open_input(&self.path)?);
        self.copy_archive(reader, file, shown_path, |archive, stamp, out| {
            match over.get(stamp.name.as_str()) {
                Some(views) if stamp.size > 0 => {
                    let bytes = self.storage_bytes(archive, &stamp.name, views, shown_path)?;
                    out.write_all(&bytes)
                        .map_err(|e| CheckpointError::io(shown_path, "cannot write", e))?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
        .map(drop)
    }

    /// Writes at `file` (messages name `shown_path`) the archive `reader` holds again, which
    /// must be the one read (the same entries, sizes and CRCs): each entry, in order and under
    /// its name, stored and 64-byte aligned as PyTorch's writer stores it, its bytes written
    /// by `replace` (which says it wrote them) or else copied as they are read (checked
    /// against the entry's CRC). Synced; returns how it was written.
    pub(super) fn copy_archive<R, E>(
        &self,
        reader: R,
        file: &Path,
        shown_path: &Path,
        mut replace: impl FnMut(
            &mut TorchArchive<'_, R>,
            &EntryStamp,
            &mut dyn Write,
        ) -> Result<bool, E>,
    ) -> Result<WriteStats, E>
    where
        R: Read + Seek,
        E: From<CheckpointError>,
    {
        let input = &self.path;
        let mut archive = match TorchArchive::open(reader, input)? {
            Opened::Archive(archive) => archive,
            Opened::NotZip(_) => return Err(changed(input).into()),
        };
        if archive.stamps()? != self.stamps {
            return Err(changed(input).into());
        }
        let write_err = |e: std::io::Error| CheckpointError::io(shown_path, "cannot write", e);
        let zip_err = |e: zip::result::ZipError| {
            CheckpointError::io(
                shown_path,
                "cannot write",
                std::io::Error::other(e.to_string()),
            )
        };
        let created = OutputFile::create_seekable(file).map_err(write_err)?;
        let mut zip = zip::ZipWriter::new(created);
        // Stored and aligned as PyTorch's writer does, so that storages can be mapped.
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .with_alignment(64);
        for stamp in &self.stamps {
            let large = stamp.size >= u64::from(u32::MAX);
            zip.start_file(stamp.name.as_str(), options.large_file(large))
                .map_err(zip_err)?;
            if !replace(&mut archive, stamp, &mut zip)? {
                archive.copy_entry(&stamp.name, &mut zip)?;
            }
        }
        let written = zip.finish().map_err(zip_err)?;
        Ok(written.finish().map_err(write_err)?)
    }

    /// A storage entry's new bytes: the input's, with each view over it written from its tensor
    /// (in the config's order; tied names write the same values).
    pub(super) fn storage_bytes(
        &self,
        archive: &mut TorchArchive<'_, impl Read + Seek>,
        entry: &str,
        views: &[(usize, &Tensor)],
        shown_path: &Path,
    ) -> Result<Vec<u8>, CheckpointError> {
        let storage = &self.storages[self.weights[views[0].0].storage];
        let mut bytes = archive.read(entry, storage.nbytes)?;
        let torch = |name: &str, e: tch::TchError| CheckpointError::InvalidTensor {
            path: shown_path.to_path_buf(),
            tensor: shown(name),
            reason: format!("cannot write it: {}", first_line(&e.to_string())),
        };
        // Fallible: the bytes are in memory, but a copy of them may not fit.
        let raw = Tensor::f_from_slice(&bytes).map_err(|e| torch(entry, e))?;
        let base = raw
            .f_view_dtype(storage.kind)
            .map_err(|e| torch(entry, e))?;
        for &(i, t) in views {
            let w = &self.weights[i];
            let t = t.f_to_device(Device::Cpu).map_err(|e| torch(&w.name, e))?;
            let mut v = base
                .f_as_strided(
                    w.view.size.as_slice(),
                    w.view.stride.as_slice(),
                    w.view.offset,
                )
                .map_err(|e| torch(&w.name, e))?;
            // Only what changed is written: an unchanged view (a broadcast buffer among them,
            // whose elements overlap and cannot be written) keeps the input's bytes, bit for bit.
            if !same_bits(&v, &t) {
                v.f_copy_(&t).map_err(|e| torch(&w.name, e))?;
            }
        }
        let n = bytes.len();
        raw.f_copy_data_u8(&mut bytes, n)
            .map_err(|e| torch(entry, e))?;
        debug_assert_eq!(raw.kind(), Kind::Uint8);
        Ok(bytes)
    }
}

/// Whether two tensors of one shape and dtype hold the same bits (a NaN equal to itself, -0.0
/// not equal to 0.0; bools as the values they read as).
fn same_bits(a: &Tensor, b: &Tensor) -> bool {
    let bits = |t: &Tensor| match t.kind() {
        Kind::Float => t.f_view_dtype(Kind::Int),
        Kind::Double => t.f_view_dtype(Kind::Int64),
        Kind::Half | Kind::BFloat16 => t.f_view_dtype(Kind::Int16),
        // A bool storage may hold bytes other than 0 and 1, which read as true (the reader
        // normalises them): an unchanged one keeps its bytes, as the streaming path keeps them.
        Kind::Bool => t.f_view_dtype(Kind::Uint8).and_then(|b| b.f_ne(0)),
        _ => Ok(t.shallow_clone()),
    };
    match (bits(a), bits(b)) {
        (Ok(a), Ok(b)) => a.equal(&b),
        _ => false,
    }
}

fn changed(path: &Path) -> CheckpointError {
    CheckpointError::CorruptArchive {
        path: path.to_path_buf(),
        reason: "it changed since it was read (its entries differ): run again on a file nothing is writing".into(),
    }
}
