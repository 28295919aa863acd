//! Access to the zip archives `torch.save` and `torch.jit.save` write, shared by every reader:
//! [`TorchArchive::open`] sniffs the file and opens the zip, [`TorchArchive::enter`] takes the
//! folder that holds `data.pkl` after checking the byte order, [`TorchArchive::data_pkl`] reads the
//! pickle, and [`TorchArchive::into_storages`] hands the `data/<key>` entries to the unpickler.
//! Every entry is read with its size bounded before anything is allocated for it.
//!
//! Layout of such a file: a zip whose entries all sit under one folder `<prefix>/` (the file's
//! stem, or `archive`): `data.pkl` is the pickled object, with every tensor storage replaced by a
//! persistent id `('storage', torch.FloatStorage, key, location, numel)`, and `data/<key>` holds
//! that storage's raw little-endian bytes. `torch.jit.save` adds `code/` and `constants.pkl`.

use super::error::{shown, CheckpointError};
use super::host_tensor::read_into;
use super::sniff::{sniff_reader, Sniff};
use super::zip_entries::corrupt;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::Path;
use tch::{Kind, Tensor};

/// A state dict's `data.pkl` takes about 100 bytes per tensor; this bound only stops a corrupt
/// zip header from requesting an absurd allocation.
pub(super) const MAX_PICKLE_BYTES: u64 = 1 << 30;

/// A file opened by [`TorchArchive::open`]: a zip archive, or what else its first bytes say it is.
pub(super) enum Opened<'p, R> {
    Archive(TorchArchive<'p, R>),
    NotZip(Sniff),
}

/// A zip archive written by `torch.save` or `torch.jit.save`, with what its entry names say.
pub(super) struct TorchArchive<'p, R> {
    zip: zip::ZipArchive<R>,
    path: &'p Path,
    file_len: u64,
    /// What the entry names say: which folder holds `data.pkl`, and whether it is TorchScript.
    pub(super) layout: ZipLayout,
    /// The folder chosen by [`TorchArchive::enter`] (`"<prefix>/"`, or `""`).
    prefix: String,
}

