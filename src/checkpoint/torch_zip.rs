//! Reader of `torch.save` zip checkpoints (the default since PyTorch 1.6).
//!
//! Layout of such a file: a zip whose entries all sit under one folder `<prefix>/` (the file's
//! stem, or `archive`): `data.pkl` is the pickled object, with every tensor storage replaced by a
//! persistent id `('storage', torch.FloatStorage, key, location, numel)`, and `data/<key>` holds
//! that storage's raw little-endian bytes.
//!
//! Python's unpickler imports and calls whatever globals the pickle names, so loading an untrusted
//! checkpoint with `torch.load(weights_only=False)` can run arbitrary code. The virtual machine here
//! only knows the handful of globals a state dict needs (`collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter[_with_state]`, the
//! `torch.*Storage` types), plus `torch.device`, `builtins.set` and `_codecs.encode` (for the
//! other entries of a training checkpoint). It interprets those itself, calls nothing, and
//! refuses any other global by name.
//!
//! In its TorchScript mode (for the `data.pkl` of a `torch.jit.save` archive, see
//! [`torchscript`](super::torchscript)) it also accepts the classes TorchScript compiled
//! (`__torch__.*`), whose instances stay inert objects that record their class name and the state
//! BUILD gives them, the `torch.jit._pickle` list helpers and `builtins.complex`.

use super::{shown, sniff, CheckpointError, Sniff, SNIFF_LEN};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::rc::Rc;
use tch::{Kind, Tensor};

/// A state dict's `data.pkl` takes about 100 bytes per tensor; this bound only stops a corrupt
/// zip header from requesting an absurd allocation.
pub(super) const MAX_PICKLE_BYTES: u64 = 1 << 30;

/// Wrapper keys under which training scripts commonly nest the state dict
/// (`torch.save({"state_dict": sd, "epoch": 3}, p)`), tried in this order.
const NESTED_KEYS: [&str; 2] = ["state_dict", "model"];

/// A TorchScript module tree is a tree in real files (thousands of modules of a few dozen
/// attributes); a hostile `data.pkl` can make it a DAG with exponentially many paths, so the walk
/// stops after looking at this many modules and attributes in all.
const MAX_WALK_STEPS: usize = 1 << 24;

/// Real state dict names take tens of bytes; a hostile pickle can repeat a long attribute name
/// through its memo at every level for two bytes each, so longer names are refused.
const MAX_NAME_BYTES: usize = 1 << 16;

/// Copies of tensors (views of a storage another tensor has taken, strided views, a tensor
/// under several names) may take this many times the bytes of the storages read, or
/// [`COPY_BUDGET_FLOOR`] if more, so that a few bytes of pickle cannot ask for unbounded copies.
const COPY_BUDGET_FACTOR: u64 = 8;
const COPY_BUDGET_FLOOR: u64 = 64 << 20;

/// A compressed entry (torch.save stores them uncompressed) may expand to this many times the
/// file's size, or [`INFLATE_FLOOR`] if more: deflate reaches about 1000 times, so a small file
/// could otherwise claim gigabytes.
const INFLATE_FACTOR: u64 = 32;
const INFLATE_FLOOR: u64 = 16 << 20;

/// The unpickler's own memory (its stack, memo, objects and their items) may take this many
/// times the size of `data.pkl`, plus [`VM_MEMORY_FLOOR`]. A real state dict's pickle takes
/// several times its size; one byte of pickle (`)`, an empty tuple) can ask for a hundred.
const VM_MEMORY_FACTOR: usize = 16;
const VM_MEMORY_FLOOR: usize = 128 << 20;

/// Reads a `torch.save` zip checkpoint holding a dict (plain or `OrderedDict`, e.g.
/// `model.state_dict()`) of tensors.
///
/// Returns the `(name, tensor)` pairs in the file's order as contiguous CPU tensors with
/// `requires_grad = false`, whatever device they were saved from. Offsets and strides are honoured
/// (a transposed weight saved as is reads back transposed), and tensors that shared a storage in
/// Python (views of one buffer, tied weights) come back as independent copies.
///
/// Also accepted: parameters saved with `keep_vars=True`, any pickle protocol from 2 to 5, and a
/// dict whose values are not all tensors but whose `"state_dict"` or else `"model"` entry is a dict
/// of tensors (the usual training checkpoint); that inner dict is returned. Everything else (the
/// legacy non-zip format, TorchScript archives, other objects, unknown globals, unsupported
/// dtypes, corrupt files) is a [`CheckpointError`].
pub fn read_torch_zip(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| CheckpointError::io(path, "cannot open", e))?;
    read_torch_zip_from(BufReader::new(file), path)
}

/// [`read_torch_zip`] on any seekable reader (e.g. an in-memory `Cursor`); `name` is only used in
/// error messages.
pub fn read_torch_zip_from<R: Read + Seek>(
    mut reader: R,
    name: impl AsRef<Path>,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let path = name.as_ref();
    let file_len = match sniff_reader(&mut reader, path)? {
        (Sniff::Zip, len) => len,
        (Sniff::Pickle, _) => {
            return Err(CheckpointError::LegacyFormat {
                path: path.to_path_buf(),
            })
        }
        (Sniff::Safetensors, _) => {
            return Err(CheckpointError::WrongFormat {
                path: path.to_path_buf(),
                expected: "a torch.save zip checkpoint",
                found: "a safetensors file",
            })
        }
        (Sniff::Unknown, _) => {
            return Err(CheckpointError::WrongFormat {
                path: path.to_path_buf(),
                expected: "a torch.save zip checkpoint",
                found: "not a zip archive",
            })
        }
    };

    let mut archive = super::zip_entries::open_archive(reader, path)?;
    let layout = ZipLayout::of(archive.file_names());
    if layout.torchscript {
        return Err(CheckpointError::TorchScript {
            path: path.to_path_buf(),
        });
    }
    let prefix = layout.prefix.ok_or_else(|| no_data_pkl(path))?;
    check_byteorder(&mut archive, path, &prefix, file_len)?;

    let pickle = read_entry(
        &mut archive,
        path,
        &format!("{prefix}data.pkl"),
        MAX_PICKLE_BYTES,
        file_len,
    )?;
    let mut storages = ZipStorages::new(archive, path, prefix, file_len);
    let mut vm = Unpickler::new(&pickle, path, &mut storages);
    let root = vm.run()?;
    vm.into_state_dict(root)
}

/// Runs the `data.pkl` of a TorchScript archive in [`Mode::TorchScript`] and returns the state
/// dict of the module it holds (see [`Unpickler::into_module_state`]).
pub(super) fn read_module_state(
    pickle: &[u8],
    path: &Path,
    storages: &mut dyn StorageSource,
    classes: &super::torchscript::ScriptClasses,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let mut vm = Unpickler::with_mode(pickle, path, storages, Mode::TorchScript);
    let root = vm.run()?;
    vm.into_module_state(root, classes)
}

/// What a reader's first bytes say it is, and its length; the reader is left at its start.
pub(super) fn sniff_reader<R: Read + Seek>(
    reader: &mut R,
    path: &Path,
) -> Result<(Sniff, u64), CheckpointError> {
    let read_err = |e| CheckpointError::io(path, "cannot read", e);
    let file_len = reader.seek(SeekFrom::End(0)).map_err(read_err)?;
    reader.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let mut head = Vec::with_capacity(SNIFF_LEN);
    reader
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    reader.seek(SeekFrom::Start(0)).map_err(read_err)?;
    Ok((sniff(&head, file_len), file_len))
}

/// Refuses archives written on big-endian machines (their storages would read byte-swapped).
/// Archives without a `byteorder` entry predate it and are little-endian.
pub(super) fn check_byteorder<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    path: &Path,
    prefix: &str,
    file_len: u64,
) -> Result<(), CheckpointError> {
    let byteorder = format!("{prefix}byteorder");
    if archive.index_for_name(&byteorder).is_some() {
        let order = read_entry(archive, path, &byteorder, 16, file_len)?;
        if String::from_utf8_lossy(&order).trim() != "little" {
            return Err(CheckpointError::Unsupported {
                path: path.to_path_buf(),
                reason: format!(
                    "saved on a big-endian machine (byteorder '{}'); re-save it on a little-endian one",
                    shown(String::from_utf8_lossy(&order).trim())
                ),
            });
        }
    }
    Ok(())
}

/// Writes tensors as `torch.save(OrderedDict(tensors), path)` would: a zip checkpoint that
/// Python's `torch.load` reads (with `weights_only=True`, the default since PyTorch 2.6, and
/// with `mmap=True`: storages are 64-byte aligned) and [`read_torch_zip`] reads back bit for bit.
///
/// Tensors may live on any device, be non-contiguous or require grad: their values are written,
/// as contiguous CPU tensors, one storage each (tensors that shared memory are written apart).
/// Dtypes as for [`read_torch_zip`]; names must be unique. The pickle carries no `_metadata`
/// (module versions), which `load_state_dict` does not need. The file is replaced atomically
/// (see [`atomic_write`](super::atomic_write)).
pub fn write_torch_zip<S, T>(
    path: impl AsRef<Path>,
    tensors: &[(S, T)],
) -> Result<(), CheckpointError>
where
    S: AsRef<str>,
    T: std::borrow::Borrow<Tensor>,
{
    let path = path.as_ref();
    super::check_names(path, tensors.iter().map(|(name, _)| name.as_ref()))?;
    let mut hosts = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        hosts.push(super::HostTensor::of(path, name.as_ref(), tensor.borrow())?);
    }
    let names: Vec<&str> = tensors.iter().map(|(name, _)| name.as_ref()).collect();
    let pickle = state_dict_pickle(&names, &hosts);

    let write_err = |e: std::io::Error| CheckpointError::io(path, "cannot write", e);
    let zip_err = |e: zip::result::ZipError| {
        CheckpointError::io(path, "cannot write", std::io::Error::other(e.to_string()))
    };
    super::atomic_write(path, |tmp| {
        let file = File::create(tmp).map_err(write_err)?;
        let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
        // Stored and aligned as torch.save does, so that torch.load(mmap=True) can map storages.
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .with_alignment(64);
        let mut entry = |name: &str, bytes: &[u8]| -> Result<(), CheckpointError> {
            let large = bytes.len() as u64 >= u64::from(u32::MAX);
            zip.start_file(format!("archive/{name}"), options.large_file(large))
                .map_err(zip_err)?;
            std::io::Write::write_all(&mut zip, bytes).map_err(write_err)
        };
        entry("data.pkl", &pickle)?;
        entry(".format_version", b"1")?;
        entry(".storage_alignment", b"64")?;
        entry("byteorder", b"little")?;
        for (key, host) in hosts.iter().enumerate() {
            entry(&format!("data/{key}"), host.bytes())?;
        }
        entry("version", b"3\n")?;
        // Flushed here (so that errors are seen); `atomic_write` syncs the file.
        let writer = zip.finish().map_err(zip_err)?;
        writer
            .into_inner()
            .map(drop)
            .map_err(|e| write_err(e.into_error()))
    })
}

