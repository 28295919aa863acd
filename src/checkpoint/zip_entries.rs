//! Opening a zip archive so that this crate reads exactly the entries PyTorch reads.
//!
//! PyTorch (`torch.load`) and libtorch (`torch.jit.load`, tch's `CModule::load`) read archives
//! through `PyTorchStreamReader` (caffe2/serialize), which uses miniz; this crate reads them
//! through the `zip` crate. The two parse a zip differently where a file is crafted to make
//! them: the `zip` crate renames an entry by its Info-ZIP Unicode Path extra field (0x7075) and
//! decodes names without the UTF-8 flag as code page 437, miniz looks entries up by their raw
//! bytes; the `zip` crate takes zip64 sizes whenever the extra field is long enough, miniz only
//! in place of 32-bit fields that are 0xFFFFFFFF; the `zip` crate falls back to an earlier end
//! record, and detects data prepended to the archive, miniz does neither; the `zip` crate keeps
//! the *last* of two entries named alike, miniz finds one of them, comparing names without
//! regard to ASCII case. Any of these lets a file show one program or one set of weights to a
//! checker and another to PyTorch.
//!
//! So [`open_archive`] reads the central directory itself, by miniz's rules
//! (`mz_zip_reader_read_central_dir` and `mz_zip_file_stat_internal` of miniz 3.0.2, which
//! PyTorch vendors), and refuses the archive unless the `zip` crate sees the same thing:
//!
//! * the end record is the last signature at least 22 bytes before the end of the file, found
//!   scanning back at most about 64 KiB as miniz scans; the zip64 end record counts when its
//!   locator sits right before it; the central directory starts where they say, with no shift;
//! * every entry (in the central directory's order) has, in both readers, the same position in
//!   the directory, the same name byte for byte (the raw bytes: an entry renamed by a 0x7075
//!   field, or whose name is not plain UTF-8 as stored, is refused), the same local header
//!   offset, sizes, CRC-32 and method (stored or deflated only; the zip64 extra field only
//!   replaces 32-bit fields that are 0xFFFFFFFF, and only its first occurrence counts);
//! * no two entries have names equal but for ASCII case; no entry is encrypted; a stored entry's
//!   two sizes are equal (miniz refuses otherwise);
//! * the local header, which both read only for the length of its name and extra field, is
//!   found at the same offset by both, so both find the same data.
//!
//! Lookups by name then agree: a name this crate finds is the one raw name miniz finds (names
//! are unique ignoring case), and a name only miniz finds (spelled in another case) is reported
//! missing, never replaced by another entry. Readers also take the folder all records sit under
//! from the first entry, as `PyTorchStreamReader` does (see
//! [`ZipLayout`](super::archive::ZipLayout)). The Unicode *comment* field (0x6375) only renames
//! a comment, which no reader uses: it is harmless and allowed.

use super::error::{first_line, shown, CheckpointError};
use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// What the compressed entries of one archive may expand to, all together: this many times the
/// file's size, or [`INFLATE_FLOOR`] if more. `torch.save`, `torch.jit.save` and
/// `torch.export.save` store every entry uncompressed, so a real model never needs inflating;
/// deflate reaches about 1000 times, so without a bound a small file could claim gigabytes, and
/// a bound per entry alone is multiplied by the number of entries (32 entries of 128 MiB of
/// zeros fit in a 12.5 MB file).
const INFLATE_FACTOR: u64 = 32;
const INFLATE_FLOOR: u64 = 16 << 20;

/// Signatures and sizes of the records miniz reads.
const END_SIG: u32 = 0x0605_4b50;
const END_LEN: u64 = 22;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_LOCATOR_LEN: u64 = 20;
const ZIP64_END_SIG: u32 = 0x0606_4b50;
const ZIP64_END_LEN: u64 = 56;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const CENTRAL_LEN: usize = 46;
const LOCAL_LEN: u64 = 30;
/// The zip64 extended information extra field.
const ZIP64_EXTRA: u16 = 0x0001;
const MAX32: u64 = u32::MAX as u64;