impl<'p, R: Read + Seek> TorchArchive<'p, R> {
    /// Sniffs `reader` (`path` only names it in errors) and, if it is a zip, opens it and reads
    /// its layout. A reader that is not a zip comes back as what its first bytes say it is, for
    /// the caller to report as suits its format.
    pub(super) fn open(mut reader: R, path: &'p Path) -> Result<Opened<'p, R>, CheckpointError> {
        let (kind, file_len) = sniff_reader(&mut reader, path)?;
        if kind != Sniff::Zip {
            return Ok(Opened::NotZip(kind));
        }
        let zip = super::zip_entries::open_archive(reader, path)?;
        let layout = ZipLayout::of(zip.file_names());
        Ok(Opened::Archive(TorchArchive {
            zip,
            path,
            file_len,
            layout,
            prefix: String::new(),
        }))
    }

    /// Reads from the folder `prefix` on (one the layout found), refusing archives written on
    /// big-endian machines (their storages would read byte-swapped). Archives without a
    /// `byteorder` entry predate it and are little-endian.
    pub(super) fn enter(&mut self, prefix: String) -> Result<(), CheckpointError> {
        let byteorder = format!("{prefix}byteorder");
        if self.zip.index_for_name(&byteorder).is_some() {
            let order = self.read(&byteorder, 16)?;
            if String::from_utf8_lossy(&order).trim() != "little" {
                return Err(CheckpointError::Unsupported {
                    path: self.path.to_path_buf(),
                    reason: format!(
                        "saved on a big-endian machine (byteorder '{}'); re-save it on a little-endian one",
                        shown(String::from_utf8_lossy(&order).trim())
                    ),
                });
            }
        }
        self.prefix = prefix;
        Ok(())
    }

    /// The folder [`TorchArchive::enter`] chose.
    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The names of all entries, in the archive's order.
    pub(super) fn entry_names(&self) -> impl Iterator<Item = &str> {
        self.zip.file_names()
    }

    /// The whole entry `name` (a full name, prefix included), at most `max` bytes.
    pub(super) fn read(&mut self, name: &str, max: u64) -> Result<Vec<u8>, CheckpointError> {
        read_entry(&mut self.zip, self.path, name, max)
    }

    /// The size an entry declares (a full name), if the archive has it.
    pub(super) fn entry_size(&mut self, name: &str) -> Option<u64> {
        let index = self.zip.index_for_name(name)?;
        self.zip.by_index_raw(index).ok().map(|e| e.size())
    }

    /// Every entry's name, size and CRC-32, in the archive's order: what a writer that carries
    /// entries over checks the file against when it reads them again.
    pub(super) fn stamps(&mut self) -> Result<Vec<EntryStamp>, CheckpointError> {
        (0..self.zip.len())
            .map(|i| {
                let e = self
                    .zip
                    .by_index_raw(i)
                    .map_err(|e| corrupt(self.path, e))?;
                Ok(EntryStamp {
                    name: e.name().to_string(),
                    size: e.size(),
                    crc32: e.crc32(),
                })
            })
            .collect()
    }

    /// Copies entry `name`'s bytes to `out` as they are read (never held whole), with the same
    /// checks as [`TorchArchive::read`]: a decompression bomb refused before anything is
    /// inflated, the byte count held to the header's, the CRC checked at the end.
    pub(super) fn copy_entry(
        &mut self,
        name: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<u64, CheckpointError> {
        let mut entry = self.zip.by_name(name).map_err(|e| corrupt(self.path, e))?;
        let size = entry.size();
        // The declared size was bounded when the archive was opened
        // (`zip_entries::check_sizes`), and the copy is held to it.
        let shown_name = shown(name);
        let failed = |e: std::io::Error| CheckpointError::CorruptArchive {
            path: self.path.to_path_buf(),
            reason: format!("cannot read entry {shown_name}: {e}"),
        };
        let copied =
            std::io::copy(&mut (&mut entry).take(size.saturating_add(1)), out).map_err(failed)?;
        if copied != size {
            return Err(CheckpointError::CorruptArchive {
                path: self.path.to_path_buf(),
                reason: format!("entry {shown_name} holds {copied} bytes, its header says {size}"),
            });
        }
        Ok(copied)
    }

    /// The pickle of the chosen folder.
    pub(super) fn data_pkl(&mut self) -> Result<Vec<u8>, CheckpointError> {
        let name = format!("{}data.pkl", self.prefix);
        self.read(&name, MAX_PICKLE_BYTES)
    }

    /// The storages of the chosen folder, for the unpickler.
    pub(super) fn into_storages(self) -> ZipStorages<'p, R> {
        ZipStorages {
            archive: self.zip,
            path: self.path,
            prefix: self.prefix,
            cache: HashMap::new(),
        }
    }
}

/// An entry as the directory describes it: what a second reading of the same file must find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EntryStamp {
    pub(super) name: String,
    pub(super) size: u64,
    pub(super) crc32: u32,
}

/// What the entry names of a zip say about it.
#[derive(Debug, Default)]
pub(super) struct ZipLayout {
    /// `"<prefix>/"` of the folder that holds `data.pkl`: that of the first entry.
    pub(super) prefix: Option<String>,
    /// `torch.jit.save` also writes `constants.pkl` and the module's Python source under `code/`.
    pub(super) torchscript: bool,
    /// `"<prefix>/"` of the first entry, whatever the archive holds.
    pub(super) root: Option<String>,
    /// That folder holds `archive_format`, as `torch.export.save` writes (its content, `pt2`,
    /// is checked by the reader of those archives).
    pub(super) archive_format: bool,
}

