//! The pickle writer: the `data.pkl` of a `torch.save(OrderedDict(tensors))` archive.

use super::dtype::DType;
use super::host_tensor::contiguous_strides;

/// A storage as the pickle describes it: its dtype and the shape of the tensors over it.
pub(super) struct PickledStorage<'a> {
    pub(super) dtype: &'static DType,
    pub(super) size: &'a [i64],
}

/// The pickle (protocol 2) of an `OrderedDict` of `_rebuild_tensor_v2` calls, storage `i` being
/// `data/i` and `storages[i]`, name `n` over storage `storage_of[n]` (tied names share one). No
/// memo: every global is spelled out again, which any unpickler accepts.
pub(super) fn state_dict_pickle(
    names: &[&str],
    storage_of: &[usize],
    storages: &[PickledStorage<'_>],
) -> Vec<u8> {
    let mut p = PickleWriter(Vec::new());
    p.0.extend_from_slice(b"\x80\x02");
    p.global("collections", "OrderedDict");
    p.0.extend_from_slice(b")R(");
    for (name, &key) in names.iter().zip(storage_of) {
        let host = &storages[key];
        p.str(name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.0.extend_from_slice(b"((");
        p.str("storage");
        p.global("torch", host.dtype.storage);
        p.str(&key.to_string());
        p.str("cpu");
        p.int(host.size.iter().product());
        p.0.extend_from_slice(b"tQ");
        p.int(0);
        p.ints(host.size);
        p.ints(&contiguous_strides(host.size));
        p.0.push(0x89);
        p.global("collections", "OrderedDict");
        p.0.extend_from_slice(b")RtR");
    }
    p.0.extend_from_slice(b"u.");
    p.0
}

/// Opcodes of protocol 2, appended to a buffer.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::unpickler::tests::unpickle;
    use tch::Kind;

    fn host(kind: Kind, size: &[i64]) -> PickledStorage<'_> {
        PickledStorage {
            dtype: DType::of(kind).unwrap(),
            size,
        }
    }

    #[test]
    fn the_writer_pickle_reads_back() {
        let hosts = [
            host(Kind::Float, &[2, 3]),
            host(Kind::Int64, &[]),
            host(Kind::Bool, &[0]),
        ];
        let pickle = state_dict_pickle(&["w", "n", "e"], &[0, 1, 2], &hosts);
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