/// One entry of the central directory, as miniz reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEntry {
    /// Where its record sits in the file.
    pub(crate) record: u64,
    /// The name's raw bytes: what miniz compares names with.
    pub(crate) name: Vec<u8>,
    pub(crate) flags: u16,
    pub(crate) method: u16,
    pub(crate) crc32: u32,
    pub(crate) compressed: u64,
    pub(crate) uncompressed: u64,
    pub(crate) local_header: u64,
}

/// Opens `reader` as a zip archive whose entries this crate's zip reader and PyTorch's (miniz)
/// read alike (see the module docs), refusing any other.
pub(crate) fn open_archive<R: Read + Seek>(
    reader: R,
    path: &Path,
) -> Result<zip::ZipArchive<R>, CheckpointError> {
    let corrupt = |e: zip::result::ZipError| CheckpointError::CorruptArchive {
        path: path.to_path_buf(),
        reason: first_line(&e.to_string()),
    };
    let archive = zip::ZipArchive::new(reader).map_err(corrupt)?;
    // The zip crate gives no access to its reader but by taking it back; the archive is parsed
    // again afterwards (a cost per entry, not per byte).
    let mut reader = archive.into_inner();
    flatbuffer_magic(&mut reader, path)?;
    let (start, entries) = miniz_directory(&mut reader, path)?;
    let file_len = reader
        .seek(SeekFrom::End(0))
        .map_err(|e| CheckpointError::io(path, "cannot read", e))?;
    let mut seen = HashSet::with_capacity(entries.len());
    for entry in &entries {
        if !seen.insert(entry.name.to_ascii_lowercase()) {
            return Err(CheckpointError::DuplicateEntry {
                path: path.to_path_buf(),
                entry: shown(&String::from_utf8_lossy(&entry.name)),
            });
        }
    }
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| CheckpointError::io(path, "cannot read", e))?;
    let mut archive = zip::ZipArchive::new(reader).map_err(corrupt)?;
    agree(&mut archive, start, &entries, path)?;
    check_sizes(&entries, file_len, path)?;
    Ok(archive)
}

/// Refuses a file whose bytes 4 to 8 are `PTMF`: libtorch's loader (`torch::jit::load`) checks
/// for that mark before the zip's, and loads such a file as a flatbuffer (mobile) module, code
/// and all, whatever zip follows. A zip's own bytes there are its version and flags, never
/// those letters, so a file that has both is made to be read two ways.
fn flatbuffer_magic<R: Read + Seek>(reader: &mut R, path: &Path) -> Result<(), CheckpointError> {
    let mut head = [0u8; 8];
    reader
        .seek(SeekFrom::Start(0))
        .and_then(|_| reader.read_exact(&mut head))
        .map_err(|e| CheckpointError::io(path, "cannot read", e))?;
    if &head[4..] == b"PTMF" {
        return Err(CheckpointError::AmbiguousArchive {
            path: path.to_path_buf(),
            reason: "is also a flatbuffer module (PTMF at byte 4), which libtorch's loader reads instead of the zip".into(),
        });
    }
    Ok(())
}