impl ZipLayout {
    /// What the names say, read as `PyTorchStreamReader` reads them: every record is looked up
    /// under the folder of the archive's *first* entry (a first entry outside any folder makes
    /// PyTorch refuse the file), and `torch.load` hands a file to `torch.jit.load` when that
    /// folder holds `constants.pkl`. A `data.pkl` in another folder is never read.
    pub(super) fn of<'a>(mut names: impl Iterator<Item = &'a str>) -> ZipLayout {
        let mut layout = ZipLayout::default();
        let Some(first) = names.next() else {
            return layout;
        };
        let Some((top, _)) = first.split_once('/') else {
            return layout;
        };
        let prefix = format!("{top}/");
        layout.root = Some(prefix.clone());
        for name in std::iter::once(first).chain(names) {
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            if rest == "constants.pkl" || rest.starts_with("code/") {
                layout.torchscript = true;
            }
            if rest == "data.pkl" {
                layout.prefix = Some(prefix.clone());
            }
            if rest == "archive_format" {
                layout.archive_format = true;
            }
        }
        layout
    }
}

pub(super) fn no_data_pkl(path: &Path) -> CheckpointError {
    CheckpointError::NotACheckpoint {
        path: path.to_path_buf(),
        reason: "the zip archive has no data.pkl, so torch.save did not write it".to_string(),
    }
}

/// Reads a whole entry, refusing ones larger than `max` bytes before allocating for them. The zip
/// crate checks the entry's CRC when the read reaches its end, so flipped bits are caught here.
fn read_entry<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    path: &Path,
    name: &str,
    max: u64,
) -> Result<Vec<u8>, CheckpointError> {
    let mut entry = archive.by_name(name).map_err(|e| corrupt(path, e))?;
    let size = entry.size();
    // The prefix comes from the file.
    let name = shown(name);
    if size > max {
        return Err(CheckpointError::CorruptArchive {
            path: path.to_path_buf(),
            reason: format!("entry {name} claims {size} bytes, more than the {max} expected"),
        });
    }
    // The declared size was bounded when the archive was opened (`zip_entries::check_sizes`),
    // so it can be reserved up front; a failed allocation is an error, not an abort.
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(usize::try_from(size).unwrap_or(usize::MAX))
        .map_err(|_| no_memory(path, &name, size))?;
    (&mut entry)
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| CheckpointError::CorruptArchive {
            path: path.to_path_buf(),
            reason: format!("cannot read entry {name}: {e}"),
        })?;
    if bytes.len() as u64 != size {
        return Err(CheckpointError::CorruptArchive {
            path: path.to_path_buf(),
            reason: format!(
                "entry {name} holds {} bytes, its header says {size}",
                bytes.len()
            ),
        });
    }
    Ok(bytes)
}

/// Where the virtual machine gets the raw bytes of a storage named by a persistent id.
pub(super) trait StorageSource {
    /// The `nbytes` bytes of storage `key`, as a 1-D `Uint8` CPU tensor; an error if the
    /// archive holds a different amount. `None` from a source that only locates storages
    /// ([`LocatedStorages`]): the tensors over them are then described, not built.
    fn load(&mut self, key: &str, nbytes: u64) -> Result<Option<Tensor>, CheckpointError>;
}

/// The storages of a zip archive: `<prefix>data/<key>`.
pub(super) struct ZipStorages<'p, R> {
    archive: zip::ZipArchive<R>,
    path: &'p Path,
    prefix: String,
    /// Storages shared by several tensors are read once.
    cache: HashMap<String, Tensor>,
}

impl<R: Read + Seek> StorageSource for ZipStorages<'_, R> {
    fn load(&mut self, key: &str, nbytes: u64) -> Result<Option<Tensor>, CheckpointError> {
        let name = format!("{}data/{key}", self.prefix);
        let bytes = match self.cache.entry(key.to_string()) {
            Entry::Occupied(cached) => cached.get().shallow_clone(),
            Entry::Vacant(slot) => {
                if self.archive.index_for_name(&name).is_none() {
                    return Err(no_storage_entry(self.path, key, &name));
                }
                let bytes = read_storage(&mut self.archive, self.path, &name, nbytes)?;
                slot.insert(bytes).shallow_clone()
            }
        };
        if bytes.numel() as u64 != nbytes {
            return Err(wrong_storage_size(
                self.path,
                &name,
                bytes.numel() as u64,
                nbytes,
            ));
        }
        Ok(Some(bytes))
    }
}

