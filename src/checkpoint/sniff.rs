//! What a file is, from its first bytes: the formats are told apart by content, never by
//! extension (`.pt` and `.pth` are used for all the zip kinds alike).

use super::error::CheckpointError;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Enough for the zip magic, the pickle protocol header and safetensors' header length + `{`.
pub(super) const SNIFF_LEN: usize = 9;

/// What a file's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sniff {
    Zip,
    Pickle,
    Safetensors,
    Unknown,
}

/// Classifies a file from its first [`SNIFF_LEN`] bytes and its length.
pub(super) fn sniff(head: &[u8], file_len: u64) -> Sniff {
    // A local file header, or the end-of-central-directory record of an empty zip.
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Sniff::Zip;
    }
    // PROTO opcode; legacy torch.save starts with a pickled magic number at protocol 2.
    if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Sniff::Pickle;
    }
    if head.len() >= SNIFF_LEN && head[8] == b'{' {
        let mut n = [0u8; 8];
        n.copy_from_slice(&head[..8]);
        let header_len = u64::from_le_bytes(n);
        if header_len >= 2 && header_len.checked_add(8).is_some_and(|end| end <= file_len) {
            return Sniff::Safetensors;
        }
    }
    Sniff::Unknown
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_tells_formats_apart() {
        assert_eq!(sniff(b"PK\x03\x04rest", 100), Sniff::Zip);
        assert_eq!(sniff(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9", 100), Sniff::Pickle);
        assert_eq!(sniff(b"\x02\0\0\0\0\0\0\0{", 10), Sniff::Safetensors);
        // A header longer than the file is not a safetensors file.
        assert_eq!(sniff(b"\x20\0\0\0\0\0\0\0{", 10), Sniff::Unknown);
        assert_eq!(sniff(b"", 0), Sniff::Unknown);
    }
}