/// Refuses an archive whose entries declare more bytes than it can hold, before anything is
/// read: a stored entry more than the file's size, or compressed entries that would expand, all
/// together, beyond [`INFLATE_FACTOR`] times the file (a decompression bomb). Every reader holds
/// an entry to the size its header declares (and the zip reader checks the CRC at its end), so
/// the readers after this one may reserve an entry's declared size up front.
fn check_sizes(entries: &[RawEntry], file_len: u64, path: &Path) -> Result<(), CheckpointError> {
    let refused = |reason: String| CheckpointError::CorruptArchive {
        path: path.to_path_buf(),
        reason,
    };
    let shown_name = |entry: &RawEntry| shown(&String::from_utf8_lossy(&entry.name));
    if let Some(entry) = entries
        .iter()
        .find(|e| e.method == 0 && e.uncompressed > file_len)
    {
        return Err(refused(format!(
            "entry {} is stored as {} bytes, in a file of {file_len}",
            shown_name(entry),
            entry.uncompressed
        )));
    }
    let compressed: Vec<&RawEntry> = entries.iter().filter(|e| e.method != 0).collect();
    let total = compressed
        .iter()
        .fold(0u64, |sum, e| sum.saturating_add(e.uncompressed));
    let budget = file_len.saturating_mul(INFLATE_FACTOR).max(INFLATE_FLOOR);
    match compressed.iter().max_by_key(|e| e.uncompressed) {
        Some(largest) if total > budget => Err(refused(format!(
            "its {} compressed entries (the largest, {}, from {} bytes) expand to {total} bytes, more than {INFLATE_FACTOR} times the file's {file_len} (a decompression bomb?); refused: torch.save stores entries uncompressed",
            compressed.len(),
            shown_name(largest),
            largest.compressed
        ))),
        _ => Ok(()),
    }
}

/// A `zip` crate error, as the one-line reason of a corrupt archive.
pub(super) fn corrupt(path: &Path, err: zip::result::ZipError) -> CheckpointError {
    CheckpointError::CorruptArchive {
        path: path.to_path_buf(),
        reason: first_line(&err.to_string()),
    }
}

/// Refuses the archive unless the zip crate's view of it is `entries`, the directory at `start`.
fn agree<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    start: u64,
    entries: &[RawEntry],
    path: &Path,
) -> Result<(), CheckpointError> {
    let differ = |reason: String| CheckpointError::AmbiguousArchive {
        path: path.to_path_buf(),
        reason,
    };
    if archive.len() != entries.len() || archive.central_directory_start() != start {
        return Err(differ(format!(
            "has a central directory of {} entries at offset {start} as PyTorch reads it, and of {} at offset {} as the zip reader does",
            entries.len(),
            archive.len(),
            archive.central_directory_start()
        )));
    }
    for (index, raw) in entries.iter().enumerate() {
        let name = String::from_utf8_lossy(&raw.name);
        if raw.flags & 0x41 != 0 {
            return Err(CheckpointError::Unsupported {
                path: path.to_path_buf(),
                reason: format!("entry {} is encrypted", shown(&name)),
            });
        }
        let method = match raw.method {
            0 => zip::CompressionMethod::Stored,
            8 => zip::CompressionMethod::Deflated,
            other => {
                return Err(CheckpointError::Unsupported {
                    path: path.to_path_buf(),
                    reason: format!(
                        "entry {} is compressed by method {other}; PyTorch reads only stored and deflated entries",
                        shown(&name)
                    ),
                })
            }
        };
        let entry = archive.by_index_raw(index).map_err(|e| corrupt(path, e))?;
        if entry.name().as_bytes() != raw.name.as_slice() {
            return Err(differ(format!(
                "names an entry '{}' in its directory (the name PyTorch looks it up by) and '{}' elsewhere (a Unicode Path extra field, or another code page: the name other readers give it)",
                shown(&name),
                shown(entry.name())
            )));
        }
        let theirs = (
            entry.central_header_start(),
            entry.header_start(),
            entry.compressed_size(),
            entry.size(),
            entry.crc32(),
            entry.compression(),
        );
        let ours = (
            raw.record,
            raw.local_header,
            raw.compressed,
            raw.uncompressed,
            raw.crc32,
            method,
        );
        if theirs != ours {
            return Err(differ(format!(
                "describes entry {} two ways (record, local header, sizes, CRC, method: {ours:?} as PyTorch reads them, {theirs:?} as the zip reader does)",
                shown(&name)
            )));
        }
    }
    Ok(())
}

