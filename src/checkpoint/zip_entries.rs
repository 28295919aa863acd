//! Opening a zip archive so that every reader sees the same entries: names given twice are
//! refused.
//!
//! The zip crate keys its entries by name and keeps the *last* of two entries named alike;
//! PyTorch's reader (miniz) finds the *first*, and compares names without regard to ASCII case.
//! A file holding two `archive/data/0` (or two `data.pkl`, or two class definitions) could show
//! one set of weights or one program to PyTorch or a scanner and another to this crate, so such
//! archives are refused, as safetensors refuses a header naming a tensor twice.

use super::error::{first_line, shown, CheckpointError};
use std::collections::HashSet;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// The signature of a central directory file header.
const CENTRAL_HEADER: u32 = 0x0201_4b50;
/// Its fixed part, before the name, extra field and comment.
const CENTRAL_HEADER_LEN: usize = 46;

/// Opens `reader` as a zip archive, refusing archives whose central directory names an entry
/// twice (comparing names as PyTorch does, ignoring ASCII case).
pub(crate) fn open_archive<R: Read + Seek>(
    reader: R,
    path: &Path,
) -> Result<zip::ZipArchive<R>, CheckpointError> {
    let corrupt = |e: zip::result::ZipError| CheckpointError::CorruptArchive {
        path: path.to_path_buf(),
        reason: first_line(&e.to_string()),
    };
    let archive = zip::ZipArchive::new(reader).map_err(corrupt)?;
    let (count, start) = (archive.len(), archive.central_directory_start());
    // The zip crate gives no access to its reader but by taking it back; the archive is parsed
    // again afterwards (a cost per entry, not per byte).
    let mut reader = archive.into_inner();
    let names = central_names(&mut reader, start, count, path)?;
    let mut seen = HashSet::with_capacity(names.len());
    for name in &names {
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(CheckpointError::DuplicateEntry {
                path: path.to_path_buf(),
                entry: shown(&String::from_utf8_lossy(name)),
            });
        }
    }
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| CheckpointError::io(path, "cannot read", e))?;
    let archive = zip::ZipArchive::new(reader).map_err(corrupt)?;
    // The zip crate read the same directory; fewer entries there means it merged some.
    if archive.len() != names.len() {
        return Err(CheckpointError::CorruptArchive {
            path: path.to_path_buf(),
            reason: format!(
                "its central directory holds {} entries, of which the zip reader tells {} apart",
                names.len(),
                archive.len()
            ),
        });
    }
    Ok(archive)
}

/// Every entry name of the central directory that starts at `start` (from the file's start, as
/// the zip crate reports it), as bytes, in its order; at most `count` + 1 of them, the number the
/// end record declares (plus one, to notice more). Each record takes 46 bytes plus its name, so
/// the list is bounded by the file.
fn central_names<R: Read + Seek>(
    reader: &mut R,
    start: u64,
    count: usize,
    path: &Path,
) -> Result<Vec<Vec<u8>>, CheckpointError> {
    let io = |e: std::io::Error| CheckpointError::CorruptArchive {
        path: path.to_path_buf(),
        reason: format!("cannot read its central directory: {e}"),
    };
    reader.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut reader = BufReader::new(reader);
    let mut names = Vec::new();
    let mut header = [0u8; CENTRAL_HEADER_LEN];
    while names.len() <= count {
        match reader.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io(e)),
        }
        if u32::from_le_bytes([header[0], header[1], header[2], header[3]]) != CENTRAL_HEADER {
            break;
        }
        let field = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]) as usize;
        let (name_len, extra_len, comment_len) = (field(28), field(30), field(32));
        let mut name = vec![0u8; name_len];
        reader.read_exact(&mut name).map_err(io)?;
        reader
            .seek_relative((extra_len + comment_len) as i64)
            .map_err(io)?;
        names.push(name);
    }
    Ok(names)
}