fn no_storage_entry(path: &Path, key: &str, name: &str) -> CheckpointError {
    CheckpointError::CorruptArchive {
        path: path.to_path_buf(),
        reason: format!(
            "data.pkl uses storage '{}' but the archive has no entry {}",
            shown(key),
            shown(name)
        ),
    }
}

fn wrong_storage_size(path: &Path, name: &str, holds: u64, nbytes: u64) -> CheckpointError {
    CheckpointError::CorruptArchive {
        path: path.to_path_buf(),
        reason: format!(
            "storage entry {} holds {holds} bytes but data.pkl declares {nbytes}",
            shown(name)
        ),
    }
}

/// Where a storage's bytes are in the archive file, as [`LocatedStorages`] found them.
#[derive(Clone, Debug)]
pub(super) struct StorageEntry {
    /// Its bytes in the file (when stored uncompressed).
    pub(super) range: std::ops::Range<u64>,
    /// Its full name, and the CRC-32 its headers give, for [`check_crc`].
    pub(super) name: String,
    pub(super) crc32: u32,
    /// Why the bytes cannot be used where they lie (a compressed entry), if so.
    pub(super) unusable: Option<String>,
}

/// Checks a stored entry's bytes (`bytes`, read where they lie in the file) against its CRC, as
/// the zip reader does when it reads an entry to its end: a damaged file is refused, not pruned.
pub(super) fn check_crc(
    path: &Path,
    entry: &StorageEntry,
    bytes: &[u8],
) -> Result<(), CheckpointError> {
    let computed = crc32fast::hash(bytes);
    if computed != entry.crc32 {
        return Err(CheckpointError::CorruptArchive {
            path: path.to_path_buf(),
            reason: format!(
                "entry {} fails its CRC check (the zip says {:08x}, its bytes give {computed:08x}): the file is damaged",
                shown(&entry.name),
                entry.crc32
            ),
        });
    }
    Ok(())
}

/// The storages of a zip archive located, not read: for a reader that maps the file. The same
/// refusals as [`ZipStorages`] for what is wrong with an entry (missing, of another size than
/// `data.pkl` declares, a decompression bomb, past the end of the file); the CRC, which only
/// reading every byte checks, is checked by [`check_crc`] when the bytes are read.
pub(super) struct LocatedStorages<'p, R> {
    archive: zip::ZipArchive<R>,
    path: &'p Path,
    prefix: String,
    file_len: u64,
    /// By storage key.
    pub(super) entries: HashMap<String, StorageEntry>,
}

impl<'p, R: Read + Seek> TorchArchive<'p, R> {
    /// The storages of the chosen folder, for the unpickler to locate.
    pub(super) fn into_located(self) -> LocatedStorages<'p, R> {
        LocatedStorages {
            archive: self.zip,
            path: self.path,
            prefix: self.prefix,
            file_len: self.file_len,
            entries: HashMap::new(),
        }
    }
}

