//! Reading the pickle's bytes: the operands after an opcode (fixed-size integers, lengths,
//! lines, strings, bytes), each bounded by what is left, and the error for a malformed pickle.

use super::{Unpickler, Value, VmResult};
use crate::checkpoint::error::CheckpointError;
use std::rc::Rc;

impl<'a> Unpickler<'a> {
    pub(super) fn malformed(&self, offset: usize, reason: impl Into<String>) -> CheckpointError {
        CheckpointError::MalformedPickle {
            path: self.path.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }

    pub(super) fn take(&mut self, n: usize, what: &str) -> VmResult<&'a [u8]> {
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

    pub(super) fn take_array<const N: usize>(&mut self, what: &str) -> VmResult<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(super) fn take_u8(&mut self, what: &str) -> VmResult<u8> {
        Ok(self.take_array::<1>(what)?[0])
    }

    pub(super) fn take_u32(&mut self, what: &str) -> VmResult<u32> {
        Ok(u32::from_le_bytes(self.take_array(what)?))
    }

    pub(super) fn take_len64(&mut self, what: &str) -> VmResult<usize> {
        let at = self.pos;
        let n = u64::from_le_bytes(self.take_array(what)?);
        usize::try_from(n)
            .map_err(|_| self.malformed(at, format!("{what} length {n} is too large")))
    }

    pub(super) fn take_line(&mut self, what: &str) -> VmResult<&'a str> {
        let data = self.data;
        let start = self.pos;
        let Some(len) = data[start..].iter().position(|&b| b == b'\n') else {
            return Err(self.malformed(start, format!("truncated: {what} has no end of line")));
        };
        self.pos = start + len + 1;
        std::str::from_utf8(&data[start..start + len])
            .map_err(|_| self.malformed(start, format!("{what} is not valid UTF-8")))
    }

    pub(super) fn take_str(&mut self, n: usize, what: &str) -> VmResult<Value> {
        let at = self.pos;
        let bytes = self.take(n, what)?;
        let s = std::str::from_utf8(bytes)
            .map_err(|_| self.malformed(at, format!("{what} is not valid UTF-8")))?;
        Ok(Value::Str(Rc::from(s)))
    }

    pub(super) fn take_bytes(&mut self, n: usize, what: &str) -> VmResult<Value> {
        self.take(n, what)?;
        Ok(Value::Bytes)
    }
}