/// The central directory as miniz reads it: where it starts, and its entries in order. Errors
/// where miniz fails to open the archive (a few more: values it would only trip on later).
pub(crate) fn miniz_directory<R: Read + Seek>(
    reader: &mut R,
    path: &Path,
) -> Result<(u64, Vec<RawEntry>), CheckpointError> {
    let bad = |reason: &str| CheckpointError::CorruptArchive {
        path: path.to_path_buf(),
        reason: format!("{reason} (as PyTorch reads the archive)"),
    };
    let io = |e: std::io::Error| CheckpointError::CorruptArchive {
        path: path.to_path_buf(),
        reason: format!("cannot read its central directory: {e}"),
    };
    let size = reader.seek(SeekFrom::End(0)).map_err(io)?;
    if size < END_LEN {
        return Err(bad("too short for a zip archive"));
    }
    let end = find_end_record(reader, size)
        .map_err(io)?
        .ok_or_else(|| bad("no end of central directory record"))?;
    let eocd = read_at(reader, end, END_LEN as usize).map_err(io)?;
    let mut total = u64::from(le16(&eocd, 10));
    let mut on_disk = u64::from(le16(&eocd, 8));
    let mut this_disk = u32::from(le16(&eocd, 4));
    let mut directory_disk = u32::from(le16(&eocd, 6));
    let mut directory_len = u64::from(le32(&eocd, 12));
    let mut start = u64::from(le32(&eocd, 16));
    // A zip64 end record counts when its locator sits right before the end record.
    if end >= ZIP64_LOCATOR_LEN + ZIP64_END_LEN {
        let locator =
            read_at(reader, end - ZIP64_LOCATOR_LEN, ZIP64_LOCATOR_LEN as usize).map_err(io)?;
        if le32(&locator, 0) == ZIP64_LOCATOR_SIG {
            let at = le64(&locator, 8);
            if at > size - ZIP64_END_LEN {
                return Err(bad("its zip64 locator points past the end of the file"));
            }
            let record = read_at(reader, at, ZIP64_END_LEN as usize).map_err(io)?;
            if le32(&record, 0) == ZIP64_END_SIG {
                if le64(&record, 4) < ZIP64_END_LEN - 12 || le32(&locator, 16) != 1 {
                    return Err(bad(
                        "its zip64 end record is malformed or spans several disks",
                    ));
                }
                total = le64(&record, 32);
                on_disk = le64(&record, 24);
                directory_len = le64(&record, 40);
                if total > MAX32 || on_disk > MAX32 || directory_len > MAX32 {
                    return Err(bad("its zip64 end record declares too many entries"));
                }
                this_disk = le32(&record, 16);
                directory_disk = le32(&record, 20);
                start = le64(&record, 48);
            }
        }
    }
    if total != on_disk
        || ((this_disk | directory_disk) != 0 && (this_disk != 1 || directory_disk != 1))
    {
        return Err(bad("it spans several disks"));
    }
    if directory_len < total.saturating_mul(CENTRAL_LEN as u64)
        || start.checked_add(directory_len).is_none_or(|e| e > size)
    {
        return Err(bad("its central directory does not fit in the file"));
    }
    // Bounded by the file's size, checked just above.
    let directory = read_at(reader, start, directory_len as usize).map_err(io)?;
    let mut entries = Vec::with_capacity(total as usize);
    let mut at = 0usize;
    for _ in 0..total {
        let record = &directory[at..];
        if record.len() < CENTRAL_LEN || le32(record, 0) != CENTRAL_SIG {
            return Err(bad("a central directory record is missing or broken"));
        }
        let (name_len, extra_len, comment_len) = (
            usize::from(le16(record, 28)),
            usize::from(le16(record, 30)),
            usize::from(le16(record, 32)),
        );
        let record_len = CENTRAL_LEN + name_len + extra_len + comment_len;
        if record_len > record.len() {
            return Err(bad("a central directory record runs past the directory"));
        }
        let name = record[CENTRAL_LEN..CENTRAL_LEN + name_len].to_vec();
        let extra = &record[CENTRAL_LEN + name_len..CENTRAL_LEN + name_len + extra_len];
        let mut entry = RawEntry {
            record: start + at as u64,
            name,
            flags: le16(record, 8),
            method: le16(record, 10),
            crc32: le32(record, 16),
            compressed: u64::from(le32(record, 20)),
            uncompressed: u64::from(le32(record, 24)),
            local_header: u64::from(le32(record, 42)),
        };
        zip64_values(&mut entry, extra).map_err(bad)?;
        let disk = le16(record, 34);
        if disk == u16::MAX || (u32::from(disk) != this_disk && disk != 1) {
            return Err(bad("an entry sits on another disk"));
        }
        if entry.compressed != MAX32 && entry.uncompressed != MAX32 {
            if (entry.method == 0 && entry.compressed != entry.uncompressed)
                || (entry.uncompressed != 0 && entry.compressed == 0)
            {
                return Err(bad("a stored entry's two sizes differ"));
            }
            let data_end = entry
                .local_header
                .checked_add(LOCAL_LEN)
                .and_then(|e| e.checked_add(entry.compressed));
            if data_end.is_none_or(|e| e > size) {
                return Err(bad("an entry runs past the end of the file"));
            }
        }
        if entry.flags & 0x2000 != 0 {
            return Err(bad("its local headers are masked (encrypted directory)"));
        }
        entries.push(entry);
        at += record_len;
    }
    Ok((start, entries))
}