/// The pickle (protocol 2) of an `OrderedDict` of `_rebuild_tensor_v2` calls, storage `i` being
/// `data/i`. No memo: every global is spelled out again, which any unpickler accepts.
fn state_dict_pickle(names: &[&str], hosts: &[super::HostTensor]) -> Vec<u8> {
    let mut p = PickleWriter(Vec::new());
    p.0.extend_from_slice(b"\x80\x02");
    p.global("collections", "OrderedDict");
    p.0.extend_from_slice(b")R(");
    for (key, (name, host)) in names.iter().zip(hosts).enumerate() {
        p.str(name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.0.extend_from_slice(b"((");
        p.str("storage");
        p.global("torch", storage_name(host.kind));
        p.str(&key.to_string());
        p.str("cpu");
        p.int(host.size.iter().product());
        p.0.extend_from_slice(b"tQ");
        p.int(0);
        p.ints(&host.size);
        p.ints(&contiguous_strides(&host.size));
        p.0.push(0x89);
        p.global("collections", "OrderedDict");
        p.0.extend_from_slice(b")RtR");
    }
    p.0.extend_from_slice(b"u.");
    p.0
}

struct PickleWriter(Vec<u8>);

impl PickleWriter {
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0.extend_from_slice(module.as_bytes());
        self.0.push(b'\n');
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(b'\n');
    }

    fn str(&mut self, s: &str) {
        // BINUNICODE8 (protocol 4) is not an option at protocol 2; names and keys are far
        // below 4 GiB.
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: i64) {
        if let Ok(v) = i32::try_from(v) {
            self.0.push(b'J');
            self.0.extend_from_slice(&v.to_le_bytes());
        } else {
            self.0.extend_from_slice(&[0x8a, 8]);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn ints(&mut self, values: &[i64]) {
        self.0.push(b'(');
        for &v in values {
            self.int(v);
        }
        self.0.push(b't');
    }
}

fn storage_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Double => "DoubleStorage",
        Kind::Half => "HalfStorage",
        Kind::BFloat16 => "BFloat16Storage",
        Kind::Int64 => "LongStorage",
        Kind::Int => "IntStorage",
        Kind::Int16 => "ShortStorage",
        Kind::Int8 => "CharStorage",
        Kind::Uint8 => "ByteStorage",
        Kind::Bool => "BoolStorage",
        // Float, and nothing else: HostTensor admits only the kinds above and Float.
        _ => "FloatStorage",
    }
}

fn contiguous_strides(size: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; size.len()];
    for i in (0..size.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1].saturating_mul(size[i + 1].max(1));
    }
    strides
}

/// What the entry names of a zip say about it.
#[derive(Debug, Default)]
pub(crate) struct ZipLayout {
    /// `"<prefix>/"` of the folder that holds `data.pkl` (`""` if it sits at the root).
    pub(crate) prefix: Option<String>,
    /// `torch.jit.save` also writes `constants.pkl` and the module's Python source under `code/`.
    pub(crate) torchscript: bool,
}

impl ZipLayout {
    pub(crate) fn of<'a>(names: impl Iterator<Item = &'a str>) -> ZipLayout {
        let mut layout = ZipLayout::default();
        for name in names {
            let (prefix, rest) = match name.split_once('/') {
                Some((top, rest)) => (format!("{top}/"), rest),
                None => (String::new(), name),
            };
            if rest == "constants.pkl" || rest.starts_with("code/") {
                layout.torchscript = true;
            }
            if rest == "data.pkl" && layout.prefix.is_none() {
                layout.prefix = Some(prefix);
            }
        }
        layout
    }
}

pub(crate) fn corrupt(path: &Path, err: zip::result::ZipError) -> CheckpointError {
    CheckpointError::CorruptArchive {
        path: path.to_path_buf(),
        reason: crate::error::first_line(&err.to_string()),
    }
}

pub(crate) fn no_data_pkl(path: &Path) -> CheckpointError {
    CheckpointError::NotACheckpoint {
        path: path.to_path_buf(),
        reason: "the zip archive has no data.pkl, so torch.save did not write it".to_string(),
    }
}

/// Reads a whole entry, refusing ones larger than `max` bytes before allocating for them. The zip
/// crate checks the entry's CRC when the read reaches its end, so flipped bits are caught here.
pub(super) fn read_entry<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    path: &Path,
    name: &str,
    max: u64,
    file_len: u64,
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
    check_inflation(path, &name, &entry, file_len)?;
    // Reserving up front is only safe when the bytes must physically be in the file (torch.save
    // stores entries uncompressed); a compressed entry's claimed size could be anything.
    let stored = entry.compression() == zip::CompressionMethod::Stored;
    let capacity = if stored && size <= file_len { size } else { 0 };
    let mut bytes = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
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

/// Refuses a compressed entry that would expand beyond [`INFLATE_FACTOR`] times the file (a
/// decompression bomb), before anything is decompressed. `name` is already made safe to show.
fn check_inflation<R: Read>(
    path: &Path,
    name: &str,
    entry: &zip::read::ZipFile<'_, R>,
    file_len: u64,
) -> Result<(), CheckpointError> {
    let size = entry.size();
    let budget = file_len.saturating_mul(INFLATE_FACTOR).max(INFLATE_FLOOR);
    if entry.compression() != zip::CompressionMethod::Stored && size > budget {
        return Err(CheckpointError::CorruptArchive {
            path: path.to_path_buf(),
            reason: format!(
                "entry {name} is compressed from {} to {size} bytes, more than {INFLATE_FACTOR} times the file's {file_len} (a decompression bomb?); refused: torch.save stores entries uncompressed",
                entry.compressed_size()
            ),
        });
    }
    Ok(())
}

/// Where the virtual machine gets the raw bytes of a storage named by a persistent id.
pub(super) trait StorageSource {
    /// The `nbytes` bytes of storage `key`, as a 1-D `Uint8` CPU tensor; an error if the
    /// archive holds a different amount.
    fn load(&mut self, key: &str, nbytes: u64) -> Result<Tensor, CheckpointError>;
}

/// The storages of a zip archive: `<prefix>data/<key>`.
pub(super) struct ZipStorages<'p, R> {
    archive: zip::ZipArchive<R>,
    path: &'p Path,
    prefix: String,
    file_len: u64,
    /// Storages shared by several tensors are read once.
    cache: HashMap<String, Tensor>,
}

impl<'p, R> ZipStorages<'p, R> {
    pub(super) fn new(
        archive: zip::ZipArchive<R>,
        path: &'p Path,
        prefix: String,
        file_len: u64,
    ) -> Self {
        ZipStorages {
            archive,
            path,
            prefix,
            file_len,
            cache: HashMap::new(),
        }
    }
}

impl<R: Read + Seek> StorageSource for ZipStorages<'_, R> {
    fn load(&mut self, key: &str, nbytes: u64) -> Result<Tensor, CheckpointError> {
        let name = format!("{}data/{key}", self.prefix);
        let bytes = match self.cache.entry(key.to_string()) {
            Entry::Occupied(cached) => cached.get().shallow_clone(),
            Entry::Vacant(slot) => {
                if self.archive.index_for_name(&name).is_none() {
                    return Err(CheckpointError::CorruptArchive {
                        path: self.path.to_path_buf(),
                        reason: format!(
                            "data.pkl uses storage '{}' but the archive has no entry {}",
                            shown(key),
                            shown(&name)
                        ),
                    });
                }
                let bytes =
                    read_storage(&mut self.archive, self.path, &name, nbytes, self.file_len)?;
                slot.insert(bytes).shallow_clone()
            }
        };
        if bytes.numel() as u64 != nbytes {
            return Err(CheckpointError::CorruptArchive {
                path: self.path.to_path_buf(),
                reason: format!(
                    "storage entry {} holds {} bytes but data.pkl declares {nbytes}",
                    shown(&name),
                    bytes.numel()
                ),
            });
        }
        Ok(bytes)
    }
}

/// Reads a storage entry into a new byte tensor: straight into the tensor's memory when the
/// entry is stored uncompressed with the expected size (as torch.save writes them), so a model
/// is never held twice; through [`read_entry`] otherwise.
fn read_storage<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    path: &Path,
    name: &str,
    nbytes: u64,
    file_len: u64,
) -> Result<Tensor, CheckpointError> {
    let mut entry = archive.by_name(name).map_err(|e| corrupt(path, e))?;
    let direct = entry.compression() == zip::CompressionMethod::Stored
        && entry.size() == nbytes
        && nbytes <= file_len;
    if !direct {
        drop(entry);
        let bytes = read_entry(archive, path, name, nbytes, file_len)?;
        return Ok(Tensor::from_slice(&bytes));
    }
    let failed = |reason: String| CheckpointError::CorruptArchive {
        path: path.to_path_buf(),
        reason: format!("cannot read entry {}: {reason}", shown(name)),
    };
    let tensor = Tensor::f_empty([nbytes as i64], (Kind::Uint8, tch::Device::Cpu))
        .map_err(|e| failed(crate::error::first_line(&e.to_string())))?;
    super::read_into(&mut entry, &tensor).map_err(|e| failed(e.to_string()))?;
    // Reading on to the end is what makes the zip crate check the entry's CRC.
    match entry.read(&mut [0u8; 1]) {
        Ok(0) => Ok(tensor),
        Ok(_) => Err(failed("more bytes than its header says".into())),
        Err(e) => Err(failed(e.to_string())),
    }
}

// ---------------------------------------------------------------------------------------------
// The pickle virtual machine.
//
// Containers live in an arena and values refer to them by index, so that deeply nested or cyclic
// pickles (which a hostile file can build with a few bytes per level) are dropped as one flat
// vector instead of by recursion, and mutations through the memo are seen by every reference,
// as in Python.

/// The globals the virtual machine knows; anything else is refused when the pickle names it.
#[derive(Debug, Clone)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    Device,
    /// `builtins.set`, which protocol 2 pickles sets with (e.g. in training checkpoints).
    Set,
    /// `_codecs.encode`, which protocol 2 pickles `bytes` with; never called, the result is an
    /// opaque bytes value.
    CodecsEncode,
    /// `torch.FloatStorage` and friends: `Err` holds the name of a storage type of a dtype this
    /// crate does not read, reported against the tensor that uses it.
    Storage(Result<Kind, Rc<str>>),
    /// TorchScript only: a class compiled by TorchScript (`__torch__.<qualified name>`), named by
    /// its qualified name. Instantiating it gives an inert [`Obj::Object`]; no code runs.
    ScriptClass(Rc<str>),
    /// TorchScript only: `torch.jit._pickle.build_{int,double,bool,tensor}list` and
    /// `restore_type_tag`, which give back their first argument with a static type attached.
    ScriptIdentity(&'static str),
    /// TorchScript only: `builtins.complex`, for `complex` attributes; the result is an opaque
    /// number.
    Complex,
}