impl<R: Read + Seek> StorageSource for LocatedStorages<'_, R> {
    fn load(&mut self, key: &str, nbytes: u64) -> Result<Option<Tensor>, CheckpointError> {
        let name = format!("{}data/{key}", self.prefix);
        // A storage used again is held to the size it was found with, as `ZipStorages` holds
        // it: the tensors' bounds are checked against the size each use declares.
        if let Some(entry) = self.entries.get(key) {
            let holds = entry.range.end - entry.range.start;
            if holds != nbytes {
                return Err(wrong_storage_size(self.path, &name, holds, nbytes));
            }
            return Ok(None);
        }
        if self.archive.index_for_name(&name).is_none() {
            return Err(no_storage_entry(self.path, key, &name));
        }
        // Reads the local header, checking its signature; nothing of the data.
        let entry = self
            .archive
            .by_name(&name)
            .map_err(|e| corrupt(self.path, e))?;
        if entry.size() != nbytes {
            return Err(wrong_storage_size(self.path, &name, entry.size(), nbytes));
        }
        let start = entry.data_start();
        let stored = entry.compression() == zip::CompressionMethod::Stored;
        let unusable = (!stored).then(|| {
            format!(
                "storage entry {} is compressed ({}), so it cannot be read where it lies",
                shown(&name),
                entry.compression()
            )
        });
        // A stored entry's bytes are its data: both sizes must be the one declared, and all of
        // it inside the file, or the mapped slice would reach past the file's end.
        let end = start.checked_add(nbytes);
        if stored
            && (entry.compressed_size() != nbytes || end.is_none_or(|end| end > self.file_len))
        {
            return Err(CheckpointError::CorruptArchive {
                path: self.path.to_path_buf(),
                reason: format!(
                    "entry {} is stored as {} bytes of {nbytes} from offset {start}, in a file of {} bytes: its header and the file disagree",
                    shown(&name),
                    entry.compressed_size(),
                    self.file_len
                ),
            });
        }
        self.entries.insert(
            key.to_string(),
            StorageEntry {
                range: start..start + nbytes,
                name: name.clone(),
                crc32: entry.crc32(),
                unusable,
            },
        );
        Ok(None)
    }
}

/// The one-line error for an entry whose bytes cannot be allocated (a file within the limits
/// can still ask for more than this machine has): reported, never an abort.
fn no_memory(path: &Path, name: &str, size: u64) -> CheckpointError {
    CheckpointError::io(
        path,
        "not enough memory",
        std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            format!("cannot allocate {size} bytes for entry {name}"),
        ),
    )
}

/// Reads a storage entry into a new byte tensor, straight into the tensor's memory (so a model
/// is never held twice), whether the entry is stored (as torch.save writes them) or compressed.
/// The tensor is allocated fallibly: a file can ask for more memory than the machine has.
fn read_storage<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    path: &Path,
    name: &str,
    nbytes: u64,
) -> Result<Tensor, CheckpointError> {
    let mut entry = archive.by_name(name).map_err(|e| corrupt(path, e))?;
    if entry.size() != nbytes {
        return Err(wrong_storage_size(path, name, entry.size(), nbytes));
    }
    // The declared size was bounded when the archive was opened (`zip_entries::check_sizes`).
    let failed = |reason: String| CheckpointError::CorruptArchive {
        path: path.to_path_buf(),
        reason: format!("cannot read entry {}: {reason}", shown(name)),
    };
    let len = i64::try_from(nbytes).map_err(|_| no_memory(path, &shown(name), nbytes))?;
    let tensor = Tensor::f_empty([len], (Kind::Uint8, tch::Device::Cpu))
        .map_err(|_| no_memory(path, &shown(name), nbytes))?;
    read_into(&mut entry, &tensor).map_err(|e| failed(e.to_string()))?;
    // Reading on to the end is what makes the zip crate check the entry's CRC.
    match entry.read(&mut [0u8; 1]) {
        Ok(0) => Ok(tensor),
        Ok(_) => Err(failed("more bytes than its header says".into())),
        Err(e) => Err(failed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchscript_archives_are_recognised_by_their_entries() {
        let script = [
            "m/data.pkl",
            "m/code/__torch__/x.py",
            "m/constants.pkl",
            "m/version",
        ];
        let layout = ZipLayout::of(script.into_iter());
        assert!(layout.torchscript);
        let saved = ["sd/data.pkl", "sd/data/0", "sd/version"];
        let layout = ZipLayout::of(saved.into_iter());
        assert!(!layout.torchscript);
        assert_eq!(layout.prefix.as_deref(), Some("sd/"));
        assert!(ZipLayout::of(["a/readme.txt"].into_iter()).prefix.is_none());
        let exported = [
            "m/data/weights/weight_0",
            "m/models/model.json",
            "m/archive_format",
        ];
        let layout = ZipLayout::of(exported.into_iter());
        assert!(layout.archive_format && layout.prefix.is_none() && !layout.torchscript);
        assert_eq!(layout.root.as_deref(), Some("m/"));
    }
}