/// Replaces the 32-bit sizes and offset that are 0xFFFFFFFF by the first zip64 extra field's
/// values, in its order, as miniz does (and only those: a zip64 field of an entry whose 32-bit
/// values are all set is ignored).
fn zip64_values(entry: &mut RawEntry, mut extra: &[u8]) -> Result<(), &'static str> {
    let wanted = [entry.uncompressed, entry.compressed, entry.local_header];
    if !wanted.contains(&MAX32) {
        return Ok(());
    }
    while !extra.is_empty() {
        if extra.len() < 4 {
            return Err("an extra field is cut short");
        }
        let (id, len) = (le16(extra, 0), usize::from(le16(extra, 2)));
        if 4 + len > extra.len() {
            return Err("an extra field runs past its record");
        }
        if id == ZIP64_EXTRA {
            let mut data = &extra[4..4 + len];
            for value in [
                &mut entry.uncompressed,
                &mut entry.compressed,
                &mut entry.local_header,
            ] {
                if *value == MAX32 {
                    if data.len() < 8 {
                        return Err("a zip64 extra field is too short");
                    }
                    *value = le64(data, 0);
                    data = &data[8..];
                }
            }
            return Ok(());
        }
        extra = &extra[4 + len..];
    }
    Ok(())
}

/// Where miniz finds the end record (`mz_zip_reader_locate_header_sig`): scanning 4 KiB windows
/// back from the end of the file, the last signature with at least 22 bytes after it; giving up
/// once a window without one starts 64 KiB + 22 bytes or more before the end.
fn find_end_record<R: Read + Seek>(reader: &mut R, size: u64) -> std::io::Result<Option<u64>> {
    const WINDOW: u64 = 4096;
    let mut at = size.saturating_sub(WINDOW);
    loop {
        let n = WINDOW.min(size - at) as usize;
        let window = read_at(reader, at, n)?;
        let found = (0..n.saturating_sub(3))
            .rev()
            .find(|&i| le32(&window, i) == END_SIG && size - (at + i as u64) >= END_LEN);
        if let Some(i) = found {
            return Ok(Some(at + i as u64));
        }
        if at == 0 || size - at >= u64::from(u16::MAX) + END_LEN {
            return Ok(None);
        }
        at = at.saturating_sub(WINDOW - 3);
    }
}

fn read_at<R: Read + Seek>(reader: &mut R, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
    reader.seek(SeekFrom::Start(at))?;
    let mut buf = vec![0u8; len];
    reader.read_exact(&mut buf)?;
    Ok(buf)
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("eight bytes"))
}