impl Global {
    fn resolve(module: &str, name: &str, mode: Mode) -> Option<Global> {
        if mode == Mode::TorchScript {
            if (module == "__torch__" || module.starts_with("__torch__.")) && !name.is_empty() {
                return Some(Global::ScriptClass(Rc::from(format!("{module}.{name}"))));
            }
            let helper = match (module, name) {
                ("torch.jit._pickle", "build_intlist") => "build_intlist",
                ("torch.jit._pickle", "build_doublelist") => "build_doublelist",
                ("torch.jit._pickle", "build_boollist") => "build_boollist",
                ("torch.jit._pickle", "build_tensorlist") => "build_tensorlist",
                ("torch.jit._pickle", "restore_type_tag") => "restore_type_tag",
                ("builtins", "complex") => return Some(Global::Complex),
                _ => "",
            };
            if !helper.is_empty() {
                return Some(Global::ScriptIdentity(helper));
            }
        }
        match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch._utils", "_rebuild_parameter_with_state") => {
                Some(Global::RebuildParameterWithState)
            }
            ("torch", "device") => Some(Global::Device),
            ("builtins" | "__builtin__", "set") => Some(Global::Set),
            ("_codecs", "encode") => Some(Global::CodecsEncode),
            // torch.cuda.*Storage: CUDA tensors saved by PyTorch 1.6 to 1.x.
            ("torch" | "torch.cuda", storage) | ("torch.storage", storage)
                if storage.ends_with("Storage")
                    && storage.len() > "Storage".len()
                    && storage
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                Some(Global::Storage(
                    storage_kind(storage).ok_or_else(|| Rc::from(format!("{module}.{storage}"))),
                ))
            }
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Global::OrderedDict => "the class collections.OrderedDict".into(),
            Global::RebuildTensorV2 => "the function torch._utils._rebuild_tensor_v2".into(),
            Global::RebuildParameter => "the function torch._utils._rebuild_parameter".into(),
            Global::RebuildParameterWithState => {
                "the function torch._utils._rebuild_parameter_with_state".into()
            }
            Global::Device => "the class torch.device".into(),
            Global::Set => "the class builtins.set".into(),
            Global::CodecsEncode => "the function _codecs.encode".into(),
            Global::Storage(Ok(kind)) => format!("the storage type of {}", kind_name(*kind)),
            Global::Storage(Err(name)) => format!("the storage type {name}"),
            Global::ScriptClass(name) => format!("the TorchScript class {}", shown(name)),
            Global::ScriptIdentity(name) => format!("the function torch.jit._pickle.{name}"),
            Global::Complex => "the class builtins.complex".into(),
        }
    }
}

fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" | "UntypedStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

/// PyTorch's name for the dtypes this module reads.
pub(crate) fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "float32",
        Kind::Double => "float64",
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Int64 => "int64",
        Kind::Int => "int32",
        Kind::Int16 => "int16",
        Kind::Int8 => "int8",
        Kind::Uint8 => "uint8",
        Kind::Bool => "bool",
        _ => "an unsupported dtype",
    }
}

#[derive(Debug)]
struct StorageRef {
    kind: Result<Kind, Rc<str>>,
    /// The bytes, as a 1-D `Uint8` tensor; `None` for unsupported dtypes, never read.
    bytes: Option<Tensor>,
    key: Rc<str>,
    numel: i64,
}

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond 64 bits: never a valid size, offset or dict key here.
    BigInt,
    /// Floats and bytes are only ever skipped over: no state dict part is one.
    Float,
    Str(Rc<str>),
    Bytes,
    Global(Global),
    Storage(Rc<StorageRef>),
    /// An index into the arena.
    Obj(usize),
}

/// Why a `_rebuild_tensor_v2` call did not give a tensor; reported with the key the tensor is
/// stored under, if it turns out to be part of the state dict at all.
#[derive(Debug)]
enum TensorProblem {
    UnsupportedDtype(String),
    Invalid(String),
}

#[derive(Debug)]
enum Obj {
    Tuple(Vec<Value>),
    /// Lists and sets alike.
    List(Vec<Value>),
    Dict(Dict),
    Tensor(Tensor),
    BadTensor(TensorProblem),
    Device,
    /// TorchScript only: an instance of a TorchScript class (a module, or a scripted class),
    /// never constructed: its qualified class name and the state BUILD gave it (for modules, a
    /// dict of its attributes in slot order).
    Object {
        class: Rc<str>,
        state: Option<Value>,
    },
}

/// Which pickles the virtual machine accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// `torch.save` files: tensors, storages and containers.
    StateDict,
    /// `data.pkl` of a `torch.jit.save` archive: also TorchScript class instances (inert
    /// objects) and the `torch.jit._pickle` list helpers.
    TorchScript,
}

/// Python's insertion-ordered dict: a later `SETITEM` of an existing key replaces its value in
/// place.
#[derive(Debug, Default)]
struct Dict {
    entries: Vec<(Value, Value)>,
    index: HashMap<DictKey, usize>,
}

#[derive(Debug, PartialEq, Eq, Hash)]
enum DictKey {
    Str(Rc<str>),
    Int(i64),
    None,
}

