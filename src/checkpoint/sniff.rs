//! What a file is, from its first bytes: the formats are told apart by content, never by
//! extension (`.pt` and `.pth` are used for all the zip kinds alike).

use super::error::CheckpointError;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Enough for the zip magic, safetensors' header length and `{`, and the legacy `torch.save`
/// magic number (a pickle's protocol header, a frame header, the pickled integer).
pub(super) const SNIFF_LEN: usize = 32;

/// The largest safetensors header read while detecting the format: the `safetensors` library's
/// own limit (`MAX_HEADER_SIZE`, 100 MB).
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// What a file's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sniff {
    Zip,
    Pickle,
    Safetensors,
    Unknown,
}

/// `torch.serialization.MAGIC_NUMBER` (0x1950a86a20f9469cfc6c) as pickle's LONG1 opcode writes
/// it: the first object of every legacy (pre-1.6, or `_use_new_zipfile_serialization=False`) file.
const LEGACY_MAGIC: &[u8] = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

/// Classifies a file from its first [`SNIFF_LEN`] bytes and its length: a zip by its signature,
/// a legacy `torch.save` pickle only by its magic number, and a safetensors file only as a
/// candidate (its header length within the file, its header starting with `{`), whose header
/// [`sniff_reader`] then checks in full. The formats cannot be confused: a pickle's `0x80`
/// first byte is also the first byte of a safetensors header length of 640, 896, 1152, 1408...
pub(super) fn sniff(head: &[u8], file_len: u64) -> Sniff {
    // A local file header, or the end-of-central-directory record of an empty zip.
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Sniff::Zip;
    }
    if safetensors_header_len(head, file_len).is_some() {
        return Sniff::Safetensors;
    }
    if is_legacy_pickle(head) {
        return Sniff::Pickle;
    }
    Sniff::Unknown
}

/// The header length of a file that may be safetensors: 8 bytes of little-endian length, within
/// the file, then a header that starts with `{`.
fn safetensors_header_len(head: &[u8], file_len: u64) -> Option<u64> {
    let n: [u8; 8] = head.get(..8)?.try_into().ok()?;
    let header_len = u64::from_le_bytes(n);
    let fits = header_len >= 2 && header_len.checked_add(8).is_some_and(|end| end <= file_len);
    (fits && head.get(8) == Some(&b'{')).then_some(header_len)
}

/// Whether a safetensors header is what the format requires: a JSON object (padded with
/// spaces, as writers align the data to 8 bytes).
fn is_safetensors_header(header: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<serde_json::Value>(header),
        Ok(serde_json::Value::Object(_))
    )
}

/// A pickle (protocol 2 to 5, with its frame header from protocol 4 on) whose first object is
/// `torch.save`'s legacy magic number.
fn is_legacy_pickle(head: &[u8]) -> bool {
    let [0x80, protocol, rest @ ..] = head else {
        return false;
    };
    let body = match (protocol, rest) {
        (2..=3, _) => rest,
        (4..=5, [0x95, rest @ ..]) => rest.get(8..).unwrap_or_default(),
        _ => return false,
    };
    body.starts_with(LEGACY_MAGIC)
}

/// What a reader's first bytes say it is, and its length; the reader is left at its start. A
/// safetensors file is recognised only with a header that is a JSON object.
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
    let mut kind = sniff(&head, file_len);
    if kind == Sniff::Safetensors {
        let header_len = safetensors_header_len(&head, file_len).unwrap_or(0);
        kind = Sniff::Unknown;
        if header_len <= MAX_SAFETENSORS_HEADER {
            let mut header = Vec::with_capacity(header_len as usize);
            reader.seek(SeekFrom::Start(8)).map_err(read_err)?;
            reader
                .take(header_len)
                .read_to_end(&mut header)
                .map_err(read_err)?;
            if is_safetensors_header(&header) {
                kind = Sniff::Safetensors;
            }
        }
    }
    reader.seek(SeekFrom::Start(0)).map_err(read_err)?;
    Ok((kind, file_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_tells_formats_apart() {
        assert_eq!(sniff(b"PK\x03\x04rest", 100), Sniff::Zip);
        let legacy2 = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M";
        assert_eq!(sniff(legacy2, 100), Sniff::Pickle);
        let legacy4 = b"\x80\x04\x95\r\0\0\0\0\0\0\0\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.";
        assert_eq!(sniff(legacy4, 100), Sniff::Pickle);
        // Any other pickle is not a checkpoint.
        assert_eq!(
            sniff(b"\x80\x04\x95\x10\0\0\0\0\0\0\0}q\0", 100),
            Sniff::Unknown
        );
        assert_eq!(sniff(b"\x02\0\0\0\0\0\0\0{", 10), Sniff::Safetensors);
        // A header longer than the file is not a safetensors file.
        assert_eq!(sniff(b"\x20\0\0\0\0\0\0\0{", 10), Sniff::Unknown);
        assert_eq!(sniff(b"", 0), Sniff::Unknown);
        // Header lengths whose first byte is a pickle's PROTO opcode: 640, 896, 1152, 1408.
        for len in [640u64, 896, 1152, 1408] {
            let mut head = len.to_le_bytes().to_vec();
            head.push(b'{');
            assert_eq!(head[..2], [0x80, (len >> 8) as u8]);
            assert_eq!(sniff(&head, 8 + len), Sniff::Safetensors, "{len}");
        }
        assert!(is_safetensors_header(b"{\"a\": {}}   "));
        assert!(!is_safetensors_header(b"{\"a\": "));
        assert!(!is_safetensors_header(b"[1, 2]"));
    }
}