impl Dict {
    fn insert(&mut self, key: Value, value: Value) {
        // Python hashes True as 1, so they are one key.
        let hashed = match &key {
            Value::Str(s) => Some(DictKey::Str(s.clone())),
            Value::Int(i) => Some(DictKey::Int(*i)),
            Value::Bool(b) => Some(DictKey::Int(i64::from(*b))),
            Value::None => Some(DictKey::None),
            _ => None,
        };
        match hashed {
            Some(k) => match self.index.entry(k) {
                Entry::Occupied(at) => self.entries[*at.get()].1 = value,
                Entry::Vacant(slot) => {
                    slot.insert(self.entries.len());
                    self.entries.push((key, value));
                }
            },
            // Tuples and the like: no state dict uses them as keys, so they are kept, not merged.
            None => self.entries.push((key, value)),
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        let at = self.index.get(&DictKey::Str(Rc::from(key)))?;
        self.entries.get(*at).map(|(_, v)| v)
    }
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
    mode: Mode,
    storages: &'a mut dyn StorageSource,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    arena: Vec<Obj>,
    /// Each storage's elements in a dtype (a view of its bytes; booleans normalised), built once.
    bases: HashMap<(Rc<str>, Kind), Tensor>,
    /// The storages whose memory a tensor has taken as it is (see [`Unpickler::rebuild_tensor`]).
    taken: HashSet<Rc<str>>,
    /// The storages read, and their bytes in all: what the copy budget is relative to.
    read: HashSet<Rc<str>>,
    storage_bytes: u64,
    /// Bytes of tensor copies made so far (see [`COPY_BUDGET_FACTOR`]).
    copied: u64,
    /// Values held inside tuples, lists, dicts and objects, for [`Unpickler::footprint`].
    contained: usize,
}

type VmResult<T> = Result<T, CheckpointError>;

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8], path: &'a Path, storages: &'a mut dyn StorageSource) -> Unpickler<'a> {
        Unpickler::with_mode(data, path, storages, Mode::StateDict)
    }

    fn with_mode(
        data: &'a [u8],
        path: &'a Path,
        storages: &'a mut dyn StorageSource,
        mode: Mode,
    ) -> Unpickler<'a> {
        Unpickler {
            data,
            pos: 0,
            path,
            mode,
            storages,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            arena: Vec::new(),
            bases: HashMap::new(),
            taken: HashSet::new(),
            read: HashSet::new(),
            storage_bytes: 0,
            copied: 0,
            contained: 0,
        }
    }

    /// About how much memory the machine's values take (its stack, memo, objects and the items
    /// in them; strings are bounded by the pickle itself).
    fn footprint(&self) -> usize {
        use std::mem::size_of;
        let cell = size_of::<Value>();
        self.arena.len() * size_of::<Obj>()
            + (self.stack.len() + self.contained + self.marks.len()) * cell
            + self.memo.len() * 2 * (cell + size_of::<u32>())
    }

    /// Charges `bytes` of tensor copies to the copy budget, or says why they are refused.
    fn charge_copy(&mut self, bytes: u64) -> Result<(), String> {
        let budget = self
            .storage_bytes
            .saturating_mul(COPY_BUDGET_FACTOR)
            .max(COPY_BUDGET_FLOOR);
        let copied = self.copied.saturating_add(bytes);
        if copied > budget {
            return Err(format!(
                "tensors that share storages would need {copied} bytes of copies, more than {COPY_BUDGET_FACTOR} times the {} bytes of the storages read; refused (save each tensor with .clone() to store it on its own)",
                self.storage_bytes
            ));
        }
        self.copied = copied;
        Ok(())
    }

    fn malformed(&self, offset: usize, reason: impl Into<String>) -> CheckpointError {
        CheckpointError::MalformedPickle {
            path: self.path.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> VmResult<&'a [u8]> {
        let data = self.data;
        let end = self.pos.checked_add(n).filter(|&end| end <= data.len());
        let Some(end) = end else {
            return Err(self.malformed(
                self.pos,
                format!(
                    "truncated: {what} needs {n} more bytes, {} left",
                    data.len() - self.pos
                ),
            ));
        };
        let bytes = &data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self, what: &str) -> VmResult<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn take_u8(&mut self, what: &str) -> VmResult<u8> {
        Ok(self.take_array::<1>(what)?[0])
    }

    fn take_u32(&mut self, what: &str) -> VmResult<u32> {
        Ok(u32::from_le_bytes(self.take_array(what)?))
    }

    fn take_len64(&mut self, what: &str) -> VmResult<usize> {
        let at = self.pos;
        let n = u64::from_le_bytes(self.take_array(what)?);
        usize::try_from(n)
            .map_err(|_| self.malformed(at, format!("{what} length {n} is too large")))
    }

    fn take_line(&mut self, what: &str) -> VmResult<&'a str> {
        let data = self.data;
        let start = self.pos;
        let Some(len) = data[start..].iter().position(|&b| b == b'\n') else {
            return Err(self.malformed(start, format!("truncated: {what} has no end of line")));
        };
        self.pos = start + len + 1;
        std::str::from_utf8(&data[start..start + len])
            .map_err(|_| self.malformed(start, format!("{what} is not valid UTF-8")))
    }

    fn take_str(&mut self, n: usize, what: &str) -> VmResult<Value> {
        let at = self.pos;
        let bytes = self.take(n, what)?;
        let s = std::str::from_utf8(bytes)
            .map_err(|_| self.malformed(at, format!("{what} is not valid UTF-8")))?;
        Ok(Value::Str(Rc::from(s)))
    }

    fn take_bytes(&mut self, n: usize, what: &str) -> VmResult<Value> {
        self.take(n, what)?;
        Ok(Value::Bytes)
    }

    fn alloc(&mut self, obj: Obj) -> Value {
        self.arena.push(obj);
        Value::Obj(self.arena.len() - 1)
    }

    fn push_obj(&mut self, obj: Obj) {
        self.contained += match &obj {
            Obj::Tuple(items) | Obj::List(items) => items.len(),
            Obj::Dict(dict) => 2 * dict.entries.len(),
            _ => 0,
        };
        let value = self.alloc(obj);
        self.stack.push(value);
    }

    fn pop(&mut self, at: usize) -> VmResult<Value> {
        // Values above the innermost MARK belong to it: popping past it means a malformed pickle.
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.malformed(at, "stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.malformed(at, "stack underflow"))
    }

    fn top(&self, at: usize) -> VmResult<&Value> {
        self.stack
            .last()
            .ok_or_else(|| self.malformed(at, "stack underflow"))
    }

    fn pop_mark(&mut self, at: usize) -> VmResult<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.malformed(at, "no MARK on the stack"))?;
        if mark > self.stack.len() {
            return Err(self.malformed(at, "MARK above the top of the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_get(&self, at: usize, index: u32) -> VmResult<Value> {
        self.memo.get(&index).cloned().ok_or_else(|| {
            self.malformed(
                at,
                format!("memo entry {index} is read before it is written"),
            )
        })
    }

    fn memo_put(&mut self, at: usize, index: u32) -> VmResult<()> {
        let value = self.top(at)?.clone();
        self.memo.insert(index, value);
        Ok(())
    }

    fn obj_mut(&mut self, at: usize, value: &Value) -> VmResult<&mut Obj> {
        match value {
            Value::Obj(i) if *i < self.arena.len() => Ok(&mut self.arena[*i]),
            other => {
                let what = self.type_name(other);
                Err(self.malformed(at, format!("expected a container, found {what}")))
            }
        }
    }

    fn type_name(&self, value: &Value) -> String {
        match value {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) | Value::BigInt => "an int".into(),
            Value::Float => "a float".into(),
            Value::Str(_) => "a str".into(),
            Value::Bytes => "a bytes object".into(),
            Value::Global(g) => g.describe(),
            Value::Storage(_) => "a tensor storage".into(),
            Value::Obj(i) => match self.arena.get(*i) {
                Some(Obj::Tuple(_)) => "a tuple".into(),
                Some(Obj::List(_)) => "a list".into(),
                Some(Obj::Dict(_)) => "a dict".into(),
                Some(Obj::Tensor(_) | Obj::BadTensor(_)) => "a tensor".into(),
                Some(Obj::Device) => "a torch.device".into(),
                Some(Obj::Object { class, .. }) => format!("an object of class {}", shown(class)),
                None => "an unknown object".into(),
            },
        }
    }

    /// Runs the pickle to its STOP opcode and returns the unpickled object.
    fn run(&mut self) -> VmResult<Value> {
        let budget = self
            .data
            .len()
            .saturating_mul(VM_MEMORY_FACTOR)
            .saturating_add(VM_MEMORY_FLOOR);
        loop {
            let at = self.pos;
            if self.footprint() > budget {
                return Err(self.malformed(
                    at,
                    format!(
                        "it builds more objects than a pickle of {} bytes can hold in a state dict (over {budget} bytes of memory); refused",
                        self.data.len()
                    ),
                ));
            }
            if at >= self.data.len() {
                return Err(self.malformed(at, "truncated: the pickle ends before its STOP opcode"));
            }
            let op = self.data[at];
            self.pos += 1;
            match op {
                // PROTO
                0x80 => {
                    let version = self.take_u8("PROTO")?;
                    if version > 5 {
                        return Err(
                            self.malformed(at, format!("unsupported pickle protocol {version}"))
                        );
                    }
                }
                // FRAME: only a hint for buffered readers.
                0x95 => {
                    self.take_array::<8>("FRAME")?;
                }
                // STOP
                b'.' => {
                    let value = self.pop(at)?;
                    return Ok(value);
                }
                // MARK
                b'(' => self.marks.push(self.stack.len()),
                // POP
                b'0' => {
                    self.pop(at)?;
                }
                // POP_MARK
                b'1' => {
                    self.pop_mark(at)?;
                }
                // DUP
                b'2' => {
                    let top = self.top(at)?.clone();
                    self.stack.push(top);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = i32::from_le_bytes(self.take_array("BININT")?);
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.take_u8("BININT1")?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_array("BININT2")?);
                    self.stack.push(Value::Int(i64::from(v)));
                }
                // LONG1, LONG4
                0x8a => {
                    let n = usize::from(self.take_u8("LONG1")?);
                    let bytes = self.take(n, "LONG1")?;
                    self.stack.push(decode_long(bytes));
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.take_array("LONG4")?);
                    let n = usize::try_from(n)
                        .map_err(|_| self.malformed(at, "LONG4 with a negative length"))?;
                    let bytes = self.take(n, "LONG4")?;
                    self.stack.push(decode_long(bytes));
                }
                // BINFLOAT: big-endian, unlike everything else.
                b'G' => {
                    self.take_array::<8>("BINFLOAT")?;
                    self.stack.push(Value::Float);
                }
                // SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
                0x8c => {
                    let n = usize::from(self.take_u8("SHORT_BINUNICODE")?);
                    let s = self.take_str(n, "SHORT_BINUNICODE")?;
                    self.stack.push(s);
                }
                b'X' => {
                    let n = self.take_u32("BINUNICODE")? as usize;
                    let s = self.take_str(n, "BINUNICODE")?;
                    self.stack.push(s);
                }
                0x8d => {
                    let n = self.take_len64("BINUNICODE8")?;
                    let s = self.take_str(n, "BINUNICODE8")?;
                    self.stack.push(s);
                }
                // SHORT_BINSTRING, BINSTRING: Python 2 str, which Python 3 decodes as ASCII.
                b'U' => {
                    let n = usize::from(self.take_u8("SHORT_BINSTRING")?);
                    let s = self.take_str(n, "SHORT_BINSTRING")?;
                    self.stack.push(s);
                }
                b'T' => {
                    let n = i32::from_le_bytes(self.take_array("BINSTRING")?);
                    let n = usize::try_from(n)
                        .map_err(|_| self.malformed(at, "BINSTRING with a negative length"))?;
                    let s = self.take_str(n, "BINSTRING")?;
                    self.stack.push(s);
                }
                // SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
                b'C' => {
                    let n = usize::from(self.take_u8("SHORT_BINBYTES")?);
                    let b = self.take_bytes(n, "SHORT_BINBYTES")?;
                    self.stack.push(b);
                }
                b'B' => {
                    let n = self.take_u32("BINBYTES")? as usize;
                    let b = self.take_bytes(n, "BINBYTES")?;
                    self.stack.push(b);
                }
                0x8e | 0x96 => {
                    let n = self.take_len64("BINBYTES8")?;
                    let b = self.take_bytes(n, "BINBYTES8")?;
                    self.stack.push(b);
                }
                // EMPTY_TUPLE, TUPLE, TUPLE1..3
                b')' => self.push_obj(Obj::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark(at)?;
                    self.push_obj(Obj::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(at)?);
                    }
                    items.reverse();
                    self.push_obj(Obj::Tuple(items));
                }
                // EMPTY_LIST, LIST, EMPTY_SET, FROZENSET
                b']' | 0x8f => self.push_obj(Obj::List(Vec::new())),
                b'l' | 0x91 => {
                    let items = self.pop_mark(at)?;
                    self.push_obj(Obj::List(items));
                }
                // APPEND
                b'a' => {
                    let item = self.pop(at)?;
                    let list = self.top(at)?.clone();
                    self.contained += 1;
                    match self.obj_mut(at, &list)? {
                        Obj::List(items) => items.push(item),
                        _ => {
                            return Err(self.malformed(at, "APPEND to something that is not a list"))
                        }
                    }
                }
                // APPENDS, ADDITEMS
                b'e' | 0x90 => {
                    let items = self.pop_mark(at)?;
                    let list = self.top(at)?.clone();
                    self.contained += items.len();
                    match self.obj_mut(at, &list)? {
                        Obj::List(existing) => existing.extend(items),
                        _ => {
                            return Err(
                                self.malformed(at, "APPENDS to something that is not a list")
                            )
                        }
                    }
                }
                // EMPTY_DICT, DICT
                b'}' => self.push_obj(Obj::Dict(Dict::default())),
                b'd' => {
                    let items = self.pop_mark(at)?;
                    let dict = self.dict_from_pairs(at, items)?;
                    self.push_obj(Obj::Dict(dict));
                }
                // SETITEM
                b's' => {
                    let value = self.pop(at)?;
                    let key = self.pop(at)?;
                    let dict = self.top(at)?.clone();
                    self.contained += 2;
                    match self.obj_mut(at, &dict)? {
                        Obj::Dict(d) => d.insert(key, value),
                        _ => {
                            return Err(
                                self.malformed(at, "SETITEM on something that is not a dict")
                            )
                        }
                    }
                }
                // SETITEMS
                b'u' => {
                    let items = self.pop_mark(at)?;
                    if items.len() % 2 != 0 {
                        return Err(self.malformed(at, "SETITEMS with an odd number of items"));
                    }
                    let dict = self.top(at)?.clone();
                    self.contained += items.len();
                    match self.obj_mut(at, &dict)? {
                        Obj::Dict(d) => {
                            let mut items = items.into_iter();
                            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                                d.insert(k, v);
                            }
                        }
                        _ => {
                            return Err(
                                self.malformed(at, "SETITEMS on something that is not a dict")
                            )
                        }
                    }
                }
                // BINPUT, LONG_BINPUT, MEMOIZE
                b'q' => {
                    let index = u32::from(self.take_u8("BINPUT")?);
                    self.memo_put(at, index)?;
                }
                b'r' => {
                    let index = self.take_u32("LONG_BINPUT")?;
                    self.memo_put(at, index)?;
                }
                0x94 => {
                    let index = u32::try_from(self.memo.len())
                        .map_err(|_| self.malformed(at, "memo overflow"))?;
                    self.memo_put(at, index)?;
                }
                // BINGET, LONG_BINGET
                b'h' => {
                    let index = u32::from(self.take_u8("BINGET")?);
                    let value = self.memo_get(at, index)?;
                    self.stack.push(value);
                }
                b'j' => {
                    let index = self.take_u32("LONG_BINGET")?;
                    let value = self.memo_get(at, index)?;
                    self.stack.push(value);
                }
                // GLOBAL
                b'c' => {
                    let module = self.take_line("GLOBAL module")?;
                    let name = self.take_line("GLOBAL name")?;
                    let global = self.resolve(module, name)?;
                    self.stack.push(Value::Global(global));
                }
                // STACK_GLOBAL
                0x93 => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.malformed(at, "STACK_GLOBAL needs two strings"));
                    };
                    let global = self.resolve(&module, &name)?;
                    self.stack.push(Value::Global(global));
                }
                // REDUCE, NEWOBJ: both only ever call one of the allow-listed globals.
                b'R' | 0x81 => {
                    let args = self.pop(at)?;
                    let callable = self.pop(at)?;
                    let result = self.call(at, callable, args)?;
                    self.stack.push(result);
                }
                // BUILD: sets an object's attributes. A TorchScript object keeps them (a module's
                // attributes are its parameters, buffers and submodules); anything else's (e.g. a
                // state dict's `_metadata`) carry nothing a tensor list needs.
                b'b' => {
                    let state = self.pop(at)?;
                    let target = self.top(at)?.clone();
                    if let Value::Obj(i) = target {
                        if let Some(Obj::Object { state: slot, .. }) = self.arena.get_mut(i) {
                            if slot.is_some() {
                                return Err(self.malformed(
                                    at,
                                    "BUILD of an object that already has its state",
                                ));
                            }
                            *slot = Some(state);
                            self.contained += 1;
                        }
                    }
                }
                // BINPERSID
                b'Q' => {
                    let pid = self.pop(at)?;
                    let storage = self.persistent_load(at, pid)?;
                    self.stack.push(storage);
                }
                _ => {
                    return Err(self.malformed(
                        at,
                        format!("unsupported pickle opcode 0x{op:02x} ({})", opcode_name(op)),
                    ))
                }
            }
        }
    }

    fn resolve(&self, module: &str, name: &str) -> VmResult<Global> {
        // Quantized tensors and packed quantized parameters are PyTorch's own, not a risk: say
        // what they are.
        let quantized = (module == "torch._utils" && name == "_rebuild_qtensor")
            || module.starts_with("__torch__.torch.classes.quantized");
        if quantized {
            return Err(CheckpointError::Unsupported {
                path: self.path.to_path_buf(),
                reason: "quantized tensors are not supported: save the float model (before quantization, or dequantized) instead".into(),
            });
        }
        Global::resolve(module, name, self.mode).ok_or_else(|| CheckpointError::ForbiddenGlobal {
            path: self.path.to_path_buf(),
            global: shown(&format!("{module}.{name}")),
        })
    }

    fn dict_from_pairs(&self, at: usize, items: Vec<Value>) -> VmResult<Dict> {
        if items.len() % 2 != 0 {
            return Err(self.malformed(at, "DICT with an odd number of items"));
        }
        let mut dict = Dict::default();
        let mut items = items.into_iter();
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            dict.insert(k, v);
        }
        Ok(dict)
    }

    fn tuple_items(&self, at: usize, value: &Value, what: &str) -> VmResult<Vec<Value>> {
        match value {
            Value::Obj(i) => match self.arena.get(*i) {
                Some(Obj::Tuple(items)) => Ok(items.clone()),
                _ => Err(self.malformed(at, format!("{what} must be a tuple"))),
            },
            _ => Err(self.malformed(at, format!("{what} must be a tuple"))),
        }
    }

    fn call(&mut self, at: usize, callable: Value, args: Value) -> VmResult<Value> {
        let Value::Global(global) = callable else {
            let what = self.type_name(&callable);
            return Err(self.malformed(at, format!("cannot call {what}")));
        };
        if let Global::ScriptClass(class) = &global {
            // NEWOBJ with `()` is `cls.__new__(cls)`: an empty object, given its state by a later
            // BUILD. TorchScript pickles an enum value as its class REDUCE'd with the value itself
            // (not a tuple): an inert object that keeps it.
            let empty = matches!(&args, Value::Obj(i) if matches!(self.arena.get(*i), Some(Obj::Tuple(items)) if items.is_empty()));
            let state = (!empty).then_some(args);
            let class = class.clone();
            return Ok(self.alloc(Obj::Object { class, state }));
        }
        let args = self.tuple_items(at, &args, "the arguments of a call")?;
        match global {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err(self.malformed(at, "collections.OrderedDict called with arguments"));
                }
                Ok(self.alloc(Obj::Dict(Dict::default())))
            }
            Global::Device => Ok(self.alloc(Obj::Device)),
            Global::CodecsEncode => Ok(Value::Bytes),
            Global::Set => {
                let items = match args.as_slice() {
                    [] => Vec::new(),
                    [Value::Obj(i)] => match self.arena.get(*i) {
                        Some(Obj::List(items) | Obj::Tuple(items)) => items.clone(),
                        _ => {
                            return Err(self.malformed(at, "set() of something that is not a list"))
                        }
                    },
                    _ => return Err(self.malformed(at, "set() with unexpected arguments")),
                };
                Ok(self.alloc(Obj::List(items)))
            }
            Global::RebuildTensorV2 => {
                let obj = match self.rebuild_tensor(&args) {
                    Ok(tensor) => Obj::Tensor(tensor),
                    Err(problem) => Obj::BadTensor(problem),
                };
                Ok(self.alloc(obj))
            }
            // Parameter(data, requires_grad, hooks[, state]): the data is the tensor.
            Global::RebuildParameter | Global::RebuildParameterWithState => match args.first() {
                Some(data) if self.is_tensor(data) => Ok(data.clone()),
                _ => Ok(self.alloc(Obj::BadTensor(TensorProblem::Invalid(
                    "a parameter whose data is not a tensor".into(),
                )))),
            },
            Global::Storage(_) => {
                let what = global.describe();
                Err(self.malformed(at, format!("cannot call {what}")))
            }
            // Handled above, before the arguments are unpacked.
            Global::ScriptClass(class) => Ok(self.alloc(Obj::Object { class, state: None })),
            Global::ScriptIdentity(name) => match args.first() {
                Some(value) if (1..=2).contains(&args.len()) => Ok(value.clone()),
                _ => Err(self.malformed(
                    at,
                    format!("torch.jit._pickle.{name} called with unexpected arguments"),
                )),
            },
            Global::Complex => Ok(Value::Float),
        }
    }

    fn is_tensor(&self, value: &Value) -> bool {
        matches!(value, Value::Obj(i) if matches!(self.arena.get(*i), Some(Obj::Tensor(_) | Obj::BadTensor(_))))
    }

    /// `('storage', storage_type, key, location, numel)`, as torch.save's `persistent_id` writes.
    fn persistent_load(&mut self, at: usize, pid: Value) -> VmResult<Value> {
        let items = self.tuple_items(at, &pid, "a persistent id")?;
        let [Value::Str(tag), Value::Global(Global::Storage(kind)), Value::Str(key), _location, Value::Int(numel)] =
            items.as_slice()
        else {
            return Err(self.malformed(
                at,
                "a persistent id that is not ('storage', <storage type>, key, location, numel)",
            ));
        };
        if &**tag != "storage" {
            return Err(self.malformed(
                at,
                format!("a persistent id of unknown kind '{}'", shown(tag)),
            ));
        }
        if *numel < 0 {
            return Err(self.malformed(
                at,
                format!("storage '{}' has a negative size {numel}", shown(key)),
            ));
        }
        let bytes = match kind {
            Ok(kind) => {
                let nbytes = (*numel as u64)
                    .checked_mul(kind.elt_size_in_bytes() as u64)
                    .ok_or_else(|| {
                        self.malformed(at, format!("storage '{}' is too large", shown(key)))
                    })?;
                let loaded = self.storages.load(key, nbytes)?;
                if self.read.insert(key.clone()) {
                    self.storage_bytes = self.storage_bytes.saturating_add(nbytes);
                }
                Some(loaded)
            }
            Err(_) => None,
        };
        Ok(Value::Storage(Rc::new(StorageRef {
            kind: kind.clone(),
            bytes,
            key: key.clone(),
            numel: *numel,
        })))
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`.
    fn rebuild_tensor(&mut self, args: &[Value]) -> Result<Tensor, TensorProblem> {
        let invalid = |reason: &str| TensorProblem::Invalid(reason.to_string());
        if !(6..=7).contains(&args.len()) {
            return Err(TensorProblem::Invalid(format!(
                "_rebuild_tensor_v2 takes 6 or 7 arguments, the file gives {}",
                args.len()
            )));
        }
        let Value::Storage(storage) = &args[0] else {
            return Err(invalid(
                "the first argument of _rebuild_tensor_v2 is not a storage",
            ));
        };
        let Value::Int(offset) = args[1] else {
            return Err(invalid("the storage offset is not an int"));
        };
        let size = self
            .int_tuple(&args[2])
            .ok_or_else(|| invalid("the size is not a tuple of ints"))?;
        let stride = self
            .int_tuple(&args[3])
            .ok_or_else(|| invalid("the stride is not a tuple of ints"))?;
        let kind = match &storage.kind {
            Ok(kind) => *kind,
            Err(name) => return Err(TensorProblem::UnsupportedDtype(name.to_string())),
        };
        let bytes = storage
            .bytes
            .as_ref()
            .ok_or_else(|| invalid("its storage was not read"))?;
        let view = StridedView::new(storage.numel, offset, &size, &stride)
            .map_err(TensorProblem::Invalid)?;
        let torch = |e: tch::TchError| {
            TensorProblem::Invalid(format!(
                "libtorch: {}",
                crate::error::first_line(&e.to_string())
            ))
        };
        let base = match self.bases.entry((storage.key.clone(), kind)) {
            Entry::Occupied(base) => base.into_mut(),
            Entry::Vacant(slot) => slot.insert(typed_storage(bytes, kind).map_err(torch)?),
        };
        if let Some((start, end)) = view.contiguous_range() {
            // In bounds: StridedView checked the view against the storage, and the storage's
            // byte length against its element count when it was loaded.
            let t = base
                .f_narrow(0, start as i64, (end - start) as i64)
                .and_then(|t| t.f_view(size.as_slice()))
                .map_err(torch)?;
            // The first tensor over a whole storage takes its memory, with no copy; any other
            // gets a copy, so that tensors read never share memory (pruning one in place must
            // not change another, as tied weights loaded into a model do not).
            if start == 0 && end as i64 == storage.numel && self.taken.insert(storage.key.clone()) {
                return Ok(t);
            }
            let bytes = ((end - start) * kind.elt_size_in_bytes()) as u64;
            self.charge_copy(bytes).map_err(TensorProblem::Invalid)?;
            let mut copy = Tensor::f_empty_like(&t).map_err(torch)?;
            copy.f_copy_(&t).map_err(torch)?;
            return Ok(copy);
        }
        let bytes = (view.numel * kind.elt_size_in_bytes()) as u64;
        self.charge_copy(bytes).map_err(TensorProblem::Invalid)?;
        let base = &self.bases[&(storage.key.clone(), kind)];
        base.f_as_strided(size.as_slice(), stride.as_slice(), offset)
            .and_then(|view| view.f_contiguous())
            .map_err(torch)
    }

    fn int_tuple(&self, value: &Value) -> Option<Vec<i64>> {
        let Value::Obj(i) = value else { return None };
        let (Obj::Tuple(items) | Obj::List(items)) = self.arena.get(*i)? else {
            return None;
        };
        items
            .iter()
            .map(|v| match v {
                Value::Int(n) => Some(*n),
                _ => None,
            })
            .collect()
    }

    /// Picks the state dict out of the unpickled object and hands out its tensors.
    fn into_state_dict(mut self, root: Value) -> VmResult<Vec<(String, Tensor)>> {
        let not_a_state_dict = |reason: String| CheckpointError::NotAStateDict {
            path: self.path.to_path_buf(),
            reason,
        };
        let root_index = match &root {
            Value::Obj(i) if matches!(self.arena.get(*i), Some(Obj::Dict(_))) => *i,
            other => {
                return Err(not_a_state_dict(format!(
                    "the file holds {}, not a dict of tensors",
                    self.type_name(other)
                )))
            }
        };
        let (dict_index, key_prefix) = self.select_dict(root_index);
        let Some(Obj::Dict(dict)) = self.arena.get(dict_index) else {
            return Err(not_a_state_dict("the selected object is not a dict".into()));
        };

        let mut keys = Vec::with_capacity(dict.entries.len());
        for (key, value) in &dict.entries {
            let name = match key {
                Value::Str(s) => s.to_string(),
                other => {
                    return Err(not_a_state_dict(format!(
                        "it has a key that is {}; state dict keys are strings",
                        self.type_name(other)
                    )))
                }
            };
            let index = match value {
                Value::Obj(i) if self.is_tensor(value) => *i,
                other => {
                    return Err(not_a_state_dict(format!(
                        "the value of '{}' is {}, not a tensor",
                        shown(&format!("{key_prefix}{name}")),
                        self.type_name(other)
                    )))
                }
            };
            keys.push((name, index));
        }

        self.hand_out(keys, &key_prefix)
    }

    /// Takes the tensors at arena indices out under their names (`key_prefix` only goes into
    /// error messages). A tensor under several names is copied for all but the first; the
    /// copies are charged to the copy budget (see [`COPY_BUDGET_FACTOR`]) before any is made,
    /// so that a few bytes of pickle cannot ask for unbounded copies.
    fn hand_out(
        &mut self,
        keys: Vec<(String, usize)>,
        key_prefix: &str,
    ) -> VmResult<Vec<(String, Tensor)>> {
        let mut copies = 0u64;
        let mut seen = HashSet::new();
        for (_, index) in &keys {
            if let Some(Obj::Tensor(t)) = self.arena.get(*index) {
                if !seen.insert(*index) {
                    let bytes =
                        (t.numel() as u64).saturating_mul(t.kind().elt_size_in_bytes() as u64);
                    copies = copies.saturating_add(bytes);
                }
            }
        }
        self.charge_copy(copies)
            .map_err(|reason| CheckpointError::NotAStateDict {
                path: self.path.to_path_buf(),
                reason,
            })?;
        let mut out = Vec::with_capacity(keys.len());
        let mut handed_out = HashSet::new();
        for (name, index) in keys {
            let tensor = match &self.arena[index] {
                Obj::Tensor(t) if handed_out.insert(index) => t.shallow_clone(),
                // The same tensor object under two keys: each key gets its own copy.
                Obj::Tensor(t) => t
                    .f_detach_copy()
                    .map_err(|e| CheckpointError::torch(self.path, e))?,
                Obj::BadTensor(TensorProblem::UnsupportedDtype(dtype)) => {
                    return Err(CheckpointError::UnsupportedDtype {
                        path: self.path.to_path_buf(),
                        tensor: shown(&format!("{key_prefix}{name}")),
                        dtype: dtype.clone(),
                    })
                }
                Obj::BadTensor(TensorProblem::Invalid(reason)) => {
                    return Err(CheckpointError::InvalidTensor {
                        path: self.path.to_path_buf(),
                        tensor: shown(&format!("{key_prefix}{name}")),
                        reason: reason.clone(),
                    })
                }
                _ => {
                    return Err(CheckpointError::NotAStateDict {
                        path: self.path.to_path_buf(),
                        reason: format!(
                            "the value of '{}' is not a tensor",
                            shown(&format!("{key_prefix}{name}"))
                        ),
                    })
                }
            };
            out.push((name, tensor));
        }
        // The arena still holds the tensors handed out by shallow clone; dropping it here leaves
        // the returned tensors as the only owners.
        self.arena.clear();
        Ok(out)
    }

    /// The state dict of the TorchScript module `root`, as `torch.jit.load(path).state_dict()`
    /// gives it: per module (depth first, from the root), its parameters, then its buffers, each
    /// in slot order, then its submodules in slot order, under dotted names.
    ///
    /// A module's attributes are the dict its BUILD gave it, in slot order (TorchScript's pickler
    /// writes them so). Which of them are parameters and buffers is not in the pickle: `classes`
    /// reads it from the class definitions in the archive's `code/`. An attribute counts when it
    /// is listed there *and* holds a tensor (a `bias=False` Linear lists `bias`, holding None);
    /// submodules are the attributes holding objects of module classes. Other attributes, tensors
    /// included (plain tensor attributes are neither parameters nor buffers), are not state.
    fn into_module_state(
        mut self,
        root: Value,
        classes: &super::torchscript::ScriptClasses,
    ) -> VmResult<Vec<(String, Tensor)>> {
        let path = self.path;
        let not_a_module = |reason: String| CheckpointError::NotAStateDict {
            path: path.to_path_buf(),
            reason,
        };
        let root_index = match &root {
            Value::Obj(i) if matches!(self.arena.get(*i), Some(Obj::Object { .. })) => *i,
            other => {
                return Err(not_a_module(format!(
                    "data.pkl holds {}, not a TorchScript module",
                    self.type_name(other)
                )))
            }
        };

        enum Step {
            Enter(usize, String),
            Leave(usize),
        }
        let mut steps = vec![Step::Enter(root_index, String::new())];
        // Modules being walked: a module inside itself would make Python recurse forever.
        let mut on_path = HashSet::new();
        let mut steps_taken = 0usize;
        let mut keys: Vec<(String, usize)> = Vec::new();
        let mut positions: HashMap<String, usize> = HashMap::new();
        while let Some(step) = steps.pop() {
            let (index, prefix) = match step {
                Step::Leave(index) => {
                    on_path.remove(&index);
                    continue;
                }
                Step::Enter(index, prefix) => (index, prefix),
            };
            let module = if prefix.is_empty() {
                "the root module".to_string()
            } else {
                format!("module '{}'", shown(prefix.trim_end_matches('.')))
            };
            steps_taken += 1;
            if !on_path.insert(index) {
                return Err(not_a_module(format!("{module} contains itself")));
            }
            steps.push(Step::Leave(index));
            let Some(Obj::Object { class, state }) = self.arena.get(index) else {
                return Err(not_a_module(format!("{module} is not an object")));
            };
            let Some(def) = classes.module(path, class)? else {
                return Err(not_a_module(format!(
                    "{module} is an object of class {}, which is not a module",
                    shown(class)
                )));
            };
            let Some(state) = state else {
                return Err(not_a_module(format!(
                    "{module} (class {}) is never given its attributes",
                    shown(class)
                )));
            };
            let attributes = match state {
                Value::Obj(d) => match self.arena.get(*d) {
                    Some(Obj::Dict(dict)) => Some(dict),
                    _ => None,
                },
                _ => None,
            };
            let Some(attributes) = attributes else {
                return Err(CheckpointError::Unsupported {
                    path: path.to_path_buf(),
                    reason: format!(
                        "{module} (class {}) is saved as {} by its own __getstate__, which only its code can read",
                        shown(class),
                        self.type_name(state)
                    ),
                });
            };
            steps_taken = steps_taken.saturating_add(attributes.entries.len());
            if steps_taken > MAX_WALK_STEPS {
                return Err(not_a_module(format!(
                    "the module tree has more than {MAX_WALK_STEPS} modules and attributes"
                )));
            }
            let mut names = Vec::with_capacity(attributes.entries.len());
            for (key, _) in &attributes.entries {
                match key {
                    Value::Str(name) if prefix.len() + name.len() > MAX_NAME_BYTES => {
                        return Err(not_a_module(format!(
                            "{module} has an attribute whose dotted name is longer than {MAX_NAME_BYTES} bytes"
                        )))
                    }
                    Value::Str(name) => names.push(name.clone()),
                    other => {
                        return Err(not_a_module(format!(
                            "{module} has an attribute named by {}",
                            self.type_name(other)
                        )))
                    }
                }
            }
            let mut add = |name: String, tensor: usize| match positions.entry(name) {
                // Python's state dict is a dict: a name given twice keeps its first place.
                Entry::Occupied(at) => keys[*at.get()].1 = tensor,
                Entry::Vacant(slot) => {
                    keys.push((slot.key().clone(), tensor));
                    slot.insert(keys.len() - 1);
                }
            };
            for listed in [&def.parameters, &def.buffers] {
                for (name, (_, value)) in names.iter().zip(&attributes.entries) {
                    if let Value::Obj(tensor) = value {
                        if listed.contains(&**name) && self.is_tensor(value) {
                            add(format!("{prefix}{name}"), *tensor);
                        }
                    }
                }
            }
            let mut children = Vec::new();
            for (name, (_, value)) in names.iter().zip(&attributes.entries) {
                if let Value::Obj(child) = value {
                    if let Some(Obj::Object { class, .. }) = self.arena.get(*child) {
                        if classes.module(path, class)?.is_some() {
                            children.push(Step::Enter(*child, format!("{prefix}{name}.")));
                        }
                    }
                }
            }
            steps.extend(children.into_iter().rev());
        }
        self.hand_out(keys, "")
    }

    /// The root dict if all its values are tensors, else the first [`NESTED_KEYS`] entry that is
    /// a dict (with the prefix its keys are reported under), else the root, whose first
    /// non-tensor value is then reported.
    fn select_dict(&self, root: usize) -> (usize, String) {
        let Some(Obj::Dict(dict)) = self.arena.get(root) else {
            return (root, String::new());
        };
        if dict.entries.iter().all(|(_, v)| self.is_tensor(v)) {
            return (root, String::new());
        }
        for wrapper in NESTED_KEYS {
            if let Some(Value::Obj(i)) = dict.get(wrapper) {
                if matches!(self.arena.get(*i), Some(Obj::Dict(_))) {
                    return (*i, format!("{wrapper}."));
                }
            }
        }
        (root, String::new())
    }
}

/// An `as_strided` view checked against its storage, all in `i64` with overflow checks, so that
/// neither the byte slicing nor libtorch ever sees an out-of-bounds request.
struct StridedView {
    offset: usize,
    numel: usize,
    contiguous: bool,
}

impl StridedView {
    fn new(
        storage_numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> Result<StridedView, String> {
        let shape = || format!("size {size:?}, stride {stride:?}, storage offset {offset}");
        if size.len() != stride.len() {
            return Err(format!("{}: sizes and strides differ in length", shape()));
        }
        if offset < 0 || size.iter().any(|&s| s < 0) || stride.iter().any(|&s| s < 0) {
            return Err(format!("{}: negative values are not valid", shape()));
        }
        let numel = size
            .iter()
            .try_fold(1i64, |n, &s| n.checked_mul(s))
            .ok_or_else(|| format!("{}: the element count overflows", shape()))?;
        let mut contiguous = true;
        let mut expected = 1i64;
        for (&s, &st) in size.iter().zip(stride).rev() {
            if s != 1 && st != expected {
                contiguous = false;
            }
            expected = expected.saturating_mul(s);
        }
        // More elements than the storage holds: a view that repeats elements (an expansion such as
        // `x.expand(n, m)`, PyTorch keeps it a view of a few bytes). Reading it would materialize
        // every repeat, so it is refused.
        if numel > storage_numel {
            return Err(format!(
                "{}: {numel} elements over a storage of {storage_numel} (an expanded view, strides of 0): refused rather than materialized; save x.contiguous() or x.clone() instead",
                shape()
            ));
        }
        if numel > 0 {
            let last = size
                .iter()
                .zip(stride)
                .try_fold(offset, |acc, (&s, &st)| {
                    (s - 1).checked_mul(st).and_then(|d| acc.checked_add(d))
                })
                .ok_or_else(|| format!("{}: the extent overflows", shape()))?;
            if last >= storage_numel {
                return Err(format!(
                    "{} reaches element {last}, past the end of its storage of {storage_numel} elements",
                    shape()
                ));
            }
        }
        let to_usize = |v: i64| usize::try_from(v).map_err(|_| format!("{}: too large", shape()));
        Ok(StridedView {
            offset: to_usize(offset)?,
            numel: to_usize(numel)?,
            contiguous,
        })
    }

    /// The element range of a view that is a plain slice of its storage.
    fn contiguous_range(&self) -> Option<(usize, usize)> {
        if self.numel == 0 {
            return Some((0, 0));
        }
        self.contiguous
            .then(|| (self.offset, self.offset + self.numel))
    }
}

/// A storage's bytes as its elements, without a copy. Python's `bool` storages hold 0 or 1; any
/// other byte would make a bool tensor whose value depends on the kernel reading it, so those are
/// normalised (a copy, of what is usually a small mask).
fn typed_storage(bytes: &Tensor, kind: Kind) -> Result<Tensor, tch::TchError> {
    match kind {
        Kind::Bool => bytes.f_ne(0),
        _ => bytes.f_view_dtype(kind),
    }
}

/// Little-endian two's complement, as LONG1 and LONG4 store it.
fn decode_long(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let fill = if negative { 0xff } else { 0x00 };
    let (low, high) = bytes.split_at(bytes.len().min(8));
    let mut buf = [fill; 8];
    buf[..low.len()].copy_from_slice(low);
    let value = i64::from_le_bytes(buf);
    // Beyond 8 bytes the value fits only if the rest is sign extension of the low 8.
    if high.iter().all(|&b| b == fill) && (value < 0) == negative {
        Value::Int(value)
    } else {
        Value::BigInt
    }
}

fn opcode_name(op: u8) -> &'static str {
    match op {
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'p' => "PUT",
        b'g' => "GET",
        b'i' => "INST",
        b'o' => "OBJ",
        b'P' => "PERSID",
        0x82..=0x84 => "EXT",
        0x92 => "NEWOBJ_EX",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "not used by torch.save",
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::HostTensor;
    use super::*;
    use std::path::PathBuf;

    /// Serves every storage as the byte pattern 0, 1, 2, ... so views of it are recognisable.
    pub(in crate::checkpoint) struct PatternStorages;

    impl StorageSource for PatternStorages {
        fn load(&mut self, key: &str, nbytes: u64) -> Result<Tensor, CheckpointError> {
            // Mutated pickles declare arbitrary sizes: refuse the absurd ones, as the zip reader
            // does for sizes its entries do not have.
            if nbytes > 1 << 20 {
                return Err(CheckpointError::CorruptArchive {
                    path: PathBuf::from("test"),
                    reason: format!("storage {key} too large"),
                });
            }
            Ok(Tensor::from_slice(
                &(0..nbytes).map(|i| i as u8).collect::<Vec<u8>>(),
            ))
        }
    }

    fn unpickle(data: &[u8]) -> Result<Vec<(String, Tensor)>, CheckpointError> {
        let path = Path::new("data.pkl");
        let mut storages = PatternStorages;
        let mut vm = Unpickler::new(data, path, &mut storages);
        let root = vm.run()?;
        vm.into_state_dict(root)
    }

    /// `torch.save(sd, p, pickle_protocol=2)` of the state dict of
    /// `Sequential(Linear(2, 1), BatchNorm1d(1))` plus `sd["t"] = torch.arange(6.).reshape(2, 3).t()`.
    const PROTO2: &[u8] = b"\
        \x80\x02ccollections\x0aOrderedDict\x0aq\x00\x29Rq\
        \x01\x28X\x08\x00\x00\x000.weightq\x02ctorch._utils\x0a_\
        rebuild_tensor_v2\x0aq\x03\x28\x28X\x07\x00\x00\x00stora\
        geq\x04ctorch\x0aFloatStorage\x0aq\x05X\x01\x00\x00\x000\
        q\x06X\x03\x00\x00\x00cpuq\x07K\x02tq\x08QK\x00K\x01K\x02\x86q\x09K\x02K\x01\x86\
        q\x0a\x89h\x00\x29Rq\x0btq\x0cRq\x0dX\x06\x00\x00\x000.biasq\x0eh\x03\x28\x28\
        h\x04h\x05X\x01\x00\x00\x001q\x0fh\x07K\x01tq\x10QK\x00K\x01\x85q\x11K\x01\x85q\x12\
        \x89h\x00\x29Rq\x13tq\x14Rq\x15X\x08\x00\x00\x001.weightq\x16h\x03\x28\x28\
        h\x04h\x05X\x01\x00\x00\x002q\x17h\x07K\x01tq\x18QK\x00K\x01\x85q\x19K\x01\x85q\x1a\
        \x89h\x00\x29Rq\x1btq\x1cRq\x1dX\x06\x00\x00\x001.biasq\x1eh\x03\x28\x28h\x04\
        h\x05X\x01\x00\x00\x003q\x1fh\x07K\x01tq\x20QK\x00K\x01\x85q\x21K\x01\x85q\x22\x89h\
        \x00\x29Rq\x23tq\x24Rq\x25X\x0e\x00\x00\x001.running_meanq\x26\
        h\x03\x28\x28h\x04h\x05X\x01\x00\x00\x004q\x27h\x07K\x01tq\x28QK\x00K\x01\x85q\x29K\
        \x01\x85q\x2a\x89h\x00\x29Rq\x2btq\x2cRq\x2dX\x0d\x00\x00\x001.running_\
        varq.h\x03\x28\x28h\x04h\x05X\x01\x00\x00\x005q\x2fh\x07K\x01tq0QK\x00K\
        \x01\x85q1K\x01\x85q2\x89h\x00\x29Rq3tq4Rq5X\x15\x00\x00\x001.num\
        _batches_trackedq6h\x03\x28\x28h\x04ctorch\x0aL\
        ongStorage\x0aq7X\x01\x00\x00\x006q8h\x07K\x01tq9QK\x00\x29\
        \x29\x89h\x00\x29Rq\x3atq\x3bRq\x3cX\x01\x00\x00\x00tq\x3dh\x03\x28\x28h\x04h\x05X\x01\
        \x00\x00\x007q\x3eh\x07K\x06tq\x3fQK\x00K\x03K\x02\x86q\x40K\x01K\x03\x86qA\x89h\
        \x00\x29RqBtqCRqDu\x7dqEX\x09\x00\x00\x00_metadataqFh\
        \x00\x29RqG\x28X\x00\x00\x00\x00qH\x7dqIX\x07\x00\x00\x00versionqJK\x01\
        sX\x01\x00\x00\x000qK\x7dqLhJK\x01sX\x01\x00\x00\x001qM\x7dqNhJK\x02\
        susb.\
        ";
    /// `torch.save(sd, p, pickle_protocol=4)` of the state dict of
    /// `Sequential(Linear(2, 1), BatchNorm1d(1))` plus `sd["t"] = torch.arange(6.).reshape(2, 3).t()`.
    const PROTO4: &[u8] = b"\
        \x80\x04\x95Y\x02\x00\x00\x00\x00\x00\x00\x8c\x0bcollections\x94\x8c\x0bOrder\
        edDict\x94\x93\x94\x29R\x94\x28\x8c\x080.weight\x94\x8c\x0ctorch.\
        _utils\x94\x8c\x12_rebuild_tensor_v2\x94\x93\x94\x28\x28\
        \x8c\x07storage\x94\x8c\x05torch\x94\x8c\x0cFloatStorage\
        \x94\x93\x94\x8c\x010\x94\x8c\x03cpu\x94K\x02t\x94QK\x00K\x01K\x02\x86\x94K\x02K\x01\x86\x94\
        \x89h\x02\x29R\x94t\x94R\x94\x8c\x060.bias\x94h\x07\x28\x28h\x08h\x0b\x8c\x011\x94h\
        \x0dK\x01t\x94QK\x00K\x01\x85\x94K\x01\x85\x94\x89h\x02\x29R\x94t\x94R\x94\x8c\x081.we\
        ight\x94h\x07\x28\x28h\x08h\x0b\x8c\x012\x94h\x0dK\x01t\x94QK\x00K\x01\x85\x94K\x01\
        \x85\x94\x89h\x02\x29R\x94t\x94R\x94\x8c\x061.bias\x94h\x07\x28\x28h\x08h\x0b\x8c\x013\
        \x94h\x0dK\x01t\x94QK\x00K\x01\x85\x94K\x01\x85\x94\x89h\x02\x29R\x94t\x94R\x94\x8c\x0e1.\
        running_mean\x94h\x07\x28\x28h\x08h\x0b\x8c\x014\x94h\x0dK\x01t\x94Q\
        K\x00K\x01\x85\x94K\x01\x85\x94\x89h\x02\x29R\x94t\x94R\x94\x8c\x0d1.running_\
        var\x94h\x07\x28\x28h\x08h\x0b\x8c\x015\x94h\x0dK\x01t\x94QK\x00K\x01\x85\x94K\x01\x85\
        \x94\x89h\x02\x29R\x94t\x94R\x94\x8c\x151.num_batches_track\
        ed\x94h\x07\x28\x28h\x08h\x09\x8c\x0bLongStorage\x94\x93\x94\x8c\x016\x94h\
        \x0dK\x01t\x94QK\x00\x29\x29\x89h\x02\x29R\x94t\x94R\x94\x8c\x01t\x94h\x07\x28\x28h\x08h\x0b\
        \x8c\x017\x94h\x0dK\x06t\x94QK\x00K\x03K\x02\x86\x94K\x01K\x03\x86\x94\x89h\x02\x29R\x94t\
        \x94R\x94u\x7d\x94\x8c\x09_metadata\x94h\x02\x29R\x94\x28\x8c\x00\x94\x7d\x94\x8c\x07v\
        ersion\x94K\x01s\x8c\x010\x94\x7d\x94hQK\x01s\x8c\x011\x94\x7d\x94hQK\x02s\
        usb.\
        ";

    const KEYS: [&str; 8] = [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
        "t",
    ];

    #[test]
    fn reads_real_pickles_of_both_protocols() {
        for pickle in [PROTO2, PROTO4] {
            let sd = unpickle(pickle).expect("a valid state dict");
            let keys: Vec<&str> = sd.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, KEYS);
            assert_eq!(sd[0].1.size(), [1, 2]);
            assert_eq!(sd[6].1.kind(), Kind::Int64);
            assert_eq!(sd[6].1.size(), Vec::<i64>::new());
            let bytes: Vec<u8> = (0..24).collect();
            let expected = Tensor::f_from_data_size(&bytes, &[2, 3], Kind::Float)
                .and_then(|t| t.tr().f_contiguous())
                .expect("reference");
            let t = &sd[7].1;
            assert_eq!(t.size(), [3, 2]);
            assert!(t.is_contiguous());
            assert!(t.equal(&expected), "{t} vs {expected}");
        }
    }

    #[test]
    fn every_prefix_of_a_pickle_is_an_error_not_a_panic() {
        for pickle in [PROTO2, PROTO4] {
            for len in 0..pickle.len() {
                let err = unpickle(&pickle[..len]).expect_err("a truncated pickle must fail");
                let message = err.to_string();
                assert!(!message.contains('\n'), "{message}");
                assert!(message.starts_with("data.pkl: "), "{message}");
            }
        }
    }

    #[test]
    fn byte_flips_never_panic() {
        for pickle in [PROTO2, PROTO4] {
            let mut ok = 0;
            for i in 0..pickle.len() {
                for mask in [0x01u8, 0x02, 0x10, 0x80, 0xff] {
                    let mut mutated = pickle.to_vec();
                    mutated[i] ^= mask;
                    match unpickle(&mutated) {
                        Ok(_) => ok += 1,
                        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
                    }
                }
            }
            // Flips inside names or values still give a state dict: the test did reach the
            // end of the pickle with mutated input, not only its first opcodes.
            assert!(ok > 0);
        }
    }

    #[test]
    fn deep_nesting_and_cycles_do_not_recurse() {
        // A million nested 1-tuples: a recursive drop would overflow the stack.
        let mut deep = b"\x80\x02)".to_vec();
        deep.extend(std::iter::repeat_n(0x85, 1_000_000));
        deep.push(b'.');
        let err = unpickle(&deep).expect_err("a tuple is not a state dict");
        assert!(err.to_string().contains("holds a tuple"), "{err}");

        // A list that contains itself.
        let err = unpickle(b"\x80\x02]q\x00h\x00a.").expect_err("a list is not a state dict");
        assert!(err.to_string().contains("holds a list"), "{err}");
    }

    #[test]
    fn forbidden_globals_are_named_not_called() {
        let err = unpickle(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.").expect_err("refused");
        assert!(
            matches!(&err, CheckpointError::ForbiddenGlobal { global, .. } if global == "os.system"),
            "{err}"
        );
        let err = unpickle(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.").expect_err("refused");
        assert!(err.to_string().contains("`builtins.eval`"), "{err}");
        // A storage type name is allowed, but never callable.
        let err = unpickle(b"\x80\x02ctorch\nFloatStorage\n)R.").expect_err("refused");
        assert!(err.to_string().contains("cannot call"), "{err}");
        // TorchScript classes and helpers are only known in TorchScript mode.
        let err = unpickle(b"\x80\x02c__torch__\nNet\n)\x81}b.").expect_err("refused");
        assert!(err.to_string().contains("`__torch__.Net`"), "{err}");
        let err = unpickle(b"\x80\x02ctorch.jit._pickle\nbuild_intlist\n.").expect_err("refused");
        assert!(
            err.to_string()
                .contains("`torch.jit._pickle.build_intlist`"),
            "{err}"
        );
    }

    #[test]
    fn names_from_the_pickle_cannot_break_the_message_line() {
        let err = unpickle(b"\x80\x04\x8c\x03a\nb\x8c\x03c\nd\x93.").expect_err("refused");
        assert!(err.to_string().contains("`a\\nb.c\\nd`"), "{err}");
        let err = unpickle(b"\x80\x02}X\x04\x00\x00\x00k\ney\x4b\x01s.").expect_err("an int value");
        assert!(err.to_string().contains("'k\\ney' is an int"), "{err}");
    }

    #[test]
    fn unsupported_opcodes_and_protocols_are_errors() {
        let err = unpickle(b"\x80\x02I1\n.").expect_err("protocol 0 INT");
        assert!(err.to_string().contains("opcode 0x49 (INT)"), "{err}");
        let err = unpickle(b"\x80\x06}.").expect_err("protocol 6");
        assert!(err.to_string().contains("protocol 6"), "{err}");
        let err = unpickle(b"\x80\x02h\x05.").expect_err("memo miss");
        assert!(err.to_string().contains("memo entry 5"), "{err}");
        let err = unpickle(b"\x80\x02(.").expect_err("STOP at a mark");
        assert!(err.to_string().contains("stack underflow"), "{err}");
    }

    #[test]
    fn sparse_memo_indices_and_empty_dicts() {
        let sd =
            unpickle(b"\x80\x02}r\xff\xff\xff\xff.").expect("an empty dict is an empty state dict");
        assert!(sd.is_empty());
    }

    #[test]
    fn dict_setitem_replaces_in_place() {
        let mut dict = Dict::default();
        dict.insert(Value::Str("a".into()), Value::Int(1));
        dict.insert(Value::Str("b".into()), Value::Int(2));
        dict.insert(Value::Str("a".into()), Value::Int(3));
        let entries: Vec<(String, i64)> = dict
            .entries
            .iter()
            .map(|(k, v)| match (k, v) {
                (Value::Str(k), Value::Int(v)) => (k.to_string(), *v),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(entries, [("a".to_string(), 3), ("b".to_string(), 2)]);
    }

    #[test]
    fn longs_decode_with_sign_and_width() {
        let int = |bytes: &[u8]| match decode_long(bytes) {
            Value::Int(v) => Some(v),
            _ => None,
        };
        assert_eq!(int(&[]), Some(0));
        assert_eq!(int(&[0xff]), Some(-1));
        assert_eq!(int(&[0x80, 0x00]), Some(128));
        assert_eq!(int(&i64::MIN.to_le_bytes()), Some(i64::MIN));
        assert_eq!(
            int(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x00]),
            Some(i64::MAX)
        );
        assert_eq!(int(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0x00]), None);
        assert_eq!(int(&[0, 0, 0, 0, 0, 0, 0, 0, 0x01]), None);
    }

    #[test]
    fn strided_views_are_checked_against_their_storage() {
        let view = StridedView::new(6, 0, &[3, 2], &[1, 3]).expect("in bounds");
        assert_eq!(view.contiguous_range(), None);
        let view = StridedView::new(6, 2, &[2, 2], &[2, 1]).expect("in bounds");
        assert_eq!(view.contiguous_range(), Some((2, 6)));
        // Size-1 dims may have any stride; empty views any offset.
        let view = StridedView::new(6, 1, &[1, 5], &[99, 1]).expect("in bounds");
        assert_eq!(view.contiguous_range(), Some((1, 6)));
        let view = StridedView::new(0, 7, &[0, 3], &[3, 1]).expect("empty");
        assert_eq!(view.contiguous_range(), Some((0, 0)));
        // A broadcast (stride 0) view is read while it has no more elements than its storage;
        // beyond, it is an expansion that would be materialized, and is refused.
        assert!(StridedView::new(4, 0, &[4], &[0]).is_ok());
        let expanded = StridedView::new(1, 0, &[16384, 16384], &[0, 0]).err();
        assert!(expanded.is_some_and(|e| e.contains("expanded view")));

        let err = |r: Result<StridedView, String>| r.err().expect("rejected");
        assert!(err(StridedView::new(6, 1, &[2, 3], &[3, 1])).contains("reaches element 6"));
        assert!(err(StridedView::new(6, 0, &[2], &[-1])).contains("negative"));
        assert!(err(StridedView::new(6, 0, &[2], &[1, 1])).contains("differ in length"));
        assert!(err(StridedView::new(6, 0, &[i64::MAX, 4], &[1, 1])).contains("overflows"));
        assert!(err(StridedView::new(6, 0, &[2, i64::MAX], &[i64::MAX, 1])).contains("overflows"));
    }

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
    }

    fn host(kind: Kind, size: &[i64]) -> HostTensor {
        let zeros = Tensor::zeros(size, (kind, tch::Device::Cpu));
        HostTensor::of(Path::new("t"), "t", &zeros).unwrap()
    }

    #[test]
    fn the_writer_pickle_reads_back() {
        let hosts = [
            host(Kind::Float, &[2, 3]),
            host(Kind::Int64, &[]),
            host(Kind::Bool, &[0]),
        ];
        let pickle = state_dict_pickle(&["w", "n", "e"], &hosts);
        let sd = unpickle(&pickle).expect("reads back");
        let got: Vec<(&str, Vec<i64>, Kind)> = sd
            .iter()
            .map(|(k, t)| (k.as_str(), t.size(), t.kind()))
            .collect();
        assert_eq!(
            got,
            [
                ("w", vec![2, 3], Kind::Float),
                ("n", vec![], Kind::Int64),
                ("e", vec![0], Kind::Bool)
            ]
        );
        assert_eq!(contiguous_strides(&[2, 0, 3]), [3, 3, 1]);
    }
}
